"""s3prl's UpstreamExpert for EnCodecMAE: adapts s3prl's calling convention to the model, nothing more.

s3prl hands a list of 16 kHz mono waveforms; the model runs at 24 kHz with 75 frames/s,
which is 213.33 input samples per frame — not an integer, while s3prl's Featurizer expects
``round(len(wav) / get_downsample_rates())`` frames (±5) for clips of any length. We report
213 and place output frame j at input sample j·213, i.e. at model frame j·639/640 rounded up:
the model's own frames in order, identical for the first 640 (8.5 s), then one repeated per 640.
"""
from __future__ import annotations

import difflib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.upstream.audio import all_finite, resampled_length
from encodecmae_s3prl.upstream.codec import HOP, SAMPLE_RATE, FrozenEncodec
from encodecmae_s3prl.upstream.inference import ChunkModel, collect_blocks, encode_blocks
from encodecmae_s3prl.upstream.precision import INFERENCE_PRECISIONS, resolved_name

INPUT_RATE = 16_000  # what s3prl hands every upstream
MODEL_RATE = SAMPLE_RATE  # EnCodec 24 kHz
DOWNSAMPLE_RATE = 213  # input samples per output frame, see the module docstring
MIN_INPUT_SAMPLES = DOWNSAMPLE_RATE + 1  # one full frame


