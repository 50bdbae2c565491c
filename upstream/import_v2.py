"""Load the authors' v2 EnCodecMAE models (the ``<name>.pt`` files of the lpepino/encodecmae-v2 hub repository)
into ``EncodecMAE``.

A v2 file is ``{'imports': module list, 'config': gin config string, 'state_dict': ...}``. The authors' loader
(``encodecmae.hub.load_model``) registers their modules and runs the gin config to build the model; here the
config is only read for its values (``import_v1.read_gin_bindings``), each binding that changes the network is
checked against what ``EncodecMAE`` builds, and a binding it does not build is an error naming it.

v2 layout, against ours:
    wav_encoder.encoder.model.*             EnCodec SEANet encoder (ec-ec)      -> codec.encoder.*
    target_encoder.encodec_encoder.*        EnCodec SEANet encoder (mel256-ec)  -> codec.encoder.*
    target_encoder.model.*                  EnCodec RVQ                         -> codec.quantizer.*
    wav_encoder.post_net.*                  128 (or 256 mel bins) -> D          -> feature_projection.*
    masker.positional_encoder.scale         the encoder input's positions       -> positions.scale
    visible_encoder.post_net.*              D -> D before the decoder           -> decoder_projection.*
    decoder.positional_encoder.scale        the decoder's own positions         -> decoder_positions.scale
    visible_encoder|decoder.encoder_layers.N.*, .final_norm.*  as v1           -> encoder|decoder.*
    head.layer.*                            Q x 1024 (k-means x 1 for _st)      -> head.* (extra_head.* for _st)
Self-trained (``_st``) models have no codebook head: one k-means stream (``IdentityTarget``, weight 1), and no
EnCodec in the file when their input is mel; their codec is then built random (it only makes targets).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from encodecmae_s3prl.upstream.checkpoint import CheckpointError, safe_load
from encodecmae_s3prl.upstream.codec import CODEBOOK_SIZE, FEATURE_DIM, build_encodec
from encodecmae_s3prl.upstream.config import EncodecMAEConfig
from encodecmae_s3prl.upstream.import_v1 import (
    STACK_RULES,
    _check_heads,
    _feed_forward_is_shared,
    _few,
    _layer_count,
    compile_rules,
    model_from_converted,
    read_gin_bindings,
    rename_keys,
)
from encodecmae_s3prl.upstream.mel import FBANK_OPTIONS, MEL_BINS, NORM_MEAN, NORM_STD
from encodecmae_s3prl.upstream.model import EncodecMAE

ACCEPTED = ("an EnCodecMAE v2 file ({'imports': ..., 'config': <gin string>, 'state_dict': {'wav_encoder.*', "
            "'visible_encoder.encoder_layers.N.*', 'decoder.positional_encoder.scale', 'head.layer.*', ...}}), as the "
            "authors' lpepino/encodecmae-v2 hub repository holds them")

_RULES = [  # (v2 key pattern, our key template)
    (r"wav_encoder\.encoder\.model\.(.+)", r"codec.encoder.\1"),
    (r"target_encoder\.encodec_encoder\.(.+)", r"codec.encoder.\1"),
    (r"target_encoder\.model\.(.+)", r"codec.quantizer.\1"),
    (r"wav_encoder\.post_net\.(weight|bias)", r"feature_projection.\1"),
    (r"masker\.positional_encoder\.scale", r"positions.scale"),
    (r"visible_encoder\.post_net\.(weight|bias)", r"decoder_projection.\1"),
    (r"decoder\.positional_encoder\.scale", r"decoder_positions.scale"),
    *STACK_RULES,
]
_COMPILED = compile_rules(_RULES)

# the bindings of the configurables that make the network, and what each may hold; a parameter not listed here
# (or a value other than the one allowed) is something EncodecMAE does not build. ``None`` = any value (sizes read
# below, plumbing such as key_in / key_out, training-only settings).
_ANY = None
_ALLOWED: Dict[str, Dict[str, Any]] = {
    "EncodecMAE": dict.fromkeys(("wav_encoder", "target_encoder", "masker", "visible_encoder", "decoder", "head",
                                 "loss", "optimizer", "lr_scheduler")),
    "WavEncoder": {"encoder": ("@encodecmae.models.encoders.EncodecEncoder", "@torch.nn.Identity"),
                   "post_net": _ANY, "pre_net": (None,), "hop_length": (320, None), "fs": (24000, None),
                   "key_in": _ANY, "key_out": _ANY, "key_lens": _ANY, "make_padding_mask": (True,)},
    "EncodecEncoder": {"frozen": (True,), "scale": (1.0, 1), "pretrained": _ANY},
    "PatchoutMask": {"masker": _ANY, "positional_encoder": _ANY},
    "TimeGapMask": {"gap_size": _ANY, "p_mask": _ANY},
    "TransformerEncoder": {"model_dim": _ANY, "num_layers": _ANY, "attention_layer": _ANY, "ff_dim": _ANY,
                           "compile": _ANY, "return_activations": _ANY, "key_in": _ANY, "key_padding_mask": _ANY,
                           "key_out": _ANY, "key_transformer_in": _ANY, "key_transformer_out": _ANY,
                           "post_net": _ANY, "positional_encoder": _ANY, "norm_type": ("ResiDual",),
                           "drop_path": (0, 0.0), "init_values": (None,), "pre_net": (None,), "ff_layer": (None,),
                           "cross_attention_layer": (None,), "norm_layer": ("@torch.nn.LayerNorm",)},
    "MultiHeadAttention": {"model_dim": _ANY, "num_heads": _ANY, "qk_proj_dim": (None,), "v_proj_dim": (None,),
                           "q_bias": (False,), "k_bias": (False,), "v_bias": (False,), "out_bias": (False,),
                           "att_drop": _ANY, "proj_drop": _ANY, "att_scale": (None,), "mask_value": _ANY},
    "SinusoidalPositionalEmbeddings": {"embedding_dim": _ANY, "learn_scale": _ANY, "scale": _ANY},
    "FrameLevelClassificationHead": {"model_dim": _ANY, "num_tokens": (CODEBOOK_SIZE,), "num_streams": _ANY,
                                     "key_in": _ANY, "key_out": _ANY},
    "EncodecQuantizer": {"n": _ANY, "frozen": (True,), "scale": (1.0, 1), "key_in": _ANY, "key_out": _ANY,
                         "use_encodec_encoder": _ANY, "return_only_last": (False,)},
    "IdentityTarget": {"key_in": _ANY, "key_out": _ANY},
    "EnCodecMAEClassificationLoss": {"masked_weight": _ANY, "quantizer_weights": _ANY},
    "SequentialProcessor": {"processors": _ANY},
    "ReadAudioProcessor": {"key_in": _ANY, "key_out": _ANY, "max_length": _ANY, "mono": (True,)},
    "LoadNumpyProcessor": {"key_in": _ANY, "key_out": _ANY},
    "MelspectrogramProcessor": {"key_in": _ANY, "key_out": _ANY, "norm_stats": ([NORM_MEAN, NORM_STD],),
                                "low_freq": (20,), "high_freq": (0,),
                                **{k: (v,) for k, v in FBANK_OPTIONS.items()}},
}
# configurables of the model families that EncodecMAE does not build at all
_UNSUPPORTED = ("SEANetEncoder", "SpectrogramProcessor", "SegmentLevelClassificationHead")


class V2CheckpointError(CheckpointError):
    """A file that is not (or not entirely) an EnCodecMAE v2 model this loader builds."""


def is_v2(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and {"config", "state_dict"} <= set(checkpoint) and \
        isinstance(checkpoint.get("config"), str)


@dataclass(frozen=True)
class V2Settings:
    """What a v2 gin config says, read for its values only."""

    dim: Optional[int]
    encoder_layers: Optional[int]
    decoder_layers: Optional[int]
    heads: Optional[int]
    decoder_heads: Optional[int]
    ff_dim: int
    input: str
    self_trained: bool
    num_codebooks: int
    streams: Optional[int]
    codebook_weights: Optional[tuple]
    delta: Optional[float]
    mask_prop: Optional[float]
    mask_span: Optional[int]
    chunk_seconds: Optional[float]


def _name(key: str) -> tuple[str, str, str]:
    """'scope/pkg.mod.Class.param' -> (scope, 'Class', 'param')."""
    scope, _, path = key.rpartition("/")
    parts = path.split(".")
    return scope, parts[-2] if len(parts) >= 2 else "", parts[-1]


def _values(bindings: Dict[str, Any], cls: str, param: str, scope: Optional[str] = None) -> list:
    return [v for k, v in bindings.items() for s, c, p in [_name(k)] if c == cls and p == param
            and (scope is None or s == scope)]


def _one(bindings: Dict[str, Any], cls: str, param: str, scope: Optional[str] = None, macro: Optional[str] = None):
    found = _values(bindings, cls, param, scope)
    if found:
        return found[0]
    return bindings.get(macro) if macro else None


def _plain(value: Any) -> Any:
    return None if isinstance(value, str) and value[:1] in "%@" else value


def read_v2_config(text: str) -> V2Settings:
    """The values of a v2 gin config string; a binding ``EncodecMAE`` does not build raises V2CheckpointError."""
    bindings = read_gin_bindings(text.replace("\\\n", " "))  # gin.config_str() continues long values with '\'
    for key, value in bindings.items():
        _, cls, param = _name(key)
        if cls in _UNSUPPORTED or any(str(value).endswith(f".{name}") for name in _UNSUPPORTED):
            what = cls if cls in _UNSUPPORTED else value
            raise V2CheckpointError(f"binding {key} = {value}: this loader does not build {what}")
        allowed = _ALLOWED.get(cls)
        if allowed is None:
            continue  # training, data and logging configurables: not the network
        if param not in allowed:
            raise V2CheckpointError(f"binding {key} = {value}: {cls}.{param} is not something this loader builds")
        choices = allowed[param]
        if choices is not None and _normalise(value) not in [_normalise(c) for c in choices]:
            raise V2CheckpointError(f"binding {key} = {value}: this loader builds only {cls}.{param} in "
                                    f"{list(choices)}")
    wav_encoder = _one(bindings, "WavEncoder", "encoder")
    mel = _normalise(wav_encoder) == "@Identity"
    if mel:
        bins = _plain(_one(bindings, "MelspectrogramProcessor", "num_mel_bins", macro="NUM_MEL_BINS"))
        if bins not in (None, MEL_BINS):
            raise V2CheckpointError(f"binding MelspectrogramProcessor.num_mel_bins = {bins}: this loader builds "
                                    f"the {MEL_BINS}-bin mel input only")
    target = _one(bindings, "EncodecMAE", "target_encoder") or ""
    weights = _plain(_one(bindings, "EnCodecMAEClassificationLoss", "quantizer_weights", macro="QUANTIZER_WEIGHTS"))
    max_length = _plain(_one(bindings, "ReadAudioProcessor", "max_length", macro="MAX_AUDIO_DURATION"))

    def number(value, kind=int):
        value = _plain(value)
        return None if value is None else kind(value)

    return V2Settings(
        dim=number(_one(bindings, "TransformerEncoder", "model_dim", "encoder", "MODEL_DIM")),
        encoder_layers=number(_one(bindings, "TransformerEncoder", "num_layers", "encoder", "NUM_ENCODER_LAYERS")),
        decoder_layers=number(_one(bindings, "TransformerEncoder", "num_layers", "decoder", "NUM_DECODER_LAYERS")),
        heads=number(_one(bindings, "MultiHeadAttention", "num_heads", "encoder", "NUM_ENCODER_HEADS")),
        decoder_heads=number(_one(bindings, "MultiHeadAttention", "num_heads", "decoder", "NUM_DECODER_HEADS")),
        ff_dim=number(_one(bindings, "TransformerEncoder", "ff_dim", "encoder")) or 4096,
        input="mel256" if mel else "encodec",
        self_trained=target.endswith("IdentityTarget"),
        num_codebooks=number(_one(bindings, "EncodecQuantizer", "n", macro="NUM_ENCODEC_TARGETS")) or 8,
        streams=number(_one(bindings, "FrameLevelClassificationHead", "num_streams", macro="NUM_TOTAL_TARGETS")),
        codebook_weights=tuple(float(w) for w in weights) if isinstance(weights, (list, tuple)) else None,
        delta=number(_one(bindings, "EnCodecMAEClassificationLoss", "masked_weight", macro="MASKED_LOSS_WEIGHT"),
                     float),
        mask_prop=number(_one(bindings, "TimeGapMask", "p_mask", macro="MASK_PROP"), float),
        mask_span=number(_one(bindings, "TimeGapMask", "gap_size", macro="MASK_GAP_SIZE")),
        chunk_seconds=float(max_length) if isinstance(max_length, (int, float)) else None)


def _normalise(value: Any) -> Any:
    """For comparison: numbers as floats, lists as lists, a reference by its configurable's own name
    (gin prints '@Identity' or '@torch.nn.Identity' as the names are unique or not)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        return "@" + value[1:].rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return float(value)


