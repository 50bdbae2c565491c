"""Build or load an EncodecMAE from what users hand us: a model YAML, our checkpoint, a published v1 file.

One place decides which file is which, so pretraining, the upstream and the converters agree.
"""
from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path

import yaml

from encodecmae_s3prl.errors import ConfigError
from encodecmae_s3prl.upstream.checkpoint import CheckpointError, CheckpointNotGivenError, safe_load
from encodecmae_s3prl.upstream.config import EncodecMAEConfig, get_config
from encodecmae_s3prl.upstream.inference import EncodecFeatures
from encodecmae_s3prl.upstream.model import EncodecMAE, build_codec, build_model
from encodecmae_s3prl.upstream.strict_config import check_keys

CHECKPOINT_KEY = "EncodecMAE"  # where run_pretrain.py -u encodecmae stores {"config", "state_dict"}


def model_config_from_yaml(spec: dict | str | os.PathLike | None) -> EncodecMAEConfig:
    """A ``config_model*.yaml`` (or its dict): ``model: <tiny|small|base|large>`` plus any
    EncodecMAEConfig field to override (offline: ``encodec_source: random`` with
    ``standardise_features: true``, as the ``tiny`` config does)."""
    if spec is None:
        spec = {}
    if isinstance(spec, (str, os.PathLike)):
        with open(spec) as handle:
            spec = yaml.safe_load(handle) or {}
    spec = dict(spec)
    name = spec.pop("model", "base")
    valid = {f.name for f in fields(EncodecMAEConfig)}
    unknown = sorted(set(spec) - valid)
    if unknown:
        raise ConfigError(f"unknown model config key(s) {unknown}; valid keys: 'model' and {sorted(valid)}")
    if "codebook_weights" in spec:
        spec["codebook_weights"] = tuple(spec["codebook_weights"])
    return replace(get_config(name), **spec)


def _is_v1(checkpoint: dict) -> bool:
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    return isinstance(state, dict) and any(k.startswith("visible_encoder.") for k in state)


def load_checkpoint(path: str | os.PathLike, overrides: dict | None = None, trust: bool = False) -> EncodecMAE:
    """Our ``states-N.ckpt``, a published v1 ``model.pt`` (``config.gin`` beside it) or a v2 ``<name>.pt`` ->
    EncodecMAE.
    ``trust``: load a file that needs classes outside the safe allow-list (``checkpoint.safe_load``)."""
    checkpoint = safe_load(path, trust=trust)
    if isinstance(checkpoint, dict) and CHECKPOINT_KEY in checkpoint:
        entry = checkpoint[CHECKPOINT_KEY]
        config = EncodecMAEConfig.from_dict(entry["config"])
        if overrides:
            config = replace(config, **overrides)
        return EncodecMAE.from_state_dict(config, entry["state_dict"])  # the codec comes from the file
    from encodecmae_s3prl.upstream.import_v2 import is_v2, load_v2

    if is_v2(checkpoint):
        return load_v2(path, checkpoint=checkpoint)
    if _is_v1(checkpoint):
        from encodecmae_s3prl.upstream.import_v1 import load_v1

        gin = Path(path).with_name("config.gin")
        return load_v1(path, gin if gin.is_file() else None, checkpoint=checkpoint)
    keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(
        f"{path} is not an EnCodecMAE checkpoint (top-level keys: {keys}). Accepted: a states-N.ckpt written by "
        f"run_pretrain.py -u encodecmae (key {CHECKPOINT_KEY!r}), a published v1 model.pt "
        f"({{'state_dict': {{'visible_encoder.*', ...}}}}), or a v2 <name>.pt ({{'imports', 'config', 'state_dict'}})."
    )


def load_model_for_inference(ckpt: str | None, model_config: str | None, variant: str | None,
                             trust: bool = False, encodec_weights: str | None = None) -> EncodecMAE | EncodecFeatures:
    """What the upstream expert runs: a checkpoint, the random-init base (ECMAE-R), or EnCodec alone (EC).
    ``trust`` goes to the checkpoint's loading, ``encodec_weights`` to a codec built from a config (no ``ckpt``)."""
    overrides = {}
    if model_config:
        spec = yaml.safe_load(Path(model_config).read_text()) or {}
        check_keys(EncodecMAEConfig, spec, f"upstream model config {model_config}", extra=("model", "precision"))
        overrides = {k: v for k, v in spec.items() if k not in ("model", "precision")}
    if variant in (None, "local"):
        if not ckpt:
            raise CheckpointNotGivenError("encodecmae_local needs a checkpoint: a states-N.ckpt of a pretraining run "
                                          "or a published model.pt")
        return load_checkpoint(ckpt, overrides if model_config else None, trust=trust)
    if variant in ("random", "encodec_features"):
        if ckpt:  # a checkpoint lends its codec (weights, fitted codebooks, standardisation) and sizes
            source = load_checkpoint(ckpt, trust=trust)
            config, codec = source.config, source.codec
        else:
            config = model_config_from_yaml({"model": "base", **overrides})
            codec = build_codec(config, encodec_weights)
        if variant == "encodec_features":
            return EncodecFeatures(codec, config.chunk_seconds)
        return build_model(config, seed=0, codec=codec)  # ECMAE-R: random-init base on that codec
    raise ConfigError(f"unknown upstream variant {variant!r}")


def inference_precision(model_config: str | None, default: str = "fp32") -> str:
    """The ``precision:`` of an upstream's model YAML (how s3prl's runner passes it, ``-g``), else ``default``."""
    if not model_config:
        return default
    spec = yaml.safe_load(Path(model_config).read_text()) or {}
    return str(spec.get("precision", default))
