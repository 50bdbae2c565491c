"""Fake upstream checkpoints for the tests: tiny random HuBERT and wav2vec 2.0 in the converted formats that
s3prl's ``hubert_local`` / ``wav2vec2_local`` entries load with ``-k`` (no download, no fairseq checkpoint).

Imported by name (pytest puts tests/ on sys.path), like ``conftest`` and ``v1_reference``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from encodecmae_s3prl import compat

_TINY_FAIRSEQ = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                     conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",  # hop 320 as published
                     conv_pos=16, conv_pos_groups=4, final_dim=16)


def write_tiny_hubert_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random 2-layer HuBERT in s3prl's converted format ({task_cfg, model_cfg, model_weight,
    dictionaries_symbols}: what ``upstream/hubert/convert.py`` writes from a fairseq checkpoint and
    ``hubert_local -k`` loads). Same architecture family as the published ones, tiny sizes."""
    compat.apply()  # s3prl's model modules need the shims
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    model_cfg = HubertConfig(label_rate=50.0, **_TINY_FAIRSEQ)
    task_cfg = HubertPretrainingConfig(label_rate=50.0)
    symbols = [[str(i) for i in range(8)]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(model_cfg, task_cfg, symbols)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"task_cfg": asdict(task_cfg), "model_cfg": asdict(model_cfg), "model_weight": model.state_dict(),
                "dictionaries_symbols": symbols}, path)
    return path


def write_tiny_wav2vec2_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random 2-layer wav2vec 2.0 in s3prl's converted format ({task_cfg, model_cfg, model_weight}), as
    ``upstream/wav2vec2/convert.py`` writes and ``wav2vec2_local -k`` loads."""
    compat.apply()  # s3prl's model modules need the shims
    from s3prl.upstream.wav2vec2.wav2vec2_model import AudioPretrainingConfig, Wav2Vec2Config, Wav2Vec2Model

    model_cfg = Wav2Vec2Config(latent_vars=8, latent_groups=2, **_TINY_FAIRSEQ)
    task_cfg = AudioPretrainingConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(model_cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"task_cfg": asdict(task_cfg), "model_cfg": asdict(model_cfg), "model_weight": model.state_dict()},
               path)
    return path
