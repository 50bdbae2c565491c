"""The EnCodecMAE configuration: one frozen dataclass and the named sizes (tiny, small, base, large).

The fields are flat, so a checkpoint's ``config`` dict and a model YAML name them directly; they are
grouped below by what they decide: the architecture, the targets, how it trains, where the codec's
weights come from, and how inference cuts long audio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from encodecmae_s3prl.errors import ConfigError
from encodecmae_s3prl.upstream.codec import CODEBOOK_SIZE, FRAME_RATE
from encodecmae_s3prl.upstream.inference import CHUNK_SECONDS
from encodecmae_s3prl.upstream.masking import RECIPES
from encodecmae_s3prl.upstream.strict_config import check_rules, from_dict_strict

# γ_q of the published v1 models: mean quantization error of each of the first 8 codebooks, summed to 1
V1_CODEBOOK_WEIGHTS = (0.22407463, 0.1759858, 0.14499009, 0.12150037, 0.10315603, 0.08831368, 0.07608274,
                       0.06589669)
MASK_TOKENS = ("learned", "zeros")
INPUTS = ("encodec", "mel256")  # what the encoder reads: EnCodec's 128-dim output (v1, v2 ec-ec) or v2's log-mel
DECODER_POSITIONS = ("shared", "own")  # v1: one positions module (one scale) for both inputs; v2: the decoder's own
# what each recipe sets, row by row (each row also a config field of its own, for ablations):
# 'v1' = the authors' code at tag v.1.0.0, which trained the published models; 'paper' = the paper's text
RECIPE_ROWS: Dict[str, Dict[str, str]] = {
    "v1": {"mask_layout": "v1", "mask_token": "zeros"},
    "paper": {"mask_layout": "paper", "mask_token": "learned"},
}


@dataclass(frozen=True)
class EncodecMAEConfig:
    """Sizes and training settings of one EnCodecMAE. Defaults are the paper's base model.

    Architecture:
        dim: D, the model width (even: the positions are sin/cos pairs).
        encoder_layers: transformer layers of the encoder (it sees the visible frames only).
        decoder_layers: transformer layers of the decoder (every frame).
        heads: encoder attention heads, each ``dim // heads`` channels wide.
        decoder_heads: decoder attention heads; None = ``heads`` (v1 sets both in its config.gin).
        ff_dim: feed-forward width (ReLU).
        interleaved_heads: v1's head split (channel c goes to head c mod H); False = contiguous heads.
        shared_feed_forward: one feed-forward module per stack, tied across its layers, as v1 trained
            the published models (Table 1); False = one per layer.
        dropout: attention and feed-forward dropout.
        input: what the encoder reads: 'encodec' (the frozen EnCodec's 128-dim output, v1 and v2's ec-ec
            models) or 'mel256' (v2's 256-bin log-mel, ``mel.MelFrontEnd``); the targets are EnCodec's codes in both.
        decoder_positions: 'shared' (v1: the encoder's positions module, one scale) or 'own' (v2: the decoder
            has its own).

    Targets:
        num_codebooks: Q, the first RVQ stages predicted (8 = 6 kbps); also the codec's stages.
        codebook_size: codes per stage; EnCodec's RVQ has 1024 (the only value accepted).
        codebook_weights: γ_q, the loss weight of each codebook (Q of them).
        extra_targets: k of an extra self-training target stream (k-means classes); 0 = none.
        extra_target_weight: that stream's loss weight; None = sum(codebook_weights), as the paper.
        codec_targets: whether the codebooks are targets; False = the extra stream alone (v2's self-trained
            models: one k-means stream of weight 1, no codebook head).

    Training:
        mask_prop: proportion of each clip's frames masked.
        mask_span: frames per masked span.
        delta: δ, the weight of the masked-frame loss; 1 - δ weighs the visible frames.
        recipe: 'v1' (the authors' code, which trained the published models) or 'paper' (its text);
            sets ``mask_layout`` and ``mask_token`` unless they are given.
        mask_layout: span layout 'v1' | 'paper' (``masking.span_mask``); None = the recipe's.
        mask_token: decoder input at masked frames, 'zeros' (v1) | 'learned' (paper); None = the recipe's.

    Data source (the frozen codec):
        encodec_source: EnCodec's weights: 'pretrained', 'random' or a path (``codec.build_encodec``).
        standardise_features: per-channel corpus standardisation of the codec's output (for a random
            codec, whose output is mostly a constant offset).

    Inference:
        chunk_seconds: length of the chunks ``encode`` cuts long audio into (4 s = 300 frames).
    """

    # architecture
    dim: int = 768
    encoder_layers: int = 10
    decoder_layers: int = 2
    heads: int = 12
    decoder_heads: Optional[int] = None
    ff_dim: int = 4096
    interleaved_heads: bool = True
    shared_feed_forward: bool = True
    dropout: float = 0.0
    input: str = "encodec"
    decoder_positions: str = "shared"
    # targets
    num_codebooks: int = 8
    codebook_size: int = CODEBOOK_SIZE
    codebook_weights: Tuple[float, ...] = V1_CODEBOOK_WEIGHTS
    extra_targets: int = 0
    extra_target_weight: Optional[float] = None
    codec_targets: bool = True
    # training
    mask_prop: float = 0.5
    mask_span: int = 15
    delta: float = 0.9
    recipe: str = "v1"
    mask_layout: Optional[str] = None
    mask_token: Optional[str] = None
    # data source
    encodec_source: str = "pretrained"
    standardise_features: bool = False
    # inference
    chunk_seconds: float = CHUNK_SECONDS

    def __post_init__(self):
        object.__setattr__(self, "codebook_weights", tuple(float(w) for w in self.codebook_weights))
        rules = [
            (self.dim > 0 and self.dim % 2 == 0, "dim", self.dim, "a positive even number (sin/cos pairs)"),
            (1 <= self.heads <= self.dim, "heads", self.heads, f"in 1..dim={self.dim} (heads are dim // heads wide)"),
            (self.decoder_heads is None or 1 <= self.decoder_heads <= self.dim,
             "decoder_heads", self.decoder_heads, f"None or in 1..dim={self.dim}"),
            (self.encoder_layers >= 1, "encoder_layers", self.encoder_layers, ">= 1"),
            (self.decoder_layers >= 1, "decoder_layers", self.decoder_layers, ">= 1"),
            (self.ff_dim >= 1, "ff_dim", self.ff_dim, ">= 1"),
            (1 <= self.num_codebooks <= 32, "num_codebooks", self.num_codebooks, "in 1..32 (EnCodec 24 kHz stages)"),
            (self.codebook_size == CODEBOOK_SIZE, "codebook_size", self.codebook_size,
             f"{CODEBOOK_SIZE} (EnCodec's RVQ bins)"),
            (0.0 <= self.mask_prop < 1.0, "mask_prop", self.mask_prop, "in [0, 1)"),
            (self.mask_span >= 1, "mask_span", self.mask_span, ">= 1"),
            (0.0 <= self.delta <= 1.0, "delta", self.delta, "in [0, 1]"),
            (len(self.codebook_weights) == self.num_codebooks, "codebook_weights", self.codebook_weights,
             f"one weight per codebook ({self.num_codebooks})"),
            (self.recipe in RECIPE_ROWS, "recipe", self.recipe, f"one of {tuple(RECIPE_ROWS)}"),
            (self.mask_layout is None or self.mask_layout in RECIPES, "mask_layout", self.mask_layout,
             f"None (the recipe's) or one of {RECIPES}"),
            (self.mask_token is None or self.mask_token in MASK_TOKENS, "mask_token", self.mask_token,
             f"None (the recipe's) or one of {MASK_TOKENS}"),
            (self.extra_targets >= 0, "extra_targets", self.extra_targets, ">= 0 (0 = no extra stream)"),
            (round(self.chunk_seconds * FRAME_RATE) >= 1, "chunk_seconds", self.chunk_seconds,
             f">= 1 frame (1/{FRAME_RATE} s)"),
            (0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)"),
            (self.input in INPUTS, "input", self.input, f"one of {INPUTS}"),
            (self.decoder_positions in DECODER_POSITIONS, "decoder_positions", self.decoder_positions,
             f"one of {DECODER_POSITIONS}"),
            (self.codec_targets or self.extra_targets > 0, "codec_targets", self.codec_targets,
             "True, or False with an extra stream (extra_targets > 0): a model needs a target"),
        ]
        check_rules(rules, "EncodecMAEConfig")

    @property
    def resolved_mask_layout(self) -> str:
        """The span layout this config trains with: ``mask_layout``, or its recipe's."""
        return self.mask_layout or RECIPE_ROWS[self.recipe]["mask_layout"]

    @property
    def resolved_mask_token(self) -> str:
        """The decoder input at masked frames: ``mask_token``, or its recipe's."""
        return self.mask_token or RECIPE_ROWS[self.recipe]["mask_token"]

    @property
    def extra_weight(self) -> float:
        """Weight of the extra stream: as the paper, Σ γ_q unless set."""
        if self.extra_target_weight is None:
            return float(sum(self.codebook_weights))
        return float(self.extra_target_weight)

    @property
    def chunk_frames(self) -> int:
        """Frames per inference chunk (300 for 4 s); chunks are a whole number of EnCodec hops."""
        return int(round(self.chunk_seconds * FRAME_RATE))

    @classmethod
    def from_dict(cls, values: dict) -> "EncodecMAEConfig":
        """Build from a plain dict (a YAML, a checkpoint); unknown keys are an error, not ignored."""
        return from_dict_strict(cls, values, "EncodecMAEConfig")


CONFIGS: Dict[str, EncodecMAEConfig] = {
    # for tests and the offline demo on a laptop CPU; not a paper size. Random EnCodec, so its
    # input is standardised with corpus statistics (a random EnCodec's output is ~99 % a constant offset).
    # It keeps the recipe the demo's figures were measured with (paper); set recipe: v1 to change it
    "tiny": EncodecMAEConfig(dim=64, encoder_layers=2, decoder_layers=2, heads=2, ff_dim=128,
                             encodec_source="random", standardise_features=True, recipe="paper"),
    # the named sizes train as the authors' code trained the published models (recipe v1)
    "small": EncodecMAEConfig(dim=768, encoder_layers=5, heads=12, recipe="v1"),
    "base": EncodecMAEConfig(dim=768, encoder_layers=10, heads=12, recipe="v1"),
    # v1's training scripts change only the width and depth for large: 12 heads of 1024 // 12 = 85
    # channels, attention projections 12 * 85 = 1020 wide
    "large": EncodecMAEConfig(dim=1024, encoder_layers=20, heads=12, recipe="v1"),
}


def get_config(name: str) -> EncodecMAEConfig:
    """A named configuration: tiny, small, base or large (dataclasses.replace to change fields); its
    ``recipe`` says how it trains ('v1' for small, base and large)."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown EnCodecMAE config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]
