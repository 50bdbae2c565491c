"""Any HEAR 2021 task as ``hear-preprocess`` writes it (DESIGN §6): ``task_metadata.json``,
``labelvocabulary.csv`` (idx,label), ``<split>.json`` (file -> labels), audio in ``16000/<split>/``.

Scene-level tasks only (one embedding per clip), multiclass or multilabel; folds as the metadata says.
"""
import csv
import json
from pathlib import Path

from encodecmae_s3prl.downstream_probes.common import Clip, ProbeDataError, fold_splits


def read_task(root: Path) -> dict:
    meta_path = root / "task_metadata.json"
    if not meta_path.is_file():
        raise ProbeDataError(f"{meta_path} not found: the hear probe expects a task folder written by hear-preprocess")
    meta = json.loads(meta_path.read_text())
    if meta.get("embedding_type") != "scene":
        raise ProbeDataError(f"{root}: embedding_type {meta.get('embedding_type')!r}; only scene tasks are supported")
    return meta


def build_splits(root: Path, test_fold: str | None):
    meta = read_task(root)
    with open(root / "labelvocabulary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = [r["label"] for r in sorted(rows, key=lambda r: int(r["idx"]))]
    index = {label: i for i, label in enumerate(classes)}

    def split_clips(split: str):
        labels = json.loads((root / f"{split}.json").read_text())
        return [Clip(str(root / "16000" / split / name), tuple(index[str(l)] for l in values))
                for name, values in sorted(labels.items())]

    if meta["split_mode"] == "trainvaltest":
        return {"train": split_clips("train"), "dev": split_clips("valid"), "test": split_clips("test")}, classes, meta
    by_fold = {split: split_clips(split) for split in meta["splits"]}
    return fold_splits(by_fold, test_fold or sorted(by_fold)[0]), classes, meta
