"""GTZAN as distributed: ``genres/<genre>/<genre>.000NN.{wav,au}``; 10 classes from the folder names.

GTZAN has no official folds; fold k (1..10) holds the files whose sorted position within their
genre is k-1 mod 10, so every fold is genre-balanced and the split never depends on file order
on disk.
"""
from pathlib import Path

from encodecmae_s3prl.downstream_probes.common import Clip, ProbeDataError, fold_splits

FOLDS = 10


def build_splits(root: Path, test_fold: str):
    genres_dir = root / "genres" if (root / "genres").is_dir() else root
    genres = sorted(p.name for p in genres_dir.iterdir() if p.is_dir())
    if len(genres) < 2:
        raise ProbeDataError(f"{genres_dir}: expected one folder per genre (genres/<genre>/*.wav)")
    by_fold = {f"fold{k}": [] for k in range(1, FOLDS + 1)}
    for index, genre in enumerate(genres):
        files = sorted(p for p in (genres_dir / genre).iterdir() if p.suffix.lower() in (".wav", ".au", ".flac"))
        for position, path in enumerate(files):
            by_fold[f"fold{position % FOLDS + 1}"].append(Clip(str(path), (index,)))
    return fold_splits(by_fold, test_fold), genres
