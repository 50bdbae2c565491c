"""Per-clip arrays on EnCodec's 75 Hz frames, on disk: built in shards, opened, validated, sliced.

The codec cache (EnCodec features and codes of every corpus file) and the self-training targets (k-means codes)
are both such a store; this module is the only one that knows the files:

    meta.json                 what the store holds (the identity of what made it); written before any shard
    shard-00000.<name>.npy    one array per name: the shard's clips concatenated along axis 0 (frames)
    shard-00000.json          the shard's index, written after its arrays: a shard without it is not done
                              {"files": {path: [offset, frames, *extra]}, "items": [[path, start, offset, frames]],
                               "skipped": [path, ...]}

A clip is a whole file (``files``: its key is ``(path, 0)``, ``extra`` what its store keeps about the file) or a
crop stored in its own context (``items``: key ``(path, start frame)``). Every file is written through
``atomic_write``, so a killed build leaves whole shards or none, and a rerun builds the shards still missing
(``ShardWriter`` writes them on a thread of its own while the next are computed).
A shard found truncated or corrupt when the store is opened is an error naming the file and the command that
rebuilds it (given by the store's owner; the codec cache's rebuilds only the damaged shards).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.upstream.atomic import atomic_write, atomic_write_text

META = "meta.json"
ClipKey = Tuple[str, int]  # (path, start frame): start 0 for a whole file


class FrameStoreError(UserError, ValueError):
    """A store file that is missing, truncated or corrupt; the message names it and the command that rebuilds it."""


@dataclass(frozen=True)
class Clip:
    """Where a clip's frames are: rows ``offset .. offset + frames - 1`` of its shard's arrays."""
    shard: int
    offset: int
    frames: int
    extra: Tuple[int, ...] = ()  # what the store keeps about the file (the codec cache: size, mtime_ns)


def shard_stem(folder: Path, shard: int) -> Path:
    return Path(folder) / f"shard-{shard:05d}"


def array_path(folder: Path, shard: int, name: str) -> Path:
    return Path(f"{shard_stem(folder, shard)}.{name}.npy")


def index_path(folder: Path, shard: int) -> Path:
    return shard_stem(folder, shard).with_suffix(".json")


def damaged(path: Path, why: str, rebuild: str) -> FrameStoreError:
    return FrameStoreError(f"{path} is {why}; rebuild it with: {rebuild}")


def read_json(path: Path, rebuild: str) -> dict:
    """A store's JSON file, or the error that names it (missing, cut short, not JSON)."""
    try:
        content = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise damaged(path, "missing", rebuild) from None
    except (OSError, ValueError) as err:
        raise damaged(path, f"truncated or corrupt ({err})", rebuild) from None
    if not isinstance(content, dict):
        raise damaged(path, "corrupt (not a JSON object)", rebuild)
    return content


def write_meta(folder: Path, meta: Mapping) -> None:
    atomic_write_text(Path(folder) / META, json.dumps(meta))


def write_shard(folder: Path, shard: int, arrays: Mapping[str, np.ndarray],
                files: Optional[Mapping[str, Sequence[int]]] = None,
                items: Optional[Sequence[Tuple[str, int, int]]] = None, skipped: Sequence[str] = ()) -> None:
    """Write one shard: its arrays (rows = the clips' frames, in order), then its index.

    files: path -> (frames, *extra), whole files in row order; items: (path, start frame, frames) crops in row
    order (a shard holds one kind or the other)."""
    offset, index_files, index_items = 0, {}, []
    for path, (frames, *extra) in (files or {}).items():
        index_files[path] = [offset, int(frames), *map(int, extra)]
        offset += int(frames)
    for path, start, frames in items or []:
        index_items.append([path, int(start), offset, int(frames)])
        offset += int(frames)
    for name, array in arrays.items():
        if array.shape[0] != offset:
            raise ValueError(f"write_shard: array {name!r} has {array.shape[0]} rows, the clips {offset} frames")
        atomic_write(array_path(folder, shard, name), lambda handle, a=array: np.save(handle, a))
    index: Dict[str, object] = {"files": index_files} if files is not None else {"items": index_items}
    index["skipped"] = list(skipped)
    atomic_write_text(index_path(folder, shard), json.dumps(index))


class ShardWriter:
    """``write_shard`` on a thread of its own, so that the next shards are computed meanwhile (at most ``depth``
    wait in memory). On leaving, the shards handed over are written, even when the build stops on an error:
    they are complete. A write's error is raised in the caller's thread, at its next ``put`` or on leaving."""

    def __init__(self, folder: Path, depth: int = 2):
        self.folder, self.error = Path(folder), None
        self.jobs: Queue = Queue(depth)
        self.thread = threading.Thread(target=self._run, name="frame-store-write", daemon=True)
        self.thread.start()

    def put(self, shard: int, arrays: Mapping[str, np.ndarray], **where) -> None:
        """``write_shard(folder, shard, arrays, **where)``, soon."""
        self._raise()
        self.jobs.put((shard, arrays, where))

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                shard, arrays, where = job
                try:
                    write_shard(self.folder, shard, arrays, **where)
                except BaseException as err:  # handed to the caller's thread
                    self.error = err

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.jobs.put(None)
        self.thread.join()
        if exc_type is None:
            self._raise()


