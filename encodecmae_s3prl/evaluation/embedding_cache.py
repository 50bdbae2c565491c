"""The embedding cache of the HEAR protocol: the upstream runs once per (upstream, task), never per epoch.

``embed_splits``: the time-mean of every hidden state of every clip -> one ``.npy`` cache per (upstream, task),
(clips, layers, dim) float32, shared by every fold and every rerun (built in blocks kept as they finish, so a
killed run resumes at the block it was in). s3prl's weighted sum commutes with the time-mean, so the cache serves
both the last-layer protocol (the paper's) and a learned softmax weighting of layers exactly. Each clip is read once
at its own rate and resampled straight to the upstream's native rate (``native_rate``): 24 kHz into our
EnCodecMAE's ``model.encode`` (nothing between 8 and 12 kHz is lost), 16 kHz for other s3prl upstreams. A HEAR
task is embedded in the kit's own batches (``embedding_batches``), so its embeddings equal the kit's bit for bit.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import soundfile
import torch
import torch.nn as nn
from tqdm import tqdm

from encodecmae_s3prl.downstream_probes.clips import read_clip
from encodecmae_s3prl.downstream_probes.hear.dataset import rates as hear_rates
from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask
from encodecmae_s3prl.evaluation.native_rate import encode_native, upstream_rate
from encodecmae_s3prl.upstream.atomic import atomic_write

MIN_SECONDS = 0.1  # shorter clips are zero-padded to 0.1 s (convolutional front ends need ~25 ms)
# part of every cache name: caches from 16 kHz-only embedding, or from batches other than the kit's, are not reused
CACHE_FORMAT = "native-rate-kit-batches-2"


def _targets(task: ProbeTask, clips) -> np.ndarray:
    if task.multilabel:
        y = np.zeros((len(clips), len(task.classes)), np.float32)
        for row, clip in enumerate(clips):
            y[row, list(clip.target)] = 1
        return y
    return np.array([clip.target[0] for clip in clips], np.int64)


def _clip_seconds(clip: Clip) -> float:
    if clip.duration is not None:
        return clip.duration
    try:
        return soundfile.info(clip.path).duration
    except Exception:
        return 0.0


def copy_at_rate(path: str, rate: int) -> str:
    """A HEAR task holds each clip once per rate (``TASK/<r>/<split>/<file>``; HEAR distributes 48000): for a reader
    at ``rate``, the copy at ``rate`` itself, else the lowest rate above it (resampled down, nothing below
    ``rate / 2`` lost), else the highest below; ``path`` itself outside that layout."""
    p = Path(path)
    rate_folder, task = p.parent.parent, p.parent.parent.parent
    if not rate_folder.name.isdigit():
        return path
    present = [r for r in hear_rates(task) if (task / str(r) / p.parent.name / p.name).is_file()]
    above = [r for r in present if r >= rate]
    if not present:
        return path
    return str(task / str(min(above) if above else max(present)) / p.parent.name / p.name)


def kit_batch_size(sample_duration, rate: int) -> int:
    """The batch the kit's embedding runner reads a task in (``heareval.embeddings.task_embeddings``):
    ``max(1, int(0.7 * 120 / sample_duration * 16000 / rate))`` clips at the rate it reads, 1 without a duration."""
    if not isinstance(sample_duration, (int, float)) or isinstance(sample_duration, bool) or sample_duration <= 0:
        return 1
    return max(1, int(0.7 * (120 / sample_duration) * (16000 / rate)))


def length_batches(clips: Sequence[Clip], batch_size: int) -> List[List[int]]:
    """Indices of ``clips`` in batches of ``batch_size``, longest first, so that padding is small."""
    order = sorted(range(len(clips)), key=lambda i: -_clip_seconds(clips[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def embedding_batches(task: ProbeTask, clips: Sequence[Clip], rate: int, batch_size: int) -> List[List[int]]:
    """Indices of ``clips`` in the batches they are embedded in. A clip's embedding depends on the batch it is
    computed in at float32 rounding (padding, kernel shapes; ~1e-6 relative), and on k-fold tasks near chance such
    differences change early-stopping epochs; so a HEAR task is embedded exactly as the kit's runner embeds it:
    split by split in file order, ``kit_batch_size`` clips of the copy read (``copy_at_rate`` for ``rate``) at a
    time. Other probes: ``length_batches``."""
    if not task.kit_embedding_groups:
        return length_batches(clips, batch_size)
    row = {clip.key: i for i, clip in enumerate(clips)}
    size = kit_batch_size(task.sample_duration, _folder_rate(clips[0].path, rate))
    batches = []
    for group in task.kit_embedding_groups:
        index = [row[key] for key in group]
        batches += [index[i:i + size] for i in range(0, len(index), size)]
    return batches


def _folder_rate(path: str, rate: int) -> int:
    """The rate of the copy of ``path`` read for an upstream at ``rate`` (its ``<rate>/`` folder; ``rate`` itself
    outside the HEAR layout)."""
    folder = Path(copy_at_rate(path, rate)).parent.parent.name
    return int(folder) if folder.isdigit() else rate


@torch.no_grad()
def embed_clips(upstream, clips: Sequence[Clip], device: str = "cpu", batch_size: int = 8,
                desc: str = "embed", progress: tqdm | None = None,
                batches: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(N, layers, dim) float32: the time-mean of every hidden state of each clip (its own frames only).

    Each clip is read once at its own rate and resampled straight to the upstream's native rate (``upstream_rate``:
    24 kHz into our ``model.encode``, 16 kHz for other s3prl upstreams), from the task's copy nearest that rate.
    Clips are read batch by batch (a corpus never sits in memory): ``batches`` (indices into ``clips``, each index
    once), by default ``length_batches`` of ``batch_size``; an unreadable clip is embedded as 1 s of silence and
    named on stderr. ``progress`` (a tqdm in audio seconds) is advanced batch by batch; without it a bar of its own
    is shown."""
    rate = upstream_rate(upstream)
    min_samples = int(rate * MIN_SECONDS)
    batches = length_batches(clips, batch_size) if batches is None else batches
    if sorted(i for index in batches for i in index) != list(range(len(clips))):
        raise ValueError(f"batches must hold each of the {len(clips)} clips' indices once")
    pooled, bad = [None] * len(clips), []
    bar = progress if progress is not None else tqdm(total=len(clips), desc=desc, dynamic_ncols=True, leave=False)
    for index in batches:
        batch = []
        for i in index:
            wav = read_clip(copy_at_rate(clips[i].path, rate), clips[i].start, clips[i].duration, rate)
            if wav is None:
                bad.append(clips[i].key)
                wav = torch.zeros(rate)
            if wav.numel() < min_samples:
                wav = torch.nn.functional.pad(wav, (0, min_samples - wav.numel()))
            batch.append(wav.to(device))
        hidden, frames = encode_native(upstream, batch)
        stacked = torch.stack(hidden, dim=1)  # (batch, layers, frames, dim)
        for row, i in enumerate(index):
            pooled[i] = stacked[row, :, :int(frames[row])].float().mean(dim=1).cpu().numpy()
        bar.update(sum(w.numel() for w in batch) / rate if progress is not None else len(index))
    if progress is None:
        bar.close()
    if bad:
        print(f"[hear] {len(bad)} unreadable clip(s) embedded as 1 s of silence: {', '.join(bad[:5])}"
              f"{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
    return np.stack(pooled).astype(np.float32)


def clip_keys(task: ProbeTask) -> List[str]:
    """Every clip of a task once (all splits), in the order its cache holds them."""
    return sorted({clip.key for clips in task.splits.values() for clip in clips})


def cache_path(cache_dir: Path, upstream_key: str, task: ProbeTask, keys: Sequence[str] | None = None) -> Path:
    """One file per (upstream, task): the key names the upstream (entry, checkpoint identity) and the clip list."""
    keys = clip_keys(task) if keys is None else keys
    digest = hashlib.sha1("\n".join([CACHE_FORMAT, upstream_key, *keys]).encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in upstream_key.split("|")[0])
    return Path(cache_dir) / f"{label}-{task.name}-{digest}.npy"


CACHE_BLOCK = 1024  # clips per partial file while a cache is built: a killed run loses at most one block


def _open_cache(cache: Path, clips: int) -> np.ndarray | None:
    """The finished cache, memory-mapped; None (and the file removed, said on stderr) when it is unreadable or
    holds another number of clips, so that it is rebuilt."""
    try:
        x = np.load(cache, mmap_mode="r")
        if x.ndim == 3 and x.shape[0] == clips and x.dtype == np.float32:
            return x
        problem = f"holds {x.shape} {x.dtype}, not ({clips}, layers, dim) float32"
    except (ValueError, OSError, EOFError) as err:
        problem = f"is unreadable ({err})"
    print(f"[hear] embedding cache {cache} {problem}: removed, embedding again", file=sys.stderr)
    cache.unlink(missing_ok=True)
    return None


def _blocks(batches: Sequence[Sequence[int]]) -> List[List[List[int]]]:
    """Consecutive whole batches, up to CACHE_BLOCK clips a block (one batch at least)."""
    blocks: List[List[List[int]]] = []
    for batch in batches:
        if not blocks or sum(map(len, blocks[-1])) + len(batch) > CACHE_BLOCK:
            blocks.append([])
        blocks[-1].append(list(batch))
    return blocks


def _build_cache(get_upstream: Callable[[], nn.Module], task: ProbeTask, clips: Sequence[Clip], cache: Path,
                 device: str, batch_size: int, desc: str) -> None:
    """Embed ``clips`` into ``cache`` block by block, in ``embedding_batches``: each block of up to CACHE_BLOCK
    clips (whole batches) is kept in ``<cache>.parts/`` as it finishes, so a rerun after a kill embeds only the
    blocks that were missing; the blocks are then gathered, in the clips' order, into the cache (written whole or
    not at all)."""
    if not clips:
        raise ProbeDataError(f"{desc}: the task has no clips to embed")
    upstream = get_upstream()
    batched = _blocks(embedding_batches(task, clips, upstream_rate(upstream), batch_size))
    blocks = [[i for batch in block for i in batch] for block in batched]
    parts = cache.with_name(cache.stem + ".parts")
    seconds = [sum(max(_clip_seconds(clips[i]), MIN_SECONDS) for i in block) for block in blocks]
    done = [parts / f"{b:05d}.npy" for b in range(len(blocks))]

    def finished(b: int) -> bool:
        try:
            return np.load(done[b], mmap_mode="r").shape[0] == len(blocks[b])
        except (ValueError, OSError, EOFError):
            return False

    have = [finished(b) for b in range(len(blocks))]
    with tqdm(total=sum(seconds), initial=sum(s for s, h in zip(seconds, have, strict=True) if h), desc=desc,
              unit="audio-s", dynamic_ncols=True, leave=False) as bar:
        for b, block in enumerate(blocks):
            if not have[b]:
                local = {i: n for n, i in enumerate(block)}  # clip index -> row of this block
                x = embed_clips(upstream, [clips[i] for i in block], device, progress=bar,
                                batches=[[local[i] for i in batch] for batch in batched[b]])
                atomic_write(done[b], lambda handle, x=x: np.save(handle, x))
    first = np.load(done[0], mmap_mode="r")
    shape = (len(clips), *first.shape[1:])

    def gather(handle) -> None:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        offset, row_bytes = handle.tell(), int(np.prod(shape[1:])) * 4
        handle.truncate(offset + shape[0] * row_bytes)
        for b, block in enumerate(blocks):
            part = np.load(done[b], mmap_mode="r")
            for row, i in enumerate(block):
                handle.seek(offset + i * row_bytes)
                handle.write(np.ascontiguousarray(part[row], dtype="<f4").tobytes())

    atomic_write(cache, gather)
    shutil.rmtree(parts, ignore_errors=True)


def embed_splits(get_upstream: Callable[[], nn.Module], upstream_key: str, task: ProbeTask, cache_dir: Path,
                 device: str = "cpu", batch_size: int = 8, layers: str = "all") -> Dict[str, dict]:
    """{split: {"x": (N, layers, dim), "y": targets}}. The cache holds every layer of every clip of the task once,
    so every fold of a k-fold task, every mode and every rerun reuses it; ``get_upstream`` is called once, on a cache
    miss only. ``layers="last"`` reads only the last layer from the (memory-mapped) cache: x is (N, 1, dim)."""
    if layers not in ("all", "last"):
        raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
    keys = clip_keys(task)
    cache = cache_path(cache_dir, upstream_key, task, keys)
    x = _open_cache(cache, len(keys)) if cache.is_file() else None
    if x is None:
        by_key = {clip.key: clip for clips in task.splits.values() for clip in clips}
        _build_cache(get_upstream, task, [by_key[k] for k in keys], cache, device, batch_size,
                     desc=f"embed {upstream_key.split('|')[0]} {task.name}")
        x = np.load(cache, mmap_mode="r")
    source = x[:, -1:] if layers == "last" else x
    row = {key: i for i, key in enumerate(keys)}
    return {split: {"x": np.asarray(source[[row[c.key] for c in clips]]), "y": _targets(task, clips)}
            for split, clips in task.splits.items()}
