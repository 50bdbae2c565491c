"""EnCodec over whole files, many windows per call: the codec cache's encoder.

A file is encoded in windows (``plan_windows``): one window when it is short, else windows of ``window`` frames
that each start ``warmup`` frames earlier for context (EnCodec's LSTM and convolutions look back), so memory does
not grow with a file's length. Windows are independent of each other, so the windows of many files go through
EnCodec together: sorted by length, zero-padded to the longest of their batch, each row given its own end's
padding (``FrozenEncodec.features(..., lengths)``), its frames trimmed back. A row's frames are then those of
the window encoded alone (to float rounding; tested), whatever its neighbours. ``batch_size=1`` encodes every
window alone, unpadded: the one-at-a-time path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch

from encodecmae_s3prl.upstream.codec import FEATURE_DIM, HOP, FrozenEncodec

# a window shorter than this is encoded alone: a padded row is its window alone only if every layer's input is
# longer than that layer's padding (else encodec pads it another way), the last convolution's 6 frames the most
MIN_PADDED_SAMPLES = 8 * HOP


@dataclass(frozen=True)
class Window:
    """Samples ``begin .. end - 1`` of file ``file`` through EnCodec; its frames ``keep .. keep + frames - 1``
    are the file's frames ``first .. first + frames - 1``."""
    file: int
    begin: int
    end: int
    keep: int
    frames: int
    first: int


def plan_windows(file: int, samples: int, window: int, warmup: int) -> List[Window]:
    """The windows of a file of ``samples`` samples (24 kHz): ``window`` frames each after ``warmup`` frames of
    the preceding audio; the whole file at once when it is no longer than window + warmup frames."""
    frames = (samples + HOP - 1) // HOP
    if frames <= window + warmup:
        return [Window(file, 0, samples, 0, frames, 0)]
    windows = []
    for first in range(0, frames, window):
        context = min(warmup, first)
        end = min((first + window) * HOP, samples)
        windows.append(Window(file, (first - context) * HOP, end, context, min(window, frames - first), first))
    return windows


@torch.no_grad()
def _encode_batch(codec: FrozenEncodec, wavs: Sequence[torch.Tensor], batch: Sequence[Window],
                  device: torch.device) -> List[torch.Tensor]:
    """The kept frames of each window of ``batch``: [(frames, 128) float32 on ``device``]."""
    segments = [wavs[w.file][w.begin: w.end] for w in batch]
    if len(batch) == 1:  # alone: exactly the one-at-a-time call
        features = codec.features(segments[0].to(device)[None])
    else:
        lengths = [s.numel() for s in segments]
        padded = torch.zeros(len(segments), -(-max(lengths) // HOP) * HOP)   # (B, S), S a multiple of 320
        for row, segment in enumerate(segments):
            padded[row, : segment.numel()] = segment
        if device.type == "cuda":
            padded = padded.pin_memory()
        features = codec.features(padded.to(device, non_blocking=True), lengths)  # (B, S / 320, 128)
    return [features[row, w.keep: w.keep + w.frames] for row, w in enumerate(batch)]


@torch.no_grad()
def encode_files(codec: FrozenEncodec, wavs: Sequence[torch.Tensor], num_codebooks: int, window: int,
                 warmup: int, batch_size: int, device: str | torch.device = "cpu"
                 ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Features and codes of whole 24 kHz files (1-D CPU tensors): [((frames, 128) float16, (frames, Q) int16)],
    one per file, frames = ceil(samples / 320), the windows of up to ``batch_size`` per EnCodec call."""
    device = torch.device(device)
    windows = [w for file, wav in enumerate(wavs) for w in plan_windows(file, wav.numel(), window, warmup)]
    alone = [w for w in windows if w.end - w.begin < MIN_PADDED_SAMPLES or batch_size == 1]
    together = [w for w in windows if not (w.end - w.begin < MIN_PADDED_SAMPLES or batch_size == 1)]
    together.sort(key=lambda w: w.end - w.begin, reverse=True)  # neighbours of similar length: little padding
    batches = [[w] for w in alone] + [together[i: i + batch_size] for i in range(0, len(together), batch_size)]
    out = [(np.empty(((wav.numel() + HOP - 1) // HOP, FEATURE_DIM), np.float16),
            np.empty(((wav.numel() + HOP - 1) // HOP, num_codebooks), np.int16)) for wav in wavs]
    for batch in batches:
        kept = _encode_batch(codec, wavs, batch, device)
        # RVQ codes are per frame: those of all the batch's kept frames in one call
        codes = codec.codes(torch.cat(kept)[None], num_codebooks)[0].T.to(torch.int16).cpu().numpy()  # (N, Q)
        features = torch.cat(kept).to(torch.float16).cpu().numpy()                                    # (N, 128)
        row = 0
        for w in batch:
            out[w.file][0][w.first: w.first + w.frames] = features[row: row + w.frames]
            out[w.file][1][w.first: w.first + w.frames] = codes[row: row + w.frames]
            row += w.frames
    return out
