"""The HEAR 2021 protocol on cached embeddings: the upstream runs once per (upstream, task), never per epoch.

1. ``embed_splits``: the time-mean of every hidden state of every clip -> one ``.npy`` cache per
   (upstream, task), (clips, layers, dim) float32, shared by every fold and every rerun. s3prl's
   weighted sum commutes with the time-mean, so the cache serves both the last-layer protocol
   (the paper's) and a learned softmax weighting of layers exactly.
2. ``grid_search``: HEAR's shallow MLP (DESIGN §6): hidden layers {1, 2}, width 1024, dropout 0.1,
   BatchNorm before ReLU, Adam, lr {3.2e-3, 1e-3, 3.2e-4, 1e-4}, init {xavier_uniform, xavier_normal},
   batch 1024, validation every 3 epochs, early stopping with patience 20 (validations), at most
   500 epochs; ``grid_size`` (8 in HEAR) configurations drawn from the 16 with a fixed seed; the
   best on validation is tested. In weighted mode the softmax layer logits (zeros at the start:
   equal weights) train with the MLP at 10x its learning rate.
"""
from __future__ import annotations

import hashlib
import importlib
import itertools
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import soundfile
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from encodecmae_s3prl.downstream_probes import recipe_tasks
from encodecmae_s3prl.downstream_probes.common import (METRICS, UPSTREAM_RATE, Clip, ProbeDataError,
                                                        check_audio_exists, read_clip)

RECIPES = {"speech_commands": recipe_tasks.SPEECH_COMMANDS_LAYOUT, "emotion": recipe_tasks.EMOTION_LAYOUT}
MIN_SAMPLES = UPSTREAM_RATE // 10  # shorter clips are zero-padded to 0.1 s (convolutional front ends need ~25 ms)

GRID = [dict(hidden_layers=h, lr=lr, init=init) for h, lr, init in
        itertools.product((1, 2), (3.2e-3, 1e-3, 3.2e-4, 1e-4), ("xavier_uniform", "xavier_normal"))]


@dataclass
class ProbeTask:
    name: str
    splits: Dict[str, List[Clip]]  # train / dev / test
    classes: List[str]
    multilabel: bool
    metrics: tuple  # the first one selects the model on dev


def task_names() -> List[str]:
    """Every probe the HEAR-cached mode can run: ours (downstream_probes/<name>/expert.py) and s3prl's recipes."""
    ours = sorted(p.name for p in Path(__file__).resolve().parent.iterdir() if (p / "expert.py").is_file())
    return ours + sorted(RECIPES)


def _expert_class(probe: str):
    if probe not in task_names():
        raise ProbeDataError(f"unknown probe {probe!r}; known: {', '.join(task_names())}")
    return importlib.import_module(f"encodecmae_s3prl.downstream_probes.{probe}.expert").DownstreamExpert


def task_folds(probe: str, root: str | Path) -> List[str | None]:
    """The test folds a probe is evaluated on: every fold of a k-fold dataset, else [None]."""
    if probe == "speech_commands":
        return [None]
    if probe == "emotion":
        return recipe_tasks.emotion_folds(root)
    _check_root(probe, root)
    return list(_expert_class(probe).folds(Path(root)))


def _check_root(probe: str, root: str | Path) -> None:
    if not Path(root).is_dir():
        raise ProbeDataError(f"data for probe {probe}: {root} is not a folder")


def load_task(probe: str, root: str | Path, test_fold: str | None = None) -> ProbeTask:
    """A probe's splits, classes and metrics, read from the dataset files exactly as its expert reads them."""
    if probe == "speech_commands":
        splits, classes = recipe_tasks.speech_commands_splits(root)
        task = ProbeTask(probe, splits, classes, False, ("acc",))
    elif probe == "emotion":
        splits, classes = recipe_tasks.emotion_splits(root, test_fold)
        task = ProbeTask(probe, splits, classes, False, ("acc",))
    else:
        _check_root(probe, root)
        expert_class = _expert_class(probe)
        expert = expert_class.__new__(expert_class)  # the dataset description only: no MLP is built
        nn.Module.__init__(expert)
        expert.datarc = {"test_fold": test_fold} if test_fold else {}
        splits, classes = expert.build_splits(Path(root))
        task = ProbeTask(probe, splits, list(classes), expert.multilabel, tuple(expert.metrics))
    check_audio_exists(task.splits, Path(str(root).split(",")[0]), RECIPES.get(probe) or _expert_class(probe).layout)
    for split in ("train", "dev", "test"):
        if not task.splits.get(split):
            raise ProbeDataError(f"probe {probe}: the {split} split of {root} is empty")
    return task


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


