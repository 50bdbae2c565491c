"""The HEAR 2021 module interface over any s3prl upstream, ours included, for the official HEAR kit.

    hear-validator encodecmae_s3prl.evaluation.hear_api --model /path/to/states-N.ckpt      # or model.pt (v1)
    hear-validator encodecmae_s3prl.evaluation.hear_api --model fbank_no_cmvn
    hear-validator encodecmae_s3prl.evaluation.hear_api --model encodecmae_random:/path/to/states-N.ckpt
    python -m heareval.embeddings.runner encodecmae_s3prl.evaluation.hear_api --model /path/to/states-N.ckpt
    python -m heareval.embeddings.runner encodecmae_s3prl.evaluation.hear_api --model /path/to/states-N.ckpt \
        --model-options '{"upstream": "encodecmae_random"}'
    python -m heareval.embeddings.runner encodecmae_s3prl.evaluation.hear_api \
        --model-options '{"upstream": "fbank_no_cmvn", "sample_rate": 48000}'

``load_model(model_file_path)`` takes what ``--model`` passes. The validator passes any string; the kit's
embedding runner only an existing path (its ``--model`` is a ``click.Path(exists=True)``), so there a hub entry is
named with ``--model-options '{"upstream": ENTRY}'`` and ``--model`` is left out (or is the entry's checkpoint):

- a checkpoint file: ``encodecmae_local`` on it (our ``states-N.ckpt`` or a published v1 ``model.pt``);
- an s3prl hub entry name: ``fbank_no_cmvn``, ``encodecmae_base`` ... (checkpoint-free or published entries);
- ``ENTRY:CKPT``: that entry on that checkpoint (``hubert_local:/x/hubert.pt``, ``encodecmae_random:/x/states-N.ckpt``
  for ECMAE-R on a checkpoint's fitted codec, ``encodec_features:/x/states-N.ckpt`` for EC);
- ``''``: ``encodecmae``, the published base+ST model.

Model options: ``upstream=ENTRY`` names the entry explicitly, ``model_file_path`` then being its checkpoint;
``sample_rate=R`` the rate the model declares and takes, resampled inside to the rate the upstream's model runs at
(24000 for our EnCodecMAE upstreams, fed straight to ``model.encode``; 16000 for every other s3prl upstream).
Default: 48000 for ours (what HEAR distributes and the stock validator accepts: a 2:1 resampling to 24 kHz, nothing
between 8 and 12 kHz lost), the native 16000 for the others; ``sample_rate=24000`` feeds ours without resampling
(a ``24000/`` task folder). ``layer=N``: the hidden state used (s3prl's ``hidden_states`` index, negative from the
end; default -1, the last layer, as the authors' HEAR module). ``precision=auto|bf16|fp32``: our transformer's
autocast (default auto: bf16 where native, as ``compare`` and ``table1``). Scene embeddings are that layer's
time-mean (the paper's protocol); timestamp embeddings are its frames with their centre times in ms.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn
from torch import Tensor

from encodecmae_s3prl.evaluation.native_rate import encode_native, upstream_precision, upstream_rate
from encodecmae_s3prl.registry import load_hub_upstream
from encodecmae_s3prl.settings import UpstreamSettings, default_device
from encodecmae_s3prl.upstream.audio import resample
from encodecmae_s3prl.upstream.codec import HOP, SAMPLE_RATE

DEFAULT_ENTRY = "encodecmae"  # the published base + self-training model
HEAR_RATE = 48000  # what HEAR distributes its tasks at; our upstreams declare it unless told otherwise


class HearModel(nn.Module):
    """An s3prl upstream plus the attributes the HEAR API asks for.

    ``sample_rate``: what callers hand in (default ``HEAR_RATE`` for our EnCodecMAE upstreams, the native rate for
    others); ``native_rate``: what the upstream's model runs at (24000 for ours, 16000 for other s3prl upstreams);
    audio is resampled between the two only when they differ. ``layer``: the hidden state embedded (default -1)."""

    def __init__(self, upstream: nn.Module, sample_rate: int | None = None, layer: int = -1):
        super().__init__()
        self.upstream = upstream.eval()
        self.native_rate = upstream_rate(upstream)
        self.precision = upstream_precision(upstream)  # what the transformer runs as: bf16 or fp32
        default = HEAR_RATE if self.native_rate == SAMPLE_RATE else self.native_rate
        self.sample_rate = int(sample_rate or default)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layer must be an integer (a hidden_states index, -1 = last), got {layer!r}")
        self.layer = layer
        with torch.no_grad():
            audio = torch.zeros(1, self.sample_rate, device=self._device())
            if self.sample_rate != self.native_rate:
                audio = resample(audio, self.sample_rate, self.native_rate)
            hidden, _ = encode_native(self.upstream, list(audio))
        self.num_layers = len(hidden)
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is out of range: this upstream has {self.num_layers} hidden states "
                             f"(0..{self.num_layers - 1}, or -1 for the last)")
        self.scene_embedding_size = self.timestamp_embedding_size = int(hidden[layer].shape[-1])
        if self.native_rate == SAMPLE_RATE:  # ours: EnCodec's hop at 24 kHz (75 frames/s)
            self.hop_seconds = HOP / self.native_rate
        elif hasattr(upstream, "get_downsample_rates"):
            self.hop_seconds = upstream.get_downsample_rates("hidden_states") / self.native_rate
        else:
            self.hop_seconds = None

    def _device(self) -> torch.device:
        parameter = next(self.upstream.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def frames(self, audio: Tensor) -> Tensor:
        """audio (n, samples) at ``sample_rate`` in [-1, 1] -> hidden state ``layer`` (n, frames, dim)."""
        if audio.dim() != 2:
            raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
        audio = audio.to(self._device(), torch.float32)
        if self.sample_rate != self.native_rate:
            audio = resample(audio, self.sample_rate, self.native_rate)
        hidden, _ = encode_native(self.upstream, list(audio))  # equal lengths: every frame is each clip's own
        return hidden[self.layer].float()


def _is_entry(name: str) -> bool:
    from s3prl import hub

    return bool(name) and not name.startswith("_") and callable(getattr(hub, name, None))


def resolve(model_file_path: str = "", upstream: str | None = None) -> tuple[str, str | None]:
    """What ``load_model`` builds: (s3prl hub entry, checkpoint or None), with a clear error for anything else."""
    import encodecmae_s3prl  # noqa: F401  (registers our hub entries)

    spec = str(model_file_path or "")
    if upstream is not None:  # the entry named explicitly (model option): the path is its checkpoint
        entry, ckpt = upstream, spec or None
        if not _is_entry(entry):
            raise ValueError(f"unknown upstream {entry!r}: give an s3prl.hub entry name")
    elif not spec:
        entry, ckpt = DEFAULT_ENTRY, None
    elif Path(spec).is_file():
        entry, ckpt = "encodecmae_local", spec
    elif _is_entry(spec):
        entry, ckpt = spec, None
    elif ":" in spec and _is_entry(spec.split(":", 1)[0]):
        entry, ckpt = spec.split(":", 1)
    else:
        head = spec.split(":", 1)[0]
        if ":" in spec and not spec.startswith(("/", ".", "~")) and "/" not in head:
            raise ValueError(f"HEAR load_model: {head!r} in {spec!r} is not an s3prl hub entry; give ENTRY:CKPT "
                             f"with an entry such as hubert_local, encodecmae_random, encodec_features")
        if "/" in spec or Path(spec).suffix:
            raise FileNotFoundError(f"HEAR load_model: model file {spec} does not exist; give a checkpoint "
                                    f"(encodecmae_local), ENTRY:CKPT, an s3prl hub entry name, or '' for the "
                                    f"published {DEFAULT_ENTRY}")
        raise ValueError(f"HEAR load_model: {spec!r} is neither a file nor an s3prl hub entry name (e.g. "
                         f"fbank_no_cmvn, encodecmae_base, encodecmae_random:CKPT, hubert_local:CKPT)")
    if ckpt and not ckpt.startswith("http") and not Path(ckpt).expanduser().is_file():
        raise FileNotFoundError(f"HEAR load_model: model file {ckpt} does not exist; pass the checkpoint that "
                                f"s3prl's {entry} entry loads with -k")
    if not ckpt and entry.endswith("_local"):
        if upstream is not None and entry == "encodecmae_local":
            return DEFAULT_ENTRY, None  # the documented default: no checkpoint = the published model
        raise ValueError(f"HEAR load_model: {entry} needs a checkpoint: --model {entry}:/path/to/checkpoint")
    return entry, ckpt


def load_model(model_file_path: str = "", upstream: str | None = None, device: str | None = None,
               sample_rate: int | None = None, layer: int = -1, settings: UpstreamSettings | None = None,
               precision: str = "auto", **kwargs) -> HearModel:
    """The HEAR ``load_model``: ``model_file_path`` as ``--model`` passes it (see the module's docstring); the
    other arguments are ``--model-options``; ``kwargs`` go to the hub entry. ``settings``: trust and the EnCodec
    weights; None, as the HEAR kit's runners call it: this API's edge reads them from the environment
    (``ENCODECMAE_TRUST_CHECKPOINT``, ``ENCODEC_CKPT``), with ``precision`` (``auto``: our transformer in bf16
    where the device runs it natively, as ``compare`` and ``table1`` by default; ``fp32``; ``bf16``)."""
    entry, ckpt = resolve(model_file_path, upstream)
    if settings is None:
        settings = UpstreamSettings.from_environment(precision=precision)
    return HearModel(load_hub_upstream(entry, ckpt, device or default_device(), settings, **kwargs), sample_rate,
                     layer)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size): time-mean of hidden state ``model.layer``."""
    return model.frames(audio).mean(dim=1)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> Tuple[Tensor, Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_frames, dim), centre timestamps (n_sounds, n_frames) in ms."""
    frames = model.frames(audio)
    hop = model.hop_seconds or audio.shape[1] / model.sample_rate / max(1, frames.shape[1])
    centres = (torch.arange(frames.shape[1], device=frames.device) + 0.5) * hop * 1000.0
    return frames, centres[None].expand(frames.shape[0], -1)
