"""EnCodecMAE: a masked autoencoder over frozen EnCodec features that predicts EnCodec's RVQ codes.

One way in per job:

- pretraining: ``forward(features, frame_lengths, codes, ...)`` on the frozen codec's output, read from a codec
  cache or computed from audio by ``training_inputs(wav, wav_lengths)`` (one codec pass for both);
- inference: ``encode(wav, wav_lengths)``: no masking, long audio in 4 s chunks (``inference.encode``, composed).

Data flow of a training step:

    wav (24 kHz) -> frozen EnCodec encoder -> features (B, T, 128) at 75 frames/s   [training_inputs]
        features -> RVQ codes (B, T, Q): the targets
        features -> [standardise] -> Linear 128->D -> + positions -> span mask, drop masked frames   [forward]
        -> encoder (visible frames only) -> Linear D->D -> mask token at the dropped frames
        -> + positions (the same module, one shared scale) -> decoder (2 layers) -> head -> (B, T, Q, 1024)

``build_model`` is the one way to make a fresh model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from encodecmae_s3prl.upstream import inference
from encodecmae_s3prl.upstream.codec import FEATURE_DIM, FrozenEncodec, build_encodec
from encodecmae_s3prl.upstream.components import SinusoidalPositions, TransformerStack
from encodecmae_s3prl.upstream.config import EncodecMAEConfig
from encodecmae_s3prl.upstream.inference import EncoderOutput
from encodecmae_s3prl.upstream.loss import IGNORE, frame_cross_entropy, masked_prediction_loss
from encodecmae_s3prl.upstream.masking import HostMask, gather_visible, padding_mask, scatter_back, span_mask
from encodecmae_s3prl.upstream.mel import MelFrontEnd


def build_codec(config: EncodecMAEConfig, encodec_weights: str | None = None) -> FrozenEncodec:
    """The frozen EnCodec a config asks for: its weights source, its Q codebooks, its standardisation; a pretrained
    one from ``encodec_weights`` (see ``codec.build_encodec``)."""
    return build_encodec(config.encodec_source, config.num_codebooks, config.standardise_features,
                         weights=encodec_weights)


def build_model(config: EncodecMAEConfig, seed: int = 0, codec: Optional[FrozenEncodec] = None,
                encodec_weights: str | None = None) -> EncodecMAE:
    """The one way to make a fresh model: seeded (the same seed, the same weights), on ``codec`` when
    given (e.g. another checkpoint's), else on the codec the config asks for (``build_codec``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EncodecMAE(config, codec=codec if codec is not None else build_codec(config, encodec_weights))


class TrainingInputs(NamedTuple):
    """What a training step reads of a batch: the frozen codec's output, which a codec cache stores.

    features: (B, T, 128) EnCodec encoder output (any float dtype; (B, T, 256) log-mel frames for a mel256
        model), zero past ``frame_lengths``.
    frame_lengths: (B,) long valid frames per clip, ceil(samples / 320).
    codes: (B, T, Q) the RVQ codes of the EnCodec features (the targets), Q = config.num_codebooks.
    """

    features: Tensor
    frame_lengths: Tensor
    codes: Tensor


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


class EncodecMAE(nn.Module):
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
        self.chunk_frames = config.chunk_frames  # inference: chunks of the pretraining crops' length
        self.precision = "fp32"  # inference: the transformer's autocast ('auto' | 'bf16' | 'fp32')
        dim = config.dim
        self.mel = MelFrontEnd() if config.input == "mel256" else None
        self.feature_projection = nn.Linear(self.mel.dim if self.mel is not None else FEATURE_DIM, dim)
        self.positions = SinusoidalPositions(dim)  # v1: one module, one scale for encoder and decoder inputs
        self.decoder_positions = SinusoidalPositions(dim) if config.decoder_positions == "own" else None
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
        self.head = nn.Linear(dim, config.num_codebooks * config.codebook_size) if config.codec_targets else None
        self.extra_head = nn.Linear(dim, config.extra_targets) if config.extra_targets else None
        self.register_buffer("stream_weights", self._stream_weights(), persistent=False)
        self._init_weights()

    # --- inference (``inference.ChunkModel``) -------------------------------------------------
    def encode(self, wav: Tensor, wav_lengths: Optional[Tensor] = None, layers: Optional[Sequence[int]] = None,
               chunks_per_step: Optional[int] = None) -> EncoderOutput:
        """Every hidden state (or the ``layers`` asked for) of clips of any length, no masking.

        Args:
            wav: (B, S) float, 24 kHz mono, zero-padded past each clip's length; wav_lengths: (B,) samples (None:
                all S); layers: indices into the L + 2 hidden states (negative allowed; None: all);
                chunks_per_step: 4 s chunks' worth of audio per pass (None: 16 on a GPU, 4 on a CPU).
        Returns:
            ``EncoderOutput``: hidden_states, L + 2 tensors (B, T, D) with T = ceil(max length / 320) (the
            embedding, the ``a`` stream after each layer, the output a + LN(b)); output (B, T, D); frame_lengths
            (B,); padding_mask (B, T). Audio longer than 4 s is encoded in 4 s chunks (``inference.encode``).
        """
        return inference.encode(self, wav, wav_lengths, layers, chunks_per_step)

    def hidden_count(self) -> int:
        return self.config.encoder_layers + 2

    def chunk_hidden(self, features: Tensor, frames: Optional[Tensor]) -> List[Tensor]:
        """The embedding, the ``a`` stream after each layer, and the output a + LN(b) of N chunks."""
        x = self.embed(features, frames)
        output, per_layer = self.encoder(x, None if frames is None else padding_mask(frames, features.shape[1]))
        return [x, *per_layer, output]

    def _stream_weights(self) -> Tensor:
        """(S,) loss weight of each target stream: the γ_q, then the extra stream's."""
        config = self.config
        weights = (list(config.codebook_weights) if config.codec_targets else []) + \
            ([config.extra_weight] if config.extra_targets else [])
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

    def input_features(self, segments) -> tuple[Tensor, Tensor]:
        """What the encoder reads of N 1-D 24 kHz segments: (N, F, 128) EnCodec features or (N, F, 256) log-mel
        frames, zero-padded, and each one's valid frames (N,) on the CPU (for mel, those read as keys)."""
        return self.mel.features(segments) if self.mel is not None else inference.codec_features(self.codec, segments)

    def embed(self, features: Tensor, frame_lengths: Optional[Tensor] = None) -> Tensor:
        """Raw features (B, T, 128 or 256) -> standardise (EnCodec's) -> projection -> + positions: (B, T, D).
        EnCodec frames at or past ``frame_lengths`` are zeroed; mel frames past them are real frames that v2 reads
        as queries only (``mel``), so they stay."""
        if self.mel is not None:
            return self.positions(self.feature_projection(features))
        x = self.positions(self.feature_projection(self.codec.standardise(features)))
        if frame_lengths is not None:
            x = x.masked_fill(padding_mask(frame_lengths, x.shape[1])[:, :, None], 0.0)
        return x

    # --- pretraining -------------------------------------------------------------------------
    def training_inputs(self, wav: Tensor, wav_lengths: Optional[Tensor] = None) -> TrainingInputs:
        """What ``forward`` reads, from audio: one frozen-codec pass gives the input features and the targets
        (a mel256 model reads log-mel frames on the same grid; the codec then makes its targets only).

        Args:
            wav: (B, S) float, 24 kHz, zero-padded; wav_lengths: (B,) samples (None = all S).
        Clips are not cut into chunks here (pretraining crops are 4 s); each is seen whole.
        """
        wav, lengths = inference.check_audio(wav, wav_lengths)
        segments = [wav[i, :length] for i, length in enumerate(lengths.tolist())]
        features, frame_lengths = inference.codec_features(self.codec, segments)
        codes = self.codec.codes(features, self.config.num_codebooks).transpose(1, 2)  # (B, T, Q)
        if self.mel is not None:
            features = self.mel.features(segments)[0].to(features.device)  # the same grid: ceil(samples / 320)
        return TrainingInputs(features, frame_lengths, codes)

    def forward(self, features: Tensor, frame_lengths: Tensor, codes: Tensor,
                extra_targets: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                mask: Union[Tensor, HostMask, None] = None, validate_targets: bool = True) -> PretrainOutput:
        """One masked-prediction step on the frozen codec's output (``TrainingInputs``: a codec cache's batch, or
        ``training_inputs(wav, wav_lengths)``).

        Args:
            features: (B, T, 128) EnCodec encoder output (any float dtype; (B, T, 256) log-mel frames for a mel256
                model), zero past ``frame_lengths``.
            frame_lengths: (B,) long valid frames per clip.
            codes: (B, T, Q) its RVQ codes (the targets), Q = config.num_codebooks; values past the
                lengths are ignored.
            extra_targets: (B, T') long self-training codes in [0, extra_targets), IGNORE (-100)
                where unknown; cropped or padded to T. Required iff config.extra_targets > 0.
            generator: randomness of the span mask.
            mask: instead of drawing one, a (B, T) bool tensor (True = masked; padding is ignored), whose
                shapes are then read once (a device->host sync), or a ``HostMask``: drawn on the host with its
                shapes, the step then never reads the device.
            validate_targets: check that ``extra_targets`` lie in range, which reads them (a device->host sync);
                False where they were checked where they were read (the training loader: ``TargetStore.slice``).
        Returns:
            ``PretrainOutput``; the loss is float32 whatever the autocast.

        With a ``HostMask`` and ``validate_targets=False`` nothing here reads the device: host tensors are
        copied without blocking, and every shape comes from the host.
        """
        config = self.config
        batch, frames = features.shape[:2]
        features = features.float()
        frame_lengths = frame_lengths.to(features.device, torch.long, non_blocking=True)
        padding = padding_mask(frame_lengths, frames)
        if codes.shape != (batch, frames, config.num_codebooks):
            raise ValueError(f"codes must be (batch, frames, num_codebooks) = {(batch, frames, config.num_codebooks)}"
                             f", got {tuple(codes.shape)}")
        targets = codes.to(features.device, torch.long, non_blocking=True).masked_fill(padding[:, :, None], IGNORE)

        if mask is None:
            mask = span_mask(frame_lengths, frames, config.mask_prop, config.mask_span, generator,
                             recipe=config.resolved_mask_layout)
        given = mask.mask if isinstance(mask, HostMask) else mask
        if given.shape != (batch, frames):
            raise ValueError(f"mask must be (batch, frames) = {(batch, frames)}, got {tuple(given.shape)}")
        # the shapes that follow from the mask, known on the host: drawn there by the loader, or read once here
        host = mask if isinstance(mask, HostMask) else HostMask.of(given, frame_lengths)
        masked = host.mask.to(features.device, torch.bool, non_blocking=True) & ~padding

        # encoder: visible frames only (MAE: dropped frames never reach it)
        x = self.embed(features, frame_lengths)
        visible, visible_padding, visible_index = gather_visible(x, masked, frame_lengths, host.visible_width)
        encoded, _ = self.encoder(visible, visible_padding if host.visible_padded else None)

        # decoder: every frame, mask token (or zeros) where dropped, positions added again
        decoder_in = scatter_back(self.decoder_projection(encoded), visible_index, visible_padding, frames,
                                  self.mask_token)
        decoder_positions = self.decoder_positions if self.decoder_positions is not None else self.positions
        decoded, _ = self.decoder(decoder_positions(decoder_in), padding if host.padded else None)
        logits = (self.head(decoded).view(batch, frames, config.num_codebooks, config.codebook_size)
                  if self.head is not None else decoded.new_zeros(batch, frames, 0, config.codebook_size))

        targets = targets[:, :, :logits.shape[2]]  # the codebooks predicted (none for a k-means-only model)
        ce, valid = frame_cross_entropy(logits, targets)
        if self.extra_head is not None:
            if extra_targets is None:
                raise ValueError(f"this model predicts an extra target stream (extra_targets={config.extra_targets}):"
                                 f" pass extra_targets (batch, frames) long")
            extra = self._align_extra_targets(extra_targets, padding, validate_targets)
            extra_ce, extra_valid = frame_cross_entropy(self.extra_head(decoded)[:, :, None, :], extra[:, :, None])
            ce, valid = torch.cat([ce, extra_ce], dim=2), torch.cat([valid, extra_valid], dim=2)
        elif extra_targets is not None:
            raise ValueError("extra_targets given, but this model has no extra head (config.extra_targets = 0)")

        loss, masked_loss, unmasked_loss = masked_prediction_loss(ce, valid, masked, self.stream_weights, config.delta)
        return PretrainOutput(loss=loss, masked_loss=masked_loss.detach(), unmasked_loss=unmasked_loss.detach(),
                              mask=masked, logits=logits, frame_lengths=frame_lengths, targets=targets)

    def _align_extra_targets(self, extra: Tensor, padding: Tensor, validate: bool = True) -> Tensor:
        """(B, T') -> (B, T): cropped or IGNORE-padded to T, IGNORE at padding, values checked if ``validate``."""
        batch, frames = padding.shape
        if extra.dim() != 2 or extra.shape[0] != batch:
            raise ValueError(f"extra_targets must be (batch={batch}, frames), got {tuple(extra.shape)}")
        extra = extra.to(padding.device, torch.long, non_blocking=True)[:, :frames]
        if extra.shape[1] < frames:
            extra = F.pad(extra, (0, frames - extra.shape[1]), value=IGNORE)
        extra = extra.masked_fill(padding, IGNORE)
        # the check reads the device, so the training step, whose targets TargetStore.slice checked on the host as
        # it read them, skips it (validate=False); other callers keep the clear error instead of a device-side assert
        if not validate:
            return extra
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
