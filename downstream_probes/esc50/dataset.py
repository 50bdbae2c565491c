"""ESC-50 as distributed: ``meta/esc50.csv`` (filename, fold, target, category, ...) + ``audio/``.

50 classes, accuracy, 5-fold cross-validation (``datarc.test_fold``) on ESC-50's own folds; the paper's ESC
column is HEAR's esc50 task (``python -m encodecmae_s3prl.evaluation.table1``).
"""
import csv
from pathlib import Path

from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask, fold_splits, natural_key

LAYOUT = "ROOT/meta/esc50.csv (filename,fold,target,category,...) and ROOT/audio/*.wav, as in the ESC-50 repository"
COLUMNS = ("filename", "fold", "target", "category")


def read_meta(root: Path) -> list[dict]:
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise ProbeDataError(f"{meta} not found: esc50 expects {LAYOUT}")
    with open(meta, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise ProbeDataError(f"{meta}: no rows, or columns {missing} missing (header must include {','.join(COLUMNS)})")
    for line, row in enumerate(rows, start=2):
        if not (row["fold"].strip().isdigit() and row["target"].strip().isdigit()):
            raise ProbeDataError(f"{meta} line {line}: fold {row['fold']!r} and target {row['target']!r} must be "
                                 f"integers")
    return rows


def folds(root: Path) -> list[str]:
    return sorted({f"fold{int(r['fold'])}" for r in read_meta(root)}, key=natural_key)


def load_task(root: Path, test_fold: str | None = None) -> ProbeTask:
    rows = read_meta(root)
    names = {int(r["target"]): r["category"] for r in rows}
    if sorted(names) != list(range(len(names))):
        raise ProbeDataError(f"{root / 'meta' / 'esc50.csv'}: targets {sorted(names)} are not 0..{len(names) - 1}")
    classes = [names[i] for i in sorted(names)]
    by_fold = {}
    for r in rows:
        by_fold.setdefault(f"fold{int(r['fold'])}", []).append(Clip(str(root / "audio" / r["filename"]),
                                                                    (int(r["target"]),)))
    return ProbeTask("esc50", fold_splits(by_fold, test_fold), classes, layout=LAYOUT)
