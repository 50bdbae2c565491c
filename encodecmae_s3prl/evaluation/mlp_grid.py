"""The MLP grid of the HEAR protocol: the scene-task rules of the official kit, heareval 2021.1.3
(``heareval/predictions/task_predictions.py``), read from its code, trained on cached embeddings
(``embedding_cache.embed_splits``):

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
import itertools
import math
import random
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from encodecmae_s3prl.downstream_probes.metrics import METRICS, fold_std
from encodecmae_s3prl.downstream_probes.mlp import PooledMLP
from encodecmae_s3prl.downstream_probes.task import ProbeTask

# heareval 2021.1.3, predictions/task_predictions.py: PARAM_GRID and task_predictions / task_predictions_train
KIT_SEED = 42  # seed_everything(42) once per task (its default --deterministic True)
HIDDEN_DIM, DROPOUT, BATCH_SIZE = 1024, 0.1, 1024
MAX_EPOCHS, CHECK_VAL_EVERY, PATIENCE = 500, 3, 20
SUMMARY_BATCH = 64  # torchinfo.summary(predictor, input_size=(64, nfeatures)) draws torch.rand(64, nfeatures)
# the grid axes in ParameterGrid's order (keys sorted: hidden_layers, initialization, lr; the last varies fastest)
GRID_AXES = {"hidden_layers": (1, 2), "init": ("xavier_uniform", "xavier_normal"),
             "lr": (3.2e-3, 1e-3, 3.2e-4, 1e-4)}
GRID = [dict(zip(GRID_AXES, values, strict=True)) for values in itertools.product(*GRID_AXES.values())]


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
