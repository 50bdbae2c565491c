"""What every utterance-level probe shares: the task contract, clip datasets, the MLP, metrics, the s3prl expert.

A probe is one folder, ``downstream_probes/<name>/`` or ``<name>/`` in a folder listed in
``ENCODECMAE_PROBE_PATH`` (see ``encodecmae_s3prl.registry``), holding two files:

- ``dataset.py``: ``load_task(root: Path, test_fold: str | None = None) -> ProbeTask`` (the clips of train /
  dev / test, the class names, ``multilabel``, ``metrics``, the layout quoted in errors) and
  ``folds(root: Path) -> list`` (the test folds a full evaluation runs over; ``[None]`` for a dataset with fixed
  splits, also when ``folds`` is left out);
- ``config.yaml``: s3prl's runner config for ``run_downstream.py -d <name>``, ``downstream_expert.datarc.root``
  naming the data (``datarc.test_fold`` for k-fold datasets).

Loading, checking, pooling, the MLP and logging live here, once: the s3prl runner (``expert.py`` beside this
file, the ``DownstreamExpert`` of every probe) and the HEAR protocol (``encodecmae_s3prl.evaluation``) both
train on the ``ProbeTask`` that ``load_probe_task`` returns.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np
import soundfile
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.codec import SAMPLE_RATE
from encodecmae_s3prl.upstream.expert import INPUT_RATE, UpstreamExpert  # INPUT_RATE: s3prl's 16 kHz convention


class ProbeDataError(UserError, ValueError):
    """A probe dataset is missing, malformed, or not in the layout its publisher distributes."""


@dataclass(frozen=True)
class Clip:
    """One labelled clip: a whole file, or ``duration`` seconds from ``start`` (segments of long recordings,
    e.g. Speech Commands' background noise cut into 1 s _silence_ clips)."""

    path: str
    target: tuple  # class indices (one for multiclass, any number for multilabel)
    start: float = 0.0
    duration: float | None = None

    @property
    def key(self) -> str:
        """Unique per clip (a file may hold several segments): what embedding caches index."""
        return self.path if self.duration is None and not self.start else f"{self.path}@{self.start:g}+{self.duration}"


@dataclass
class ProbeTask:
    """One probe's data as a probe's ``dataset.py`` describes it (``load_task``): what the s3prl expert and the
    HEAR protocol train on."""

    name: str
    splits: Dict[str, List[Clip]]  # train / dev / test
    classes: List[str]
    multilabel: bool = False  # several labels per clip: sigmoid + BCE, else softmax + cross-entropy
    metrics: tuple = ("acc",)  # names in METRICS; the first one selects the model on dev
    layout: str = "the layout its publisher distributes"  # the dataset's layout, quoted in error messages
    kit_ordered: bool = False  # clips already in the HEAR kit's training order (HEAR tasks): not reordered


class TaskSource(NamedTuple):
    """How a task is read, one entry of the HEAR protocol's table: a probe folder's ``dataset.py`` through
    ``probe_source``, each of s3prl's recipes through ``evaluation.recipe_tasks.RECIPES``."""

    folds: Callable[[Path], list]  # root -> the test folds ([None] without folds)
    load_task: Callable[..., ProbeTask]  # (root, test_fold) -> a checked ProbeTask


def read_clip(path: str, start: float = 0.0, duration: float | None = None,
              rate: int = INPUT_RATE) -> torch.Tensor | None:
    """Mono float32 (samples,) at ``rate`` (16 kHz unless told: s3prl's convention), read at the file's own rate
    and resampled once, straight to ``rate`` (``upstream.audio.read_audio``); None when the file is unreadable,
    empty or not finite. ``start`` and ``duration`` are in seconds."""
    try:
        first, frames = 0, None
        if start or duration is not None:
            file_rate = soundfile.info(str(path)).samplerate
            first = int(round(start * file_rate))
            frames = None if duration is None else int(round(duration * file_rate))
        return read_audio(path, rate, first, frames)
    except (AudioReadError, RuntimeError, OSError):  # soundfile's errors are RuntimeErrors
        return None


def upstream_rate(upstream: nn.Module) -> int:
    """The rate an upstream's own model runs at, where we can feed it directly: 24 kHz for our EnCodecMAE
    upstreams (``UpstreamExpert.model.encode``), 16 kHz for every other s3prl upstream (s3prl's convention)."""
    return SAMPLE_RATE if isinstance(upstream, UpstreamExpert) else INPUT_RATE


def encode_native(upstream: nn.Module, wavs: Sequence[torch.Tensor]) -> tuple[List[torch.Tensor], torch.Tensor]:
    """Every hidden state of a batch of clips given at ``upstream_rate(upstream)``, and each clip's own frame count.

    Ours: ``upstream.model.encode`` on the 24 kHz audio itself (s3prl's UpstreamExpert would take 16 kHz and
    resample, losing 8-12 kHz); frame counts are the model's ``frame_lengths`` (75 Hz). Others: s3prl's
    ``upstream(wavs)`` at 16 kHz, frames ``round(len / downsample rate)`` (all frames when it has no rate).
    Returns (hidden states, each (batch, frames, dim)), frames (batch,) long."""
    lengths = torch.tensor([len(w) for w in wavs])
    if isinstance(upstream, UpstreamExpert):
        padded = nn.utils.rnn.pad_sequence([w.float() for w in wavs], batch_first=True)
        encoded = upstream.model.encode(padded, lengths.to(padded.device))
        return list(encoded.hidden_states), encoded.frame_lengths.cpu()
    hidden = list(upstream(list(wavs))["hidden_states"])
    total = hidden[0].shape[1]
    if not hasattr(upstream, "get_downsample_rates"):
        return hidden, torch.full((len(wavs),), total)
    rate = upstream.get_downsample_rates("hidden_states")
    return hidden, torch.tensor([max(1, min(total, round(n / rate))) for n in lengths.tolist()])


class ClipDataset(Dataset):
    """(wav, target, name) per clip. Bad files become a short silence, counted and reported once each,
    so one broken file does not stop a run (the metrics still count it, as a wrong answer at worst)."""

    def __init__(self, clips: Sequence[Clip], num_classes: int, multilabel: bool, max_seconds: float | None = None):
        self.clips = list(clips)
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.max_samples = int(max_seconds * INPUT_RATE) if max_seconds else None
        self.bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        clip = self.clips[index]
        wav = read_clip(clip.path, clip.start, clip.duration)
        if wav is None:
            if clip.path not in self.bad:
                self.bad.add(clip.path)
                print(f"[probe] unreadable audio {clip.path}: using 1 s of silence ({len(self.bad)} so far)",
                      file=sys.stderr)
            wav = torch.zeros(INPUT_RATE)
        if self.max_samples and wav.numel() > self.max_samples:
            wav = wav[: self.max_samples]
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            target[list(clip.target)] = 1.0
        else:
            target = clip.target[0]
        return wav, target, Path(clip.path).stem

    @staticmethod
    def collate_fn(samples):
        wavs, targets, names = zip(*samples, strict=True)
        if isinstance(targets[0], torch.Tensor):
            targets = torch.stack(targets)
        else:
            targets = torch.tensor(targets)
        return list(wavs), targets, list(names)


def check_audio_exists(splits: Dict[str, List[Clip]], root: Path, layout: str) -> None:
    """Fail early, naming the file, when the metadata lists audio that is not on disk (a partial extraction,
    or ``root`` pointing at the wrong folder), instead of training on silence."""
    missing = sorted({clip.path for clips in splits.values() for clip in clips if not os.path.isfile(clip.path)})
    if missing:
        raise ProbeDataError(
            f"{len(missing)} audio file(s) listed in the metadata under {root} do not exist, e.g. {missing[0]}. "
            f"Expected layout: {layout}. Extract the audio next to the metadata, or fix datarc.root.")


def natural_key(name: str) -> tuple:
    """'fold10' after 'fold9': digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def fold_splits(items_by_fold: Dict[str, list], test_fold: str | None = None) -> Dict[str, list]:
    """HEAR's k-fold rule: fold i tests, fold i+1 (mod k) validates, the rest train (folds in natural order:
    fold2 before fold10). No ``test_fold``: the first fold tests."""
    folds = sorted(items_by_fold, key=natural_key)
    test_fold = test_fold or folds[0]
    if test_fold not in folds:
        raise ProbeDataError(f"datarc.test_fold {test_fold!r} is not one of the dataset's folds {folds}: pick one with "
                             f"-o config.downstream_expert.datarc.test_fold=NAME")
    i = folds.index(test_fold)
    valid = folds[(i + 1) % len(folds)]
    return {"train": [x for f in folds if f not in (test_fold, valid) for x in items_by_fold[f]],
            "dev": items_by_fold[valid], "test": items_by_fold[test_fold]}


# --- reading a probe's task ---------------------------------------------------------------

def check_task(task: ProbeTask, root: str | Path) -> ProbeTask:
    """``task`` as read from ``root``, checked: metrics we compute, every listed audio file on disk (named when
    missing), no empty split. ``root`` is only quoted (its first part for a 'TRAIN,TEST' spec)."""
    unknown = [m for m in task.metrics if m not in METRICS]
    if not task.metrics or unknown:
        raise ProbeDataError(f"probe {task.name}: metrics {list(task.metrics)} must be a non-empty tuple of "
                             f"{sorted(METRICS)}")
    check_audio_exists(task.splits, Path(str(root).split(",")[0]), task.layout)
    for split in ("train", "dev", "test"):
        if not task.splits.get(split):
            raise ProbeDataError(f"probe {task.name}: the {split} split of {root} has no clips; check the dataset "
                                 f"layout: {task.layout}")
    return task


def dataset_module(probe: str):
    """The ``dataset.py`` of a probe folder (the registry makes probes found in ENCODECMAE_PROBE_PATH importable
    under the same package name as ours)."""
    try:
        return importlib.import_module(f"{__package__}.{probe}.dataset")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(f"{__package__}.{probe}"):
            raise  # an import inside dataset.py failed: its own error
        raise ProbeDataError(f"unknown probe {probe!r}: no {probe}/dataset.py among the probe folders") from None


def _check_root(probe: str, root: str | Path) -> Path:
    if not Path(root).is_dir():
        raise ProbeDataError(f"data for probe {probe}: {root} is not a folder")
    return Path(root)


def probe_folds(probe: str, root: str | Path) -> List[str | None]:
    """The test folds a probe is evaluated on (its ``dataset.folds``): every fold of a k-fold dataset, else [None]."""
    module = dataset_module(probe)
    folds = getattr(module, "folds", None)
    return list(folds(_check_root(probe, root))) if folds else [None]


def load_probe_task(probe: str, root: str | Path, test_fold: str | None = None) -> ProbeTask:
    """A probe's ``dataset.load_task(root, test_fold)``, named ``probe`` and checked (``check_task``)."""
    task = dataset_module(probe).load_task(_check_root(probe, root), test_fold)
    return check_task(replace(task, name=probe), root)


