"""The frozen codec, computed once: EnCodec features and RVQ codes of every corpus file, on disk.

EnCodec is frozen, so the features and codes of a file never change during pretraining; on the fly
they cost about half of a bf16 training step on a CPU. The cache holds them per file, and training
crops are sliced from it on EnCodec frame boundaries (``CropSampler(..., cache=...)``).

    python -m encodecmae_s3prl.pretrain_task.codec_cache --corpus /data/train.tsv --out /data/codec_cache \\
        -g pretrain_task/config_model_base.yaml      # the real EnCodec; or -k CKPT: that checkpoint's codec
        [--shard 0/4 --device cuda:0]                # one of 4 processes building disjoint shards

and train with ``-o config.pretrain_expert.datarc.codec_cache=/data/codec_cache``. A cache that is missing
or incomplete is built (or finished) by the trainer itself at start, with its own codec; a random-init
codec is fitted to the corpus first, so only the trainer (or ``-k`` a checkpoint of it) knows it.

The cache is a frame store (``frame_store.py``): ``meta.json`` (codec identity: a hash of its weights, Q, frame
rate, files per shard), then per shard of files (sorted by path) ``shard-00000.features.npy`` (frames, 128)
float16 (the raw encoder output), ``shard-00000.codes.npy`` (frames, Q) int16 and ``shard-00000.json`` (each
file's offset, frames, size and mtime; written last). An interrupted build resumes at the shards not done; a
shard found damaged is rebuilt. Disk: (128 + Q) x 2 bytes per 75 Hz frame, 73.7 MB per hour of audio for Q = 8.

Features are those of the whole file, computed in windows of ``WINDOW_SECONDS`` that each start with
``WARMUP_SECONDS`` of the preceding audio as context (``codec_windows.py``), so memory does not grow with a
file's length; the windows of many files go through EnCodec together (``--batch-size``), audio is read ahead on
threads and finished shards are written on a thread of their own. A crop cut from these features differs from
EnCodec run on the crop alone near the crop's start (where the crop alone has no past) and its end (zero
padding): measured in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.pretrain_task import frame_store
from encodecmae_s3prl.pretrain_task.codec_windows import encode_files, plan_windows
from encodecmae_s3prl.pretrain_task.corpus import AudioFile, load_corpus
from encodecmae_s3prl.pretrain_task.frame_store import FrameStore
from encodecmae_s3prl.settings import add_trust_flag, default_device, encodec_weights, trust_checkpoint
from encodecmae_s3prl.upstream.atomic import remove_temporaries
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.codec import FEATURE_DIM, FRAME_RATE, SAMPLE_RATE, FrozenEncodec

WINDOW_SECONDS = 16
WARMUP_SECONDS = 2
FILES_PER_SHARD = 256
VERSION = 1
BATCH_WINDOWS = 32      # windows per EnCodec call (1: each window alone, the one-at-a-time build)
CHUNK_SECONDS = 3600.0  # audio read and encoded together (its windows sorted by length); bounds the memory held
ARRAYS = ("features", "codes")


class CodecCacheError(UserError, ValueError):
    """A cache that does not fit the corpus or the codec; the message says what to do."""


def codec_identity(codec: FrozenEncodec, num_codebooks: int) -> str:
    """Hash of everything that decides features and codes: encoder weights and the first Q codebooks."""
    digest = hashlib.sha1()
    tensors = list(codec.encoder.state_dict().items())
    tensors += [(f"vq{q}", layer._codebook.embed) for q, layer in enumerate(codec.quantizer.vq.layers[:num_codebooks])]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def file_identity(path: str) -> Tuple[int, int]:
    stat = os.stat(path)
    return int(stat.st_size), int(stat.st_mtime_ns)


@torch.no_grad()
def whole_file_features(codec: FrozenEncodec, wav: torch.Tensor) -> torch.Tensor:
    """(ceil(samples / 320), 128) float32 features of a 24 kHz clip, each of its windows encoded alone."""
    windows = plan_windows(0, wav.numel(), WINDOW_SECONDS * FRAME_RATE, WARMUP_SECONDS * FRAME_RATE)
    return torch.cat([codec.features(wav[None, w.begin: w.end])[0, w.keep: w.keep + w.frames] for w in windows])


def _shards(files: Sequence[AudioFile], per_shard: int) -> List[List[AudioFile]]:
    ordered = sorted(files, key=lambda f: f.path)
    return [ordered[i: i + per_shard] for i in range(0, len(ordered), per_shard)]


def rebuild_command(folder: str | os.PathLike) -> str:
    return (f"python -m encodecmae_s3prl.pretrain_task.codec_cache --corpus <the corpus> --out {folder} -k <a "
            f"checkpoint of the run> (it rebuilds the damaged shards only)")


def _read(file: AudioFile) -> Tuple[Optional[torch.Tensor], Optional[AudioReadError]]:
    try:
        return read_audio(file.path, SAMPLE_RATE), None
    except AudioReadError as err:
        return None, err


class _AudioAhead:
    """The files' audio in order, read on ``threads`` threads up to ``ahead_seconds`` of audio before it is asked
    for, so that decoding and resampling overlap the encoding. Yields (file, 24 kHz wav or None, read error)."""

    def __init__(self, files: Sequence[AudioFile], threads: int, ahead_seconds: float):
        self.files, self.ahead = iter(files), ahead_seconds
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="codec-cache-read")
        self.pending: Deque[Tuple[AudioFile, Future]] = deque()
        self.queued = 0.0

    def __iter__(self) -> Iterator[Tuple[AudioFile, Optional[torch.Tensor], Optional[AudioReadError]]]:
        self._fill()
        while self.pending:
            file, future = self.pending.popleft()
            self.queued -= file.seconds
            self._fill()
            yield (file, *future.result())

    def _fill(self) -> None:
        while not self.pending or self.queued < self.ahead:
            file = next(self.files, None)
            if file is None:
                return
            self.pending.append((file, self.pool.submit(_read, file)))
            self.queued += file.seconds

    def __enter__(self) -> "_AudioAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def build(files: Sequence[AudioFile], codec: FrozenEncodec, out: str | os.PathLike, num_codebooks: int,
          shard: Tuple[int, int] = (0, 1), device: str = "cpu", files_per_shard: int = FILES_PER_SHARD,
          progress: bool = True, batch_size: int = BATCH_WINDOWS, readers: Optional[int] = None) -> Dict[str, int]:
    """Compute the missing (or damaged) shards of the cache (those with index ``k % shard[1] == shard[0]``).

    ``batch_size`` windows go through EnCodec per call (1: one at a time); ``readers`` threads read audio ahead
    (default: 1 on a CPU, whose cores the encoder needs, else up to 8).
    Returns counts: shards built, shards already there, files skipped as unreadable."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)  # a killed build's half-written shards
    identity = codec_identity(codec, num_codebooks)
    meta = {"version": VERSION, "codec": identity, "num_codebooks": num_codebooks, "frame_rate": FRAME_RATE,
            "files_per_shard": files_per_shard}
    if (out / frame_store.META).is_file():
        found = frame_store.read_json(out / frame_store.META, f"delete {out} and build it again")
        if found != meta:
            raise CodecCacheError(
                f"{out} holds a codec cache of another codec or layout ({_differences(found, meta)}): "
                f"give this cache another folder, or delete {out} to rebuild it")
    else:
        frame_store.write_meta(out, meta)
    device = torch.device(device)
    codec = codec.to(device).eval()
    index, count = shard
    counts = {"built": 0, "present": 0, "skipped": 0}
    groups = _shards(files, files_per_shard)
    todo = []
    for k in (k for k in range(len(groups)) if k % count == index):
        if frame_store.shard_is_sound(out, k, ARRAYS):
            counts["present"] += 1
        else:
            frame_store.index_path(out, k).unlink(missing_ok=True)  # damaged: not done until rebuilt
            todo.append(k)
    if readers is None:
        readers = 1 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    bar = tqdm(total=sum(len(groups[k]) for k in todo), desc="codec cache", unit="file", dynamic_ncols=True,
               disable=not progress)
    window, warmup = WINDOW_SECONDS * FRAME_RATE, WARMUP_SECONDS * FRAME_RATE
    with frame_store.ShardWriter(out) as writer, _AudioAhead([f for k in todo for f in groups[k]], readers,
                                                  CHUNK_SECONDS) as audio:
        reads = iter(audio)
        for k in todo:
            features: List[np.ndarray] = []
            codes: List[np.ndarray] = []
            entries: Dict[str, Tuple[int, ...]] = {}
            skipped: List[str] = []
            left = len(groups[k])
            while left:
                chunk, seconds, taken = [], 0.0, 0  # files read ahead, encoded together
                while left and seconds < CHUNK_SECONDS:
                    file, wav, error = next(reads)
                    left, taken = left - 1, taken + 1
                    if wav is None:
                        skipped.append(file.path)
                        print(f"[codec cache] skipping {error}", file=sys.stderr)
                    else:
                        chunk.append((file, wav))
                        seconds += wav.numel() / SAMPLE_RATE
                encoded = encode_files(codec, [wav for _, wav in chunk], num_codebooks, window, warmup, batch_size,
                                       device)
                for (file, _), (file_features, file_codes) in zip(chunk, encoded, strict=True):
                    features.append(file_features)
                    codes.append(file_codes)
                    entries[file.path] = (len(file_features), *file_identity(file.path))
                bar.update(taken)
            stacked_features = np.concatenate(features) if features else np.zeros((0, FEATURE_DIM), np.float16)
            stacked_codes = np.concatenate(codes) if codes else np.zeros((0, num_codebooks), np.int16)
            writer.put(k, {"features": stacked_features, "codes": stacked_codes}, files=entries, skipped=skipped)
            counts["built"] += 1
            counts["skipped"] += len(skipped)
    bar.close()
    return counts


