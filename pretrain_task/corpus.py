"""The pretraining corpus: manifests, random 4 s crops at 24 kHz mono, and the batch pipeline.

A corpus is a list of folders and/or manifest files. A manifest is fairseq's TSV format:
the first line is a root folder, then one ``relative/path<TAB>num_frames[<TAB>sample_rate]``
line per file (``num_frames`` at the file's own rate). Build one with::

    python -m encodecmae_s3prl.pretrain_task.corpus FOLDER [FOLDER ...] --out train.tsv

Batches are a pure function of (seed, batch index): file choice (in proportion to duration),
crop offset, and nothing else. Resuming at step N therefore continues with exactly the data
an uninterrupted run would have seen, and every DDP rank draws its own slice. So are their span
masks (``BatchMasks``), drawn where the batch is made, on the host.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from encodecmae_s3prl.errors import UserError, quiet_when_main_leaves
from encodecmae_s3prl.upstream.atomic import atomic_write_text
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.codec import FRAME_RATE, HOP, SAMPLE_RATE, FrozenEncodec
from encodecmae_s3prl.upstream.config import EncodecMAEConfig
from encodecmae_s3prl.upstream.masking import HostMask
from encodecmae_s3prl.upstream.mel import MelFrontEnd

AUDIO_EXTENSIONS = {f".{ext.lower()}" for ext in soundfile.available_formats()} | {".mp3", ".opus"}
# the authors' training crop (EnCodecMAE v1 and the paper pretrain on 4 s random crops): the default of
# datarc.crop_seconds, of the sampler and of the self-training stage, whose stored crops stage 2 must match
CROP_SECONDS = 4.0


class CorpusError(UserError, ValueError):
    """The corpus configuration or its files cannot give training data."""


class CorpusListError(CorpusError):
    """The corpus list itself is wrong (empty, an entry neither a folder nor a manifest, no audio in any entry):
    fixed where the list is given, which each command names (a config key, an option)."""


@dataclass(frozen=True)
class AudioFile:
    path: str
    num_frames: int
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.num_frames / self.sample_rate


# --- building the file list -------------------------------------------------------------

def _probe(path: Path) -> AudioFile | None:
    try:
        info = soundfile.info(str(path))
    except Exception:
        return None
    if info.frames <= 0 or info.samplerate <= 0:
        return None
    return AudioFile(str(path), int(info.frames), int(info.samplerate))


def scan_folder(folder: Path, progress: bool = True) -> tuple[list[AudioFile], list[str]]:
    """Every readable audio file under ``folder`` (recursive); also returns the unreadable ones."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    files, bad = [], []
    for path in tqdm(paths, desc=f"scan {folder}", disable=not progress, dynamic_ncols=True):
        probed = _probe(path)
        (files.append(probed) if probed else bad.append(str(path)))
    return files, bad


def read_manifest(path: Path) -> list[AudioFile]:
    lines = Path(path).read_text().splitlines()
    if not lines:
        raise CorpusError(f"manifest {path} is empty: its first line must be the root folder.")
    root = Path(lines[0].strip())
    files = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].strip().isdigit():
            raise CorpusError(f"{path}:{number}: expected 'relative/path<TAB>num_frames[<TAB>sample_rate]', "
                              f"got {line!r}")
        rate = int(fields[2]) if len(fields) > 2 and fields[2].strip() else None
        file_path = root / fields[0]
        if rate is None:  # plain fairseq manifest: ask the header once
            probed = _probe(file_path)
            rate = probed.sample_rate if probed else SAMPLE_RATE
        files.append(AudioFile(str(file_path), int(fields[1]), rate))
    return files


def write_manifest(files: Sequence[AudioFile], root: Path, out: Path) -> None:
    root = Path(root).resolve()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{root}\n"] + [f"{os.path.relpath(Path(f.path).resolve(), root)}\t{f.num_frames}\t{f.sample_rate}\n"
                              for f in files]
    atomic_write_text(out, "".join(lines))


