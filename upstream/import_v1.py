"""Load the published EnCodecMAE v1 checkpoints (``model.pt`` + ``config.gin`` of the
lpepino/encodecmae-* hub repositories) into ``EncodecMAE``.

A config parser (``parse_config_gin``) and a key mapping (``convert_v1_state_dict``), as
torchaudio's ``import_fairseq``: the model never knows where its weights came from.

v1 layout: ``{'state_dict': {...}}`` with
    wav_encoder.model.*                      EnCodec SEANet encoder   -> codec.encoder.*
    target_encoder.model.*                   EnCodec RVQ              -> codec.quantizer.*
    feat_projector.*, decoder_projector.*    128->D, D->D             -> feature_projection.*, decoder_projection.*
    positional_encoder.scale                 shared by both inputs    -> positions.scale
    visible_encoder.encoder_layers.N.*       encoder layers           -> encoder.layers.N.*
    decoder.encoder_layers.N.*               decoder layers           -> decoder.layers.N.*
        att_layer.{wq,wk,wv,wo}.weight -> attention.*, ff_layer.{0,2}.* -> feed_forward.*, norm1/norm2
    visible_encoder.final_norm.*, decoder.final_norm.*               -> encoder/decoder.final_norm.*
    head.layer.*, extra_head.layer.*        (Q*1024)xD, kxD           -> head.*, extra_head.*
v1 has no mask token (dropped frames are zeros) and splits heads channel-interleaved, so the
model is built with mask_token='zeros' and interleaved_heads=True and no weight is permuted.
Heads are not in the weights: they come from ``config.gin`` and are checked against the
attention projections, which are heads * (dim // heads) wide (1020 for large's 12 heads of 1024).
v1 shares one feed-forward module across the layers of a stack; the file repeats its tensors
under every layer. When they are equal the model is built with ``shared_feed_forward=True`` and
they load into one tied module (one tensor, not copies).
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor

from encodecmae_s3prl.upstream.checkpoint import CheckpointError, safe_load
from encodecmae_s3prl.upstream.codec import CODEBOOK_SIZE, FEATURE_DIM, build_encodec
from encodecmae_s3prl.upstream.config import V1_CODEBOOK_WEIGHTS, EncodecMAEConfig
from encodecmae_s3prl.upstream.model import EncodecMAE, build_model

ACCEPTED = ("a published EnCodecMAE v1 model.pt ({'state_dict': {'wav_encoder.model.*', 'target_encoder.model.*', "
            "'visible_encoder.encoder_layers.N.*', 'decoder.encoder_layers.N.*', 'head.layer.*', ...}}), with the "
            "config.gin of the same hub repository beside it")

_STACKS = {"visible_encoder": "encoder", "decoder": "decoder"}
# the transformer stacks, named alike in v1 and v2 files (visible_encoder.* becomes encoder.* in ``rename_keys``)
STACK_RULES = [
    (r"(visible_encoder|decoder)\.encoder_layers\.(\d+)\.att_layer\.(w[qkvo])\.weight",
     r"\1.layers.\2.attention.\3.weight"),
    (r"(visible_encoder|decoder)\.encoder_layers\.(\d+)\.ff_layer\.([02])\.(weight|bias)",
     r"\1.layers.\2.feed_forward.\3.\4"),
    (r"(visible_encoder|decoder)\.encoder_layers\.(\d+)\.(norm[12])\.(weight|bias)", r"\1.layers.\2.\3.\4"),
    (r"(visible_encoder|decoder)\.final_norm\.(weight|bias)", r"\1.final_norm.\2"),
    (r"head\.layer\.(weight|bias)", r"head.\1"),
]
_RULES = [  # (v1 key pattern, our key template)
    (r"wav_encoder\.model\.(.+)", r"codec.encoder.\1"),
    (r"target_encoder\.model\.(.+)", r"codec.quantizer.\1"),
    (r"feat_projector\.(weight|bias)", r"feature_projection.\1"),
    (r"decoder_projector\.(weight|bias)", r"decoder_projection.\1"),
    (r"positional_encoder\.scale", r"positions.scale"),
    *STACK_RULES,
    (r"extra_head\.layer\.(weight|bias)", r"extra_head.\1"),
]


def compile_rules(rules) -> list:
    """(key pattern, template) rules as ``rename_keys`` takes them: each pattern matched against a whole key."""
    return [(re.compile(pattern + r"\Z"), template) for pattern, template in rules]


_COMPILED = compile_rules(_RULES)


def rename_keys(state_dict: Dict[str, Tensor], compiled) -> tuple[Dict[str, Tensor], list]:
    """``state_dict`` under our names by the first matching (pattern, template) of ``compiled``; (renamed, keys no
    rule knows)."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, template in compiled:
            match = pattern.match(key)
            if match:
                new = match.expand(template)
                stack = new.split(".", 1)[0]
                if stack in _STACKS:  # visible_encoder.* -> encoder.*
                    new = _STACKS[stack] + new[len(stack):]
                converted[new] = value
                break
        else:
            unknown.append(key)
    return converted, unknown

