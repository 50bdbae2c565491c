"""The frozen EnCodec 24 kHz front end: SEANet encoder (features) and residual VQ (targets).

EnCodecMAE reads EnCodec's 128-dim encoder output at 75 frames/s as its input and the first
Q codes of its residual vector quantizer as its targets. Both stay frozen for real: no gradients,
and eval mode whatever the parent's mode, because encodec's RVQ in train mode moves its codebooks
(EMA updates, dead-code replacement) and the targets would drift. Everything that decides the targets
(encoder weights, codebooks, the standardisation statistics) lives in this module's state dict, so a checkpoint always
reproduces its own targets.

Weights come from ``build_encodec(source, weights=...)``: 'pretrained' (the encodec package's file, found by
``locate_encodec_weights(weights)``: the file a command was given (``ENCODEC_CKPT``), the torch hub cache or
a download), a local path, or 'random' (seeded random init; then fit the codebooks and the standardisation to
a corpus with ``init_from_corpus``).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.settings import ENCODEC_ENV
from encodecmae_s3prl.upstream.checkpoint import safe_load
from encodecmae_s3prl.upstream.kmeans import assign, kmeans

if TYPE_CHECKING:  # the encodec modules these are (mypy reads encodec as untyped: pyproject.toml [tool.mypy])
    from encodec.modules import SEANetEncoder
    from encodec.modules.conv import SConv1d
    from encodec.quantization import ResidualVectorQuantizer
    from encodec.quantization.core_vq import EuclideanCodebook

SAMPLE_RATE = 24_000
HOP = 320                    # samples per frame: 75 frames/s
FRAME_RATE = SAMPLE_RATE // HOP  # EnCodec frames per second (75)
FEATURE_DIM = 128
CODEBOOK_SIZE = 1024         # bins of every RVQ stage
ENCODEC_FILE = "encodec_24khz-d7cc33bc.th"  # the name the encodec package downloads to the torch hub cache
ENCODEC_URL = f"https://dl.fbaipublicfiles.com/encodec/v0/{ENCODEC_FILE}"
ENCODEC_HASH = "d7cc33bc"  # the start of the file's SHA-256, as its name carries it
RANDOM_CODEC_SEED = 20230914  # one fixed random EnCodec for every 'random' build


class EncodecWeightsError(UserError, RuntimeError):
    """EnCodec weights could not be found or do not fit the 24 kHz model."""


class FrozenEncodec(nn.Module):
    """EnCodec's encoder and quantizer, frozen, with per-channel feature standardisation.

    Args:
        encoder: ``encodec.modules.SEANetEncoder`` of the 24 kHz model (hop 320, 128 channels).
        quantizer: its ``ResidualVectorQuantizer`` (32 stages of 1024 codes).
        num_codebooks: Q, the default number of RVQ stages used as targets.
        standardise: whether ``init_from_corpus`` sets the standardisation statistics (the
            statistics themselves are identity until it does).
    """

    # buffers (register_buffer), declared for the type checker
    feature_mean: Tensor
    feature_std: Tensor
    random_weights: Tensor
    corpus_initialised: Tensor

    def __init__(self, encoder: SEANetEncoder, quantizer: ResidualVectorQuantizer, num_codebooks: int = 8,
                 standardise: bool = False):
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer
        self._rows = _RowLengths()
        _pad_by_copying(encoder, self._rows)
        self.lstm_index = _lstm_index(encoder)
        stages = len(quantizer.vq.layers)
        if not 1 <= num_codebooks <= stages:
            raise ValueError(f"FrozenEncodec: num_codebooks must be in 1..{stages} (RVQ stages), got {num_codebooks}")
        self.num_codebooks = num_codebooks
        self.standardise_on_init = standardise
        self.register_buffer("feature_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feature_std", torch.ones(FEATURE_DIM))
        # whether the weights are random (then the model needs corpus statistics and codebooks)
        self.register_buffer("random_weights", torch.tensor(False))
        self.register_buffer("corpus_initialised", torch.tensor(False))
        self.requires_grad_(False)
        super().train(False)

    # --- frozen for real -------------------------------------------------------------
    def train(self, mode: bool = True) -> "FrozenEncodec":
        """Always eval: the parent's ``train()`` must not put encodec's RVQ into its updating mode."""
        return super().train(False)

    @property
    def stages(self) -> int:
        return len(self.quantizer.vq.layers)

    def needs_corpus_init(self) -> bool:
        """True for random weights whose codebooks and statistics were never fitted to a corpus."""
        return bool(self.random_weights) and not bool(self.corpus_initialised)

    # --- features and targets ----------------------------------------------------------
    @staticmethod
    def frame_lengths(wav_lengths: Tensor) -> Tensor:
        """Frames EnCodec gives for a clip of that many samples: ceil(samples / 320)."""
        return torch.div(wav_lengths + HOP - 1, HOP, rounding_mode="floor")

    def features(self, wav: Tensor, lengths: Optional[Sequence[int]] = None) -> Tensor:
        """wav (B, S) float at 24 kHz -> (B, ceil(S / 320), 128) float32.

        Without ``lengths`` all S samples of every row are valid: clips must be cut to their own length
        before (zero padding changes the frames near the end). With ``lengths`` (B,), rows of different
        lengths zero-padded to S, a multiple of 320: row i's first ceil(lengths[i] / 320) frames are those
        of the row encoded alone (EnCodec is causal; the reflect padding that completes a row's last stride
        is rebuilt at the row's own end in every layer), the frames after them are to be dropped.

        Runs in float32 without gradients whatever the surrounding autocast.
        """
        if wav.dim() != 2 or wav.shape[1] == 0:
            raise ValueError(f"FrozenEncodec.features expects (batch, samples>0) 24 kHz audio, got {tuple(wav.shape)}")
        if lengths is not None and (wav.shape[1] % HOP or len(lengths) != len(wav)):
            raise ValueError(f"FrozenEncodec.features: padded rows need S a multiple of {HOP} and one length per "
                             f"row, got {tuple(wav.shape)} and {len(lengths)} lengths")
        rows = [int(n) for n in lengths] if lengths is not None else None
        x = wav.float()[:, None, :]
        with torch.no_grad(), torch.autocast(wav.device.type, enabled=False):
            if wav.device.type == "cpu" and len(wav) > 1:
                # on a CPU the convolutions run fastest one clip at a time (a batch's activations outgrow the
                # caches) and the LSTM batched (at batch 1 its small matmuls leave the cores idle); measured in
                # benchmarks/README.md
                head, tail = self.encoder.model[: self.lstm_index], self.encoder.model[self.lstm_index:]
                parts = []
                for i in range(len(x)):
                    # a padded row only up to the 320-sample frame after its end: no convolution on its padding
                    end = x.shape[-1] if rows is None else -(-rows[i] // HOP) * HOP
                    with self._rows.set(None if rows is None else rows[i: i + 1]):
                        parts.append(head(x[i: i + 1, :, :end]))
                longest = max(part.shape[-1] for part in parts)  # the rest is causal: padding after a row is inert
                out = tail(torch.cat([nn.functional.pad(part, (0, longest - part.shape[-1])) for part in parts]))
            else:
                with self._rows.set(rows):
                    out = self.encoder(x)  # (B, 128, T)
        return out.transpose(1, 2).contiguous()

    def standardise(self, features: Tensor) -> Tensor:
        """Per-channel (features - mean) / std; identity unless ``init_from_corpus`` set them."""
        return (features - self.feature_mean) / self.feature_std

    def codes(self, features: Tensor, num_codebooks: Optional[int] = None) -> Tensor:
        """RVQ codes of raw (un-standardised) features: (B, T, 128) -> (B, Q, T) long in [0, 1024)."""
        q = self._check_q(num_codebooks)
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            codes = self.quantizer.vq.encode(features.float().transpose(1, 2), n_q=q)  # (Q, B, T)
        return codes.permute(1, 0, 2)

    def quantization_errors(self, features: Tensor, num_codebooks: Optional[int] = None) -> Tensor:
        """Mean Euclidean distance between each stage's input residual and its chosen codeword.

        features: (..., 128) raw valid frames (select them before; padding would count) -> (Q,).
        Normalised to sum 1, these are the γ_q loss weights of the paper.
        """
        q = self._check_q(num_codebooks)
        residual = features.reshape(-1, FEATURE_DIM).float()
        errors = []
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            for layer in self.quantizer.vq.layers[:q]:
                codeword = layer._codebook.embed[assign(residual, layer._codebook.embed)]
                errors.append((residual - codeword).norm(dim=1).mean())
                residual = residual - codeword
        return torch.stack(errors)

    def _check_q(self, num_codebooks: Optional[int]) -> int:
        q = self.num_codebooks if num_codebooks is None else int(num_codebooks)
        if not 1 <= q <= self.stages:
            raise ValueError(f"num_codebooks must be in 1..{self.stages}, got {q}")
        return q

    # --- fitting a random codec to a corpus ----------------------------------------------
    @torch.no_grad()
    def init_from_corpus(self, features: Tensor, seed: int = 0, num_codebooks: Optional[int] = None,
                         iterations: int = 10) -> None:
        """Fit the standardisation (if enabled) and the first Q RVQ codebooks to corpus frames.

        Stage q's codebook is k-means (k = 1024, ``iterations`` Lloyd steps, seeded) on the
        residual left by stages < q, exactly the residual it will quantise.

        Args:
            features: (N, 128) raw valid frames of the corpus. With N < 1024 some codewords repeat.
        """
        q = self._check_q(num_codebooks)
        features = features.reshape(-1, FEATURE_DIM).float().to(self.feature_mean.device)
        if features.shape[0] < 2:
            raise ValueError(f"init_from_corpus needs at least 2 frames, got {features.shape[0]}")
        if self.standardise_on_init:
            self.feature_mean.copy_(features.mean(dim=0))
            # a random-init encoder varies ~1 % around its bias: keep tiny stds, only guard zeros
            self.feature_std.copy_(features.std(dim=0).clamp_min(1e-8))
        residual = features
        for stage, layer in enumerate(self.quantizer.vq.layers[:q]):
            centroids = kmeans(residual, CODEBOOK_SIZE, iterations, seed=seed + stage, init="random",
                               allow_repeats=True)
            nearest = assign(residual, centroids)
            _set_codebook(layer._codebook, centroids, torch.bincount(nearest, minlength=CODEBOOK_SIZE).float())
            residual = residual - centroids[nearest]
        self.corpus_initialised.fill_(True)

    @torch.no_grad()
    def init_from_audio(self, wavs: Sequence[Tensor], seed: int = 0, num_codebooks: Optional[int] = None,
                        iterations: int = 10) -> None:
        """``init_from_corpus`` on the frames of a few 24 kHz clips (1-D tensors of any lengths)."""
        device = self.feature_mean.device
        by_length: Dict[int, List[Tensor]] = {}
        for wav in wavs:
            by_length.setdefault(int(wav.numel()), []).append(wav.reshape(-1).to(device))
        frames = [self.features(torch.stack(group)).reshape(-1, FEATURE_DIM) for group in by_length.values()]
        self.init_from_corpus(torch.cat(frames), seed=seed, num_codebooks=num_codebooks, iterations=iterations)


def _set_codebook(codebook: EuclideanCodebook, centroids: Tensor, counts: Tensor) -> None:
    """Write an encodec ``EuclideanCodebook``'s buffers as if it had been trained to ``centroids``."""
    codebook.embed.copy_(centroids)
    codebook.embed_avg.copy_(centroids)
    codebook.cluster_size.copy_(counts)
    codebook.inited.fill_(1.0)  # 0 would make encodec's forward path re-run its own k-means


# --- padding -----------------------------------------------------------------------------------
class _RowLengths:
    """The valid length of each row of the batch going through the encoder, at the current layer's input
    (None: every row is valid to its end). Strided convolutions shorten it as they go."""

    def __init__(self) -> None:
        self.lengths: Optional[Tensor] = None

    @contextlib.contextmanager
    def set(self, lengths: Optional[Sequence[int]]) -> Iterator[None]:
        self.lengths = None if lengths is None else torch.tensor(list(lengths))
        try:
            yield
        finally:
            self.lengths = None


def _pad_by_copying(encoder: nn.Module, rows: _RowLengths) -> None:
    """Give every ``SConv1d`` of ``encoder`` a forward that pads as encodec does (reflect, causal or
    centred, the extra right padding for a whole last window) but builds the padded tensor with one
    ``torch.cat``: on CPUs ``reflection_pad1d`` runs several times slower than a copy (benchmarks/README.md).
    The same values, so the same features; only this instance changes, not the encodec package.
    With ``rows`` set, each row of a padded batch also gets its own end's padding (``_pad_row_ends``)."""
    from encodec.modules.conv import SConv1d

    for module in encoder.modules():
        if isinstance(module, SConv1d):
            module.forward = functools.partial(_sconv1d_forward, module, rows)


def _lstm_index(encoder: SEANetEncoder) -> int:
    """Position of the SLSTM in SEANetEncoder.model (convolutions before it, the LSTM and a last conv after)."""
    from encodec.modules.lstm import SLSTM

    return next(i for i, module in enumerate(encoder.model) if isinstance(module, SLSTM))


def _sconv1d_forward(module: SConv1d, rows: _RowLengths, x: Tensor) -> Tensor:
    from encodec.modules.conv import SConv1d, get_extra_padding_for_conv1d

    conv = module.conv.conv
    kernel, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    total = (kernel - 1) * dilation - (stride - 1)
    if rows.lengths is not None and stride > 1:
        if not module.causal or module.pad_mode != "reflect" or x.shape[-1] % stride:
            raise NotImplementedError("rows of different lengths in one batch need EnCodec's causal reflect-padded "
                                      "convolutions and a batch length that every stride divides")
        x = _pad_row_ends(x, rows.lengths.to(x.device), stride)
        rows.lengths = torch.div(rows.lengths + stride - 1, stride, rounding_mode="floor")
    extra = get_extra_padding_for_conv1d(x, kernel, stride, total)
    left, right = (total, extra) if module.causal else (total - total // 2, total // 2 + extra)
    if module.pad_mode != "reflect" or x.shape[-1] <= max(left, right):
        return SConv1d.forward(module, x)  # encodec's own path (zero padding, or input shorter than the pad)
    return module.conv(reflect_pad(x, left, right))


def _pad_row_ends(x: Tensor, lengths: Tensor, stride: int) -> Tensor:
    """(B, C, T) rows valid up to ``lengths`` (B,): after each row's end, the reflect padding a causal conv of
    this stride adds to a row of that length alone (``get_extra_padding_for_conv1d``: up to the next multiple
    of the stride, x[l - 2], x[l - 3], ...), so its last output frame is the one it has alone."""
    time = torch.arange(x.shape[-1], device=x.device)[None, :]              # (1, T)
    ends = lengths[:, None]                                                 # (B, 1)
    extra = (ends + stride - 1) // stride * stride - ends                   # (B, 1)
    source = torch.where((time >= ends) & (time < ends + extra), 2 * ends - 2 - time, time)  # (B, T)
    return x.gather(-1, source[:, None, :].expand(-1, x.shape[1], -1))


def reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """``F.pad(x, (left, right), mode='reflect')`` along the last axis, for pads shorter than it, by copying."""
    if left == 0 and right == 0:
        return x
    parts = [x[..., 1: left + 1].flip(-1)] if left else []
    parts.append(x)
    if right:
        parts.append(x[..., -right - 1: -1].flip(-1))
    return torch.cat(parts, dim=-1)


# --- where the weights come from --------------------------------------------------------------
def _encodec_24khz():
    """The 24 kHz EncodecModel, random init (callers keep its encoder and quantizer, never the decoder)."""
    from encodec import EncodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm deprecation
        return EncodecModel.encodec_model_24khz(pretrained=False)


def build_encodec(source: str = "pretrained", num_codebooks: int = 8, standardise: bool = False,
                  weights: Optional[str] = None) -> FrozenEncodec:
    """A ``FrozenEncodec`` with weights from ``source``.

    Args:
        source: 'pretrained' (the file ``locate_encodec_weights(weights)`` finds), a path to an EnCodec 24 kHz
            state dict (``.th``), or 'random' (a fixed seeded random init, codebooks seeded Gaussian; fit them
            with ``init_from_corpus`` before training on its targets).
        num_codebooks, standardise: see ``FrozenEncodec``.
        weights: where 'pretrained' comes from, as the user said it (commands pass ``ENCODEC_CKPT``): a file,
            'random' (the random-init codec instead), or None (the torch hub cache, then a download).
    """
    path = None
    if source == "pretrained":
        path = locate_encodec_weights(weights)
    elif source != "random":
        path = Path(source).expanduser()
        if not path.is_file():
            raise EncodecWeightsError(
                f"encodec_source {source!r} is neither 'pretrained', 'random' nor an existing file; give the "
                f"path of {ENCODEC_FILE} (EnCodec 24 kHz weights).")
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_CODEC_SEED)
            model = _encodec_24khz()
        codec = FrozenEncodec(model.encoder, model.quantizer, num_codebooks, standardise)
        # encodec leaves codebooks at zero with inited = 0 (every code would be 0): seed them instead
        generator = torch.Generator().manual_seed(RANDOM_CODEC_SEED)
        for layer in codec.quantizer.vq.layers:
            centroids = torch.randn(CODEBOOK_SIZE, FEATURE_DIM, generator=generator)
            _set_codebook(layer._codebook, centroids, torch.ones(CODEBOOK_SIZE))
        codec.random_weights.fill_(True)
        return codec
    state = safe_load(path)
    where = str(path)
    model = _encodec_24khz()
    codec = FrozenEncodec(model.encoder, model.quantizer, num_codebooks, standardise)
    load_encodec_state(codec, state, where)
    return codec


def load_encodec_state(codec: FrozenEncodec, state: dict, where: str = "the state dict") -> None:
    """Copy an ``EncodecModel`` 24 kHz state dict (``encoder.*``, ``quantizer.*``; ``decoder.*`` ignored)."""
    if not isinstance(state, dict):
        raise EncodecWeightsError(f"{where}: expected an EnCodec state dict, got {type(state).__name__}")
    for part in ("encoder", "quantizer"):
        module = getattr(codec, part)
        sub = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
        expected = set(module.state_dict())
        missing, unexpected = sorted(expected - set(sub)), sorted(set(sub) - expected)
        if missing or unexpected:
            raise EncodecWeightsError(
                f"{where} is not an EnCodec 24 kHz state dict: {part}.* keys missing {missing[:4]} "
                f"({len(missing)} in all), unexpected {unexpected[:4]} ({len(unexpected)} in all). Expected the "
                f"file {ENCODEC_FILE} of the encodec package (keys encoder.*, quantizer.*, decoder.*).")
        try:
            module.load_state_dict(sub)
        except RuntimeError as err:
            raise EncodecWeightsError(f"{where}: {part} weights do not fit the 24 kHz model: {err}") from None
    codec.random_weights.fill_(False)


def cached_encodec_weights() -> Path:
    """Where the encodec package keeps its 24 kHz weights: ``<torch hub dir>/checkpoints/encodec_24khz-d7cc33bc.th``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ENCODEC_FILE


def locate_encodec_weights(weights: Optional[str] = None, download: bool = True) -> Optional[Path]:
    """The file of the pretrained EnCodec 24 kHz weights, or None for the seeded random-init codec: the one
    lookup of those weights (the library's 'pretrained' source and the demo both use it).

    Args:
        weights: what the user asked for (commands pass ``ENCODEC_CKPT``): 'random' -> None; a path -> that file;
            None, '' or 'pretrained' -> the torch hub cache (``cached_encodec_weights()``), else, with
            ``download``, the encodec package's download into that cache.
    Raises:
        EncodecWeightsError: a named file that is not there, or pretrained weights neither cached nor downloaded
            (the message gives the ways out).
    """
    if weights == "random":
        return None
    if weights and weights != "pretrained":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EncodecWeightsError(
                f"{ENCODEC_ENV}={weights}: no such file; point it at {ENCODEC_FILE} (the real EnCodec 24 kHz "
                f"weights), or unset it (or {ENCODEC_ENV}=random) for the random-init codec")
        return path
    cached = cached_encodec_weights()
    if cached.is_file():
        return cached
    try:
        if not download:
            raise FileNotFoundError(f"{cached} is not there and downloading was not asked for")
        # not torch.hub.load_state_dict_from_url, which prints "Downloading: URL" before it knows whether anything
        # can be downloaded (offline too); its downloader shows a progress bar once bytes arrive, checks the hash
        # the file name carries and renames the finished file into the cache
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(ENCODEC_URL, str(cached), hash_prefix=ENCODEC_HASH)
    except Exception as err:  # offline, proxy, hash mismatch...
        raise EncodecWeightsError(
            f"could not get the pretrained EnCodec 24 kHz weights ({type(err).__name__}: {err}). Three ways out: "
            f"(1) be online once (the file is cached afterwards); (2) put {ENCODEC_FILE} (from {ENCODEC_URL}) "
            f"into the torch hub cache as {cached}; (3) set {ENCODEC_ENV}=/path/to/{ENCODEC_FILE}, or the model "
            f"config key encodec_source: /path/to/{ENCODEC_FILE} (or encodec_source: random for a random-init "
            f"codec, tests and offline demos only).") from None
    return cached
