"""The probe contract: what a probe folder holds, and how its task is read and checked.

A probe is one folder, ``downstream_probes/<name>/`` or ``<name>/`` in a folder listed in
``ENCODECMAE_PROBE_PATH`` (see ``encodecmae_s3prl.registry``), holding two files:

- ``dataset.py``: ``load_task(root: Path, test_fold: str | None = None) -> ProbeTask`` (the clips of train /
  dev / test, the class names, ``multilabel``, ``metrics``, the layout quoted in errors) and
  ``folds(root: Path) -> list`` (the test folds a full evaluation runs over; ``[None]`` for a dataset with fixed
  splits, also when ``folds`` is left out);
- ``config.yaml``: s3prl's runner config for ``run_downstream.py -d <name>``, ``downstream_expert.datarc.root``
  naming the data (``datarc.test_fold`` for k-fold datasets).

The s3prl runner (``expert.py`` beside this file, the ``DownstreamExpert`` of every probe) and the HEAR protocol
(``encodecmae_s3prl.evaluation``) both train on the ``ProbeTask`` that ``load_probe_task`` returns.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

from encodecmae_s3prl.downstream_probes.metrics import METRICS
from encodecmae_s3prl.errors import UserError


class ProbeDataError(UserError, ValueError):
    """A probe dataset is missing, malformed, or not in the layout its publisher distributes."""


class ProbeRootError(ProbeDataError):
    """``downstream_expert.datarc.root`` is not a folder; the command adds its option for the key."""


class UnknownFoldError(ProbeDataError):
    """``datarc.test_fold`` names no fold of the dataset; the command adds its option for the key."""


@dataclass(frozen=True)
class Clip:
    """One labelled clip: a whole file, or ``duration`` seconds from ``start`` (segments of long recordings,
    e.g. Speech Commands' background noise cut into 1 s _silence_ clips)."""

    path: str
    target: tuple  # class indices (one for multiclass, any number for multilabel)
    start: float = 0.0
    duration: float | None = None

    @property
    def key(self) -> str:
        """Unique per clip (a file may hold several segments): what embedding caches index."""
        return self.path if self.duration is None and not self.start else f"{self.path}@{self.start:g}+{self.duration}"


@dataclass
class ProbeTask:
    """One probe's data as a probe's ``dataset.py`` describes it (``load_task``): what the s3prl expert and the
    HEAR protocol train on."""

    name: str
    splits: Dict[str, List[Clip]]  # train / dev / test
    classes: List[str]
    multilabel: bool = False  # several labels per clip: sigmoid + BCE, else softmax + cross-entropy
    metrics: tuple = ("acc",)  # names in METRICS; the first one selects the model on dev
    layout: str = "the layout its publisher distributes"  # the dataset's layout, quoted in error messages
    kit_ordered: bool = False  # clips already in the HEAR kit's training order (HEAR tasks): not reordered
    # HEAR tasks: every clip's key, one group per split in the order the kit's embedding runner reads them
    # (metadata split order, file order), and the clips' duration in seconds; the HEAR protocol embeds in the kit's
    # batches, since a clip's embedding depends on its batch at float32 rounding (padding, kernel shapes)
    kit_embedding_groups: tuple = ()
    sample_duration: float | None = None


class TaskSource(NamedTuple):
    """How a task is read, one entry of the HEAR protocol's table: a probe folder's ``dataset.py`` through
    ``probe_source``, each of s3prl's recipes through ``evaluation.recipe_tasks.RECIPES``."""

    folds: Callable[[Path], list]  # root -> the test folds ([None] without folds)
    load_task: Callable[..., ProbeTask]  # (root, test_fold) -> a checked ProbeTask


def check_audio_exists(splits: Dict[str, List[Clip]], root: Path, layout: str) -> None:
    """Fail early, naming the file, when the metadata lists audio that is not on disk (a partial extraction,
    or ``root`` pointing at the wrong folder), instead of training on silence."""
    missing = sorted({clip.path for clips in splits.values() for clip in clips if not os.path.isfile(clip.path)})
    if missing:
        raise ProbeDataError(
            f"{len(missing)} audio file(s) listed in the metadata under {root} do not exist, e.g. {missing[0]}. "
            f"Expected layout: {layout}. Extract the audio next to the metadata, or fix datarc.root.")


def natural_key(name: str) -> tuple:
    """'fold10' after 'fold9': digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def fold_splits(items_by_fold: Dict[str, list], test_fold: str | None = None) -> Dict[str, list]:
    """HEAR's k-fold rule: fold i tests, fold i+1 (mod k) validates, the rest train (folds in natural order:
    fold2 before fold10). No ``test_fold``: the first fold tests."""
    folds = sorted(items_by_fold, key=natural_key)
    test_fold = test_fold or folds[0]
    if test_fold not in folds:
        raise UnknownFoldError(f"datarc.test_fold {test_fold!r} is not one of the dataset's folds {folds}: set it to "
                               f"one of them")
    i = folds.index(test_fold)
    valid = folds[(i + 1) % len(folds)]
    return {"train": [x for f in folds if f not in (test_fold, valid) for x in items_by_fold[f]],
            "dev": items_by_fold[valid], "test": items_by_fold[test_fold]}


# --- reading a probe's task ---------------------------------------------------------------

def check_task(task: ProbeTask, root: str | Path) -> ProbeTask:
    """``task`` as read from ``root``, checked: metrics we compute, every listed audio file on disk (named when
    missing), no empty split. ``root`` is only quoted (its first part for a 'TRAIN,TEST' spec)."""
    unknown = [m for m in task.metrics if m not in METRICS]
    if not task.metrics or unknown:
        raise ProbeDataError(f"probe {task.name}: metrics {list(task.metrics)} must be a non-empty tuple of "
                             f"{sorted(METRICS)}")
    check_audio_exists(task.splits, Path(str(root).split(",")[0]), task.layout)
    for split in ("train", "dev", "test"):
        if not task.splits.get(split):
            raise ProbeDataError(f"probe {task.name}: the {split} split of {root} has no clips; check the dataset "
                                 f"layout: {task.layout}")
    return task


def dataset_module(probe: str):
    """The ``dataset.py`` of a probe folder (the registry makes probes found in ENCODECMAE_PROBE_PATH importable
    under the same package name as ours)."""
    try:
        return importlib.import_module(f"{__package__}.{probe}.dataset")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(f"{__package__}.{probe}"):
            raise  # an import inside dataset.py failed: its own error
        raise ProbeDataError(f"unknown probe {probe!r}: no {probe}/dataset.py among the probe folders") from None


def _check_root(probe: str, root: str | Path) -> Path:
    if not Path(root).is_dir():
        raise ProbeDataError(f"data for probe {probe}: {root} is not a folder")
    return Path(root)


def probe_folds(probe: str, root: str | Path) -> List[str | None]:
    """The test folds a probe is evaluated on (its ``dataset.folds``): every fold of a k-fold dataset, else [None]."""
    module = dataset_module(probe)
    folds = getattr(module, "folds", None)
    return list(folds(_check_root(probe, root))) if folds else [None]


def load_probe_task(probe: str, root: str | Path, test_fold: str | None = None) -> ProbeTask:
    """A probe's ``dataset.load_task(root, test_fold)``, named ``probe`` and checked (``check_task``)."""
    task = dataset_module(probe).load_task(_check_root(probe, root), test_fold)
    return check_task(replace(task, name=probe), root)


def probe_source(probe: str) -> TaskSource:
    """A probe folder as a TaskSource (folds, checked load_task)."""
    return TaskSource(partial(probe_folds, probe), partial(load_probe_task, probe))
