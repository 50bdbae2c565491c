"""The HEAR 2021 protocol on cached embeddings: the upstream runs once per (upstream, task), never per epoch.

1. ``embed_splits``: the time-mean of every hidden state of every clip -> one ``.npy`` cache per
   (upstream, task), (clips, layers, dim) float32, shared by every fold and every rerun (built in blocks kept as
   they finish, so a killed run resumes at the block it was in). s3prl's
   weighted sum commutes with the time-mean, so the cache serves both the last-layer protocol
   (the paper's) and a learned softmax weighting of layers exactly. Each clip is read once at its own
   rate and resampled straight to the upstream's native rate: 24 kHz into our EnCodecMAE's
   ``model.encode`` (nothing between 8 and 12 kHz is lost), 16 kHz for other s3prl upstreams.
2. ``grid_search`` / ``evaluate_folds``: the scene-task rules of the official kit, heareval 2021.1.3
   (``heareval/predictions/task_predictions.py``), read from its code:
   - grid: hidden layers {1, 2} x init {xavier_uniform, xavier_normal} x lr {3.2e-3, 1e-3, 3.2e-4, 1e-4}
     in scikit-learn ``ParameterGrid`` order, shuffled by ``random`` seeded 42, the first ``grid_size`` (8) tried;
   - MLP: per hidden layer Linear(1024) -> BatchNorm1d -> Dropout(0.1) -> ReLU, then a Linear projection;
     weights Xavier with gain 1 after the input and sqrt(2) after a ReLU, biases PyTorch's default;
   - Adam (torch defaults) at the grid's lr, batch 1024 in a fixed order (the kit never reshuffles), validation
     every 3rd epoch, early stopping after 20 validations without a strict improvement, at most 500 epochs, the
     best-on-validation state tested; scores as the kit's (softmax / sigmoid outputs, float32 selection);
   - k-fold tasks: the configuration is selected on the first fold (test fold 0, validation fold 1) and the
     other folds are trained with it, not searched again; mean and std (ddof 1) over folds;
   - one torch random stream per task, seeded 42, drawn in the kit's order (the MLP's construction, the random
     batch of its ``torchinfo.summary``, one draw per DataLoader pass, dropout), so CPU runs reproduce it.
   Extension (``weighted=True``): softmax layer logits (zeros at the start: equal weights) train with the MLP at
   10x its learning rate; the default last-layer mode is the kit's protocol.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import random
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import soundfile
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from encodecmae_s3prl import registry
from encodecmae_s3prl.downstream_probes.clips import read_clip
from encodecmae_s3prl.downstream_probes.hear.dataset import rates as hear_rates
from encodecmae_s3prl.downstream_probes.metrics import METRICS, fold_std
from encodecmae_s3prl.downstream_probes.mlp import PooledMLP
from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask, TaskSource, probe_source
from encodecmae_s3prl.evaluation import recipe_tasks
from encodecmae_s3prl.evaluation.native import encode_native, upstream_rate
from encodecmae_s3prl.upstream.atomic import atomic_write

MIN_SECONDS = 0.1  # shorter clips are zero-padded to 0.1 s (convolutional front ends need ~25 ms)
# part of every cache name: caches from 16 kHz-only embedding, or from batches other than the kit's, are not reused
CACHE_FORMAT = "native-rate-kit-batches-2"

# heareval 2021.1.3, predictions/task_predictions.py: PARAM_GRID and task_predictions / task_predictions_train
KIT_SEED = 42  # seed_everything(42) once per task (its default --deterministic True)
HIDDEN_DIM, DROPOUT, BATCH_SIZE = 1024, 0.1, 1024
MAX_EPOCHS, CHECK_VAL_EVERY, PATIENCE = 500, 3, 20
SUMMARY_BATCH = 64  # torchinfo.summary(predictor, input_size=(64, nfeatures)) draws torch.rand(64, nfeatures)
# the grid axes in ParameterGrid's order (keys sorted: hidden_layers, initialization, lr; the last varies fastest)
GRID_AXES = {"hidden_layers": (1, 2), "init": ("xavier_uniform", "xavier_normal"),
             "lr": (3.2e-3, 1e-3, 3.2e-4, 1e-4)}
GRID = [dict(zip(GRID_AXES, values, strict=True)) for values in itertools.product(*GRID_AXES.values())]


def tasks() -> Dict[str, TaskSource]:
    """Every task the HEAR-cached mode runs, name -> how to read it: our probe folders (``registry.probe_names()``:
    their ``dataset.py``), then s3prl's recipes (``recipe_tasks.RECIPES``)."""
    table = {name: probe_source(name) for name in registry.probe_names()}
    table.update((name, recipe_tasks.RECIPES[name]) for name in sorted(recipe_tasks.RECIPES))
    return table


