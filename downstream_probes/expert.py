"""The s3prl DownstreamExpert of every probe folder (one that ships no ``expert.py`` of its own).

s3prl's runner imports ``s3prl.downstream.<probe>.expert`` and builds ``DownstreamExpert(upstream_dim=...,
upstream_rate=..., **config, **vars(args))``; the registry answers that name with this module for every probe
folder, and ``args.downstream`` (``-d NAME``) says whose ``dataset.py`` to read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from encodecmae_s3prl.downstream_probes.clips import ClipDataset
from encodecmae_s3prl.downstream_probes.metrics import METRICS
from encodecmae_s3prl.downstream_probes.mlp import PooledMLP
from encodecmae_s3prl.downstream_probes.task import ProbeDataError, ProbeRootError, ProbeTask, load_probe_task
from encodecmae_s3prl.errors import quiet_when_main_leaves


class PooledProbeExpert(nn.Module):
    """An s3prl DownstreamExpert for one ProbeTask: the time-mean of the upstream features -> PooledMLP.

    ``datarc``: batch sizes, ``num_workers``, ``max_seconds``; ``modelrc``: ``hidden_dim``, ``hidden_layers``,
    ``dropout``. ``DownstreamExpert`` below builds it from s3prl's arguments (``-d`` names the probe)."""

    def __init__(self, upstream_dim: int, task: ProbeTask, expdir: str | Path, datarc: dict | None = None,
                 modelrc: dict | None = None):
        super().__init__()
        self.task = task
        self.datarc = dict(datarc or {})
        modelrc = dict(modelrc or {})
        self.expdir = Path(expdir)
        self.datasets = {name: ClipDataset(clips, len(task.classes), task.multilabel, self.datarc.get("max_seconds"))
                         for name, clips in task.splits.items()}
        self.model = PooledMLP(upstream_dim, len(task.classes), modelrc.get("hidden_dim", 1024),
                               modelrc.get("hidden_layers", 1), modelrc.get("dropout", 0.1))
        self.register_buffer("best_score", torch.full((1,), -math.inf))

    def get_dataloader(self, split: str, epoch: int = 0) -> DataLoader:
        if split not in self.datasets:
            raise ProbeDataError(f"unknown split {split!r}; this probe has {sorted(self.datasets)}")
        dataset = self.datasets[split]
        train = split == "train"
        return DataLoader(dataset, batch_size=self.datarc.get("train_batch_size" if train else "eval_batch_size", 16),
                          shuffle=train, drop_last=train and len(dataset) > self.datarc.get("train_batch_size", 16),
                          num_workers=self.datarc.get("num_workers", 0), collate_fn=dataset.collate_fn,
                          worker_init_fn=quiet_when_main_leaves)

    def forward(self, split, features, targets, names, records, **kwargs):
        lengths = torch.tensor([len(f) for f in features], device=features[0].device)
        padded = nn.utils.rnn.pad_sequence(features, batch_first=True)
        pooled = padded.sum(dim=1) / lengths[:, None].clamp_min(1)
        logits = self.model(pooled)
        targets = targets.to(logits.device)
        if self.task.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        else:
            loss = F.cross_entropy(logits, targets)
        records["loss"].append(loss.item())
        records["logits"].append(logits.detach().float().cpu())
        records["targets"].append(targets.detach().cpu())
        return loss

    def log_records(self, split, records, logger, global_step, **kwargs):
        logits, targets = torch.cat(records["logits"]), torch.cat(records["targets"])
        scores = torch.sigmoid(logits) if self.task.multilabel else logits
        metrics = self.task.metrics
        values = {name: METRICS[name](scores, targets) for name in metrics}
        values["loss"] = float(np.mean(records["loss"]))
        prefix = f"{self.task.name}/{split}-"
        for name, value in values.items():
            logger.add_scalar(prefix + name, value, global_step=global_step)
            print(f"{split} {name}: {value:.4f}")
        with open(self.expdir / "log.log", "a") as handle:
            handle.write(f"step {global_step} {split} " + " ".join(f"{k}={v:.4f}" for k, v in values.items()) + "\n")
        save = []
        if split == "dev" and values[metrics[0]] > float(self.best_score):
            self.best_score.fill_(values[metrics[0]])
            save.append("dev-best.ckpt")
        return save


class DownstreamExpert(PooledProbeExpert):
    def __init__(self, upstream_dim: int, downstream_expert: dict, expdir: str, downstream: str, **kwargs):
        datarc = dict(downstream_expert["datarc"])
        root = datarc.get("root")
        if not root or not Path(root).is_dir():
            raise ProbeRootError(f"downstream_expert.datarc.root = {root!r} is not a folder: set it to the dataset's "
                                 f"folder in the probe's config.yaml")
        task = load_probe_task(downstream, root, datarc.get("test_fold"))
        super().__init__(upstream_dim, task, expdir, datarc, downstream_expert.get("modelrc"))