def shard_numbers(folder: Path) -> List[int]:
    """The shards whose index exists (done, if not damaged since)."""
    return sorted(int(p.name[len("shard-"):-len(".json")]) for p in Path(folder).glob("shard-*.json"))


def _entries(index: dict, shard: int, path: Path, rebuild: str) -> Tuple[Dict[ClipKey, Clip], List[str], int]:
    """A shard index's clips, its skipped files and the rows its arrays must have."""
    clips: Dict[ClipKey, Clip] = {}
    try:
        for file, (offset, frames, *extra) in index.get("files", {}).items():
            clips[(file, 0)] = Clip(shard, int(offset), int(frames), tuple(int(v) for v in extra))
        for file, start, offset, frames in index.get("items", []):
            clips[(file, int(start))] = Clip(shard, int(offset), int(frames))
        skipped = [str(file) for file in index.get("skipped", [])]
    except (TypeError, ValueError, AttributeError) as err:
        raise damaged(path, f"corrupt (an entry does not read as [offset, frames]: {err!r})", rebuild) from None
    return clips, skipped, max((c.offset + c.frames for c in clips.values()), default=0)


def _check_array(path: Path, rows: int, rebuild: str) -> None:
    """The .npy file holds the ``rows`` frames its shard's index gives it, every byte of them: its header read
    and its size checked (no memory map kept: a large store has more shards than a process may hold open)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise damaged(path, "missing", rebuild) from None
    except (OSError, ValueError, EOFError) as err:  # a header cut off or not numpy's
        raise damaged(path, f"truncated or corrupt ({err})", rebuild) from None
    if size != expected:
        raise damaged(path, f"truncated or corrupt ({size} bytes, {expected} for its {shape} {dtype})", rebuild)
    if not shape or shape[0] != rows:
        raise damaged(path, f"corrupt (it holds {shape[:1]} frames, its index {rows})", rebuild)


class FrameStore:
    """Read side: every shard's index read and its arrays' sizes checked when opened; frames sliced from memory
    maps.

    Fork-safe: pickling (a DataLoader worker) drops the memory maps and each process maps its own."""

    def __init__(self, folder: Path, meta: dict, clips: Dict[ClipKey, Clip], skipped: Sequence[str]):
        self.folder, self.meta, self.clips, self.skipped = Path(folder), meta, clips, set(skipped)
        self._arrays: Dict[Tuple[int, str], np.ndarray] = {}  # memory maps, opened when first read

    @classmethod
    def open(cls, folder: str | os.PathLike, names: Sequence[str], rebuild: str) -> "FrameStore":
        """Open a store whose shards hold the arrays ``names``; ``rebuild``: the command a damaged file's error
        gives."""
        folder = Path(folder)
        meta = read_json(folder / META, rebuild)
        clips: Dict[ClipKey, Clip] = {}
        skipped: List[str] = []
        for shard in shard_numbers(folder):
            path = index_path(folder, shard)
            own, own_skipped, rows = _entries(read_json(path, rebuild), shard, path, rebuild)
            for name in names:
                _check_array(array_path(folder, shard, name), rows, rebuild)
            clips.update(own)
            skipped += own_skipped
        return cls(folder, meta, clips, skipped)

    def frames(self, key: ClipKey) -> int:
        return self.clips[key].frames

    def read(self, key: ClipKey, name: str, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start + count - 1`` of the clip's array ``name`` (fewer where the clip ends first), a
        copy: (n, ...) with n <= count."""
        clip = self.clips[key]
        first = min(max(0, int(start)), clip.frames)
        end = min(clip.frames, first + int(count))
        return np.array(self._array(clip.shard, name)[clip.offset + first: clip.offset + end])

    def _array(self, shard: int, name: str) -> np.ndarray:
        if (shard, name) not in self._arrays:
            self._arrays[(shard, name)] = np.load(array_path(self.folder, shard, name), mmap_mode="r")
        return self._arrays[(shard, name)]

    def __getstate__(self):  # loader workers open their own memory maps
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


def shard_is_sound(folder: Path, shard: int, names: Sequence[str]) -> bool:
    """Whether a shard is done and whole: its index reads and each array holds the frames it lists."""
    path = index_path(folder, shard)
    if not path.is_file():
        return False
    try:
        _, _, rows = _entries(read_json(path, ""), shard, path, "")
        for name in names:
            _check_array(array_path(folder, shard, name), rows, "")
    except FrameStoreError:
        return False
    return True
