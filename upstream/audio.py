"""Reading audio files: one reader, one resampling rule, one error type.

``read_audio(path, rate)`` returns mono float32 at ``rate``: channels are averaged while the file
is read block by block (a long stereo file never sits in memory at full width), then the mono
signal is resampled once with torchaudio's windowed-sinc resampler.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import soundfile
import torch
import torchaudio

BLOCK_SECONDS = 30  # read (and mix down), and resample, this much at a time


class AudioReadError(ValueError):
    """A file that gives no usable audio: undecodable, empty or not finite. The message names the file."""


def read_audio(path: str | os.PathLike, rate: int, start: int = 0, frames: Optional[int] = None) -> torch.Tensor:
    """(samples,) mono float32 at ``rate``.

    Args:
        path: any format soundfile reads.
        rate: the rate to return; the file's own rate is resampled to it.
        start, frames: the span to read, in samples at the file's own rate (None = to the end).
    Raises:
        AudioReadError naming the file: cannot decode, no samples, NaN or infinite samples.
    """
    try:
        with soundfile.SoundFile(str(path)) as handle:
            file_rate = handle.samplerate
            handle.seek(min(start, handle.frames) if handle.seekable() else 0)
            wanted = handle.frames - start if frames is None else frames
            mono = np.empty(max(0, wanted), dtype=np.float32)
            filled = 0
            for block in handle.blocks(blocksize=BLOCK_SECONDS * file_rate, dtype="float32", always_2d=True,
                                       frames=wanted if wanted > 0 else 0):
                mixed = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
                if filled + len(mixed) > len(mono):  # the header undercounted (some compressed formats)
                    mono = np.concatenate([mono[:filled], np.empty(len(mixed), np.float32)])
                mono[filled: filled + len(mixed)] = mixed
                filled += len(mixed)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as err:
        raise AudioReadError(f"{path}: cannot decode ({str(err).strip() or type(err).__name__}); "
                             f"convert it to WAV or FLAC, or remove it") from None
    wav = torch.from_numpy(mono[:filled])
    if wav.numel() == 0:
        raise AudioReadError(f"{path}: no samples (empty file or span)")
    if not bool(torch.isfinite(wav).all()):
        raise AudioReadError(f"{path}: contains NaN or infinite samples; fix or remove the file")
    return resample(wav, file_rate, rate)


def resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """torchaudio's windowed-sinc resampling along the last axis, in blocks of ``BLOCK_SECONDS``.

    Each block is resampled with a margin of real samples on both sides and cut on the resampler's
    phase grid (``orig / gcd`` input samples = ``new / gcd`` output samples), so the result equals
    resampling the whole signal at once (up to float rounding) while its temporaries stay the size
    of one block instead of several times the signal."""
    if orig == new:
        return wav
    common = math.gcd(orig, new)
    period_in, period_out = orig // common, new // common
    length = wav.shape[-1]
    block = period_in * max(1, BLOCK_SECONDS * orig // period_in)
    if length <= 2 * block:
        return torchaudio.functional.resample(wav, orig, new)
    margin = period_in * math.ceil(1024 / period_in)  # the sinc kernel spans a few dozen input samples
    target = math.ceil(new * length / orig)
    out = wav.new_empty(*wav.shape[:-1], target)
    for start in range(0, length, block):
        low, high = max(0, start - margin), min(length, start + block + margin)
        piece = torchaudio.functional.resample(wav[..., low:high], orig, new)
        first, stop = start // period_in * period_out, min(target, (start + block) // period_in * period_out)
        offset = low // period_in * period_out
        out[..., first:stop] = piece[..., first - offset: stop - offset]
    return out
