"""Span masking and the drop / restore of masked frames (MAE style), vectorised over the batch.

Two layouts, chosen by ``span_mask(..., recipe=...)``:

``v1`` -- what the authors' code (tag v.1.0.0, which trained the published models) does: span starts
drawn uniformly WITH replacement in [0, L - span], spans of ``span`` frames that overlap and merge,
drawn until at least floor(mask_prop * L) frames are masked; the excess is then unmasked at the
start of the first drawn span that starts before ``max_len - span``. Exactly floor(mask_prop * L)
frames are masked; merged spans make runs longer than ``span`` common.

``paper`` -- the paper's text (starts without replacement, ``span`` frames each) read as disjoint
spans: exactly ``round(mask_prop * L)`` masked frames (round half to even), laid out as
n = ceil(count / span) disjoint spans, n - 1 of length ``span`` and one (at a random rank) of
length count - (n - 1) * span, in 1..span. Placement is exact and uniform over layouts: the n spans
and the g = L - count visible frames are put on a compressed line of n + g items, n slots are
picked without replacement, and each span is expanded to its length. Spans may touch but never
overlap.

As with any sampler of whole spans inside [0, L), the first and last few frames are masked less
often than interior ones, under both layouts.

``padding_mask`` turns clip lengths into the (B, T) padding mask (True = padding) every module takes.

``HostMask`` is a mask drawn on the host with the shapes it implies (the visible width, whether anything is
padded): a training step that gets one copies the mask to the device and never reads anything back, so the
device never waits on the host and, for equal-length crops, every step has the same shapes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

RECIPES = ("v1", "paper")


def masked_counts(lengths: Tensor, mask_prop: float, recipe: str = "v1") -> Tensor:
    """Frames masked per clip, (B,) long -> (B,) long: floor(mask_prop * length) under ``v1`` (the
    authors' code truncates), round(mask_prop * length), half to even, under ``paper``."""
    if recipe == "v1":
        # a float32 product truncated toward zero, as the authors' (xlens * mask_prop).to(int64)
        return (lengths.to(torch.float32) * mask_prop).long()
    return torch.round(lengths.to(torch.float64) * mask_prop).long()


def span_mask(lengths: Tensor, max_len: int, mask_prop: float = 0.5, span: int = 15,
              generator: Optional[torch.Generator] = None, recipe: str = "v1") -> Tensor:
    """Random span mask.

    Args:
        lengths: (B,) long, valid frames per clip, each <= max_len.
        max_len: T, the padded length.
        mask_prop: proportion of each clip's valid frames to mask, in [0, 1].
        span: span length in frames (15 in the paper and the authors' code).
        generator: source of randomness (its device is where the sampling runs).
        recipe: ``'v1'`` (the authors' code: starts with replacement, spans merge, floor count) or
            ``'paper'`` (disjoint spans, rounded count); see the module docstring.
    Returns:
        (B, T) bool on ``lengths.device``, True = masked. Padding is never masked; clips of
        equal length have equal masked (hence visible) counts.
    """
    if recipe not in RECIPES:
        raise ValueError(f"span_mask: recipe must be one of {RECIPES}, got {recipe!r}")
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
    if recipe == "v1":
        return _v1_span_mask(lengths, max_len, mask_prop, span, generator).to(out_device)

    count = masked_counts(lengths, mask_prop, recipe)               # (B,) frames to mask
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


def _v1_span_mask(lengths: Tensor, max_len: int, mask_prop: float, span: int,
                  generator: Optional[torch.Generator]) -> Tensor:
    """The authors' TimeGapMask layout without its per-clip loop.

    Draw j of clip b starts at s_j uniform in [0, max(0, L_b - span)]. Frame t is first covered by
    draw c_t = min{j : s_j <= t < s_j + span}; after draws 0..k the union is {t : c_t <= k}. Drawing
    stops at the first k whose union reaches ``count`` frames: k is the count-th smallest c_t. Draws
    are made in blocks until every clip has stopped (the same draws in the same order, whatever the
    block size, so the result depends only on the generator).
    """
    device = lengths.device
    batch = lengths.shape[0]
    count = masked_counts(lengths, mask_prop, "v1")                 # (B,)
    if batch == 0 or int(count.max()) == 0:
        return torch.zeros(batch, max_len, dtype=torch.bool, device=device)
    never = torch.iinfo(torch.int32).max
    highest = (lengths - span).clamp_min(0)                         # (B,) last start, inclusive
    frame = torch.arange(max_len, device=device)[None, :]           # (1, T)
    # enough draws for most clips at once: the union of n spans covers about 1 - exp(-n span / L)
    block = max(8, 2 * int(torch.ceil(count.max() / span)) + 8)
    starts = torch.empty(batch, 0, dtype=torch.long, device=device)
    while True:
        fresh = torch.rand(batch, block, device=device, generator=generator, dtype=torch.float64)
        starts = torch.cat([starts, (fresh * (highest[:, None] + 1)).long()], dim=1)   # (B, J)
        draws = starts.shape[1]
        # the first draw starting at each s (at index s + span - 1), then the first covering t: the min
        # over starts in (t - span, t], a sliding-window min
        first_at = torch.full((batch, max_len + span - 1), never, dtype=torch.int32, device=device)
        order = torch.arange(draws, dtype=torch.int32, device=device).expand(batch, -1)
        first_at.scatter_reduce_(1, starts + span - 1, order, reduce="amin")
        covered_by = _window_min(first_at, span)[:, :max_len]                          # (B, T)
        covered_by = covered_by.masked_fill(frame >= lengths[:, None], never)
        # frames first covered by each draw, summed: the union's size after draws 0..k
        newly = torch.zeros(batch, draws + 1, dtype=torch.int32, device=device)
        newly.scatter_add_(1, covered_by.clamp_max(draws).long(), torch.ones_like(covered_by))
        union = newly[:, :draws].cumsum(dim=1)                                         # (B, J)
        stop = (union < count[:, None]).sum(dim=1, keepdim=True)                       # (B, 1) last draw used
        if int(stop.max()) < draws:
            break
        block *= 2
    mask = (covered_by <= stop) & (count[:, None] > 0)
    # unmask the excess at the start of the first used draw that starts before max_len - span
    excess = mask.sum(dim=1) - count                                                   # (B,) in 0..span-1
    used = torch.arange(draws, device=device)[None, :] <= stop
    eligible = used & (starts < max_len - span)
    first = torch.where(eligible.any(dim=1), eligible.long().argmax(dim=1), torch.zeros_like(count))
    begin = starts.gather(1, first[:, None])                                           # (B, 1)
    mask &= ~((frame >= begin) & (frame < begin + excess[:, None]))
    return mask


def _window_min(x: Tensor, width: int) -> Tensor:
    """Sliding minimum along dim 1: out[:, t] = min(x[:, t : t + width]), (B, N) -> (B, N - width + 1);
    log2(width) elementwise minima (doubling windows), no strided reduction."""
    out, have = x, 1
    while 2 * have <= width:
        out = torch.minimum(out[:, :-have], out[:, have:])
        have *= 2
    if have < width:  # two overlapping windows of `have` cover the `width`
        out = torch.minimum(out[:, : out.shape[1] - (width - have)], out[:, width - have:])
    return out


@dataclass(frozen=True)
class HostMask:
    """A span mask on the host and what its shapes are, read there (where reading is free) rather than on the
    device (where reading waits for every queued kernel).

    mask: (B, T) bool on the CPU, True = masked, never at padding.
    visible_width: V, the most visible frames of any clip: ``gather_visible``'s output width.
    padded: some clip is shorter than T (the decoder attends with a padding mask).
    visible_padded: some clip has fewer than V visible frames (the encoder attends with a padding mask).
    """

    mask: Tensor
    visible_width: int
    padded: bool
    visible_padded: bool

    @classmethod
    def of(cls, mask: Tensor, lengths: Tensor) -> "HostMask":
        """From a (B, T) bool mask and (B,) valid frames; the mask is cleared at padding. Read on the host: free
        for CPU tensors, one wait on the device for tensors there (``forward`` given a tensor mask)."""
        mask, lengths = mask.cpu().bool(), lengths.cpu().long()
        padding = padding_mask(lengths, mask.shape[1])
        mask = mask & ~padding
        visible = (~mask & ~padding).sum(dim=1)                     # (B,)
        width = int(visible.max()) if len(visible) else 0
        return cls(mask, width, bool(padding.any()), bool((visible < width).any()))

    @classmethod
    def draw(cls, lengths: Tensor, max_len: int, mask_prop: float, span: int, generator: Optional[torch.Generator],
             recipe: str = "v1") -> "HostMask":
        """``span_mask`` of CPU ``lengths`` with a CPU ``generator`` (the same mask as ``span_mask`` draws from the
        same generator state, wherever ``lengths`` lie), with its shapes."""
        return cls.of(span_mask(lengths.cpu(), max_len, mask_prop, span, generator, recipe), lengths)

    def pin_memory(self) -> "HostMask":
        """The mask in page-locked memory (torch's DataLoader calls this with ``pin_memory=True``)."""
        return dataclasses.replace(self, mask=self.mask.pin_memory())


def gather_visible(x: Tensor, mask: Tensor, lengths: Tensor, width: Optional[int] = None
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """Drop masked (and padded) frames: what the encoder sees.

    Args:
        x: (B, T, D).
        mask: (B, T) bool, True = masked.
        lengths: (B,) valid frames per clip.
        width: V when known on the host (``HostMask.visible_width``), at least the most visible frames of any
            clip; None: counted here, which reads the device (a sync) and gives a shape that depends on data.
    Returns:
        visible: (B, V, D), V = ``width`` or the most visible frames of any clip; each clip's visible frames in
            their original order, then zeros.
        visible_padding: (B, V) bool, True = padding.
        visible_index: (B, V) long, the frame in x of each visible slot (arbitrary at padding).
    """
    batch, frames, dim = x.shape
    valid = torch.arange(frames, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    keep = valid & ~mask
    count = keep.sum(dim=1)
    if width is None:
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


def padding_mask(lengths: Tensor, frames: int) -> Tensor:
    """(B,) lengths -> (B, frames) bool, True at and past each length."""
    return torch.arange(frames, device=lengths.device)[None, :] >= lengths[:, None]
