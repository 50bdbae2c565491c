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

Layout; every file is written to a temporary name and renamed, a shard's ``.json`` last, so an
interrupted build resumes at the first shard without one:
    meta.json                   codec identity (hash of its weights), Q, frame rate, files per shard
    shard-00000.json            {"files": {path: [offset, frames, bytes, mtime_ns]}, "skipped": [...]}
    shard-00000.features.npy    (frames, 128) float16, the raw encoder output
    shard-00000.codes.npy       (frames, Q) int16
Disk: (128 + Q) x 2 bytes per 75 Hz frame, 73.7 MB per hour of audio for Q = 8.

Features are those of the whole file, computed in windows of ``WINDOW_SECONDS`` that each start with
``WARMUP_SECONDS`` of the preceding audio as context (EnCodec's LSTM and convolutions look back), so
memory does not grow with a file's length. A crop cut from them differs from EnCodec run on the crop
alone near the crop's start (where the crop alone has no past) and its end (zero padding): measured
in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.pretrain_task.corpus import AudioFile, load_corpus
from encodecmae_s3prl.settings import default_device, encodec_weights
from encodecmae_s3prl.upstream.atomic import atomic_write
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.codec import FEATURE_DIM, FRAME_RATE, HOP, SAMPLE_RATE, FrozenEncodec

WINDOW_SECONDS = 16
WARMUP_SECONDS = 2
FILES_PER_SHARD = 256
VERSION = 1


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
    """(ceil(samples / 320), 128) float32 features of a 24 kHz clip, in windows with warm-up context."""
    frames = (wav.numel() + HOP - 1) // HOP
    window, warmup = WINDOW_SECONDS * FRAME_RATE, WARMUP_SECONDS * FRAME_RATE
    if frames <= window + warmup:
        return codec.features(wav[None])[0]
    out = wav.new_empty(frames, FEATURE_DIM)
    for first in range(0, frames, window):
        context = min(warmup, first)
        segment = wav[(first - context) * HOP: (first + window) * HOP]
        out[first: first + window] = codec.features(segment[None])[0, context: context + window]
    return out


def _shards(files: Sequence[AudioFile], per_shard: int) -> List[List[AudioFile]]:
    ordered = sorted(files, key=lambda f: f.path)
    return [ordered[i: i + per_shard] for i in range(0, len(ordered), per_shard)]


def _save_atomic(path: Path, write) -> None:
    atomic_write(path, write)


def build(files: Sequence[AudioFile], codec: FrozenEncodec, out: str | os.PathLike, num_codebooks: int,
          shard: Tuple[int, int] = (0, 1), device: str = "cpu", files_per_shard: int = FILES_PER_SHARD,
          progress: bool = True) -> Dict[str, int]:
    """Compute the missing shards of the cache (those with index ``k % shard[1] == shard[0]``).

    Returns counts: shards built, shards already there, files skipped as unreadable."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identity = codec_identity(codec, num_codebooks)
    meta = {"version": VERSION, "codec": identity, "num_codebooks": num_codebooks, "frame_rate": FRAME_RATE,
            "files_per_shard": files_per_shard}
    meta_path = out / "meta.json"
    if meta_path.is_file():
        found = json.loads(meta_path.read_text())
        if found != meta:
            raise CodecCacheError(
                f"{out} holds a codec cache of another codec or layout ({_differences(found, meta)}): "
                f"give another --out (or datarc.codec_cache), or delete {out} to rebuild it")
    else:
        _save_atomic(meta_path, functools.partial(_write_bytes, data=json.dumps(meta).encode()))
    codec = codec.to(device).eval()
    index, count = shard
    counts = {"built": 0, "present": 0, "skipped": 0}
    groups = _shards(files, files_per_shard)
    mine = [k for k in range(len(groups)) if k % count == index]
    bar = tqdm(total=sum(len(groups[k]) for k in mine), desc="codec cache", unit="file", dynamic_ncols=True,
               disable=not progress)
    for k in mine:
        name = out / f"shard-{k:05d}"
        if name.with_suffix(".json").is_file():
            counts["present"] += 1
            bar.update(len(groups[k]))
            continue
        features, codes, entries, skipped, offset = [], [], {}, [], 0
        for file in groups[k]:
            try:
                wav = read_audio(file.path, SAMPLE_RATE).to(device)
            except AudioReadError as err:
                skipped.append(file.path)
                print(f"[codec cache] skipping {err}", file=sys.stderr)
                bar.update(1)
                continue
            feats = whole_file_features(codec, wav)
            codes.append(codec.codes(feats[None], num_codebooks)[0].T.to(torch.int16).cpu().numpy())
            features.append(feats.to(torch.float16).cpu().numpy())
            entries[file.path] = [offset, int(feats.shape[0]), *file_identity(file.path)]
            offset += int(feats.shape[0])
            bar.update(1)
        stacked_features = np.concatenate(features) if features else np.zeros((0, FEATURE_DIM), np.float16)
        stacked_codes = np.concatenate(codes) if codes else np.zeros((0, num_codebooks), np.int16)
        index_json = json.dumps({"files": entries, "skipped": skipped}).encode()
        _save_atomic(Path(f"{name}.features.npy"), functools.partial(_write_npy, array=stacked_features))
        _save_atomic(Path(f"{name}.codes.npy"), functools.partial(_write_npy, array=stacked_codes))
        _save_atomic(name.with_suffix(".json"), functools.partial(_write_bytes, data=index_json))
        counts["built"] += 1
        counts["skipped"] += len(skipped)
    bar.close()
    return counts


def _write_npy(handle, array: np.ndarray) -> None:
    np.save(handle, array)


def _write_bytes(handle, data: bytes) -> None:
    handle.write(data)


def _differences(found: dict, wanted: dict) -> str:
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} here" for k in keys)


@dataclass
class CachedCrop:
    features: torch.Tensor  # (frames, 128) float16
    codes: torch.Tensor     # (frames, Q) int16


class CodecCache:
    """Read side: the features and codes of any span of a cached file (memory-mapped, fork-safe)."""

    def __init__(self, folder: Path, meta: dict, entries: Dict[str, Tuple[int, int, int, int, int]],
                 skipped: List[str]):
        self.folder, self.meta, self.entries, self.skipped = folder, meta, entries, set(skipped)
        self._arrays: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "CodecCache":
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise CodecCacheError(f"{folder} is not a codec cache ({err}); build it with python -m "
                                  f"encodecmae_s3prl.pretrain_task.codec_cache") from None
        entries, skipped = {}, []
        for shard_json in sorted(folder.glob("shard-*.json")):
            shard = int(shard_json.stem.split("-")[1])
            content = json.loads(shard_json.read_text())
            skipped += content["skipped"]
            for path, (offset, frames, size, mtime) in content["files"].items():
                entries[path] = (shard, offset, frames, size, mtime)
        return cls(folder, meta, entries, skipped)

    def missing(self, files: Sequence[AudioFile]) -> List[str]:
        return [f.path for f in files if f.path not in self.entries and f.path not in self.skipped]

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
        changed = [f.path for f in files if f.path in self.entries
                   and tuple(self.entries[f.path][3:]) != file_identity(f.path)]
        if changed:
            raise CodecCacheError(f"{len(changed)} corpus file(s) changed since the codec cache was built (first: "
                                  f"{changed[0]}); delete {self.folder} to rebuild it")
        usable = [f for f in files if f.path in self.entries]
        if not usable:
            raise CodecCacheError(f"no corpus file is readable in the codec cache {self.folder}")
        return usable

    def frames(self, path: str) -> int:
        return self.entries[path][2]

    def _shard(self, shard: int) -> Tuple[np.ndarray, np.ndarray]:
        if shard not in self._arrays:
            stem = self.folder / f"shard-{shard:05d}"
            self._arrays[shard] = (np.load(f"{stem}.features.npy", mmap_mode="r"),
                                   np.load(f"{stem}.codes.npy", mmap_mode="r"))
        return self._arrays[shard]

    def crop(self, path: str, start_frame: int, frames: int) -> CachedCrop:
        """Frames start_frame .. start_frame + frames - 1 of a file (fewer if the file ends first)."""
        shard, offset, length, _, _ = self.entries[path]
        features, codes = self._shard(shard)
        end = min(length, start_frame + frames)
        span = slice(offset + start_frame, offset + end)
        return CachedCrop(torch.from_numpy(np.array(features[span])), torch.from_numpy(np.array(codes[span])))

    def __getstate__(self):  # loader workers open their own memory maps
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


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
    args = parser.parse_args(argv)
    from encodecmae_s3prl.errors import user_errors
    from encodecmae_s3prl.upstream.loading import build_model, load_checkpoint, model_config_from_yaml

    with user_errors():
        if args.ckpt:
            model = load_checkpoint(args.ckpt)
        else:
            model = build_model(model_config_from_yaml(args.model_config), encodec_weights=encodec_weights())
        if model.codec.needs_corpus_init():
            raise CodecCacheError("this model's EnCodec is random-init and not yet fitted to the corpus: start the "
                                  "pretraining with datarc.codec_cache set (it fits the codec, then builds the cache),"
                                  " or pass -k a checkpoint of that run")
        files = load_corpus(args.corpus)
        counts = build(files, model.codec, args.out, model.config.num_codebooks, args.shard, args.device,
                       args.files_per_shard)
    hours = sum(f.seconds for f in files) / 3600
    per_hour = (FEATURE_DIM + model.config.num_codebooks) * 2 * FRAME_RATE * 3600  # fp16 features + int16 codes
    size = sum(p.stat().st_size for p in args.out.glob("shard-*.npy"))
    print(f"codec cache {args.out}: {counts['built']} shard(s) built, {counts['present']} already there, "
          f"{counts['skipped']} unreadable file(s) skipped; {size / 1e6:.1f} MB on disk for the shards present "
          f"({hours:.2f} h of audio in the corpus; {per_hour / 1e6:.1f} MB per hour)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
