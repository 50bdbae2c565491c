"""Encoding clips at the rate an upstream's own model runs at (the HEAR protocol and the HEAR API): ours at 24 kHz
straight through ``model.encode``, every other s3prl upstream at s3prl's 16 kHz."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from encodecmae_s3prl.upstream.codec import SAMPLE_RATE
from encodecmae_s3prl.upstream.expert import INPUT_RATE, UpstreamExpert  # INPUT_RATE: s3prl's 16 kHz convention


def upstream_rate(upstream: nn.Module) -> int:
    """The rate an upstream's own model runs at, where we can feed it directly: 24 kHz for our EnCodecMAE
    upstreams (``UpstreamExpert.model.encode``), 16 kHz for every other s3prl upstream (s3prl's convention)."""
    return SAMPLE_RATE if isinstance(upstream, UpstreamExpert) else INPUT_RATE


def upstream_precision(upstream: nn.Module) -> str:
    """What an upstream's transformer runs as: ours 'bf16' or 'fp32' as its precision setting resolves on its
    device (``UpstreamExpert.ran_as``); s3prl's own upstreams as they are built, float32."""
    return upstream.ran_as() if isinstance(upstream, UpstreamExpert) else "fp32"


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