def task_names() -> List[str]:
    return list(tasks())


def _source(probe: str) -> TaskSource:
    table = tasks()
    if probe not in table:
        raise ProbeDataError(f"unknown probe {probe!r}; known: {', '.join(table)}")
    return table[probe]


def task_folds(probe: str, root: str | Path) -> List[str | None]:
    """The test folds a probe is evaluated on: every fold of a k-fold dataset, else [None]."""
    return list(_source(probe).folds(root))


def load_task(probe: str, root: str | Path, test_fold: str | None = None) -> ProbeTask:
    """A probe's splits, classes and metrics, read from the dataset files exactly as its s3prl expert reads them
    (checked: every audio file there, no empty split), clips in the HEAR kit's training order."""
    task = _source(probe).load_task(root, test_fold)
    return task if task.kit_ordered else replace(task, splits=kit_order(task.splits))


def kit_order(splits: Dict[str, List[Clip]]) -> Dict[str, List[Clip]]:
    """The HEAR kit trains in the order its embedding files were written, each split shuffled once by one
    ``random.Random(0)`` and never again; for probes that are not HEAR tasks (whose files often come grouped
    by class) the same rule on train, dev and test in that order."""
    prng = random.Random(0)
    ordered = {}
    for split in ("train", "dev", "test"):
        ordered[split] = list(splits[split])
        prng.shuffle(ordered[split])
    return ordered


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


class LayerWeightedMLP(PooledMLP):
    """Softmax weights over layers (s3prl's weighted sum; 'last' mode reads the last layer) -> the probes'
    ``PooledMLP`` with the HEAR kit's initialisation ``init`` (Xavier uniform or normal; heareval
    ``FullyConnectedPrediction``: per hidden layer Linear -> BatchNorm1d -> Dropout -> ReLU, then a Linear)."""

    def __init__(self, layers: int, dim: int, classes: int, hidden_layers: int, init: str, weighted: bool,
                 hidden_dim: int = HIDDEN_DIM, dropout: float = DROPOUT):
        super().__init__(dim, classes, hidden_dim, hidden_layers, dropout, init)
        self.weighted = weighted
        self.layer_logits = nn.Parameter(torch.zeros(layers)) if weighted else None

    def layer_weights(self) -> torch.Tensor:
        return F.softmax(self.layer_logits, dim=0) if self.weighted else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, layers, dim) -> logits (batch, classes)."""
        pooled = (self.layer_weights()[None, :, None] * x).sum(dim=1) if self.weighted else x[:, -1]
        return self.mlp(pooled)


def _score(task: ProbeTask, logits: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    """The kit scores the predictor's outputs: softmax (multiclass) or sigmoid (multilabel) of the logits."""
    scores = torch.sigmoid(logits) if task.multilabel else torch.softmax(logits, dim=-1)
    return {m: METRICS[m](scores, y) for m in task.metrics}


LAYER_LR_SCALE = 10.0  # layer logits: a handful of parameters, one Adam step per epoch on small tasks


def _adam(model: "LayerWeightedMLP", lr: float) -> torch.optim.Optimizer:
    """torch's Adam with its defaults at the grid's lr (the kit's ``optim``); in weighted mode the layer logits
    at LAYER_LR_SCALE x lr, so that they can move within HEAR's epoch budget (each Adam step moves a logit by
    about lr)."""
    groups = [{"params": list(model.mlp.parameters()), "lr": lr}]
    if model.layer_logits is not None:
        groups.append({"params": [model.layer_logits], "lr": lr * LAYER_LR_SCALE})
    return torch.optim.Adam(groups, lr=lr)