def _differences(found: dict, wanted: dict) -> str:
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} here" for k in keys)


@dataclass
class CachedCrop:
    features: torch.Tensor  # (frames, 128) float16
    codes: torch.Tensor     # (frames, Q) int16


class CodecCache:
    """Read side: the features and codes of any span of a cached file (a ``FrameStore``: checked when opened,
    memory-mapped, fork-safe)."""

    def __init__(self, store: FrameStore):
        self.store, self.folder, self.meta = store, store.folder, store.meta

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "CodecCache":
        folder = Path(folder)
        if not (folder / frame_store.META).is_file():
            raise CodecCacheError(f"{folder} is not a codec cache (no {frame_store.META}); build it with python -m "
                                  f"encodecmae_s3prl.pretrain_task.codec_cache")
        return cls(FrameStore.open(folder, ARRAYS, rebuild_command(folder)))

    def cached(self, path: str) -> bool:
        return (path, 0) in self.store.clips

    def missing(self, files: Sequence[AudioFile]) -> List[str]:
        return [f.path for f in files if not self.cached(f.path) and f.path not in self.store.skipped]

    def check(self, files: Sequence[AudioFile], codec: FrozenEncodec, num_codebooks: int) -> List[AudioFile]:
        """The corpus files to train on: all cached with this codec, unchanged since; unreadable ones dropped."""
        identity = codec_identity(codec, num_codebooks)
        if self.meta.get("codec") != identity or self.meta.get("num_codebooks") != num_codebooks:
            raise CodecCacheError(
                f"the codec cache {self.folder} was built with another codec (or Q): its codec is "
                f"{self.meta.get('codec')} with Q={self.meta.get('num_codebooks')}, the model's is {identity} with "
                f"Q={num_codebooks}; rebuild it (delete the folder) or point datarc.codec_cache elsewhere")
        missing = self.missing(files)
        if missing:
            raise CodecCacheError(f"{len(missing)} corpus file(s) are not in the codec cache {self.folder} (first: "
                                  f"{missing[0]}); finish it with python -m encodecmae_s3prl.pretrain_task.codec_cache")
        changed = [f.path for f in files if self.cached(f.path)
                   and self.store.clips[(f.path, 0)].extra != file_identity(f.path)]
        if changed:
            raise CodecCacheError(f"{len(changed)} corpus file(s) changed since the codec cache was built (first: "
                                  f"{changed[0]}); delete {self.folder} to rebuild it")
        usable = [f for f in files if self.cached(f.path)]
        if not usable:
            raise CodecCacheError(f"no corpus file is readable in the codec cache {self.folder}")
        return usable

    def frames(self, path: str) -> int:
        return self.store.frames((path, 0))

    def crop(self, path: str, start_frame: int, frames: int) -> CachedCrop:
        """Frames start_frame .. start_frame + frames - 1 of a file (fewer if the file ends first)."""
        return CachedCrop(torch.from_numpy(self.store.read((path, 0), "features", start_frame, frames)),
                          torch.from_numpy(self.store.read((path, 0), "codes", start_frame, frames)))