# v1 state our model holds but v1 files do not: the standardisation is identity, the codec is real
_V1_CODEC_BUFFERS = {
    "codec.feature_mean": lambda: torch.zeros(FEATURE_DIM),
    "codec.feature_std": lambda: torch.ones(FEATURE_DIM),
    "codec.random_weights": lambda: torch.tensor(False),
    "codec.corpus_initialised": lambda: torch.tensor(False),
}


class V1CheckpointError(CheckpointError):
    """A file that is not (or not entirely) a published EnCodecMAE v1 checkpoint."""


# --- config.gin ----------------------------------------------------------------------------------
def read_gin_bindings(text: str) -> Dict[str, Any]:
    """Every binding of a gin file, macros resolved: {'scope/module.Class.param': value, 'MACRO': value}.

    Understands what v1's files use: ``NAME = value`` macros, ``scope/module.Class.param = value``,
    blocks ``scope/module.Class:`` followed by indented ``param = value`` lines, values spread
    over several lines inside brackets, ``%MACRO`` references, ``@references`` (kept as strings),
    comments, ``import`` and ``include`` lines (skipped).
    """
    bindings: Dict[str, Any] = {}
    block: Optional[str] = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = _strip_comment(lines[i])
        i += 1
        if not raw.strip():
            continue
        indented = raw[0] in " \t"
        line = raw.strip()
        if not indented:
            block = None
        if line.startswith(("import ", "include ", "from ")):
            continue
        if line.endswith(":") and "=" not in line:
            block = line[:-1].strip()
            continue
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        while _unbalanced(value) and i < len(lines):  # a list or tuple continued on the next lines
            value += " " + _strip_comment(lines[i]).strip()
            i += 1
        if indented and block is not None:
            key = f"{block}.{key}"
        bindings[key] = _literal(value)
    return {key: _resolve(value, bindings) for key, value in bindings.items()}


def _strip_comment(line: str) -> str:
    # '#' inside a quoted string is rare in these files; quotes are honoured anyway
    quote = None
    for j, char in enumerate(line):
        if char in "'\"":
            quote = None if quote == char else (char if quote is None else quote)
        elif char == "#" and quote is None:
            return line[:j].rstrip()
    return line.rstrip()


def _unbalanced(value: str) -> bool:
    return sum(value.count(o) - value.count(c) for o, c in ("()", "[]", "{}")) > 0


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # @references, %MACROs and anything else stay text


def _resolve(value: Any, bindings: Dict[str, Any], depth: int = 0) -> Any:
    if isinstance(value, str) and value.startswith("%") and depth < 16:
        name = value[1:]
        return _resolve(bindings[name], bindings, depth + 1) if name in bindings else value
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, bindings, depth + 1) for v in value)
    return value


def _lookup(bindings: Dict[str, Any], scope: Optional[str], cls: str, param: str, macro: Optional[str] = None):
    """The value bound to ``[scope/]...cls.param``, else the macro ``macro``, else None."""
    for key, value in bindings.items():
        key_scope, _, path = key.rpartition("/")
        parts = path.split(".")
        if len(parts) >= 2 and parts[-2] == cls and parts[-1] == param and (scope is None or key_scope == scope):
            return value
    return bindings.get(macro) if macro else None


def parse_config_gin(text: str) -> Dict[str, Any]:
    """The EncodecMAEConfig fields a v1 ``config.gin`` states (only those it states).

    Keys: dim, encoder_layers, decoder_layers, heads, decoder_heads, ff_dim, num_codebooks,
    codebook_size, mask_prop, mask_span, delta, codebook_weights.
    """
    b = read_gin_bindings(text)
    found = {
        "dim": _lookup(b, "encoder", "TransformerEncoder", "model_dim", "MODEL_DIM"),
        "encoder_layers": _lookup(b, "encoder", "TransformerEncoder", "num_layers", "NUM_ENCODER_LAYERS"),
        "decoder_layers": _lookup(b, "decoder", "TransformerEncoder", "num_layers", "NUM_DECODER_LAYERS"),
        "heads": _lookup(b, "encoder", "MultiHeadAttention", "num_heads", "NUM_ENCODER_HEADS"),
        "decoder_heads": _lookup(b, "decoder", "MultiHeadAttention", "num_heads", "NUM_DECODER_HEADS"),
        "ff_dim": _lookup(b, "encoder", "TransformerEncoder", "ff_dim"),
        "num_codebooks": _lookup(b, None, "EncodecQuantizer", "n", "NUM_ENCODEC_TARGETS"),
        "codebook_size": _lookup(b, None, "FrameLevelClassificationHead", "num_tokens", "NUM_TARGET_TOKENS"),
        "mask_prop": _lookup(b, None, "TimeGapMask", "mask_prop", "MASK_PROP"),
        "mask_span": _lookup(b, None, "TimeGapMask", "gap_size", "MASK_GAP_SIZE"),
        "delta": _lookup(b, None, "EncodecMAE", "masked_weight", "MASKED_LOSS_WEIGHT"),
        "codebook_weights": _lookup(b, None, "EncodecMAE", "quantizer_weights", "QUANTIZER_WEIGHTS"),
    }
    if found["heads"] is None:  # an unscoped attention binding serves both stacks
        found["heads"] = _lookup(b, "", "MultiHeadAttention", "num_heads")
    # keep plain values only: an unresolved %MACRO or @reference says nothing about the sizes
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in found.items()
            if v is not None and not (isinstance(v, str) and v[:1] in "%@")}