class WaveformError(ValueError):
    """A waveform of the batch the upstream cannot take: which one (``index``) and why (``reason``)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"waveform {index}: {reason}")
        self.index, self.reason = index, reason


# what s3prl's runners pass every upstream besides ckpt and model_config, used by other entries than ours
S3PRL_OPTIONS = frozenset({"refresh"})


class UpstreamOptionError(UserError, TypeError):
    """A keyword an upstream entry does not take (a misspelt option)."""


class PrecisionError(UserError, ValueError):
    """An inference precision that is not one of INFERENCE_PRECISIONS (a -g YAML's ``precision:``, say)."""


class UpstreamExpert(nn.Module):
    model: ChunkModel

    def __init__(self, model: ChunkModel, precision: str = "fp32", **kwargs):
        """
        Args:
            model: an ``EncodecMAE`` (or the ``EncodecFeatures`` baseline), built by hubconf's entries.
            precision: the transformer's autocast at inference: 'auto' (bf16 where the device runs it natively:
                CUDA with bf16, AVX-512 BF16 / AMX CPUs; fp32 elsewhere), 'bf16' or 'fp32' (``precision.py``).
        """
        super().__init__()
        unknown = sorted(set(kwargs) - S3PRL_OPTIONS)
        if unknown:  # a misspelt option would otherwise be dropped without a word
            options = ["ckpt", "model_config", "precision", "trust", "encodec_weights", *sorted(S3PRL_OPTIONS)]
            close = difflib.get_close_matches(unknown[0], options, n=1)
            raise UpstreamOptionError(f"unknown upstream option(s) {unknown}"
                                      f"{f' (did you mean {close[0]!r}?)' if close else ''}; options: {options}")
        if precision not in INFERENCE_PRECISIONS:
            raise PrecisionError(f"precision {precision!r} is not one of {INFERENCE_PRECISIONS}")
        self.model = _fitted(model).eval()
        self.model.precision = precision

    @property
    def precision(self) -> str:
        """The precision setting ('auto', 'bf16', 'fp32'); ``ran_as`` says what it runs as here."""
        return self.model.precision

    def ran_as(self) -> str:
        """What the transformer runs as on this upstream's device: 'bf16' or 'fp32'."""
        return resolved_name(next(self.model.parameters()).device, self.model.precision)

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: List[Tensor]) -> Dict[str, Union[Tensor, List[Tensor]]]:
        blocks, batch, out_frames = self._blocks(wavs)
        hidden_states = collect_blocks(blocks, batch, out_frames)
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}

    def stream(self, wav: Tensor, layers: Sequence[int], chunks_per_step: Optional[int] = None
               ) -> Iterator[Tuple[int, List[Tensor]]]:
        """One clip, output frames in time order a few 4 s chunks at a time: (first output frame, one
        (frames, D) tensor per requested hidden-state index). The frames ``forward`` gives, without
        holding them all: what ``extract`` writes to disk for long audio."""
        blocks, _, _ = self._blocks([wav], layers, chunks_per_step)
        for _, cols, values in blocks:
            if len(cols):
                yield int(cols[0]), values

    def _blocks(self, wavs: List[Tensor], layers: Optional[Sequence[int]] = None,
                chunks_per_step: Optional[int] = None):
        """The model's inference blocks laid on s3prl's 213-sample grid, and the output (batch, frames).
        The clips go in at 16 kHz; each chunk is resampled to 24 kHz when its step comes."""
        self._check(wavs)
        clips = [wav.float() for wav in wavs]
        lengths_16k = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        lengths_24k = torch.tensor([resampled_length(len(w), INPUT_RATE, MODEL_RATE) for w in wavs],
                                   device=wavs[0].device)
        out_frames = self.output_frames(lengths_16k)
        index = self._output_index(lengths_16k, FrozenEncodec.frame_lengths(lengths_24k))  # (batch, max out_frames)
        valid = torch.arange(index.shape[1], device=index.device)[None, :] < out_frames[:, None]
        blocks = encode_blocks(self.model, clips, INPUT_RATE, index, valid, layers, chunks_per_step)
        return blocks, len(wavs), index.shape[1]

    @staticmethod
    def _check(wavs: List[Tensor]) -> None:
        """s3prl's input, or a WaveformError naming the waveform and what to do."""
        if not isinstance(wavs, (list, tuple)) or len(wavs) == 0:
            raise ValueError("UpstreamExpert expects a non-empty list of 1-D waveform tensors (16 kHz mono)")
        for i, wav in enumerate(wavs):
            if not isinstance(wav, Tensor) or wav.dim() != 1:
                shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
                raise WaveformError(i, f"expected a 1-D tensor (samples,) of 16 kHz mono audio, got {shape}; "
                                       f"mix channels down and pass one tensor per clip")
            if not wav.is_floating_point():
                raise WaveformError(i, f"expected float samples in [-1, 1], got dtype {wav.dtype}")
            if wav.numel() < MIN_INPUT_SAMPLES:
                raise WaveformError(i, f"{wav.numel()} samples is shorter than one 75 Hz frame "
                                       f"({MIN_INPUT_SAMPLES} samples at 16 kHz); pad or drop the clip")
            if not all_finite(wav):
                raise WaveformError(i, "contains NaN or infinite samples")

    @staticmethod
    def output_frames(samples_16k):
        """Frames s3prl expects for that many 16 kHz samples: round(samples / 213), half up (int or tensor)."""
        if isinstance(samples_16k, Tensor):
            return torch.div(samples_16k * 2 + DOWNSAMPLE_RATE, 2 * DOWNSAMPLE_RATE, rounding_mode="floor")
        return (int(samples_16k) * 2 + DOWNSAMPLE_RATE) // (2 * DOWNSAMPLE_RATE)

    @staticmethod
    def _output_index(lengths_16k: Tensor, model_frames: Tensor) -> Tensor:
        """Model frame shown at each output frame: (batch, max round(len/213)), clamped per clip."""
        out_frames = UpstreamExpert.output_frames(lengths_16k)
        j = torch.arange(int(out_frames.max()), device=lengths_16k.device)
        # j * 213 * 24000 / (16000 * 320) = j * 639 / 640, rounded up
        ratio_num, ratio_den = DOWNSAMPLE_RATE * MODEL_RATE, INPUT_RATE * HOP
        index = torch.div(j * ratio_num + ratio_den - 1, ratio_den, rounding_mode="floor")
        return torch.minimum(index[None, :], (model_frames - 1)[:, None].to(index.device))


class UnfittedCodecError(UserError, ValueError):
    """A random-init EnCodec whose codebooks and feature statistics were never fitted to a corpus."""


def _fitted(model: ChunkModel) -> ChunkModel:
    """Refuse inference on a random codec that was never fitted: its output is ~99 % a constant
    offset, so every clip would give (almost) the same embedding without a word. A mel-input model never reads
    its codec at inference (the codec only makes its training targets)."""
    if getattr(model, "mel", None) is None and model.codec.needs_corpus_init():
        raise UnfittedCodecError(
            "this upstream runs on a random-init EnCodec whose codebooks "
            "and feature statistics were never fitted to a corpus, so every clip would embed (almost) the same. "
            "Give it real EnCodec weights (encodec_24khz-d7cc33bc.th), or the checkpoint of a pretraining run "
            "(states-N.ckpt), whose random codec was fitted to its corpus")
    return model