@torch.no_grad()
def embed_clips(upstream, clips: Sequence[Clip], device: str = "cpu", batch_size: int = 8,
                desc: str = "embed") -> np.ndarray:
    """(N, layers, dim) float32: the time-mean of every hidden state of each clip (its own frames only).

    Clips are read batch by batch (a corpus never sits in memory) in order of length, so padding
    is small; an unreadable clip is embedded as 1 s of silence and named on stderr."""
    rate = upstream.get_downsample_rates("hidden_states") if hasattr(upstream, "get_downsample_rates") else None
    order = sorted(range(len(clips)), key=lambda i: -_clip_seconds(clips[i]))
    pooled, bad = [None] * len(clips), []
    for start in tqdm(range(0, len(order), batch_size), desc=desc, dynamic_ncols=True, leave=False):
        index = order[start:start + batch_size]
        batch = []
        for i in index:
            wav = read_clip(clips[i].path, clips[i].start, clips[i].duration)
            if wav is None:
                bad.append(clips[i].key)
                wav = torch.zeros(UPSTREAM_RATE)
            if wav.numel() < MIN_SAMPLES:
                wav = torch.nn.functional.pad(wav, (0, MIN_SAMPLES - wav.numel()))
            batch.append(wav.to(device))
        stacked = torch.stack(list(upstream(batch)["hidden_states"]), dim=1)  # (batch, layers, frames, dim)
        for row, i in enumerate(index):
            frames = stacked.shape[2] if rate is None else max(1, min(stacked.shape[2], round(len(batch[row]) / rate)))
            pooled[i] = stacked[row, :, :frames].float().mean(dim=1).cpu().numpy()
    if bad:
        print(f"[hear] {len(bad)} unreadable clip(s) embedded as 1 s of silence: {', '.join(bad[:5])}"
              f"{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
    return np.stack(pooled).astype(np.float32)


def cache_path(cache_dir: Path, upstream_key: str, task: ProbeTask, keys: Sequence[str]) -> Path:
    """One file per (upstream, task): the key names the upstream (entry, checkpoint identity) and the clip list."""
    digest = hashlib.sha1("\n".join([upstream_key, *keys]).encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in upstream_key.split("|")[0])
    return Path(cache_dir) / f"{label}-{task.name}-{digest}.npy"


def embed_splits(get_upstream: Callable[[], nn.Module], upstream_key: str, task: ProbeTask, cache_dir: Path,
                 device: str = "cpu", batch_size: int = 8) -> Dict[str, dict]:
    """{split: {"x": (N, layers, dim), "y": targets}}. The cache holds every clip of the task once, so every
    fold of a k-fold task and every rerun reuses it; ``get_upstream`` is only called on a cache miss."""
    keys = sorted({clip.key for clips in task.splits.values() for clip in clips})
    cache = cache_path(cache_dir, upstream_key, task, keys)
    if cache.is_file():
        x = np.load(cache)
    else:
        by_key = {clip.key: clip for clips in task.splits.values() for clip in clips}
        x = embed_clips(get_upstream(), [by_key[k] for k in keys], device, batch_size,
                        desc=f"embed {upstream_key.split('|')[0]} {task.name}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, x)
        tmp.replace(cache)  # atomic: an interrupted run never leaves a truncated cache
    row = {key: i for i, key in enumerate(keys)}
    return {split: {"x": x[[row[c.key] for c in clips]], "y": _targets(task, clips)}
            for split, clips in task.splits.items()}


class LayerWeightedMLP(nn.Module):
    """Softmax weights over layers (s3prl's weighted sum; 'last' mode fixes the last layer) -> HEAR MLP."""

    def __init__(self, layers: int, dim: int, classes: int, hidden_layers: int, init: str, weighted: bool,
                 hidden_dim: int = 1024):
        super().__init__()
        self.weighted = weighted
        self.layer_logits = nn.Parameter(torch.zeros(layers)) if weighted else None
        blocks, width = [], dim
        for _ in range(hidden_layers):
            blocks += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(), nn.Dropout(0.1)]
            width = hidden_dim
        blocks.append(nn.Linear(width, classes))
        self.mlp = nn.Sequential(*blocks)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                getattr(nn.init, init + "_")(module.weight)
                nn.init.zeros_(module.bias)

    def layer_weights(self) -> torch.Tensor:
        return F.softmax(self.layer_logits, dim=0) if self.weighted else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, layers, dim) -> logits (batch, classes)."""
        pooled = (self.layer_weights()[None, :, None] * x).sum(dim=1) if self.weighted else x[:, -1]
        return self.mlp(pooled)


def _score(task: ProbeTask, logits: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    scores = torch.sigmoid(logits) if task.multilabel else logits
    return {m: METRICS[m](scores, y) for m in task.metrics}


LAYER_LR_SCALE = 10.0  # layer logits: a handful of parameters, one Adam step per epoch on small tasks


def _adam(model: "LayerWeightedMLP", lr: float) -> torch.optim.Optimizer:
    """Adam on the MLP at the grid's lr; the layer logits (weighted mode) at LAYER_LR_SCALE x lr, so that
    they can move within HEAR's epoch budget (with Adam each step moves a logit by about lr)."""
    groups = [{"params": list(model.mlp.parameters()), "lr": lr}]
    if model.layer_logits is not None:
        groups.append({"params": [model.layer_logits], "lr": lr * LAYER_LR_SCALE})
    try:  # the fused kernel (CPU and CUDA in torch >= 2.4) is ~1.5x faster on these small MLPs
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups)


