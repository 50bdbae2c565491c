"""Chunked inference, composed into EnCodecMAE and the EC baseline (the frozen EnCodec's output alone).

Audio of any length is cut into 4 s chunks that go a few at a time through the frozen codec and the
model (any ``ChunkModel``), and are laid back in time order; ``encode`` returns every hidden state, which is what
s3prl's Featurizer weighs, and ``encode_blocks`` the same frames a pass at a time on any output grid (s3prl's
213-sample one: ``expert.UpstreamExpert``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

from encodecmae_s3prl.upstream.audio import resample_span, resampled_length
from encodecmae_s3prl.upstream.codec import FEATURE_DIM, FRAME_RATE, HOP, SAMPLE_RATE, FrozenEncodec
from encodecmae_s3prl.upstream.masking import padding_mask
from encodecmae_s3prl.upstream.precision import autocast

# the encoder sees long audio as separate clips of this length (300 frames), the length of its pretraining crops
CHUNK_SECONDS = 4.0

# 4 s chunks per pass (bounds memory for audio of any length). A GPU wants large batches; on a CPU
# more chunks per pass only add activations (the speed per chunk is the same), so fewer (EnCodec's convolutions
# take them one at a time there: FrozenEncodec.features)
CHUNKS_PER_STEP = 16
CPU_CHUNKS_PER_STEP = 4


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


_Model = TypeVar("_Model")


class ChunkModel(Protocol):
    """What chunked inference needs of a model (``EncodecMAE``, the ``EncodecFeatures`` baseline): an
    ``nn.Module`` on a frozen codec, the length of its chunks, its precision setting, what it reads of a pass of
    24 kHz segments and what it computes on them."""

    codec: FrozenEncodec
    chunk_frames: int
    # the autocast of the transformer at inference ('auto' | 'bf16' | 'fp32', ``precision.autocast``); EnCodec and
    # the mel front end stay float32 and the hidden states come back float32 whatever it is
    precision: str

    def input_features(self, segments: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """N 1-D 24 kHz segments -> (N, F, C) features zero-padded, and each one's valid frames (N,) on the CPU."""

    def hidden_count(self) -> int:
        """How many hidden states ``encode`` gives."""

    def chunk_hidden(self, features: Tensor, frames: Optional[Tensor]) -> List[Tensor]:
        """Hidden states (hidden_count() tensors (N, F, D)) of N chunks' features (N, F, C) and valid frames
        (N,) on features' device, None when every chunk fills the F frames (nothing padded)."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def eval(self: _Model) -> _Model: ...


def check_audio(wav: Tensor, wav_lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """wav (B, S) float (a 1-D clip becomes B = 1) and its lengths (B,) long in [1, S] on wav's device (None: all
    S each), or a ValueError saying which is wrong."""
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


def codec_features(codec: FrozenEncodec, segments: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """EnCodec features of N 1-D 24 kHz segments.

    EnCodec runs on each segment at its own length (zero padding would change the frames near
    its end), batching the segments of equal length together.
    Returns features (N, F, 128) float32 zero-padded, frames (N,) on the CPU.
    """
    lengths = torch.tensor([len(segment) for segment in segments])
    frames = FrozenEncodec.frame_lengths(lengths)
    out = segments[0].new_zeros(len(segments), int(frames.max()), FEATURE_DIM, dtype=torch.float32)
    for size in torch.unique(lengths).tolist():
        group = (lengths == size).nonzero().squeeze(1)
        features = codec.features(torch.stack([segments[i] for i in group.tolist()]))
        out[group.to(out.device), : features.shape[1]] = features
    return out, frames


def encode(model: ChunkModel, wav: Tensor, wav_lengths: Optional[Tensor] = None,
           layers: Optional[Sequence[int]] = None, chunks_per_step: Optional[int] = None) -> EncoderOutput:
    """Every hidden state of ``model`` (or the ``layers`` asked for), no masking.

    Args:
        wav: (B, S) float, 24 kHz mono, zero-padded past each clip's length.
        wav_lengths: (B,) samples per clip; None = all S.
        layers: indices into the hidden states to keep (negative allowed); None = all.
        chunks_per_step: 4 s chunks' worth of audio that go through EnCodec and the encoder together (None:
            16 on a GPU, 4 on a CPU); shorter chunks pass more at a time.
    Returns:
        ``EncoderOutput``, T = ceil(max length / 320). Clips longer than 4 s are cut into chunks of
        ``model.chunk_frames`` frames (300) that the encoder sees as separate clips (positions restart), the last
        one at its own length; the chunks' frames are concatenated in time. Each clip gives the frames it gives
        alone. Memory beyond the returned states is bounded by ``chunks_per_step``, whatever the length.
    """
    wav, lengths = check_audio(wav, wav_lengths)
    frame_lengths = FrozenEncodec.frame_lengths(lengths)
    frames = int(frame_lengths.max())
    padding = padding_mask(frame_lengths, frames)
    index = torch.arange(frames, device=wav.device)[None, :].expand(wav.shape[0], -1)
    clips = [wav[i, :length] for i, length in enumerate(lengths.tolist())]
    hidden = collect_blocks(encode_blocks(model, clips, SAMPLE_RATE, index, ~padding, layers, chunks_per_step),
                            wav.shape[0], frames)
    count = model.hidden_count()
    every = layers is None or count - 1 in [i % count for i in layers]
    return EncoderOutput(hidden_states=hidden, output=hidden[-1] if every else None,
                         frame_lengths=frame_lengths, padding_mask=padding)


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


def encode_blocks(model: ChunkModel, clips: Sequence[Tensor], rate: int, output_index: Tensor,
                  output_valid: Tensor, layers: Optional[Sequence[int]] = None,
                  chunks_per_step: Optional[int] = None) -> Iterator[Tuple[Tensor, Tensor, List[Tensor]]]:
    """The inference path, ``chunks_per_step`` 4 s chunks at a time, chunks of equal length together (each
    clip's in time order).

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
    count = model.hidden_count()
    keep = list(range(count)) if layers is None else [i % count if -count <= i < count else _bad_layer(i, count)
                                                      for i in layers]
    device = output_index.device
    if chunks_per_step is None:
        chunks_per_step = CHUNKS_PER_STEP if device.type == "cuda" else CPU_CHUNKS_PER_STEP
    chunk_frames = model.chunk_frames
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
    # chunks of equal length pass together (a clip's full chunks, then the short last chunks), so that a pass is
    # not padded to 4 s for a 1 s tail; the sort is stable, so one clip's chunks stay in time order
    order = sorted(range(len(table)), key=lambda k: table[k][1] - table[k][2])
    # a pass holds up to chunks_per_step 4 s chunks' worth of audio: sixteen 1 s chunks cost what four 4 s do
    passes: List[List[int]] = []
    budget, filled = chunks_per_step * chunk_samples, 0
    for k in order:
        length = table[k][2] - table[k][1]
        if not passes or filled + length > budget:
            passes.append([])
            filled = 0
        passes[-1].append(k)
        filled += length
    slot = torch.full((len(table),), -1, dtype=torch.long, device=device)  # chunk -> its row in the pass
    for ids in passes:
        segments = [resample_span(clips[table[k][0]], rate, SAMPLE_RATE, table[k][1], table[k][2]) for k in ids]
        features, frames = model.input_features(segments)
        padded = bool((frames < features.shape[1]).any())  # on the host
        with autocast(features.device, model.precision):
            hidden = model.chunk_hidden(features, frames.to(features.device) if padded else None)
        slot.fill_(-1)
        slot[torch.tensor(ids, device=device)] = torch.arange(len(ids), device=device)
        # (B, J): the row of each output position's chunk in this pass, or -1 (padding positions point anywhere)
        in_pass = slot[chunk_of.clamp(max=len(table) - 1)].masked_fill(~output_valid, -1)
        rows, cols = (in_pass >= 0).nonzero(as_tuple=True)
        chunk, frame = in_pass[rows, cols], frame_of[rows, cols]
        values = [hidden[i][chunk, frame].float() for i in keep]
        del segments, features, hidden  # not held while the caller writes and the next step computes
        yield rows, cols, values


class EncodecFeatures(nn.Module):
    """The paper's EC baseline: the frozen EnCodec encoder's output (128-dim, 75 Hz), standardised with
    the codec's corpus statistics (identity for the real codec). One hidden state."""

    def __init__(self, codec: FrozenEncodec, chunk_seconds: float = CHUNK_SECONDS):
        super().__init__()
        self.codec = codec
        self.chunk_frames = int(round(chunk_seconds * FRAME_RATE))
        self.precision = "fp32"

    def encode(self, wav: Tensor, wav_lengths: Optional[Tensor] = None, layers: Optional[Sequence[int]] = None,
               chunks_per_step: Optional[int] = None) -> EncoderOutput:
        """The standardised features of clips of any length, in 4 s chunks: ``inference.encode``."""
        return encode(self, wav, wav_lengths, layers, chunks_per_step)

    def input_features(self, segments: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        return codec_features(self.codec, segments)

    def hidden_count(self) -> int:
        return 1

    def chunk_hidden(self, features: Tensor, frames: Optional[Tensor]) -> List[Tensor]:
        return [self.codec.standardise(features)]


def _bad_layer(index: int, count: int) -> int:
    raise ValueError(f"layer {index} does not exist: this model has {count} hidden states (0..{count - 1}, or "
                     f"-{count}..-1 from the end)")
