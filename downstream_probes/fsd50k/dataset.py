"""FSD50K as distributed: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` + ``FSD50K.{dev,eval}_audio/``.

200 classes (vocabulary.csv: index,label,mid, no header), multi-label. dev.csv's ``split`` column
gives train/val; eval.csv is the test set.
"""
import csv
from pathlib import Path

from encodecmae_s3prl.downstream_probes.common import Clip, ProbeDataError


def build_splits(root: Path):
    truth = root / "FSD50K.ground_truth"
    for name in ("dev.csv", "eval.csv", "vocabulary.csv"):
        if not (truth / name).is_file():
            raise ProbeDataError(f"{truth / name} not found: fsd50k expects FSD50K.ground_truth/ and "
                                 f"FSD50K.dev_audio/, FSD50K.eval_audio/ as distributed on Zenodo")
    with open(truth / "vocabulary.csv", newline="") as handle:
        vocabulary = [row for row in csv.reader(handle) if row]
    classes = [label for _, label, *_ in sorted(vocabulary, key=lambda r: int(r[0]))]
    index = {label: i for i, label in enumerate(classes)}
    splits = {"train": [], "dev": [], "test": []}
    for csv_name, audio in (("dev.csv", "FSD50K.dev_audio"), ("eval.csv", "FSD50K.eval_audio")):
        with open(truth / csv_name, newline="") as handle:
            for row in csv.DictReader(handle):
                split = "test" if csv_name == "eval.csv" else ("dev" if row["split"] == "val" else "train")
                labels = tuple(index[label] for label in row["labels"].split(","))
                splits[split].append(Clip(str(root / audio / f"{row['fname']}.wav"), labels))
    return splits, classes