def _loader_pass() -> None:
    """Each pass over a torch DataLoader draws its base seed from torch's default generator
    (``torch.utils.data``: ``torch.empty((), dtype=torch.int64).random_()``); the kit iterates a DataLoader for
    every training epoch and every validation, so the same draws keep our dropout masks on the kit's stream."""
    torch.empty((), dtype=torch.int64).random_()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk) for chunk in x.split(BATCH_SIZE)])


@contextlib.contextmanager
def kit_rng(seed: int = KIT_SEED, device: str = "cpu"):
    """One random stream per task as the kit's ``seed_everything(seed)``, without touching the caller's."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _load_outside_stream(load: Callable[[object], tuple], fold, device: str) -> tuple:
    """``load(fold)`` without touching the task's random stream: on a cache miss it builds the upstream (s3prl's
    hub entries initialise their modules from torch's default generator, fbank_no_cmvn included) and embeds, which
    the kit does in another process (``heareval.embeddings.runner``) before its stream is seeded."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        return load(fold)


def train_one(task: ProbeTask, data: Dict[str, dict], params: dict, weighted: bool, max_epochs: int = MAX_EPOCHS,
              seed: int | None = None, device: str = "cpu", hidden_dim: int = HIDDEN_DIM) -> dict:
    """One HEAR configuration as the kit trains it: batches of 1024 in the data's order (never reshuffled; a last
    batch of a single clip is skipped, where the kit's BatchNorm would fail), validation on ``dev`` every 3rd epoch,
    early stopping after 20 validations without a strict improvement, the best-on-dev state tested.
    ``seed`` None continues the caller's torch stream (``kit_rng``), else seeds it first.
    Returns {"valid": float32 dev score, "test": {metric: value}, "layer_weights", "epoch": best epoch}."""
    if max_epochs < CHECK_VAL_EVERY:
        raise ValueError(f"max_epochs={max_epochs}: the HEAR protocol validates every {CHECK_VAL_EVERY} epochs, "
                         f"so at least {CHECK_VAL_EVERY} are needed")
    if seed is not None:
        torch.manual_seed(seed)
    as_tensor = (lambda a: torch.from_numpy(np.ascontiguousarray(a))) if weighted else \
        (lambda a: torch.from_numpy(np.ascontiguousarray(a[:, -1:])))  # last mode: the last layer, contiguous
    x = {s: as_tensor(d["x"]).to(device) for s, d in data.items()}
    y = {s: torch.from_numpy(np.asarray(d["y"])).to(device) for s, d in data.items()}
    model = LayerWeightedMLP(data["train"]["x"].shape[1], x["train"].shape[2], len(task.classes),
                             params["hidden_layers"], params["init"], weighted, hidden_dim)  # on CPU, as the kit
    torch.rand(SUMMARY_BATCH, x["train"].shape[2])  # the kit's torchinfo.summary draws this random batch
    model.to(device)
    optimizer = _adam(model, params["lr"])
    loss_fn = F.binary_cross_entropy_with_logits if task.multilabel else F.cross_entropy
    best, best_state, best_epoch, waited, n = -math.inf, None, -1, 0, x["train"].shape[0]
    for epoch in range(max_epochs):
        _loader_pass()
        model.train()
        for start in range(0, n, BATCH_SIZE):
            if n - start < 2:  # BatchNorm needs two samples
                continue
            loss = loss_fn(model(x["train"][start:start + BATCH_SIZE]), y["train"][start:start + BATCH_SIZE])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if (epoch + 1) % CHECK_VAL_EVERY:
            continue
        _loader_pass()
        model.eval()
        value = float(np.float32(_score(task, _predict(model, x["dev"]), y["dev"])[task.metrics[0]]))
        if best_state is None or value > best:  # ModelCheckpoint / EarlyStopping: strict improvement, min_delta 0
            best, best_epoch, waited = value, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
        if waited >= PATIENCE or not math.isfinite(value):  # EarlyStopping(patience=20, check_finite=True)
            break
    model.load_state_dict(best_state)
    model.eval()
    test = _score(task, _predict(model, x["test"]), y["test"])
    weights = model.layer_weights()
    return {"valid": best, "test": test, "layer_weights": weights.detach().cpu().tolist() if weights is not None
            else None, "epoch": best_epoch}


