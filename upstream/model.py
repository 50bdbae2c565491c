"""EnCodecMAE: a masked autoencoder over frozen EnCodec features that predicts EnCodec's RVQ codes.

Data flow, readable top to bottom in ``EncodecMAE.forward``:

    wav (24 kHz) -> frozen EnCodec encoder -> features (B, T, 128) at 75 frames/s
        features -> RVQ codes (B, T, Q): the targets
        features -> [standardise] -> Linear 128->D -> + positions -> span mask, drop masked frames
        -> encoder (visible frames only) -> Linear D->D -> mask token at the dropped frames
        -> + positions (the same module, one shared scale) -> decoder (2 layers) -> head -> (B, T, Q, 1024)

``encode`` is the inference path (no masking, long audio in 4 s chunks); its ``hidden_states``
are what s3prl's Featurizer weighs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from encodecmae_s3prl.errors import ConfigError
from encodecmae_s3prl.upstream.audio import resample_span, resampled_length
from encodecmae_s3prl.upstream.codec import (
    CODEBOOK_SIZE,
    FEATURE_DIM,
    FRAME_RATE,
    HOP,
    SAMPLE_RATE,
    FrozenEncodec,
    build_encodec,
)
from encodecmae_s3prl.upstream.components import SinusoidalPositions, TransformerStack
from encodecmae_s3prl.upstream.masking import RECIPES, gather_visible, scatter_back, span_mask
from encodecmae_s3prl.upstream.strict_config import check_rules, from_dict_strict

IGNORE = -100                    # target value that no loss or accuracy counts (padding, missing ST codes)
# inference: 4 s chunks per pass (bounds memory for audio of any length). A GPU wants large batches; on a CPU
# more chunks per pass only add activations (the speed per chunk is the same), so fewer (EnCodec's convolutions,
# ~60 MB of activations per chunk, take them one at a time there: FrozenEncodec.features)
CHUNKS_PER_STEP = 16
CPU_CHUNKS_PER_STEP = 4

# γ_q of the published v1 models: mean quantization error of each of the first 8 codebooks, summed to 1
V1_CODEBOOK_WEIGHTS = (0.22407463, 0.1759858, 0.14499009, 0.12150037, 0.10315603, 0.08831368, 0.07608274,
                       0.06589669)
MASK_TOKENS = ("learned", "zeros")
# what each recipe sets, row by row (each row also a config field of its own, for ablations):
# 'v1' = the authors' code at tag v.1.0.0, which trained the published models; 'paper' = the paper's text
RECIPE_ROWS: Dict[str, Dict[str, str]] = {
    "v1": {"mask_layout": "v1", "mask_token": "zeros"},
    "paper": {"mask_layout": "paper", "mask_token": "learned"},
}


@dataclass(frozen=True)
class EncodecMAEConfig:
    """Sizes and training settings of one EnCodecMAE. Defaults are the paper's base model."""

    dim: int = 768                      # D, model width
    encoder_layers: int = 10
    decoder_layers: int = 2
    heads: int = 12                     # encoder attention heads
    decoder_heads: Optional[int] = None  # None: same as ``heads`` (v1 sets both in its config.gin)
    ff_dim: int = 4096                  # feed-forward width (ReLU)
    num_codebooks: int = 8              # Q, first RVQ stages predicted (8 = 6 kbps)
    codebook_size: int = CODEBOOK_SIZE  # codes per stage; EnCodec's RVQ has 1024
    mask_prop: float = 0.5              # proportion of each clip's frames masked
    mask_span: int = 15                 # frames per masked span
    delta: float = 0.9                  # δ: weight of the masked-frame loss, 1-δ for the visible frames
    codebook_weights: Tuple[float, ...] = V1_CODEBOOK_WEIGHTS  # γ_q, one per codebook
    interleaved_heads: bool = True      # v1 head split (channel c -> head c mod H)
    shared_feed_forward: bool = True    # one feed-forward module per stack, as v1 (Table 1); False: one per layer
    recipe: str = "v1"                  # 'v1' (the authors' code, the published models) or 'paper' (its text)
    mask_layout: Optional[str] = None   # span layout 'v1' | 'paper' (masking.span_mask); None: the recipe's
    mask_token: Optional[str] = None    # decoder input at masked frames: 'zeros' (v1) | 'learned' (paper);
    #                                     None: the recipe's
    extra_targets: int = 0              # k of an extra self-training target stream; 0 = none
    extra_target_weight: Optional[float] = None  # weight of that stream; None = sum(codebook_weights)
    encodec_source: str = "pretrained"  # 'pretrained', 'random' or a path (see codec.build_encodec)
    standardise_features: bool = False  # per-channel corpus standardisation of the input (random codec)
    chunk_seconds: float = 4.0          # inference chunk length (encode); 4 s = 300 frames
    dropout: float = 0.0                # attention and feed-forward dropout

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


