"""The HEAR 2021 module interface over any s3prl upstream, ours included, for the official HEAR kit.

    python -m heareval.embeddings.runner encodecmae_s3prl.hear_api --model /path/to/model.pt
    python -m heareval.embeddings.runner encodecmae_s3prl.hear_api --model hubert.pt \
        --model-options '{"upstream": "hubert_local"}'

``load_model(model_file_path, upstream=...)``: ``model_file_path`` is the checkpoint (``-k``) and
``upstream`` the s3prl hub entry (default ``encodecmae_local``; with an empty path,
``encodecmae`` — the published base+ST model; ``fbank_no_cmvn`` and other checkpoint-free entries
take an empty path). Scene embeddings are the time-mean of the last
hidden state (the paper's protocol); timestamp embeddings are that layer's frames with their
centre times in milliseconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn
from torch import Tensor

SAMPLE_RATE = 16_000


class HearModel(nn.Module):
    """An s3prl upstream plus the attributes the HEAR API asks for."""

    sample_rate = SAMPLE_RATE

    def __init__(self, upstream: nn.Module):
        super().__init__()
        self.upstream = upstream.eval()
        with torch.no_grad():
            probe = self.upstream([torch.zeros(SAMPLE_RATE, device=self._device())])["hidden_states"][-1]
        self.scene_embedding_size = self.timestamp_embedding_size = int(probe.shape[-1])
        self.hop_samples = (upstream.get_downsample_rates("hidden_states")
                            if hasattr(upstream, "get_downsample_rates") else None)

    def _device(self) -> torch.device:
        parameter = next(self.upstream.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def frames(self, audio: Tensor) -> Tensor:
        """audio (n, samples) at 16 kHz in [-1, 1] -> last hidden state (n, frames, dim)."""
        if audio.dim() != 2:
            raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
        audio = audio.to(self._device(), torch.float32)
        return self.upstream(list(audio))["hidden_states"][-1]


def load_model(model_file_path: str = "", upstream: str = "encodecmae_local", device: str | None = None,
               **kwargs) -> HearModel:
    import encodecmae_s3prl  # noqa: F401  (registers our hub entries)
    from s3prl import hub

    if not model_file_path and upstream.endswith("_local"):
        upstream = "encodecmae"
    if model_file_path and not str(model_file_path).startswith("http") and not Path(model_file_path).is_file():
        raise FileNotFoundError(f"HEAR load_model: model file {model_file_path} does not exist; pass the checkpoint "
                                f"that s3prl's {upstream} entry loads with -k (or '' for a published model)")
    if not hasattr(hub, upstream):
        raise ValueError(f"unknown upstream {upstream!r}: give an s3prl.hub entry name")
    entry = getattr(hub, upstream)
    model = entry(ckpt=model_file_path, **kwargs) if model_file_path else entry(**kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return HearModel(model.to(device))


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size): time-mean of the last layer."""
    return model.frames(audio).mean(dim=1)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> Tuple[Tensor, Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_frames, dim), centre timestamps (n_sounds, n_frames) in ms."""
    frames = model.frames(audio)
    hop = model.hop_samples or audio.shape[1] / max(1, frames.shape[1])
    centres = (torch.arange(frames.shape[1], device=frames.device) + 0.5) * hop / SAMPLE_RATE * 1000.0
    return frames, centres[None].expand(frames.shape[0], -1)