def load_corpus(entries: Sequence[str] | str, progress: bool = True, source: str = "the corpus") -> list[AudioFile]:
    """Resolve a corpus spec (folders and/or ``.tsv`` manifests) to its files. ``source`` names the list in
    errors (e.g. the config key that holds it)."""
    if isinstance(entries, (str, os.PathLike)):
        entries = [entries]
    if not entries:
        raise CorpusListError(f"{source} is empty: give a list of audio folders and/or manifest .tsv files")
    files: list[AudioFile] = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            found, bad = scan_folder(path, progress)
            if bad:
                print(f"[corpus] skipped {len(bad)} unreadable file(s) in {path} (first: {bad[0]})", file=sys.stderr)
            files += found
        elif path.is_file():
            files += read_manifest(path)
        else:
            raise CorpusListError(f"{source}: entry {path} is neither a folder nor a manifest file; give audio "
                                  f"folders and/or manifest .tsv files")
    if not files:
        raise CorpusListError(f"{source} {list(map(str, entries))} holds no readable audio file "
                              f"(formats: {', '.join(sorted(AUDIO_EXTENSIONS))})")
    return files


# --- reading crops ----------------------------------------------------------------------

def draw_start_frame(file: AudioFile, crop_seconds: float, rng: np.random.Generator) -> int:
    """A crop's first EnCodec frame, uniform over the starts that keep it inside the file (0 for short files)."""
    crop_frames = int(round(crop_seconds * FRAME_RATE))
    file_frames = file.num_frames * FRAME_RATE // file.sample_rate  # whole frames the file holds
    return int(rng.integers(0, file_frames - crop_frames + 1)) if file_frames > crop_frames else 0


def read_crop_at(file: AudioFile, crop_seconds: float, start_frame: int) -> torch.Tensor | None:
    """The crop of at most ``crop_seconds`` that starts at EnCodec frame ``start_frame`` of the file (a drawn
    one, or a stored self-training item), 24 kHz mono float32; None if the file is unreadable, empty or not
    finite.

    Crops start on an EnCodec frame boundary (a multiple of 1/75 s), so a crop's frames are frames of the
    whole file and self-training targets sliced from whole-file codes line up exactly. The start sample is
    exact for rates that are multiples of 75 Hz (24, 48, 44.1, 22.05 kHz) and within half a sample otherwise.
    """
    want = int(math.ceil(crop_seconds * file.sample_rate))
    start = min(int(round(start_frame * file.sample_rate / FRAME_RATE)), max(0, file.num_frames - want))
    try:
        wav = read_audio(file.path, SAMPLE_RATE, start, want)
    except AudioReadError:
        return None
    return wav[: int(round(crop_seconds * SAMPLE_RATE))]


