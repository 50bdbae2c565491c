"""The masked-prediction loss: cross-entropy per frame and stream, weighted over streams, split between
masked and visible frames by δ."""
from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100                    # target value that no loss or accuracy counts (padding, missing ST codes)


def frame_cross_entropy(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """Cross-entropy per frame and stream, in float32.

    Args:
        logits: (B, T, S, K); targets: (B, T, S) long, IGNORE (-100) where nothing is to be predicted.
    Returns:
        ce: (B, T, S) float32, 0 where ignored; valid: (B, T, S) bool.
    """
    batch, frames, streams, classes = logits.shape
    valid = targets != IGNORE
    ce = F.cross_entropy(logits.float().reshape(-1, classes), targets.reshape(-1), ignore_index=IGNORE,
                         reduction="none").view(batch, frames, streams)
    return ce.masked_fill(~valid, 0.0), valid


def masked_prediction_loss(ce: Tensor, valid: Tensor, mask: Tensor, weights: Tensor, delta: float
                           ) -> Tuple[Tensor, Tensor, Tensor]:
    """L = Σ_s w_s [ α Σ_{t∈M} CE + β Σ_{t∉M} CE ],  α = δ/|M|,  β = (1-δ)/(T-|M|).

    Normalisation: |M| and T-|M| are totals over the whole batch (masked, resp. visible, valid
    frames of all clips), counted per stream (a stream's ignored targets do not count); this is
    what v1's loss does. A stream with no masked (visible) frames contributes 0 to that term.

    Args:
        ce, valid: (B, T, S) from ``frame_cross_entropy``; mask: (B, T) bool, True = masked;
        weights: (S,) the γ_q (and the extra stream's weight); delta: δ.
    Returns:
        loss (scalar), masked_loss (S,), unmasked_loss (S,) (the per-stream means, unweighted).
    """
    masked = valid & mask[:, :, None]
    unmasked = valid & ~mask[:, :, None]
    masked_loss = (ce * masked).sum(dim=(0, 1)) / masked.sum(dim=(0, 1)).clamp_min(1)
    unmasked_loss = (ce * unmasked).sum(dim=(0, 1)) / unmasked.sum(dim=(0, 1)).clamp_min(1)
    loss = (weights.to(ce) * (delta * masked_loss + (1.0 - delta) * unmasked_loss)).sum()
    return loss, masked_loss, unmasked_loss
