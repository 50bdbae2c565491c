"""The 256-bin log-mel input of the authors' v2 ``mel256-ec-*`` models, on EnCodec's 75 Hz frame grid.

v2 computes ``torchaudio.compliance.kaldi.fbank`` on 24 kHz audio (frame shift 13.28 ms, length 26.56 ms,
256 bins, hanning window, htk_compat, no energy, no dither; low_freq 20 and high_freq 0 as kaldi's defaults)
and normalises it as (x + 6.12) / 4.82. At 24 kHz that is a window of 637 samples every 318 (kaldi truncates
both), whole windows only: a 4 s chunk gives 300 frames, as EnCodec's 320-sample grid that the rest of the model
(and s3prl's Featurizer) counts in, but a 1 s clip gives 74 where the grid has 75. v2 reads frames at or past
``samples // 320`` as padding keys.

``MelFrontEnd.chunk`` gives a chunk of ``n`` samples ``ceil(n / 320)`` frames (the grid's count), and says how
many of them are keys: ``min(ceil(n / 320), kaldi frames of n)``, at least 1. Kaldi computes each frame on its own
window, so frames past the chunk's own kaldi count come from the chunk zero-padded at its end: they are read as
queries, never as keys, and the frames v2 has are the same as v2's (a 1 s clip: 74 frames as v2, and a 75th).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

MEL_BINS = 256
SAMPLE_RATE = 24_000
HOP = 320  # EnCodec's hop: the frame grid of every EnCodecMAE
# v2's configs/features/mel.gin
FRAME_SHIFT_MS, FRAME_LENGTH_MS = 13.28, 26.56
FBANK_OPTIONS = dict(sample_frequency=SAMPLE_RATE, frame_shift=FRAME_SHIFT_MS, frame_length=FRAME_LENGTH_MS,
                     num_mel_bins=MEL_BINS, window_type="hanning", htk_compat=True, use_energy=False, dither=0.0)
NORM_MEAN, NORM_STD = -6.12, 4.82
WINDOW = int(SAMPLE_RATE * FRAME_LENGTH_MS * 0.001)  # 637 samples (kaldi truncates)
SHIFT = int(SAMPLE_RATE * FRAME_SHIFT_MS * 0.001)    # 318 samples


def kaldi_frames(samples: int) -> int:
    """Frames ``kaldi.fbank`` gives for that many samples (snip_edges: whole windows only)."""
    return 0 if samples < WINDOW else 1 + (samples - WINDOW) // SHIFT


def grid_frames(samples: int) -> int:
    """Frames on EnCodec's grid: ceil(samples / 320)."""
    return -(-samples // HOP)


class MelFrontEnd(nn.Module):
    """24 kHz audio -> v2's normalised 256-bin log-mel frames on the 320-sample grid. No parameters."""

    dim = MEL_BINS

    def mel(self, wav: Tensor) -> Tensor:
        """(samples,) float -> (kaldi_frames(samples), 256) normalised log-mel, float32, as v2 computes it."""
        import torchaudio.compliance.kaldi as kaldi

        features = kaldi.fbank(wav.float()[None], **FBANK_OPTIONS)
        return (features - NORM_MEAN) / NORM_STD

    def chunk(self, wav: Tensor) -> Tuple[Tensor, int]:
        """One chunk (samples,) -> (grid_frames(samples), 256) frames and how many of them are keys."""
        samples = wav.shape[0]
        frames = grid_frames(samples)
        needed = WINDOW + SHIFT * (frames - 1)  # samples for ``frames`` kaldi frames
        padded = F.pad(wav, (0, max(0, needed - samples)))
        return self.mel(padded)[:frames], max(1, min(frames, kaldi_frames(samples)))

    def features(self, segments: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """N 1-D chunks -> features (N, F, 256) zero-padded to the longest, key frames (N,) on the CPU."""
        chunks = [self.chunk(segment) for segment in segments]
        out = segments[0].new_zeros(len(chunks), max(c.shape[0] for c, _ in chunks), MEL_BINS, dtype=torch.float32)
        for i, (features, _) in enumerate(chunks):
            out[i, : features.shape[0]] = features
        return out, torch.tensor([keys for _, keys in chunks])
