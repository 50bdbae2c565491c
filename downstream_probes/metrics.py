"""The metrics a probe may name (``ProbeTask.metrics``), computed as the HEAR kit computes them."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == targets).float().mean())


def chroma_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Pitch class correct, octave free (classes are consecutive semitones)."""
    return float(((logits.argmax(dim=-1) - targets) % 12 == 0).float().mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class as scikit-learn defines it: sum over distinct score thresholds of
    (recall increase) x precision, tied scores forming one threshold."""
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # end of each group of equal scores
    true_positives = np.cumsum(positives)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0.0, true_positives]) / positives.sum()
    return float((recall_gain * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP over every class, as the HEAR kit computes it (heareval 2021.1.3 ``MeanAveragePrecision``:
    scikit-learn's ``average_precision_score(targets, scores, average="macro")``): a class without positives
    in ``targets`` counts as AP 0 (scikit-learn, 1.9 here, sets its recall to 1: AP 0); it is not left out."""
    scores, targets = scores.double().cpu().numpy(), targets.double().cpu().numpy()
    return float(np.mean([average_precision(scores[:, c], targets[:, c]) if targets[:, c].sum() > 0 else 0.0
                          for c in range(targets.shape[1])]))


def fold_std(values: Sequence[float]) -> float:
    """Spread over test folds as the HEAR kit reports it (pandas ``DataFrame.std``: ddof 1); 0 for one fold."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


METRICS = {"acc": accuracy, "pitch_acc": accuracy, "chroma_acc": chroma_accuracy, "mAP": mean_average_precision}
