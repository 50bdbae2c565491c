"""FSD50K as distributed: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` + ``FSD50K.{dev,eval}_audio/``.

200 classes (vocabulary.csv: index,label,mid, no header), multi-label: sigmoid BCE, mAP
(the paper's FSD column is HEAR's fsd50k task: ``python -m encodecmae_s3prl.evaluation.table1``).
dev.csv's ``split`` column gives train/val; eval.csv is the test set.
"""
import csv
from pathlib import Path

from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask

LAYOUT = ("ROOT/FSD50K.ground_truth/{dev,eval,vocabulary}.csv, ROOT/FSD50K.dev_audio/<fname>.wav and "
          "ROOT/FSD50K.eval_audio/<fname>.wav, as distributed on Zenodo")


def read_vocabulary(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    try:
        rows = sorted(rows, key=lambda r: int(r[0]))
    except (ValueError, IndexError):
        raise ProbeDataError(f"{path}: expected rows index,label,mid without a header (FSD50K's "
                             f"vocabulary.csv)") from None
    return [row[1] for row in rows]


def folds(root: Path) -> list:
    return [None]  # fixed splits


def load_task(root: Path, test_fold: str | None = None) -> ProbeTask:
    truth = root / "FSD50K.ground_truth"
    for name in ("dev.csv", "eval.csv", "vocabulary.csv"):
        if not (truth / name).is_file():
            raise ProbeDataError(f"{truth / name} not found: fsd50k expects {LAYOUT}")
    classes = read_vocabulary(truth / "vocabulary.csv")
    index = {label: i for i, label in enumerate(classes)}
    splits = {"train": [], "dev": [], "test": []}
    for csv_name, audio in (("dev.csv", "FSD50K.dev_audio"), ("eval.csv", "FSD50K.eval_audio")):
        with open(truth / csv_name, newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                if "fname" not in row or "labels" not in row or (csv_name == "dev.csv" and "split" not in row):
                    raise ProbeDataError(f"{truth / csv_name}: header must have fname,labels"
                                         f"{',mids,split' if csv_name == 'dev.csv' else ''} (FSD50K ground truth)")
                unknown = [label for label in row["labels"].split(",") if label not in index]
                if unknown:
                    raise ProbeDataError(f"{truth / csv_name} line {line}: label(s) {unknown} are not in "
                                         f"{truth / 'vocabulary.csv'}; use the ground truth and vocabulary of one "
                                         f"FSD50K release")
                split = "test" if csv_name == "eval.csv" else ("dev" if row["split"] == "val" else "train")
                labels = tuple(index[label] for label in row["labels"].split(","))
                splits[split].append(Clip(str(root / audio / f"{row['fname']}.wav"), labels))
    return ProbeTask("fsd50k", splits, classes, multilabel=True, metrics=("mAP",), layout=LAYOUT)
