"""Every task the HEAR-protocol commands (``compare``, ``table1``) run, in one table: our probe folders and
s3prl's recipes, each read exactly as its s3prl expert reads it, clips in the HEAR kit's training order."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

from encodecmae_s3prl import registry
from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask, TaskSource, probe_source
from encodecmae_s3prl.evaluation import recipe_tasks


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
