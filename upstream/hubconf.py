"""s3prl entry points for EnCodecMAE (``-u NAME``), one small function each.

``encodecmae_local`` takes ``-k`` (our pretraining checkpoint, a published v1 ``model.pt`` or a v2 ``.pt``);
the published ones download and cache when online, or take ``-k`` a local copy; ``encodecmae_v2`` takes ``-k`` the
name of one of the authors' v2 models (``mel256-ec-base_st``, ``ec-ec-small``...) or a local v2 ``.pt``.

Besides s3prl's ``ckpt``, ``model_config`` and ``refresh``, every entry takes the settings a command read at
its edge (``settings.UpstreamSettings``): ``trust`` (``--trust-checkpoint``), ``encodec_weights``
(``ENCODEC_CKPT``) and ``precision`` (``--precision``; under s3prl's runner a ``precision:`` key of the ``-g``
YAML); the published ones also ``online`` (the hub's reachability, decided once).
"""
from __future__ import annotations

ENTRIES = (
    "encodecmae",
    "encodecmae_local",
    "encodecmae_small",
    "encodecmae_base",
    "encodecmae_base_st",
    "encodecmae_large",
    "encodecmae_large_st",
    "encodec_features",
    "encodecmae_random",
    "encodecmae_v2",
)
# the entries that download a published checkpoint when no ckpt is given: they take ``online``
PUBLISHED_ENTRIES = ("encodecmae", "encodecmae_small", "encodecmae_base", "encodecmae_base_st", "encodecmae_large",
                     "encodecmae_large_st", "encodecmae_v2")


def _expert(ckpt=None, model_config=None, variant=None, trust=False, encodec_weights=None, precision="fp32",
            **kwargs):
    """Load (a checkpoint, or a baseline built from one) and wrap it for s3prl. ``precision``: the inference
    autocast (``UpstreamExpert``); a ``precision:`` key in ``model_config`` (s3prl's ``-g`` YAML) takes its place."""
    from encodecmae_s3prl.upstream.expert import UpstreamExpert
    from encodecmae_s3prl.upstream.loading import inference_precision, load_model_for_inference

    model = load_model_for_inference(ckpt, model_config, variant, trust=trust, encodec_weights=encodec_weights)
    return UpstreamExpert(model, precision=inference_precision(model_config, precision), **kwargs)


def _published(variant: str, ckpt=None, refresh: bool = False, online=None, **kwargs):
    from encodecmae_s3prl.upstream.published import published_checkpoint

    return _expert(published_checkpoint(variant, ckpt, refresh=refresh, online=online), **kwargs)


def encodecmae_local(ckpt, *args, **kwargs):
    """-k: a states-N.ckpt from run_pretrain.py -u encodecmae, or a published v1 model.pt."""
    return _expert(ckpt, *args, **kwargs)


def encodecmae_small(ckpt=None, refresh=False, **kwargs):
    return _published("small", ckpt, refresh, **kwargs)


def encodecmae_base(ckpt=None, refresh=False, **kwargs):
    return _published("base", ckpt, refresh, **kwargs)


def encodecmae_base_st(ckpt=None, refresh=False, **kwargs):
    return _published("base-st", ckpt, refresh, **kwargs)


def encodecmae_large(ckpt=None, refresh=False, **kwargs):
    return _published("large", ckpt, refresh, **kwargs)


def encodecmae_large_st(ckpt=None, refresh=False, **kwargs):
    return _published("large-st", ckpt, refresh, **kwargs)


def encodecmae(ckpt=None, refresh=False, **kwargs):
    """Base + self-training: the best of Table 1 at base size (six-task mean 77.45); large + self-training has
    the higher mean (77.65) at almost three times the parameters."""
    return encodecmae_base_st(ckpt, refresh, **kwargs)


def encodec_features(ckpt=None, model_config=None, **kwargs):
    """The paper's EC baseline: the frozen EnCodec encoder's 128-dim output at 75 frames/s."""
    return _expert(ckpt, model_config, variant="encodec_features", **kwargs)


def encodecmae_random(ckpt=None, model_config=None, **kwargs):
    """The paper's ECMAE-R baseline: a random-init base EnCodecMAE (seeded) on the frozen EnCodec."""
    return _expert(ckpt, model_config, variant="random", **kwargs)


def encodecmae_v2(ckpt=None, refresh=False, online=None, **kwargs):
    """-k: a v2 model name of lpepino/encodecmae-v2 (default mel256-ec-base_st, the authors' first example) or a
    local v2 .pt file."""
    from encodecmae_s3prl.upstream.published import v2_checkpoint

    return _expert(v2_checkpoint(ckpt, refresh=refresh, online=online), **kwargs)