def probe_source(probe: str) -> TaskSource:
    """A probe folder as a TaskSource (folds, checked load_task)."""
    return TaskSource(partial(probe_folds, probe), partial(load_probe_task, probe))


# --- metrics -----------------------------------------------------------------------------

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


# --- model -------------------------------------------------------------------------------

class PooledMLP(nn.Module):
    """The one MLP of every probe, on pooled (batch, dim) features: [Linear -> BatchNorm1d -> Dropout -> ReLU] x
    ``hidden_layers`` -> Linear, the HEAR kit's layout (heareval ``FullyConnectedPrediction``; a Dropout before
    or after the ReLU gives the same values, as a ReLU commutes with a positive scale).

    ``init`` None keeps PyTorch's default initialisation (the s3prl runner probes). ``'xavier_uniform'`` /
    ``'xavier_normal'`` (the HEAR protocol): each Linear keeps PyTorch's default bias; its weight is redrawn right
    after it is built (the kit's order of random draws) with the gain ``calculate_gain`` of what precedes it:
    'linear' (1) for the input, 'relu' (sqrt 2) after a hidden layer."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 1024, hidden_layers: int = 1,
                 dropout: float = 0.1, init: str | None = None):
        super().__init__()
        init_weight = getattr(nn.init, init + "_") if init else None
        blocks, width, previous = [], input_dim, "linear"
        for _ in range(hidden_layers):
            linear = nn.Linear(width, hidden_dim)
            if init_weight:
                init_weight(linear.weight, gain=nn.init.calculate_gain(previous))
            blocks += [linear, nn.BatchNorm1d(hidden_dim), nn.Dropout(dropout), nn.ReLU()]
            width, previous = hidden_dim, "relu"
        projection = nn.Linear(width, num_classes)
        if init_weight:
            init_weight(projection.weight, gain=nn.init.calculate_gain(previous))
        self.mlp = nn.Sequential(*blocks, projection)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (batch, dim) -> logits (batch, classes)."""
        return self.mlp(pooled)


