"""GTZAN as distributed: ``genres/<genre>/<genre>.000NN.{wav,au}``; 10 classes from the folder names,
accuracy, 10-fold cross-validation (``datarc.test_fold``) with folds of our own: the paper's GC column is HEAR's
gtzan_genre task and its folds (``python -m encodecmae_s3prl.evaluation.table1``).

GTZAN has no official folds; fold k (1..10) holds the files whose sorted position within their
genre is k-1 mod 10, so every fold is genre-balanced and the split never depends on file order
on disk.
"""
from pathlib import Path

from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask, fold_splits

FOLDS = 10
FOLD_NAMES = [f"fold{k}" for k in range(1, FOLDS + 1)]
AUDIO_SUFFIXES = (".wav", ".au", ".flac")
LAYOUT = "ROOT/genres/<genre>/<genre>.000NN.{wav,au} (one folder per genre, as in genres.tar.gz)"


def folds(root: Path) -> list[str]:
    return list(FOLD_NAMES)


def load_task(root: Path, test_fold: str | None = None) -> ProbeTask:
    genres_dir = root / "genres" if (root / "genres").is_dir() else root
    genres = sorted(p.name for p in genres_dir.iterdir() if p.is_dir())
    if len(genres) < 2:
        raise ProbeDataError(f"{genres_dir}: found {len(genres)} genre folder(s); gtzan_genre expects {LAYOUT}")
    by_fold = {name: [] for name in FOLD_NAMES}
    for index, genre in enumerate(genres):
        files = sorted(p for p in (genres_dir / genre).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if len(files) < FOLDS:
            raise ProbeDataError(f"{genres_dir / genre}: {len(files)} audio file(s) ({'/'.join(AUDIO_SUFFIXES)}); "
                                 f"10-fold cross-validation needs at least {FOLDS} per genre ({LAYOUT})")
        for position, path in enumerate(files):
            by_fold[FOLD_NAMES[position % FOLDS]].append(Clip(str(path), (index,)))
    return ProbeTask("gtzan_genre", fold_splits(by_fold, test_fold), genres, layout=LAYOUT)
