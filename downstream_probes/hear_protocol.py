"""The HEAR 2021 protocol on cached embeddings: the upstream runs once per (upstream, task), never per epoch.

1. ``embed_splits``: the time-mean of every hidden state of every clip -> one ``.npz`` cache per
   (upstream, task). s3prl's weighted sum commutes with the time-mean, so the cache serves
   both the last-layer protocol (the paper's) and a learned softmax weighting of layers exactly.
2. ``grid_search``: HEAR's shallow MLP (DESIGN §6): hidden layers {1, 2}, width 1024, dropout 0.1,
   BatchNorm before ReLU, Adam, lr {3.2e-3, 1e-3, 3.2e-4, 1e-4}, init {xavier_uniform, xavier_normal},
   batch 1024, validation every 3 epochs, early stopping with patience 20 (validations), at most
   500 epochs; ``grid_size`` (8 in HEAR) configurations drawn from the 16 with a fixed seed; the
   best on validation is tested.
"""
from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from encodecmae_s3prl.downstream_probes.common import METRICS, ProbeDataError, read_clip

GRID = [dict(hidden_layers=h, lr=lr, init=init) for h, lr, init in
        itertools.product((1, 2), (3.2e-3, 1e-3, 3.2e-4, 1e-4), ("xavier_uniform", "xavier_normal"))]


@dataclass
class ProbeTask:
    name: str
    splits: Dict[str, list]  # split -> [Clip]
    classes: List[str]
    multilabel: bool
    metrics: tuple


def load_task(probe: str, root: str | Path, datarc: dict | None = None) -> ProbeTask:
    """A probe's splits, classes and metrics, read exactly as its s3prl expert reads them."""
    expert_class = importlib.import_module(f"encodecmae_s3prl.downstream_probes.{probe}.expert").DownstreamExpert
    task = expert_class.__new__(expert_class)  # dataset description only: no MLP, no nn.Module state
    task.datarc = dict(datarc or {})
    root = Path(root)
    if not root.is_dir():
        raise ProbeDataError(f"data for probe {probe}: {root} is not a folder")
    splits, classes = task.build_splits(root)
    return ProbeTask(probe, splits, list(classes), task.multilabel, tuple(task.metrics))


def _targets(task: ProbeTask, clips) -> np.ndarray:
    if task.multilabel:
        y = np.zeros((len(clips), len(task.classes)), np.float32)
        for row, clip in enumerate(clips):
            y[row, list(clip.target)] = 1
        return y
    return np.array([clip.target[0] for clip in clips], np.int64)


@torch.no_grad()
def embed_clips(upstream, paths: Sequence[str], device: str = "cpu", batch_size: int = 8,
                desc: str = "embed") -> np.ndarray:
    """(N, layers, dim) float32: the time-mean of every hidden state of each clip (its valid frames only)."""
    rate = upstream.get_downsample_rates("hidden_states") if hasattr(upstream, "get_downsample_rates") else None
    wavs, bad = [], 0
    for path in paths:
        wav = read_clip(path)
        if wav is None:
            bad += 1
            wav = torch.zeros(16000)
        wavs.append(wav)
    if bad:
        print(f"[hear] {bad} unreadable clip(s) embedded as 1 s of silence")
    order = sorted(range(len(wavs)), key=lambda i: -len(wavs[i]))  # similar lengths batch together
    pooled = [None] * len(wavs)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, dynamic_ncols=True, leave=False):
        index = order[start:start + batch_size]
        batch = [wavs[i].to(device) for i in index]
        stacked = torch.stack(list(upstream(batch)["hidden_states"]), dim=1)  # (batch, layers, frames, dim)
        for row, i in enumerate(index):
            frames = stacked.shape[2] if rate is None else max(1, min(stacked.shape[2], round(len(batch[row]) / rate)))
            pooled[i] = stacked[row, :, :frames].float().mean(dim=1).cpu().numpy()
    return np.stack(pooled).astype(np.float32)


def embed_splits(upstream, upstream_key: str, task: ProbeTask, cache_dir: Path, device: str = "cpu",
                 batch_size: int = 8) -> Dict[str, dict]:
    """{split: {"x": (N, layers, dim), "y": targets}}. The cache holds every clip of the task once, keyed by
    (upstream, clip list), so every fold of a k-fold task and every rerun reuses it."""
    paths = sorted({clip.path for clips in task.splits.values() for clip in clips})
    digest = hashlib.sha1(("\n".join([upstream_key, *paths])).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{upstream_key.replace('/', '_')}-{task.name}-{digest}.npy"
    if cache.is_file():
        x = np.load(cache)
    else:
        x = embed_clips(upstream, paths, device, batch_size, desc=f"embed {upstream_key} {task.name}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, x)
        tmp.replace(cache)
    row = {path: i for i, path in enumerate(paths)}
    return {split: {"x": x[[row[c.path] for c in clips]], "y": _targets(task, clips)}
            for split, clips in task.splits.items()}


def task_folds(probe: str, root: str | Path) -> List[str | None]:
    """The test folds a probe is evaluated on: every fold of a k-fold dataset, else [None]."""
    root = Path(root)
    if probe == "esc50":
        import csv

        with open(root / "meta" / "esc50.csv", newline="") as handle:
            return sorted({f"fold{int(r['fold'])}" for r in csv.DictReader(handle)})
    if probe == "gtzan_genre":
        from encodecmae_s3prl.downstream_probes.gtzan_genre.dataset import FOLDS

        return [f"fold{k}" for k in range(1, FOLDS + 1)]
    if probe == "hear":
        from encodecmae_s3prl.downstream_probes.hear.dataset import read_task

        meta = read_task(root)
        return [None] if meta["split_mode"] == "trainvaltest" else sorted(meta["splits"])
    return [None]


class LayerWeightedMLP(nn.Module):
    """Softmax weights over layers (s3prl's weighted sum; 'last' mode fixes the last layer) -> HEAR MLP."""

    def __init__(self, layers: int, dim: int, classes: int, hidden_layers: int, init: str, weighted: bool):
        super().__init__()
        self.weighted = weighted
        self.layer_logits = nn.Parameter(torch.zeros(layers)) if weighted else None
        blocks, width = [], dim
        for _ in range(hidden_layers):
            blocks += [nn.Linear(width, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Dropout(0.1)]
            width = 1024
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


def train_one(task: ProbeTask, data: Dict[str, dict], params: dict, weighted: bool, max_epochs: int, seed: int,
              device: str = "cpu"):
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(d["x"]).to(device) for s, d in data.items()}
    y = {s: torch.from_numpy(d["y"]).to(device) for s, d in data.items()}
    model = LayerWeightedMLP(x["train"].shape[1], x["train"].shape[2], len(task.classes), params["hidden_layers"],
                             params["init"], weighted).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
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
            if value > best:
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
                max_epochs: int = 500, seed: int = 0, device: str = "cpu") -> dict:
    """The best of ``grid_size`` HEAR configurations on validation, with its test metrics."""
    configs = random.Random(seed).sample(GRID, min(grid_size, len(GRID)))
    best = None
    for i, params in enumerate(configs):
        valid, test, weights = train_one(task, data, params, weighted, max_epochs, seed + i, device)
        if best is None or valid > best["valid"]:
            best = {"valid": valid, "test": test, "params": params, "layer_weights": weights}
    return best
