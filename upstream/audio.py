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

from encodecmae_s3prl.errors import UserError

BLOCK_SECONDS = 30  # read (and mix down), and resample, this much at a time


class AudioReadError(UserError, ValueError):
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
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise AudioReadError(f"{path}: empty file (0 bytes); copy it again or remove it")
    try:
        with soundfile.SoundFile(str(path)) as handle:
            file_rate = handle.samplerate
            if handle.seekable():
                handle.seek(min(start, handle.frames))
            else:  # read up to the span and drop it
                for _ in handle.blocks(blocksize=BLOCK_SECONDS * file_rate, frames=start, dtype="float32"):
                    pass
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
    if not all_finite(wav):
        raise AudioReadError(f"{path}: contains NaN or infinite samples; fix or remove the file")
    return resample(wav, file_rate, rate)


def all_finite(wav: torch.Tensor, block: int = 1 << 22) -> bool:
    """``torch.isfinite(wav).all()`` a block at a time: on the whole of an hour of audio, isfinite's
    temporaries (abs, two masks) take several times the signal's memory."""
    flat = wav.reshape(-1)
    return all(bool(torch.isfinite(flat[i: i + block]).all()) for i in range(0, flat.numel(), block))


def resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """torchaudio's windowed-sinc resampling along the last axis, in blocks of ``BLOCK_SECONDS``.

    Each block is a ``resample_span``, so the result equals resampling the whole signal at once
    (up to float rounding) while the temporaries stay the size of one block instead of several
    times the signal."""
    if orig == new:
        return wav
    length = wav.shape[-1]
    period_in, period_out = _periods(orig, new)
    block = period_in * max(1, BLOCK_SECONDS * orig // period_in)
    if length <= 2 * block:
        return torchaudio.functional.resample(wav, orig, new)
    target = resampled_length(length, orig, new)
    out = wav.new_empty(*wav.shape[:-1], target)
    step = block // period_in * period_out
    for first in range(0, target, step):
        stop = min(target, first + step)
        out[..., first:stop] = resample_span(wav, orig, new, first, stop)
    return out


def resample_span(wav: torch.Tensor, orig: int, new: int, first: int, stop: int) -> torch.Tensor:
    """``resample(wav, orig, new)[..., first:stop]``, computed from the input samples it needs.

    The input is cut on the resampler's phase grid (``orig / gcd`` input samples = ``new / gcd``
    output samples) with a margin of real samples on both sides wider than the sinc kernel, so the
    span's samples are those of the whole signal's resampling; a long clip can then go to the model
    rate piece by piece without the resampled copy of all of it."""
    if orig == new:
        return wav[..., first:stop]
    period_in, period_out = _periods(orig, new)
    margin = period_in * math.ceil(1024 / period_in)  # the sinc kernel spans a few dozen input samples
    low = max(0, first // period_out * period_in - margin)
    high = min(wav.shape[-1], -(-stop // period_out) * period_in + margin)
    piece = torchaudio.functional.resample(wav[..., low:high], orig, new)
    offset = low // period_in * period_out
    return piece[..., first - offset: stop - offset]


def resampled_length(samples: int, orig: int, new: int) -> int:
    """Samples of a clip of ``samples`` at ``orig`` once at ``new``: ceil(samples * new / orig), as torchaudio."""
    return -(-samples * new // orig)


def _periods(orig: int, new: int) -> tuple[int, int]:
    common = math.gcd(orig, new)
    return orig // common, new // common
