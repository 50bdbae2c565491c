"""Our upstreams as MTEB encoders (mteb 2.x audio tasks: ``mteb.evaluate(encoder(spec), tasks)``).

``encoder(spec, layer=-1)`` returns an ``mteb.models.abs_encoder.AbsEncoder`` with its ``ModelMeta``: one vector
per clip, the time-mean of hidden state ``layer`` (the paper's protocol), each clip embedded alone at the model's
own rate (24 kHz for ours; MTEB's ``AudioCollator`` resamples to it), so batch padding never enters the mean.
``spec`` as ``hear_api.load_model`` takes it: a checkpoint file, a hub entry, ``ENTRY:CKPT``. mteb is imported only
when an encoder is built: it lives in the suites' environment (.suites/, scripts/setup_suites.sh).
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encodecmae_s3prl import compat

compat.apply()  # MTEB decodes audio through datasets / torchaudio: torchaudio.load without TorchCodec


def model_meta(spec: str, layer: int, hear, loader=None):
    """The ModelMeta of an upstream: its name from the spec, parameters and dims from the model itself."""
    from mteb.models import ModelMeta

    upstream = hear.upstream
    name = Path(spec.split(":", 1)[-1]).stem if ("/" in spec or spec.endswith((".pt", ".ckpt"))) else spec
    parameters = sum(p.numel() for p in upstream.parameters())
    return ModelMeta(
        loader=loader, name=f"encodecmae-s3prl/{name}-layer{layer}", revision=None,
        release_date=datetime.date.today().isoformat(), languages=None, open_weights=True,
        n_parameters=parameters, n_embedding_parameters=0, memory_usage_mb=round(parameters * 4 / 2 ** 20, 1),
        max_tokens=None, embed_dim=hear.scene_embedding_size, license="mit",
        reference="https://github.com/habla-liaa/encodecmae", similarity_fn_name="cosine", framework=["PyTorch"],
        use_instructions=False, public_training_code="https://github.com/habla-liaa/encodecmae",
        public_training_data=None, training_datasets=set(), modalities=["audio"])


def encoder(spec: str, layer: int = -1, precision: str = "auto", device: str = "cpu"):
    """An MTEB audio encoder for ``spec`` (see the module docstring)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.modality_collators import AudioCollator

    from encodecmae_s3prl.evaluation import hear_api

    class EncodecMAEMtebEncoder(AbsEncoder):
        def __init__(self):
            self.hear = hear_api.load_model(spec, device=device, layer=layer, precision=precision)
            self.hear.sample_rate = self.hear.native_rate  # MTEB's collator resamples to the model's own rate
            self.sampling_rate = self.hear.native_rate
            self.precision = self.hear.precision
            self.mteb_model_meta = model_meta(spec, layer, self.hear)

        @torch.no_grad()
        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs: Any):
            inputs.collate_fn = AudioCollator(target_sampling_rate=self.sampling_rate)
            vectors = []
            for batch in inputs:
                for audio in batch["audio"]:
                    wav = torch.as_tensor(np.asarray(audio["array"]), dtype=torch.float32)
                    if wav.dim() > 1:  # channels first or last: mix down
                        wav = wav.mean(dim=0 if wav.shape[0] < wav.shape[-1] else -1)
                    vectors.append(self.hear.frames(wav[None])[0].mean(dim=0).cpu().numpy())
            return np.stack(vectors)

    return EncodecMAEMtebEncoder()
