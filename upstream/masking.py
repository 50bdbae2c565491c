"""Span masking and the drop / restore of masked frames (MAE style), vectorised over the batch.

A clip of L valid frames gets exactly ``round(mask_prop * L)`` masked frames (round half to
even, ``torch.round``), laid out as n = ceil(count / span) disjoint spans: n - 1 of length
``span`` and one (at a random rank) of length count - (n - 1) * span, in 1..span.

How the spans are placed (exact, uniform over layouts, no per-clip loop): put the n spans and
the g = L - count visible frames on a compressed line of n + g items, pick which n items are
spans by sampling n slots without replacement, then expand each span to its length. Spans may
touch (a run of 2 spans is 2 * span frames) but never overlap, so the count is exact by
construction and no frame past L is ever masked. As with any sampler of whole spans inside
[0, L), the first and last few frames are masked less often than interior ones.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def masked_counts(lengths: Tensor, mask_prop: float) -> Tensor:
    """Frames masked per clip: round(mask_prop * length), half to even. (B,) long -> (B,) long."""
    return torch.round(lengths.to(torch.float64) * mask_prop).long()


def span_mask(lengths: Tensor, max_len: int, mask_prop: float = 0.5, span: int = 15,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """Random span mask.

    Args:
        lengths: (B,) long, valid frames per clip, each <= max_len.
        max_len: T, the padded length.
        mask_prop: proportion of each clip's valid frames to mask, in [0, 1].
        span: span length in frames (v1: 15).
        generator: source of randomness (its device is where the sampling runs).
    Returns:
        (B, T) bool on ``lengths.device``, True = masked. Padding is never masked; clips of
        equal length have equal masked (hence visible) counts.
    """
    if not 0.0 <= mask_prop <= 1.0:
        raise ValueError(f"span_mask: mask_prop must be in [0, 1], got {mask_prop}")
    if span < 1:
        raise ValueError(f"span_mask: span must be >= 1 frame, got {span}")
    out_device = lengths.device
    device = generator.device if generator is not None else out_device
    lengths = lengths.to(device=device, dtype=torch.long)
    if lengths.numel() and (int(lengths.max()) > max_len or int(lengths.min()) < 0):
        raise ValueError(f"span_mask: lengths must lie in [0, max_len={max_len}], got {lengths.tolist()}")
    batch = lengths.shape[0]

    count = masked_counts(lengths, mask_prop)                      # (B,) frames to mask
    spans = torch.div(count + span - 1, span, rounding_mode="floor")  # (B,) n = ceil(count / span)
    visible = lengths - count                                       # (B,) g
    items = spans + visible                                         # (B,) n + g items on the compressed line
    max_spans = int(spans.max()) if batch else 0
    if max_spans == 0:
        return torch.zeros(batch, max_len, dtype=torch.bool, device=out_device)
    max_items = int(items.max())

    # pick n_b of the n_b + g_b slots without replacement: the n_b smallest of uniform keys,
    # items past a clip's own line get key 2 so they are never among its n_b smallest
    slot_range = torch.arange(max_items, device=device)
    keys = torch.rand(batch, max_items, device=device, generator=generator)
    keys = keys.masked_fill(slot_range[None, :] >= items[:, None], 2.0)
    slots = keys.topk(max_spans, dim=1, largest=False).indices      # (B, N), n_b valid ones first
    rank = torch.arange(max_spans, device=device)[None, :]          # (1, N)
    real = rank < spans[:, None]                                    # (B, N) spans that exist
    slots = slots.masked_fill(~real, max_items).sort(dim=1).values  # ascending: the j-th span from the left

    # span lengths in left-to-right order: all `span` but one random rank gets the remainder
    remainder = count - (spans - 1) * span                          # (B,) in 1..span where spans > 0
    short = (torch.rand(batch, device=device, generator=generator) * spans).long()
    short = torch.minimum(short, (spans - 1).clamp_min(0))
    span_len = torch.full_like(slots, span)
    span_len = torch.where(rank == short[:, None], remainder[:, None], span_len)
    span_len = span_len.masked_fill(~real, 0)                       # (B, N)

    # start = visible frames left of the slot (slot - j) + frames of the spans left of it
    frames_before = span_len.cumsum(dim=1) - span_len
    start = torch.where(real, slots - rank + frames_before, torch.zeros_like(slots))

    # difference array: +1 at each start, -1 at each end; spans are disjoint so the prefix sum is 0 or 1
    delta = torch.zeros(batch, max_len + 1, dtype=torch.long, device=device)
    delta.scatter_add_(1, start, real.long())
    delta.scatter_add_(1, start + span_len, -real.long())
    mask = delta.cumsum(dim=1)[:, :max_len] > 0
    return mask.to(out_device)


def gather_visible(x: Tensor, mask: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Drop masked (and padded) frames: what the encoder sees.

    Args:
        x: (B, T, D).
        mask: (B, T) bool, True = masked.
        lengths: (B,) valid frames per clip.
    Returns:
        visible: (B, V, D), V = most visible frames of any clip; each clip's visible frames in
            their original order, then zeros.
        visible_padding: (B, V) bool, True = padding.
        visible_index: (B, V) long, the frame in x of each visible slot (arbitrary at padding).
    """
    batch, frames, dim = x.shape
    valid = torch.arange(frames, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    keep = valid & ~mask
    count = keep.sum(dim=1)
    width = int(count.max()) if batch else 0
    # a stable sort of "is dropped" puts the kept frames first, in their original order
    order = torch.sort((~keep).to(torch.int32), dim=1, stable=True).indices
    visible_index = order[:, :width]
    visible_padding = torch.arange(width, device=x.device)[None, :] >= count[:, None]
    visible = x.gather(1, visible_index[:, :, None].expand(-1, -1, dim))
    visible = visible.masked_fill(visible_padding[:, :, None], 0.0)
    return visible, visible_padding, visible_index


def scatter_back(visible: Tensor, visible_index: Tensor, visible_padding: Tensor, frames: int,
                 fill: Optional[Tensor] = None) -> Tensor:
    """Inverse of ``gather_visible``: visible frames back at their places, ``fill`` elsewhere.

    Args:
        visible: (B, V, D).
        visible_index, visible_padding: (B, V), as returned by ``gather_visible``.
        frames: T, the full length.
        fill: (D,) mask token (learned) or None for zeros (v1).
    Returns:
        (B, T, D); gradients flow to ``visible`` and to ``fill``.
    """
    batch, _, dim = visible.shape
    if fill is None:
        base = visible.new_zeros(batch, frames + 1, dim)
    else:
        base = fill.to(visible.dtype).expand(batch, frames + 1, dim)
    # padding slots are sent to an extra frame T that is cut off afterwards
    index = visible_index.masked_fill(visible_padding, frames)
    out = base.scatter(1, index[:, :, None].expand(-1, -1, dim), visible)
    return out[:, :frames]