def grid_configs(grid_size: int = 8, seed: int = KIT_SEED) -> List[dict]:
    """The configurations the kit tries: ``ParameterGrid(PARAM_GRID)`` shuffled by ``random`` seeded ``seed``
    (``seed_everything(42)``), the first ``grid_size``."""
    configs = [dict(c) for c in GRID]
    random.Random(seed).shuffle(configs)
    return configs[:grid_size]


def _search(task: ProbeTask, data: Dict[str, dict], weighted: bool, grid_size: int, max_epochs: int, seed: int,
            device: str, hidden_dim: int) -> dict:
    runs = []
    for params in grid_configs(grid_size, seed):
        runs.append({"params": params, **train_one(task, data, params, weighted, max_epochs, None, device,
                                                    hidden_dim)})
    best = max(runs, key=lambda r: r["valid"])  # the first of equal validation scores, as the kit's stable sort
    return {**best, "grid": [{"params": r["params"], "valid": r["valid"], "epoch": r["epoch"]} for r in runs]}


def grid_search(task: ProbeTask, data: Dict[str, dict], weighted: bool = False, grid_size: int = 8,
                max_epochs: int = MAX_EPOCHS, seed: int = KIT_SEED, device: str = "cpu",
                hidden_dim: int = HIDDEN_DIM) -> dict:
    """The best of ``grid_size`` HEAR configurations on validation, with its test metrics; every configuration's
    validation score under "grid" (``hidden_dim`` is HEAR's 1024; smaller only for quick looks)."""
    with kit_rng(seed, device):
        return _search(task, data, weighted, grid_size, max_epochs, seed, device, hidden_dim)


def evaluate_folds(folds: Sequence, load: Callable[[object], tuple], weighted: bool = False, grid_size: int = 8,
                   max_epochs: int = MAX_EPOCHS, seed: int = KIT_SEED, device: str = "cpu",
                   hidden_dim: int = HIDDEN_DIM) -> dict:
    """The kit's rule for a task with several test folds: grid search on the first fold only, the selected
    configuration trained on each other fold, every fold tested; one random stream for the whole task, which
    ``load`` (embedding on a cache miss) does not draw from.

    ``load(fold)`` -> (ProbeTask, data) for that test fold. Returns {metric: mean over folds,
    "std": {metric: std over folds, ddof 1}, "params": the selected configuration, "grid": the first fold's
    search, "folds": [{"fold", "valid", "test", "params", "layer_weights", "epoch"}, ...],
    "layer_weights": their mean (weighted mode) or None}."""
    per_fold = []
    with kit_rng(seed, device):
        task, data = _load_outside_stream(load, folds[0], device)
        search = _search(task, data, weighted, grid_size, max_epochs, seed, device, hidden_dim)
        grid = search.pop("grid")
        per_fold.append({"fold": folds[0], **search})
        del data
        for fold in folds[1:]:
            task, data = _load_outside_stream(load, fold, device)
            per_fold.append({"fold": fold, "params": search["params"],
                             **train_one(task, data, search["params"], weighted, max_epochs, None, device,
                                         hidden_dim)})
            del data
    names = list(per_fold[0]["test"])
    metrics = {m: float(np.mean([f["test"][m] for f in per_fold])) for m in names}
    weights = [f["layer_weights"] for f in per_fold if f["layer_weights"]]
    return {**metrics, "std": {m: fold_std([f["test"][m] for f in per_fold]) for m in names},
            "params": search["params"], "grid": grid, "folds": per_fold,
            "layer_weights": np.mean(weights, axis=0).tolist() if weights else None}