def config_from_v2(state: Dict[str, Tensor], gin: V2Settings) -> EncodecMAEConfig:
    """Sizes from the tensor shapes, head counts and the input from the gin settings, checked against each other."""
    for key in ("wav_encoder.post_net.weight", "head.layer.weight",
                "visible_encoder.encoder_layers.0.ff_layer.0.weight"):
        if key not in state:
            raise V2CheckpointError(f"no {key!r} in the state dict (first keys: {list(state)[:5]}). "
                                    f"Accepted: {ACCEPTED}")
    dim, features = state["wav_encoder.post_net.weight"].shape
    expected_features = MEL_BINS if gin.input == "mel256" else FEATURE_DIM
    if features != expected_features:
        raise V2CheckpointError(f"wav_encoder.post_net takes {features} features, but the config's input "
                                f"({gin.input}) gives {expected_features}")
    from_weights: Dict[str, Any] = {"dim": dim, "encoder_layers": _layer_count(state, "visible_encoder"),
                    "decoder_layers": _layer_count(state, "decoder"),
                    "ff_dim": state["visible_encoder.encoder_layers.0.ff_layer.0.weight"].shape[0]}
    for key, value in from_weights.items():
        said = getattr(gin, key)
        if said is not None and int(said) != int(value):
            raise V2CheckpointError(f"the config says {key} = {said} but the weights have {value}")
    if gin.heads is None:
        raise V2CheckpointError("the config names no head count (NUM_ENCODER_HEADS or encoder/MultiHeadAttention."
                                "num_heads), which the weights cannot tell")
    decoder_heads = gin.decoder_heads or gin.heads
    _check_heads(state, "visible_encoder", gin.heads, dim)
    _check_heads(state, "decoder", decoder_heads, dim)
    rows = state["head.layer.weight"].shape[0]
    q = gin.num_codebooks
    head: Dict[str, Any]
    if gin.self_trained:  # one k-means stream, weight 1 (v2's st.gin: IdentityTarget, quantizer_weights [1.])
        head = {"codec_targets": False, "extra_targets": rows, "extra_target_weight": 1.0}
        weights = gin.codebook_weights if gin.codebook_weights and len(gin.codebook_weights) == q else None
    else:
        if rows != q * CODEBOOK_SIZE:
            raise V2CheckpointError(f"head.layer has {rows} outputs; {q} codebooks of {CODEBOOK_SIZE} make "
                                    f"{q * CODEBOOK_SIZE}")
        head, weights = {}, gin.codebook_weights
    stated = (("delta", gin.delta), ("mask_prop", gin.mask_prop), ("mask_span", gin.mask_span),
              ("chunk_seconds", gin.chunk_seconds))
    settings: Dict[str, Any] = {k: v for k, v in stated if v is not None}
    return EncodecMAEConfig(
        **from_weights, heads=gin.heads, decoder_heads=decoder_heads if decoder_heads != gin.heads else None,
        num_codebooks=q, codebook_weights=weights or (1.0 / q,) * q, **head, **settings,
        shared_feed_forward=_feed_forward_is_shared(state), interleaved_heads=True, recipe="v1", mask_token="zeros",
        input=gin.input, decoder_positions="own", encodec_source="pretrained", standardise_features=False)