def _parse_shard(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return index, count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", required=True, help="folders and/or manifest .tsv files")
    parser.add_argument("--out", required=True, type=Path)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-k", "--ckpt", help="a checkpoint whose codec to use (e.g. states-N.ckpt of the run)")
    which.add_argument("-g", "--model_config", help="a config_model*.yaml whose (real) EnCodec to use")
    parser.add_argument("--shard", type=_parse_shard, default=(0, 1), help="I/N: build every N-th shard from I")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--files-per-shard", type=int, default=FILES_PER_SHARD)
    parser.add_argument("--batch-size", type=int, default=BATCH_WINDOWS,
                        help=f"windows (up to {WINDOW_SECONDS + WARMUP_SECONDS} s) per EnCodec call; 1: one at a time")
    parser.add_argument("--readers", type=int, help="threads reading audio ahead (default: 1 on a CPU, else up to 8)")
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    from encodecmae_s3prl.errors import user_errors
    from encodecmae_s3prl.fixes import TRUST_FIXES, corpus_option_fixes
    from encodecmae_s3prl.upstream.loading import load_checkpoint, model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model

    with user_errors(fixes={**TRUST_FIXES, **corpus_option_fixes()}):
        if args.ckpt:
            model = load_checkpoint(args.ckpt, trust=trust_checkpoint(args.trust_checkpoint))
        else:
            model = build_model(model_config_from_yaml(args.model_config), encodec_weights=encodec_weights())
        if model.codec.needs_corpus_init():
            raise CodecCacheError("this model's EnCodec is random-init and not yet fitted to the corpus: start the "
                                  "pretraining with datarc.codec_cache set (it fits the codec, then builds the cache),"
                                  " or pass -k a checkpoint of that run")
        files = load_corpus(args.corpus)
        counts = build(files, model.codec, args.out, model.config.num_codebooks, args.shard, args.device,
                       args.files_per_shard, batch_size=args.batch_size, readers=args.readers)
    hours = sum(f.seconds for f in files) / 3600
    per_hour = (FEATURE_DIM + model.config.num_codebooks) * 2 * FRAME_RATE * 3600  # fp16 features + int16 codes
    size = sum(p.stat().st_size for p in args.out.glob("shard-*.npy"))
    print(f"codec cache {args.out}: {counts['built']} shard(s) built, {counts['present']} already there, "
          f"{counts['skipped']} unreadable file(s) skipped; {size / 1e6:.1f} MB on disk for the shards present "
          f"({hours:.2f} h of audio in the corpus; {per_hour / 1e6:.1f} MB per hour)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
