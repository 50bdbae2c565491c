"""Any HEAR 2021 task as ``hear-preprocess`` (hear-eval-kit) writes it: ``task_metadata.json``,
``labelvocabulary.csv`` (idx,label), ``<split>.json`` (file -> labels), audio in ``<rate>/<split>/`` for one or
more rates (HEAR distributes 48000; hear-preprocess writes any rate asked for). Clips name the copy at the
highest rate present; the HEAR protocol reads the copy nearest its upstream's rate.

Scene-level tasks only (one embedding per clip), multiclass or multilabel: accuracy (pitch and chroma accuracy
when the task evaluates them) or mAP; folds as the metadata says:
``trainvaltest`` uses train/valid/test, ``new_split_kfold`` and ``presplit_kfold`` use HEAR's fold rule.
Clips come in the order the HEAR kit trains on them (heareval 2021.1.3 never reshuffles: its training
order is the order in which ``memmap_embeddings`` wrote the embeddings, each split's files shuffled once by
one ``random.Random(0)`` going through the splits in metadata order).
"""
import csv
import json
import random
from pathlib import Path

from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask, fold_splits, natural_key

LAYOUT = ("TASK/task_metadata.json, TASK/labelvocabulary.csv (idx,label), TASK/<split>.json and "
          "TASK/<rate>/<split>/<file> (e.g. 48000/), as hear-preprocess writes a task")
SPLIT_MODES = ("trainvaltest", "new_split_kfold", "presplit_kfold")
PREDICTION_TYPES = ("multiclass", "multilabel")


def _read_json(path: Path):
    if not path.is_file():
        raise ProbeDataError(f"{path} not found: the hear probe expects {LAYOUT}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ProbeDataError(f"{path} is not valid JSON ({err}); re-run hear-preprocess for this task") from None


def read_task(root: Path) -> dict:
    """task_metadata.json, checked for what this probe needs."""
    meta_path = root / "task_metadata.json"
    meta = _read_json(meta_path)
    if meta.get("embedding_type") != "scene":
        raise ProbeDataError(f"{meta_path}: embedding_type {meta.get('embedding_type')!r}; the hear probe takes scene "
                             f"tasks (one label set per clip), not event (timestamp) tasks")
    if meta.get("prediction_type") not in PREDICTION_TYPES:
        raise ProbeDataError(f"{meta_path}: prediction_type {meta.get('prediction_type')!r} is not one of "
                             f"{PREDICTION_TYPES}")
    if meta.get("split_mode") not in SPLIT_MODES:
        raise ProbeDataError(f"{meta_path}: split_mode {meta.get('split_mode')!r} is not one of {SPLIT_MODES}")
    if meta["split_mode"] != "trainvaltest" and not meta.get("splits"):
        raise ProbeDataError(f"{meta_path}: a k-fold task must list its folds in 'splits'")
    return meta


def folds(root: Path) -> list:
    meta = read_task(root)
    return [None] if meta["split_mode"] == "trainvaltest" else sorted(meta["splits"], key=natural_key)


def rates(root: Path) -> list:
    """The sample rates a task holds audio at (its ``<rate>/`` folders), ascending."""
    root = Path(root)
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def metrics(meta: dict) -> tuple:
    if meta["prediction_type"] == "multilabel":
        return ("mAP",)
    if "pitch_acc" in meta.get("evaluation", []):
        return ("pitch_acc", "chroma_acc")
    return ("acc",)


def load_task(root: Path, test_fold: str | None = None) -> ProbeTask:
    meta = read_task(root)
    vocabulary = root / "labelvocabulary.csv"
    if not vocabulary.is_file():
        raise ProbeDataError(f"{vocabulary} not found: the hear probe expects {LAYOUT}")
    with open(vocabulary, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "idx" not in rows[0] or "label" not in rows[0]:
        raise ProbeDataError(f"{vocabulary}: expected a header idx,label and one row per class")
    classes = [r["label"] for r in sorted(rows, key=lambda r: int(r["idx"]))]
    present = rates(root)
    if not present:
        raise ProbeDataError(f"{root}: no audio folder (<rate>/, e.g. 48000/); the hear probe expects {LAYOUT}")
    audio = root / str(present[-1])
    index = {label: i for i, label in enumerate(classes)}

    def split_clips(split: str):
        labels_path = root / f"{split}.json"
        labels = _read_json(labels_path)
        clips = []
        for name, values in labels.items():  # file order, as the kit reads it
            values = values if isinstance(values, list) else [values]
            unknown = [v for v in values if str(v) not in index]
            if unknown:
                raise ProbeDataError(f"{labels_path}: {name} has label(s) {unknown} missing from {vocabulary}")
            if meta["prediction_type"] == "multiclass" and len(values) != 1:
                raise ProbeDataError(f"{labels_path}: {name} has {len(values)} labels in a multiclass task")
            clips.append(Clip(str(audio / split / name), tuple(index[str(v)] for v in values)))
        return clips

    kit_order = random.Random(0)  # heareval.embeddings.task_embeddings: prng.seed(0), then one shuffle per split
    names = list(meta.get("splits") or [])
    if meta["split_mode"] == "trainvaltest":
        names += [s for s in ("train", "valid", "test") if s not in names]
    by_split, groups = {}, []
    for split in names:
        by_split[split] = split_clips(split)
        groups.append(tuple(clip.key for clip in by_split[split]))  # the embedding runner's order
        kit_order.shuffle(by_split[split])
    if meta["split_mode"] == "trainvaltest":
        splits = {"train": by_split["train"], "dev": by_split["valid"], "test": by_split["test"]}
    else:
        splits = fold_splits(by_split, test_fold)
    return ProbeTask("hear", splits, classes, multilabel=meta["prediction_type"] == "multilabel",
                     metrics=metrics(meta), layout=LAYOUT, kit_ordered=True, kit_embedding_groups=tuple(groups),
                     sample_duration=meta.get("sample_duration"))
