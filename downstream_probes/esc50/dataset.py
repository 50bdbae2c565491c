"""ESC-50 as distributed: ``meta/esc50.csv`` (filename, fold, target, category, ...) + ``audio/``; 5 folds."""
import csv
from pathlib import Path

from encodecmae_s3prl.downstream_probes.common import Clip, ProbeDataError, fold_splits


def build_splits(root: Path, test_fold: str):
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise ProbeDataError(f"{meta} not found: esc50 expects meta/esc50.csv and audio/ as in the ESC-50 repository")
    with open(meta, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = {int(r["target"]): r["category"] for r in rows}
    classes = [names[i] for i in sorted(names)]
    by_fold = {}
    for r in rows:
        by_fold.setdefault(f"fold{int(r['fold'])}", []).append(Clip(str(root / "audio" / r["filename"]),
                                                                    (int(r["target"]),)))
    return fold_splits(by_fold, test_fold), classes