def train_one(task: ProbeTask, data: Dict[str, dict], params: dict, weighted: bool, max_epochs: int, seed: int,
              device: str = "cpu", hidden_dim: int = 1024):
    """One HEAR configuration: train on ``train``, validate every 3 epochs on ``dev`` (early stopping,
    patience 20 validations), test the best-on-dev state. Returns (dev score, test metrics, layer weights)."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(d["x"]).to(device) for s, d in data.items()}
    y = {s: torch.from_numpy(d["y"]).to(device) for s, d in data.items()}
    model = LayerWeightedMLP(x["train"].shape[1], x["train"].shape[2], len(task.classes), params["hidden_layers"],
                             params["init"], weighted, hidden_dim).to(device)
    optimizer = _adam(model, params["lr"])
    loss_fn = F.binary_cross_entropy_with_logits if task.multilabel else F.cross_entropy
    best, best_state, waited, n = -float("inf"), None, 0, x["train"].shape[0]
    for epoch in range(max_epochs):
        model.train()
        for index in torch.randperm(n, device=device).split(1024):
            if index.numel() < 2:  # BatchNorm needs two samples
                continue
            loss = loss_fn(model(x["train"][index]), y["train"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % 3 == 2 or epoch == max_epochs - 1:
            model.eval()
            with torch.no_grad():
                value = _score(task, model(x["dev"]), y["dev"])[task.metrics[0]]
            if value > best or best_state is None:
                best, waited = value, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
                if waited >= 20:
                    break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        test = _score(task, model(x["test"]), y["test"])
        weights = model.layer_weights()
    return best, test, (weights.cpu().tolist() if weights is not None else None)


def grid_search(task: ProbeTask, data: Dict[str, dict], weighted: bool = False, grid_size: int = 8,
                max_epochs: int = 500, seed: int = 0, device: str = "cpu", hidden_dim: int = 1024) -> dict:
    """The best of ``grid_size`` HEAR configurations on validation, with its test metrics (``hidden_dim`` is
    HEAR's 1024; smaller only for quick looks)."""
    configs = random.Random(seed).sample(GRID, min(grid_size, len(GRID)))
    best = None
    for i, params in enumerate(configs):
        valid, test, weights = train_one(task, data, params, weighted, max_epochs, seed + i, device, hidden_dim)
        if best is None or valid > best["valid"]:
            best = {"valid": valid, "test": test, "params": params, "layer_weights": weights}
    return best