class PooledProbeExpert(nn.Module):
    """An s3prl DownstreamExpert for one ProbeTask: the time-mean of the upstream features -> PooledMLP.

    ``datarc``: batch sizes, ``num_workers``, ``max_seconds``; ``modelrc``: ``hidden_dim``, ``hidden_layers``,
    ``dropout``. ``expert.py`` beside this file builds it from s3prl's arguments (``-d`` names the probe)."""

    def __init__(self, upstream_dim: int, task: ProbeTask, expdir: str | Path, datarc: dict | None = None,
                 modelrc: dict | None = None):
        super().__init__()
        self.task = task
        self.datarc = dict(datarc or {})
        modelrc = dict(modelrc or {})
        self.expdir = Path(expdir)
        self.datasets = {name: ClipDataset(clips, len(task.classes), task.multilabel, self.datarc.get("max_seconds"))
                         for name, clips in task.splits.items()}
        self.model = PooledMLP(upstream_dim, len(task.classes), modelrc.get("hidden_dim", 1024),
                               modelrc.get("hidden_layers", 1), modelrc.get("dropout", 0.1))
        self.register_buffer("best_score", torch.full((1,), -math.inf))

    def get_dataloader(self, split: str, epoch: int = 0) -> DataLoader:
        if split not in self.datasets:
            raise ProbeDataError(f"unknown split {split!r}; this probe has {sorted(self.datasets)}")
        dataset = self.datasets[split]
        train = split == "train"
        return DataLoader(dataset, batch_size=self.datarc.get("train_batch_size" if train else "eval_batch_size", 16),
                          shuffle=train, drop_last=train and len(dataset) > self.datarc.get("train_batch_size", 16),
                          num_workers=self.datarc.get("num_workers", 0), collate_fn=dataset.collate_fn)

    def forward(self, split, features, targets, names, records, **kwargs):
        lengths = torch.tensor([len(f) for f in features], device=features[0].device)
        padded = nn.utils.rnn.pad_sequence(features, batch_first=True)
        pooled = padded.sum(dim=1) / lengths[:, None].clamp_min(1)
        logits = self.model(pooled)
        targets = targets.to(logits.device)
        if self.task.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        else:
            loss = F.cross_entropy(logits, targets)
        records["loss"].append(loss.item())
        records["logits"].append(logits.detach().float().cpu())
        records["targets"].append(targets.detach().cpu())
        return loss

    def log_records(self, split, records, logger, global_step, **kwargs):
        logits, targets = torch.cat(records["logits"]), torch.cat(records["targets"])
        scores = torch.sigmoid(logits) if self.task.multilabel else logits
        metrics = self.task.metrics
        values = {name: METRICS[name](scores, targets) for name in metrics}
        values["loss"] = float(np.mean(records["loss"]))
        prefix = f"{self.task.name}/{split}-"
        for name, value in values.items():
            logger.add_scalar(prefix + name, value, global_step=global_step)
            print(f"{split} {name}: {value:.4f}")
        with open(self.expdir / "log.log", "a") as handle:
            handle.write(f"step {global_step} {split} " + " ".join(f"{k}={v:.4f}" for k, v in values.items()) + "\n")
        save = []
        if split == "dev" and values[metrics[0]] > float(self.best_score):
            self.best_score.fill_(values[metrics[0]])
            save.append("dev-best.ckpt")
        return save