@dataclass
class Crop:
    wav: torch.Tensor | None  # (samples,) float32, 24 kHz mono; None when cut from a codec cache
    path: str
    start_frame: int          # first EnCodec frame (75 Hz) of the crop in its file
    cached: object = None     # codec_cache.CachedCrop: features (frames, 128) fp16, codes (frames, Q) int16

    @property
    def frames(self) -> int:
        return int(self.cached.features.shape[0]) if self.cached is not None else -(-self.wav.numel() // HOP)


@dataclass
class CropBatch:
    wavs: torch.Tensor | None  # (batch, samples) float32, zero-padded, 24 kHz mono; None from a codec cache
    lengths: torch.Tensor      # (batch,) valid samples per row (from a cache: frames x 320)
    batch_index: int
    extra_targets: torch.Tensor | None = None  # (batch, frames) long, -100 where unknown (self-training)
    features: torch.Tensor | None = None       # from a codec cache: (batch, frames, 128) float16, zero-padded
    codes: torch.Tensor | None = None          # from a codec cache: (batch, frames, Q) int16
    frame_lengths: torch.Tensor | None = None  # from a codec cache: (batch,) valid frames
    mask: HostMask | None = None               # its span mask, drawn by the loader (BatchMasks)

    def pin_memory(self) -> "CropBatch":
        """The batch in page-locked memory (what torch's DataLoader calls with ``pin_memory=True``): a copy to
        the GPU from there can be ``non_blocking``."""
        pinned = (torch.Tensor, HostMask)
        return dataclasses.replace(self, **{field.name: value.pin_memory() for field in dataclasses.fields(self)
                                            if isinstance(value := getattr(self, field.name), pinned)})


@dataclass(frozen=True)
class BatchMasks:
    """The span masks of the training batches, a pure function of (seed, batch index, rank) as the crops are: a
    resumed run draws the same ones. Drawn on the host from the batch's host lengths (by ``CropLoader``, in its
    workers, or by the expert for a batch without one), so that the step never reads the device for them."""

    mask_prop: float
    span: int
    recipe: str
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @classmethod
    def of_model(cls, config: EncodecMAEConfig, seed: int = 0, rank: int = 0, world_size: int = 1) -> "BatchMasks":
        """The masks an ``EncodecMAEConfig``'s model draws (its mask_prop, mask_span and layout)."""
        return cls(config.mask_prop, config.mask_span, config.resolved_mask_layout, seed, rank, world_size)

    def generator(self, batch_index: int) -> torch.Generator:
        """The CPU generator of batch ``batch_index`` on this rank (every rank masks its own crops differently)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index * (self.world_size or 1) + self.rank)

    def for_batch(self, batch: CropBatch) -> HostMask:
        """The mask of ``batch``: (B, T) over its frames, T as the model will see them (from a codec cache the
        features' length, from audio the longest clip's frames)."""
        if batch.features is not None and batch.frame_lengths is not None:
            frame_lengths, frames = batch.frame_lengths, batch.features.shape[1]
        else:
            frame_lengths = FrozenEncodec.frame_lengths(batch.lengths)
            frames = int(frame_lengths.max())
        return HostMask.draw(frame_lengths, frames, self.mask_prop, self.span, self.generator(batch.batch_index),
                             self.recipe)


class CropSampler:
    """Batches of random crops, a pure function of (seed, batch_index, rank).

    Files are drawn with probability proportional to their duration (long files give
    proportionally more crops); unreadable files are skipped, counted, reported once each.
    """

    def __init__(self, files: Sequence[AudioFile], batch_size: int, crop_seconds: float = CROP_SECONDS, seed: int = 0,
                 rank: int = 0, world_size: int = 1, cache=None):
        if batch_size <= 0:
            raise CorpusError(f"train_batch_size must be positive, got {batch_size}")
        self.files = list(files)
        self.batch_size = batch_size
        self.crop_seconds = crop_seconds
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        seconds = np.array([f.seconds for f in self.files], dtype=np.float64)
        self.probabilities = seconds / seconds.sum()
        self.bad_files: set[str] = set()
        self.cache = cache  # a codec_cache.CodecCache: crops of features and codes instead of audio
        self.mel: MelFrontEnd | None = None  # with a cache: the model reads log-mel frames of the crops' audio
        self.items: list[tuple[AudioFile, int]] = []  # fixed crops (file, start frame) to draw from, if any

    def use_items(self, items: Sequence[tuple[str, int]]) -> None:
        """From now on, every crop is one of these stored (path, start frame) items, drawn uniformly: the
        self-training stage as v1 trains it, on the crops its targets were computed on. Items of files
        outside this sampler's files are left out."""
        by_path = {f.path: f for f in self.files}
        self.items = [(by_path[path], int(start)) for path, start in items if path in by_path]
        if not self.items:
            raise CorpusError("none of the stored self-training crops belongs to a corpus file: the target store "
                              "was built from another corpus")

    def use_cache(self, cache, files: Sequence[AudioFile], mel: bool = False) -> None:
        """From now on, crops of ``cache`` (features and codes) drawn over ``files`` (those it holds). ``mel``: the
        model reads v2's log-mel, not EnCodec's output: each crop's audio is read too and its mel frames
        (``upstream.mel``, computed in the loader's workers beside the step) replace the cached features; the
        cached codes stay the targets."""
        self.files = list(files)
        seconds = np.array([f.seconds for f in self.files], dtype=np.float64)
        self.probabilities = seconds / seconds.sum()
        self.cache = cache
        self.mel = MelFrontEnd() if mel else None

    def _mel_crop(self, file: AudioFile, start_frame: int, cached):
        """The cached crop with its features replaced by the mel frames of the same samples (None: unreadable)."""
        wav = read_crop_at(file, self.crop_seconds, start_frame)
        if wav is None or wav.numel() == 0:
            return None
        frames = cached.codes.shape[0]
        mel, _ = self.mel.chunk(wav[: frames * HOP])
        mel = torch.nn.functional.pad(mel, (0, 0, 0, max(0, frames - mel.shape[0])))[:frames]
        return dataclasses.replace(cached, features=mel)

    def __len__(self) -> int:
        return len(self.files)

    def total_seconds(self) -> float:
        return float(sum(f.seconds for f in self.files))

    # independent random streams: training batches, the codec's corpus statistics, self-training clips
    TRAIN, CODEC_INIT, SELF_TRAINING = 0, 1, 2

    def example(self, batch_index: int, slot: int, stream: int = TRAIN) -> Crop:
        for attempt in range(100):
            rng = np.random.default_rng([self.seed, stream, batch_index, self.rank, slot, attempt])
            if self.items and stream == self.TRAIN:
                file, start_frame = self.items[int(rng.integers(len(self.items)))]
            else:
                file = self.files[int(rng.choice(len(self.files), p=self.probabilities))]
                start_frame = draw_start_frame(file, self.crop_seconds, rng)
            if file.path in self.bad_files:
                continue
            if self.cache is not None:  # the same draws as from audio: same files, same start frames
                frames = int(round(self.crop_seconds * FRAME_RATE))
                cached = self.cache.crop(file.path, start_frame, frames)
                if self.mel is not None:
                    cached = self._mel_crop(file, start_frame, cached)
                if cached is not None:
                    return Crop(None, file.path, start_frame, cached)
            wav = read_crop_at(file, self.crop_seconds, start_frame)
            if wav is not None and wav.numel() > 0:
                return Crop(wav, file.path, start_frame)
            self.bad_files.add(file.path)
            print(f"[corpus] skipping unreadable or invalid audio file {file.path} "
                  f"({len(self.bad_files)} skipped so far)", file=sys.stderr)
        raise CorpusError(f"100 draws in a row gave no readable audio ({len(self.bad_files)} bad files of "
                          f"{len(self.files)}): check the corpus.")

    def batch(self, batch_index: int, targets=None, stream: int = TRAIN) -> CropBatch:
        crops = [self.example(batch_index, slot, stream) for slot in range(self.batch_size)]
        return collate(crops, batch_index, targets)


def collate(crops: Sequence[Crop], batch_index: int, targets=None) -> CropBatch:
    """Pad crops into a batch; with a self-training ``targets`` store, attach each crop's aligned codes."""
    frames = max(c.frames for c in crops)
    extra = None
    if targets is not None:
        extra = torch.stack([targets.slice(c.path, c.start_frame, frames) for c in crops])
    pad = torch.nn.utils.rnn.pad_sequence
    if crops[0].cached is not None:
        frame_lengths = torch.tensor([c.frames for c in crops], dtype=torch.long)
        features = pad([c.cached.features for c in crops], batch_first=True)
        codes = pad([c.cached.codes for c in crops], batch_first=True)
        return CropBatch(None, frame_lengths * HOP, batch_index, extra, features, codes, frame_lengths)
    lengths = torch.tensor([c.wav.numel() for c in crops], dtype=torch.long)
    return CropBatch(pad([c.wav for c in crops], batch_first=True), lengths, batch_index, extra)


class _CropIndex(torch.utils.data.Dataset):
    """Map-style view for torch's DataLoader: example index -> (batch index, crop)."""

    def __init__(self, sampler: CropSampler):
        self.sampler = sampler

    def __len__(self) -> int:  # endless in practice; the batch sampler decides what is read
        return 2 ** 62

    def __getitem__(self, index: int) -> tuple[int, Crop]:
        batch_index, slot = divmod(index, self.sampler.batch_size)
        return batch_index, self.sampler.example(batch_index, slot)


class _Batches(torch.utils.data.Sampler):
    def __init__(self, start_batch: int, batch_size: int):
        self.start_batch, self.batch_size = start_batch, batch_size

    def __iter__(self):
        index = self.start_batch
        while True:
            yield list(range(index * self.batch_size, (index + 1) * self.batch_size))
            index += 1


class CropLoader:
    """What s3prl's pretrain runner iterates: endless batches starting at ``start_batch``.

    Two interchangeable backends give identical batches: ``torch`` (a DataLoader with worker
    processes; the default, measured 1.4x faster here, see benchmarks/README.md) and ``fairseq2``
    (its data pipeline: a thread pool, lighter on memory, but our per-crop Python code holds
    the GIL part of the time). ``dataset`` and ``len()`` are what the runner reads for epochs.
    With ``masks``, each batch carries its span mask (``CropBatch.mask``), drawn where the batch is made.
    """

    BACKENDS = ("torch", "fairseq2")

    def __init__(self, sampler: CropSampler, start_batch: int = 0, num_workers: int = 2, prefetch: int = 2,
                 batches_per_epoch: int | None = None, targets=None, backend: str = "torch",
                 pin_memory: bool = False, masks: BatchMasks | None = None):
        if backend not in self.BACKENDS:
            raise CorpusError(f"pretrain_expert.datarc.loader must be one of {self.BACKENDS}, got {backend!r}")
        self.dataset = sampler
        self.targets = targets
        self.backend = backend
        self.start_batch = start_batch
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if num_workers > cores:  # more loader processes than cores only slows the step they feed
            print(f"[corpus] datarc.num_workers={num_workers} > {cores} cores here: using {cores}", file=sys.stderr)
        self.num_workers = max(0, min(num_workers, cores))
        self.prefetch = max(1, prefetch)
        self.pin_memory = pin_memory  # torch backend: batches in page-locked memory, for non-blocking GPU copies
        self.masks = masks  # each batch's span mask, drawn as the batch is made (in the workers)
        per_epoch = sampler.total_seconds() / (sampler.crop_seconds * sampler.batch_size)
        self._len = batches_per_epoch or max(1, int(math.ceil(per_epoch)))

    def __len__(self) -> int:
        return self._len

    def _collate(self, items: Sequence[tuple[int, Crop]]) -> CropBatch:
        batch = collate([crop for _, crop in items], items[0][0], self.targets)
        if self.masks is not None:
            batch.mask = self.masks.for_batch(batch)
        return batch

    def _torch_loader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            _CropIndex(self.dataset), batch_sampler=_Batches(self.start_batch, self.dataset.batch_size),
            num_workers=self.num_workers, collate_fn=self._collate, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch if self.num_workers else None, persistent_workers=False,
            worker_init_fn=quiet_when_main_leaves)

    def _fairseq2_batches(self) -> Iterator[CropBatch]:
        from fairseq2.data.data_pipeline import DataPipeline  # late: fairseq2 needs the system libsndfile

        view = _CropIndex(self.dataset)
        return iter(
            DataPipeline.count(start=self.start_batch * self.dataset.batch_size)
            .map(view.__getitem__, num_parallel_calls=max(1, self.num_workers))
            .bucket(self.dataset.batch_size)
            .map(self._collate)
            .prefetch(self.prefetch)
            .and_return()
        )

    def __iter__(self) -> Iterator[CropBatch]:
        batches = iter(self._torch_loader()) if self.backend == "torch" else self._fairseq2_batches()
        for batch in batches:
            self.start_batch = batch.batch_index + 1  # a new iteration continues, never repeats
            yield batch


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a fairseq-style manifest (root, then path<TAB>frames"
                                                 "<TAB>rate) of every readable audio file under the folders.")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="manifest file to write (TSV)")
    parser.add_argument("--root", type=Path, help="root folder of the relative paths (default: common parent)")
    args = parser.parse_args(argv)
    files, bad = [], []
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
        found, skipped = scan_folder(folder)
        files += found
        bad += skipped
    if not files:
        parser.error(f"no readable audio under {', '.join(map(str, args.folders))}")
    root = args.root or Path(os.path.commonpath([str(Path(f.path).resolve().parent) for f in files]))
    write_manifest(files, root, args.out)
    hours = sum(f.seconds for f in files) / 3600
    print(f"wrote {args.out}: {len(files)} files, {hours:.2f} h; skipped {len(bad)} unreadable file(s)"
          + (f", e.g. {bad[0]}" if bad else ""))


if __name__ == "__main__":
    _main()