def build_codec(config: EncodecMAEConfig) -> FrozenEncodec:
    """The frozen EnCodec a config asks for: its weights source, its Q codebooks, its standardisation."""
    return build_encodec(config.encodec_source, config.num_codebooks, config.standardise_features)


def get_config(name: str) -> EncodecMAEConfig:
    """A named configuration: tiny, small, base or large (dataclasses.replace to change fields); its
    ``recipe`` says how it trains ('v1' for small, base and large)."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown EnCodecMAE config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


@dataclass
class EncoderOutput:
    """What ``EncodecMAE.encode`` returns.

    hidden_states: L + 2 tensors (B, T, D): the embedding (projection + positions), the ``a``
        stream after each of the L encoder layers, and the encoder output a + LN_final(b).
        For ``EncodecFeatures`` it is [features (B, T, 128)] alone.
    output: (B, T, D), the last of ``hidden_states`` (the paper's "last encoder layer"); None when
        ``encode`` was asked for other layers only.
    frame_lengths: (B,) long, ceil(samples / 320); frames past it are zeros.
    padding_mask: (B, T) bool, True = padding.
    """

    hidden_states: List[Tensor]
    output: Optional[Tensor]
    frame_lengths: Tensor
    padding_mask: Tensor


@dataclass
class PretrainOutput:
    """What ``EncodecMAE.forward`` returns (S = Q codebook streams, plus 1 with an extra stream).

    loss: scalar float32, Σ_s w_s [δ masked_loss_s + (1-δ) unmasked_loss_s].
    masked_loss, unmasked_loss: (S,) mean cross-entropy per stream over masked / visible valid frames.
    mask: (B, T) bool, True = masked.
    logits: (B, T, Q, 1024), the codebook predictions.
    frame_lengths: (B,) long.
    targets: (B, T, Q) long codes, IGNORE at padding.
    masked_accuracy(): scalar, top-1 accuracy over masked valid frames, averaged over the Q codebooks;
        computed when asked (an argmax over every logit: logging steps only).
    """

    loss: Tensor
    masked_loss: Tensor
    unmasked_loss: Tensor
    mask: Tensor
    logits: Tensor
    frame_lengths: Tensor
    targets: Tensor

    @torch.no_grad()
    def masked_accuracy(self) -> Tensor:
        hits = (self.logits.argmax(dim=-1) == self.targets) & self.mask[:, :, None]
        return hits.sum() / (self.mask.sum() * self.targets.shape[-1]).clamp_min(1)


class ChunkedInference(nn.Module):
    """The inference path shared by EnCodecMAE and the EnCodec-features baseline: audio of any length
    cut into ``chunk_frames``-frame chunks, a few at a time through the frozen ``codec`` and whatever
    ``chunk_hidden`` computes on them, laid back in time order.

    Subclasses set ``self.codec`` (a ``FrozenEncodec``) and ``self.chunk_frames`` and implement
    ``hidden_count`` and ``chunk_hidden``.
    """

    codec: FrozenEncodec
    chunk_frames: int

    # --- lengths, chunks and codec features --------------------------------------------------
    @staticmethod
    def frame_lengths(wav_lengths: Tensor) -> Tensor:
        """Frames of a clip of that many 24 kHz samples: ceil(samples / 320)."""
        return FrozenEncodec.frame_lengths(wav_lengths)

    @staticmethod
    def _check_audio(wav: Tensor, wav_lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2 or not wav.is_floating_point():
            raise ValueError(f"EncodecMAE expects wav (batch, samples) float at 24 kHz, got {tuple(wav.shape)} "
                             f"{wav.dtype}")
        if wav_lengths is None:
            wav_lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long)
        wav_lengths = torch.as_tensor(wav_lengths).to(device=wav.device, dtype=torch.long)
        if wav_lengths.shape != (wav.shape[0],):
            raise ValueError(f"wav_lengths must be ({wav.shape[0]},), got {tuple(wav_lengths.shape)}")
        if int(wav_lengths.min()) < 1 or int(wav_lengths.max()) > wav.shape[1]:
            raise ValueError(f"wav_lengths must lie in [1, {wav.shape[1]}] samples, got {wav_lengths.tolist()}")
        return wav, wav_lengths

    def _codec_features(self, segments: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """EnCodec features of N 1-D 24 kHz segments.

        EnCodec runs on each segment at its own length (zero padding would change the frames near
        its end), batching the segments of equal length together.
        Returns features (N, F, 128) float32 zero-padded, frames (N,).
        """
        lengths = torch.tensor([len(segment) for segment in segments])
        frames = self.frame_lengths(lengths)
        out = segments[0].new_zeros(len(segments), int(frames.max()), FEATURE_DIM, dtype=torch.float32)
        for size in torch.unique(lengths).tolist():
            group = (lengths == size).nonzero().squeeze(1)
            features = self.codec.features(torch.stack([segments[i] for i in group.tolist()]))
            out[group.to(out.device), : features.shape[1]] = features
        return out, frames.to(out.device)

    # --- inference ---------------------------------------------------------------------------
    def encode(self, wav: Tensor, wav_lengths: Optional[Tensor] = None, layers: Optional[Sequence[int]] = None,
               chunks_per_step: Optional[int] = None) -> EncoderOutput:
        """Every encoder layer (or the ``layers`` asked for), no masking.

        Args:
            wav: (B, S) float, 24 kHz mono, zero-padded past each clip's length.
            wav_lengths: (B,) samples per clip; None = all S.
            layers: indices into the L + 2 hidden states to keep (negative allowed); None = all.
            chunks_per_step: 4 s chunks that go through EnCodec and the encoder together (None: 16 on a
                GPU, 4 on a CPU).
        Returns:
            ``EncoderOutput``, T = ceil(max length / 320). Clips longer than ``chunk_seconds`` are
            cut into chunks of ``chunk_frames`` frames (4 s = 300) that the encoder sees as
            separate clips (positions restart), the last one at its own length; the chunks'
            frames are concatenated in time. Each clip gives the frames it gives alone. Memory
            beyond the returned states is bounded by ``chunks_per_step``, whatever the length.
        """
        wav, lengths = self._check_audio(wav, wav_lengths)
        frame_lengths = self.frame_lengths(lengths)
        frames = int(frame_lengths.max())
        padding = _padding_mask(frame_lengths, frames)
        index = torch.arange(frames, device=wav.device)[None, :].expand(wav.shape[0], -1)
        clips = [wav[i, :length] for i, length in enumerate(lengths.tolist())]
        hidden = self.collect_blocks(self.encode_blocks(clips, SAMPLE_RATE, index, ~padding, layers, chunks_per_step),
                                     wav.shape[0], frames)
        every = layers is None or self.hidden_count() - 1 in [i % self.hidden_count() for i in layers]
        return EncoderOutput(hidden_states=hidden, output=hidden[-1] if every else None,
                             frame_lengths=frame_lengths, padding_mask=padding)

    @staticmethod
    def collect_blocks(blocks: Iterator[Tuple[Tensor, Tensor, List[Tensor]]], batch: int, frames: int) -> List[Tensor]:
        """Write the blocks of ``encode_blocks`` into zero-initialised (batch, frames, D) tensors."""
        out: Optional[List[Tensor]] = None
        for rows, cols, values in blocks:
            if out is None:
                out = [v.new_zeros(batch, frames, v.shape[-1]) for v in values]
            for tensor, value in zip(out, values, strict=True):
                tensor[rows, cols] = value
            del values  # not held while the next block is computed
        if out is None:
            raise ValueError("no block: nothing to encode")
        return out

    def hidden_count(self) -> int:
        """How many hidden states ``encode`` gives."""
        raise NotImplementedError

    def chunk_hidden(self, features: Tensor, frames: Tensor) -> List[Tensor]:
        """Hidden states (hidden_count() tensors (N, F, D)) of N chunks' features (N, F, 128), frames (N,)."""
        raise NotImplementedError

    def encode_blocks(self, clips: Sequence[Tensor], rate: int, output_index: Tensor, output_valid: Tensor,
                      layers: Optional[Sequence[int]] = None, chunks_per_step: Optional[int] = None
                      ) -> Iterator[Tuple[Tensor, Tensor, List[Tensor]]]:
        """The inference path, ``chunks_per_step`` 4 s chunks at a time, in time order.

        Args:
            clips: B 1-D waveforms at ``rate``, each at its own length (checked by the caller). Each 4 s
                chunk is resampled to 24 kHz when its step comes (``resample_span``: the samples of the
                whole clip's resampling), so no 24 kHz copy of the clips is ever held.
            output_index: (B, J) long, the model frame shown at each output position (the identity for
                ``encode``; s3prl's 213-sample grid for the upstream expert).
            output_valid: (B, J) bool, positions to fill (False = padding).
            layers: hidden-state indices to compute (None = all L + 2).
            chunks_per_step: None = 16 on a GPU, 4 on a CPU.
        Yields:
            (rows, cols, values): the output positions (rows[k], cols[k]) whose frames this step
            computed, and one (K, D) tensor per kept layer. Every valid position comes exactly once.
        """
        count = self.hidden_count()
        keep = list(range(count)) if layers is None else [i % count if -count <= i < count else _bad_layer(i, count)
                                                          for i in layers]
        device = output_index.device
        if chunks_per_step is None:
            chunks_per_step = CHUNKS_PER_STEP if device.type == "cuda" else CPU_CHUNKS_PER_STEP
        chunk_frames = self.chunk_frames
        chunk_samples = chunk_frames * HOP
        lengths = torch.tensor([resampled_length(len(c), rate, SAMPLE_RATE) for c in clips], device=device)
        # the chunk table: chunk i is samples start[i] : start[i] + size[i] of clip[i] at 24 kHz
        chunks = torch.div(lengths + chunk_samples - 1, chunk_samples, rounding_mode="floor")  # (B,)
        first = chunks.cumsum(0) - chunks                                                   # (B,)
        clip = torch.repeat_interleave(torch.arange(len(lengths), device=device), chunks)  # (N,)
        start = (torch.arange(len(clip), device=device) - first[clip]) * chunk_samples
        size = torch.minimum(lengths[clip] - start, torch.full_like(start, chunk_samples))
        # where each output position's frame lives: chunk and frame within it
        chunk_of = first[:, None] + torch.div(output_index, chunk_frames, rounding_mode="floor")  # (B, J)
        frame_of = output_index % chunk_frames
        table = list(zip(clip.tolist(), start.tolist(), (start + size).tolist(), strict=True))
        for begin in range(0, len(table), chunks_per_step):
            end = min(begin + chunks_per_step, len(table))
            segments = [resample_span(clips[c], rate, SAMPLE_RATE, low, high) for c, low, high in table[begin:end]]
            features, frames = self._codec_features(segments)
            hidden = self.chunk_hidden(features, frames)
            rows, cols = (output_valid & (chunk_of >= begin) & (chunk_of < end)).nonzero(as_tuple=True)
            chunk, frame = chunk_of[rows, cols] - begin, frame_of[rows, cols]
            values = [hidden[i][chunk, frame] for i in keep]
            del segments, features, hidden  # not held while the caller writes and the next step computes
            yield rows, cols, values


class EncodecFeatures(ChunkedInference):
    """The paper's EC baseline: the frozen EnCodec encoder's output (128-dim, 75 Hz), standardised with
    the codec's corpus statistics (identity for the real codec). One hidden state."""

    def __init__(self, codec: FrozenEncodec, chunk_seconds: float = 4.0):
        super().__init__()
        self.codec = codec
        self.chunk_frames = int(round(chunk_seconds * FRAME_RATE))

    def hidden_count(self) -> int:
        return 1

    def chunk_hidden(self, features: Tensor, frames: Tensor) -> List[Tensor]:
        return [self.codec.standardise(features)]


class EncodecMAE(ChunkedInference):
    """EnCodecMAE on a frozen EnCodec.

    Args:
        config: sizes and settings.
        codec: a ready ``FrozenEncodec`` (``build_codec(config)``, or another checkpoint's); used as given.
    """

    stream_weights: Tensor
    extra_head: Optional[nn.Linear]

    def __init__(self, config: EncodecMAEConfig, codec: FrozenEncodec):
        super().__init__()
        self.config = config
        if codec.num_codebooks < config.num_codebooks:
            raise ValueError(f"the codec gives {codec.num_codebooks} codebooks, the config predicts "
                             f"{config.num_codebooks}: build it with build_codec(config)")
        self.codec = codec
        self.chunk_frames = config.chunk_frames
        dim = config.dim
        self.feature_projection = nn.Linear(FEATURE_DIM, dim)
        self.positions = SinusoidalPositions(dim)  # one module, one scale: encoder and decoder inputs
        self.encoder = TransformerStack(config.encoder_layers, dim, config.heads, config.ff_dim,
                                        config.interleaved_heads, config.dropout, config.shared_feed_forward)
        self.decoder_projection = nn.Linear(dim, dim)
        if config.resolved_mask_token == "learned":
            self.mask_token = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("mask_token", None)  # v1: dropped frames are zeros
        self.decoder = TransformerStack(config.decoder_layers, dim, config.decoder_heads or config.heads,
                                        config.ff_dim, config.interleaved_heads, config.dropout,
                                        config.shared_feed_forward)
        self.head = nn.Linear(dim, config.num_codebooks * config.codebook_size)
        self.extra_head = nn.Linear(dim, config.extra_targets) if config.extra_targets else None
        self.register_buffer("stream_weights", self._stream_weights(), persistent=False)
        self._init_weights()

    def hidden_count(self) -> int:
        return self.config.encoder_layers + 2

    def chunk_hidden(self, features: Tensor, frames: Tensor) -> List[Tensor]:
        """The embedding, the ``a`` stream after each layer, and the output a + LN(b) of N chunks."""
        x = self.embed(features, frames)
        output, per_layer = self.encoder(x, _padding_mask(frames, features.shape[1]))
        return [x, *per_layer, output]

    def _stream_weights(self) -> Tensor:
        """(S,) loss weight of each target stream: the γ_q, then the extra stream's."""
        config = self.config
        weights = list(config.codebook_weights) + ([config.extra_weight] if config.extra_targets else [])
        return torch.tensor(weights, device="cpu")

    def _init_weights(self) -> None:
        # as v1 (after the official JAX ViT): xavier-uniform linear weights, zero biases
        for name, module in self.named_modules():
            if name.startswith("codec"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def from_state_dict(cls, config: EncodecMAEConfig, state_dict: Dict[str, Tensor]) -> "EncodecMAE":
        """Rebuild a saved model. The state dict holds the codec too, so no EnCodec weights are
        fetched (the codec is built random and overwritten)."""
        with torch.device("meta"):  # no random init to overwrite: the parameters become the loaded tensors
            model = cls(config, codec=build_codec(replace(config, encodec_source="random")))
        model.load_state_dict(state_dict, assign=True)
        # what the state dict does not hold is derived from the config: rebuild it on the loaded device
        device = next(model.parameters()).device
        model.stream_weights = model._stream_weights().to(device)
        leftovers = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftovers:
            raise RuntimeError(f"tensors not in the state dict and not rebuilt: {leftovers[:5]}")
        return model

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, refusing different values under the keys of one tied tensor
        (the shared feed-forward): loading them would silently keep whichever came last."""
        tied: Dict[int, List[str]] = {}
        for key, tensor in self.state_dict(keep_vars=True).items():
            tied.setdefault(id(tensor), []).append(key)
        for keys in tied.values():
            given = [k for k in keys if k in state_dict]
            for key in given[1:]:
                if state_dict[key].shape != state_dict[given[0]].shape or not torch.equal(state_dict[key],
                                                                                          state_dict[given[0]]):
                    raise ValueError(
                        f"the state dict holds different values under {given[0]!r} and {key!r}, which this model "
                        f"ties (shared_feed_forward=True): it comes from a model with one feed-forward per layer; "
                        f"build the model with shared_feed_forward=False to load it")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def embed(self, features: Tensor, frame_lengths: Optional[Tensor] = None) -> Tensor:
        """Raw features (B, T, 128) -> standardise -> projection -> + positions: (B, T, D).
        Frames at or past ``frame_lengths`` are zeroed."""
        x = self.positions(self.feature_projection(self.codec.standardise(features)))
        if frame_lengths is not None:
            x = x.masked_fill(_padding_mask(frame_lengths, x.shape[1])[:, :, None], 0.0)
        return x

    # --- pretraining -------------------------------------------------------------------------
    def forward(self, wav: Optional[Tensor] = None, wav_lengths: Optional[Tensor] = None,
                extra_targets: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                mask: Optional[Tensor] = None, features: Optional[Tensor] = None,
                frame_lengths: Optional[Tensor] = None, codes: Optional[Tensor] = None) -> PretrainOutput:
        """One masked-prediction step, from audio or from a codec cache's output.

        Args:
            wav: (B, S) float, 24 kHz, zero-padded; wav_lengths: (B,) samples (None = all S).
            features, frame_lengths, codes: instead of ``wav``, the frozen codec's output (see
                ``forward_features``), e.g. read from a codec cache.
            extra_targets: (B, T') long self-training codes in [0, extra_targets), IGNORE (-100)
                where unknown; cropped or padded to T. Required iff config.extra_targets > 0.
            generator: randomness of the span mask.
            mask: (B, T) bool to use instead of drawing one (True = masked; padding is ignored).
        Returns:
            ``PretrainOutput``; the loss is float32 whatever the autocast.

        Clips are not cut into chunks here (pretraining crops are 4 s); each is seen whole.
        """
        if features is not None:
            if wav is not None or frame_lengths is None or codes is None:
                raise ValueError("give either wav (and wav_lengths) or features, frame_lengths and codes")
            return self.forward_features(features, frame_lengths, codes, extra_targets, generator, mask)
        if wav is None:
            raise ValueError("give wav (and wav_lengths), or features, frame_lengths and codes")
        wav, lengths = self._check_audio(wav, wav_lengths)
        # one codec pass feeds both the input and the targets
        features, frame_lengths = self._codec_features([wav[i, :length] for i, length in enumerate(lengths.tolist())])
        codes = self.codec.codes(features, self.config.num_codebooks).transpose(1, 2)  # (B, T, Q)
        return self.forward_features(features, frame_lengths, codes, extra_targets, generator, mask)

    def forward_features(self, features: Tensor, frame_lengths: Tensor, codes: Tensor,
                         extra_targets: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                         mask: Optional[Tensor] = None) -> PretrainOutput:
        """The masked-prediction step from the frozen codec's output on (what a codec cache feeds).

        Args:
            features: (B, T, 128) EnCodec encoder output (any float dtype), zero past ``frame_lengths``.
            frame_lengths: (B,) long valid frames per clip.
            codes: (B, T, Q) its RVQ codes (the targets), Q = config.num_codebooks; values past the
                lengths are ignored.
            extra_targets, generator, mask: as ``forward``.
        """
        config = self.config
        batch, frames = features.shape[:2]
        features = features.float()
        frame_lengths = frame_lengths.to(features.device, torch.long)
        padding = _padding_mask(frame_lengths, frames)
        if codes.shape != (batch, frames, config.num_codebooks):
            raise ValueError(f"codes must be (batch, frames, num_codebooks) = {(batch, frames, config.num_codebooks)}"
                             f", got {tuple(codes.shape)}")
        targets = codes.to(features.device, torch.long).masked_fill(padding[:, :, None], IGNORE)

        if mask is None:
            mask = span_mask(frame_lengths, frames, config.mask_prop, config.mask_span, generator,
                             recipe=config.resolved_mask_layout)
        elif mask.shape != (batch, frames):
            raise ValueError(f"mask must be (batch, frames) = {(batch, frames)}, got {tuple(mask.shape)}")
        mask = mask.to(features.device, torch.bool) & ~padding

        # encoder: visible frames only (MAE: dropped frames never reach it)
        x = self.embed(features, frame_lengths)
        visible, visible_padding, visible_index = gather_visible(x, mask, frame_lengths)
        encoded, _ = self.encoder(visible, visible_padding)

        # decoder: every frame, mask token (or zeros) where dropped, positions added again
        decoder_in = scatter_back(self.decoder_projection(encoded), visible_index, visible_padding, frames,
                                  self.mask_token)
        decoded, _ = self.decoder(self.positions(decoder_in), padding)
        logits = self.head(decoded).view(batch, frames, config.num_codebooks, config.codebook_size)

        ce, valid = frame_cross_entropy(logits, targets)
        if self.extra_head is not None:
            if extra_targets is None:
                raise ValueError(f"this model predicts an extra target stream (extra_targets={config.extra_targets}):"
                                 f" pass extra_targets (batch, frames) long")
            extra = self._align_extra_targets(extra_targets, padding)
            extra_ce, extra_valid = frame_cross_entropy(self.extra_head(decoded)[:, :, None, :], extra[:, :, None])
            ce, valid = torch.cat([ce, extra_ce], dim=2), torch.cat([valid, extra_valid], dim=2)
        elif extra_targets is not None:
            raise ValueError("extra_targets given, but this model has no extra head (config.extra_targets = 0)")

        loss, masked_loss, unmasked_loss = masked_prediction_loss(ce, valid, mask, self.stream_weights, config.delta)
        return PretrainOutput(loss=loss, masked_loss=masked_loss.detach(), unmasked_loss=unmasked_loss.detach(),
                              mask=mask, logits=logits, frame_lengths=frame_lengths, targets=targets)

    def _align_extra_targets(self, extra: Tensor, padding: Tensor) -> Tensor:
        """(B, T') -> (B, T): cropped or IGNORE-padded to T, IGNORE at padding, values checked."""
        batch, frames = padding.shape
        if extra.dim() != 2 or extra.shape[0] != batch:
            raise ValueError(f"extra_targets must be (batch={batch}, frames), got {tuple(extra.shape)}")
        extra = extra.to(padding.device, torch.long)[:, :frames]
        if extra.shape[1] < frames:
            extra = F.pad(extra, (0, frames - extra.shape[1]), value=IGNORE)
        extra = extra.masked_fill(padding, IGNORE)
        bad = (extra != IGNORE) & ((extra < 0) | (extra >= self.config.extra_targets))
        if bad.any():
            raise ValueError(f"extra_targets must be in [0, {self.config.extra_targets}) or {IGNORE}, "
                             f"got {extra[bad][:5].tolist()}")
        return extra

    # --- bookkeeping -------------------------------------------------------------------------
    def parameter_counts(self) -> Dict[str, int]:
        """Parameters, each tensor once: codec (frozen EnCodec encoder), encoder_side (codec + projection +
        positions + encoder), decoder_side (the rest), trainable, total; and encoder_side_per_use, which
        counts a shared feed-forward once per layer that uses it, as torchinfo does (the paper's counts)."""
        def count(*modules, per_use=False):
            return sum(p.numel() for m in modules for _, p in m.named_parameters(remove_duplicate=not per_use))

        codec = count(self.codec)
        encoder_modules = (self.feature_projection, self.positions, self.encoder)
        encoder_side = codec + count(*encoder_modules)
        total = count(self)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"codec": codec, "encoder_side": encoder_side, "decoder_side": total - encoder_side,
                "trainable": trainable, "total": total,
                "encoder_side_per_use": codec + count(*encoder_modules, per_use=True)}

    def trainable_parameters(self):
        """What an optimizer should get: everything but the frozen codec."""
        return [p for p in self.parameters() if p.requires_grad]


# --- loss ------------------------------------------------------------------------------------------
def frame_cross_entropy(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """Cross-entropy per frame and stream, in float32.

    Args:
        logits: (B, T, S, K); targets: (B, T, S) long, IGNORE (-100) where nothing is to be predicted.
    Returns:
        ce: (B, T, S) float32, 0 where ignored; valid: (B, T, S) bool.
    """
    batch, frames, streams, classes = logits.shape
    valid = targets != IGNORE
    ce = F.cross_entropy(logits.float().reshape(-1, classes), targets.reshape(-1), ignore_index=IGNORE,
                         reduction="none").view(batch, frames, streams)
    return ce.masked_fill(~valid, 0.0), valid


def masked_prediction_loss(ce: Tensor, valid: Tensor, mask: Tensor, weights: Tensor, delta: float
                           ) -> Tuple[Tensor, Tensor, Tensor]:
    """L = Σ_s w_s [ α Σ_{t∈M} CE + β Σ_{t∉M} CE ],  α = δ/|M|,  β = (1-δ)/(T-|M|).

    Normalisation: |M| and T-|M| are totals over the whole batch (masked, resp. visible, valid
    frames of all clips), counted per stream (a stream's ignored targets do not count); this is
    what v1's loss does. A stream with no masked (visible) frames contributes 0 to that term.

    Args:
        ce, valid: (B, T, S) from ``frame_cross_entropy``; mask: (B, T) bool, True = masked;
        weights: (S,) the γ_q (and the extra stream's weight); delta: δ.
    Returns:
        loss (scalar), masked_loss (S,), unmasked_loss (S,) (the per-stream means, unweighted).
    """
    masked = valid & mask[:, :, None]
    unmasked = valid & ~mask[:, :, None]
    masked_loss = (ce * masked).sum(dim=(0, 1)) / masked.sum(dim=(0, 1)).clamp_min(1)
    unmasked_loss = (ce * unmasked).sum(dim=(0, 1)) / unmasked.sum(dim=(0, 1)).clamp_min(1)
    loss = (weights.to(ce) * (delta * masked_loss + (1.0 - delta) * unmasked_loss)).sum()
    return loss, masked_loss, unmasked_loss


def _bad_layer(index: int, count: int) -> int:
    raise ValueError(f"layer {index} does not exist: this model has {count} hidden states (0..{count - 1}, or "
                     f"-{count}..-1 from the end)")


def _padding_mask(lengths: Tensor, frames: int) -> Tensor:
    """(B,) lengths -> (B, frames) bool, True at and past each length."""
    return torch.arange(frames, device=lengths.device)[None, :] >= lengths[:, None]
