"""A probe's clips as audio: one clip read at s3prl's rate, and the dataset of a split for s3prl's runner."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import soundfile
import torch
from torch.utils.data import Dataset

from encodecmae_s3prl.downstream_probes.task import Clip
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.expert import INPUT_RATE  # s3prl's 16 kHz convention


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