# --- state dict ----------------------------------------------------------------------------------
def _layer_count(state: Dict[str, Tensor], stack: str) -> int:
    numbers = {int(m.group(1)) for k in state for m in [re.match(rf"{stack}\.encoder_layers\.(\d+)\.", k)] if m}
    return max(numbers) + 1 if numbers else 0


def config_from_v1(state_dict: Dict[str, Tensor], gin: Optional[Dict[str, Any]] = None) -> EncodecMAEConfig:
    """Sizes from the tensor shapes, head counts (and training settings) from the parsed config.gin.

    Raises V1CheckpointError if the head count is unknown (no gin) or the gin contradicts the weights.
    """
    gin = dict(gin or {})
    _require(state_dict, ["feat_projector.weight", "head.layer.weight",
                          "visible_encoder.encoder_layers.0.ff_layer.0.weight"])
    dim, features = state_dict["feat_projector.weight"].shape
    if features != FEATURE_DIM:
        raise V1CheckpointError(f"feat_projector takes {features} features, EnCodec gives {FEATURE_DIM}: not an "
                                f"EnCodecMAE checkpoint on EnCodec features. Accepted: {ACCEPTED}")
    codebook_size = int(gin.get("codebook_size", CODEBOOK_SIZE))
    head_rows = state_dict["head.layer.weight"].shape[0]
    if head_rows % codebook_size:
        raise V1CheckpointError(f"head.layer has {head_rows} outputs, not a multiple of {codebook_size} codes")
    from_weights: Dict[str, Any] = {
        "dim": dim,
        "encoder_layers": _layer_count(state_dict, "visible_encoder"),
        "decoder_layers": _layer_count(state_dict, "decoder"),
        "ff_dim": state_dict["visible_encoder.encoder_layers.0.ff_layer.0.weight"].shape[0],
        "num_codebooks": head_rows // codebook_size,
    }
    for key, value in from_weights.items():
        if key in gin and int(gin[key]) != int(value):
            raise V1CheckpointError(f"config.gin says {key} = {gin[key]} but the weights have {value}: the gin "
                                    f"belongs to another model (take the one from the same hub repository)")
    if "heads" not in gin:
        raise V1CheckpointError(
            "the number of attention heads of a v1 checkpoint is not in its weights: give the config.gin of the "
            "same hub repository (lpepino/encodecmae-<variant>), e.g. load_v1(path, gin_path=...) or put it as "
            "config.gin beside model.pt")
    q = from_weights["num_codebooks"]
    weights = gin.get("codebook_weights")
    if weights is None or len(weights) != q:
        # v1 defaults: the published γ for its 8 codebooks, uniform otherwise
        weights = V1_CODEBOOK_WEIGHTS if q == len(V1_CODEBOOK_WEIGHTS) else (1.0 / q,) * q
    extra = state_dict.get("extra_head.layer.weight")
    settings = {k: gin[k] for k in ("decoder_heads", "mask_prop", "mask_span", "delta") if k in gin}
    if settings.get("decoder_heads") == gin["heads"]:
        settings.pop("decoder_heads")
    decoder_heads = int(gin.get("decoder_heads", gin["heads"]))
    for stack, heads in (("visible_encoder", int(gin["heads"])), ("decoder", decoder_heads)):
        _check_heads(state_dict, stack, heads, from_weights["dim"])
    return EncodecMAEConfig(
        **from_weights, heads=int(gin["heads"]), codebook_weights=tuple(weights), **settings,
        shared_feed_forward=_feed_forward_is_shared(state_dict),
        interleaved_heads=True, recipe="v1", mask_token="zeros",
        extra_targets=int(extra.shape[0]) if extra is not None else 0,
        # the codec comes from the checkpoint itself (v1 saved it, its RVQ as trained); 'pretrained'
        # only matters if someone rebuilds this config from scratch
        encodec_source="pretrained", standardise_features=False)