def convert_v2_state_dict(state: Dict[str, Tensor], config: EncodecMAEConfig) -> Dict[str, Tensor]:
    """v2 keys -> ours (see the module docstring). Keys no rule knows raise V2CheckpointError."""
    converted, unknown = rename_keys(state, _COMPILED)
    if unknown:
        raise V2CheckpointError(f"keys that no v2 EnCodecMAE this loader builds has: {_few(unknown)}. "
                                f"Accepted: {ACCEPTED}")
    if not config.codec_targets:  # the self-trained head predicts the k-means stream
        for name in ("weight", "bias"):
            if f"head.{name}" in converted:
                converted[f"extra_head.{name}"] = converted.pop(f"head.{name}")
    converted.setdefault("codec.feature_mean", torch.zeros(FEATURE_DIM))
    converted.setdefault("codec.feature_std", torch.ones(FEATURE_DIM))
    converted.setdefault("codec.corpus_initialised", torch.tensor(False))
    has_codec = any(k.startswith("codec.encoder.") for k in converted) and \
        any(k.startswith("codec.quantizer.") for k in converted)
    if not has_codec:
        if config.input == "encodec":
            raise V2CheckpointError(f"an EnCodec-input model without EnCodec weights ({_few(list(state))}). "
                                    f"Accepted: {ACCEPTED}")
        # a self-trained mel model keeps no codec (its targets came from k-means): a seeded random one fills the
        # place, flagged random so that nothing trains on its codes
        codec = build_encodec("random", config.num_codebooks).state_dict()
        for key, value in codec.items():
            converted.setdefault(f"codec.{key}", value)
        converted["codec.random_weights"] = torch.tensor(True)
    converted.setdefault("codec.random_weights", torch.tensor(False))
    return converted


def load_v2(path: Union[str, os.PathLike], checkpoint: Optional[dict] = None, trust: bool = False) -> EncodecMAE:
    """A v2 ``<name>.pt`` as an ``EncodecMAE`` (eval mode). ``checkpoint``: the already loaded file."""
    if checkpoint is None:
        checkpoint = safe_load(path, trust=trust)
    if not is_v2(checkpoint):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise V2CheckpointError(f"{path}: not a v2 file (top level: {keys}). Accepted: {ACCEPTED}")
    state = checkpoint["state_dict"]
    try:
        if not isinstance(state, dict):
            raise V2CheckpointError(f"'state_dict' is a {type(state).__name__}, not a dict")
        config = config_from_v2(state, read_v2_config(checkpoint["config"]))
        converted = convert_v2_state_dict(state, config)
    except V2CheckpointError as err:
        raise V2CheckpointError(f"{path}: {err}") from None
    return model_from_converted(config, converted,
                                lambda problem: V2CheckpointError(
                                    f"{path} does not fit the EnCodecMAE v2 architecture it describes "
                                    f"({config.input} input, {config.encoder_layers} encoder layers, "
                                    f"D={config.dim}): {problem}. Accepted: {ACCEPTED}"))