def _check_heads(state: Dict[str, Tensor], stack: str, heads: int, dim: int) -> None:
    """The projections of ``heads`` heads are heads * (dim // heads) wide; the gin must agree with the file."""
    key = f"{stack}.encoder_layers.0.att_layer.wq.weight"
    if key not in state:
        return
    width = state[key].shape[0]
    if not 1 <= heads <= dim or heads * (dim // heads) != width:
        fits = [h for h in range(1, min(dim, 64) + 1) if h * (dim // h) == width]
        raise V1CheckpointError(
            f"config.gin gives {heads} heads for {stack}, but its attention projections are {width} wide, and "
            f"{heads} heads of {dim} // {heads} channels make {heads * (dim // max(heads, 1))}: the gin belongs to "
            f"another model (head counts that fit these weights: {fits[:8]}); take the config.gin of the same hub "
            f"repository")


def _feed_forward_is_shared(state: Dict[str, Tensor]) -> bool:
    """True when every stack repeats one feed-forward module's tensors under all its layers (v1's way)."""
    for stack in _STACKS:
        for name in ("ff_layer.0.weight", "ff_layer.0.bias", "ff_layer.2.weight", "ff_layer.2.bias"):
            tensors = [state[k] for i in range(_layer_count(state, stack))
                       for k in [f"{stack}.encoder_layers.{i}.{name}"] if k in state]
            if any(t.shape != tensors[0].shape or not torch.equal(t, tensors[0]) for t in tensors[1:]):
                return False
    return True


def convert_v1_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """v1 keys -> ours (see the module docstring). Keys no rule knows raise V1CheckpointError."""
    converted, unknown = rename_keys(state_dict, _COMPILED)
    if unknown:
        raise V1CheckpointError(f"keys that no v1 EnCodecMAE has: {unknown[:6]} ({len(unknown)} in all). "
                                f"Accepted: {ACCEPTED}")
    for key, make in _V1_CODEC_BUFFERS.items():
        converted.setdefault(key, make())
    return converted


def load_v1(path: Union[str, os.PathLike], gin_path: Union[str, os.PathLike, None] = None,
            checkpoint: Optional[dict] = None) -> EncodecMAE:
    """A published v1 ``model.pt`` as an ``EncodecMAE`` (eval mode), codec weights from the file.

    Args:
        path: the model.pt.
        gin_path: its config.gin; None = ``config.gin`` beside ``path`` if there.
        checkpoint: the already loaded file (skips reading ``path`` again).
    """
    if checkpoint is None:
        checkpoint = safe_load(path)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise V1CheckpointError(f"{path}: no 'state_dict' entry (top level: {keys}). Accepted: {ACCEPTED}")
    if gin_path is None and Path(path).with_name("config.gin").is_file():
        gin_path = Path(path).with_name("config.gin")
    gin = parse_config_gin(Path(gin_path).read_text()) if gin_path is not None else None
    try:
        config = config_from_v1(state, gin)
    except V1CheckpointError as err:
        raise V1CheckpointError(f"{path}: {err}") from None

    return model_from_converted(config, convert_v1_state_dict(state),
                                lambda problem: V1CheckpointError(
                                    f"{path} does not fit the EnCodecMAE v1 architecture it describes "
                                    f"({config.encoder_layers} encoder layers, D={config.dim}): {problem}. "
                                    f"Accepted: {ACCEPTED}"))


def model_from_converted(config: EncodecMAEConfig, converted: Dict[str, Tensor],
                         refusal: Callable[[str], Exception]) -> EncodecMAE:
    """The model of ``config`` holding a converted state dict (v1 or v2), in eval mode; ``refusal(problem)`` is
    raised when its keys or shapes are not the ones that model has (checked on the meta device: shapes only)."""
    with torch.device("meta"):
        expected = build_model(config, codec=build_encodec("random", config.num_codebooks)).state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = sorted(k for k in set(expected) & set(converted) if expected[k].shape != converted[k].shape)
    if missing or unexpected or wrong:
        raise refusal(f"missing {_few(missing)}, unexpected {_few(unexpected)}, wrong shape {_few(wrong)}")
    return EncodecMAE.from_state_dict(config, converted).eval()


def _few(keys: list, n: int = 5) -> str:
    return f"{keys[:n]}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}" if keys else "none"


def _require(state: Dict[str, Tensor], keys: list) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        present = list(state)[:5]
        raise V1CheckpointError(f"not an EnCodecMAE v1 state dict: no {missing} (first keys: {present}). "
                                f"Accepted: {ACCEPTED}")
