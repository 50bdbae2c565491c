"""s3prl's own recipes, ``speech_commands`` and ``emotion``, as HEAR-protocol tasks (cached embeddings).

Under ``run_downstream.py`` these recipes run s3prl's unchanged code (configs in
``downstream_probes/recipe_configs/{speech_commands,emotion}/config.yaml``). The HEAR-cached mode needs their
datasets as tasks, as a probe's ``dataset.py`` gives them (``RECIPES``: ``folds(spec)``, ``load_task(spec,
test_fold) -> ProbeTask``); this module reads the same files, the same way:

- ``speech_commands``: Speech Commands v0.01 as s3prl reads it. Train/dev: the word folders of the
  train root split by s3prl's own ``split_dataset`` (speaker hash; its testing part is discarded,
  as s3prl does); words outside s3prl's 10 become ``_unknown_``; ``_silence_`` comes from
  ``_background_noise_``, cut into consecutive 1 s clips (s3prl draws random 1 s crops each
  epoch, which a cache cannot; every 10th clip goes to dev so no crop is in both). Test: the
  separate test set's class folders (``speech_commands_test_set_v0.01``).
- ``emotion``: IEMOCAP through the ``meta_data/Session{1..5}/{train,test}_meta_data.json`` files
  that s3prl's ``IEMOCAP_preprocess.py`` writes; five folds (fold k = Session k), HEAR's fold
  rule (the next session validates) instead of s3prl's random 20 % dev split.

Data paths: ``speech_commands=TRAIN_ROOT,TEST_ROOT`` or one folder holding both
(``speech_commands_v0.01/`` + ``speech_commands_test_set_v0.01/``, or ``train/`` + ``test/``);
``emotion=ROOT`` (meta data in ``ROOT/meta_data``) or ``ROOT,META_DATA``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import soundfile

from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask, TaskSource, check_task, fold_splits

SPEECH_COMMANDS_LAYOUT = ("TRAIN_ROOT/<word>/<speaker>_nohash_<n>.wav with TRAIN_ROOT/_background_noise_/*.wav "
                          "(speech_commands_v0.01) and TEST_ROOT/<class>/*.wav (speech_commands_test_set_v0.01)")
EMOTION_LAYOUT = ("ROOT/Session1..5/sentences/wav/... and META_DATA/Session1..5/{train,test}_meta_data.json as "
                  "s3prl's downstream/emotion/IEMOCAP_preprocess.py writes them")
SILENCE_SECONDS = 1.0


def _two_paths(spec: str | Path, probe: str, pairs: List[tuple], usage: str) -> tuple[Path, Path]:
    text = str(spec)
    if "," in text:
        first, second = (Path(p) for p in text.split(",", 1))
        return first, second
    root = Path(text)
    for a, b in pairs:
        if (root / a).is_dir() and (root / b).is_dir():
            return root / a, root / b
    if pairs and pairs[0][0] == "":  # ROOT alone is fine when the second path defaults inside it
        return root, root / pairs[0][1]
    raise ProbeDataError(f"data for {probe}: {root} holds none of {[f'{a}/ + {b}/' for a, b in pairs]}; "
                         f"give {usage}")


def speech_commands_roots(spec: str | Path) -> tuple[Path, Path]:
    train, test = _two_paths(spec, "speech_commands",
                             [("speech_commands_v0.01", "speech_commands_test_set_v0.01"), ("train", "test")],
                             "speech_commands=TRAIN_ROOT,TEST_ROOT")
    for path in (train, test):
        if not path.is_dir():
            raise ProbeDataError(f"speech_commands: {path} is not a folder; expected {SPEECH_COMMANDS_LAYOUT}")
    return train, test


def speech_commands_splits(spec: str | Path) -> tuple[Dict[str, List[Clip]], List[str]]:
    from encodecmae_s3prl import compat

    compat.apply()  # s3prl's speech_commands modules import torchaudio.sox_effects
    from s3prl.downstream.speech_commands.dataset import CLASSES
    from s3prl.downstream.speech_commands.expert import split_dataset

    train_root, test_root = speech_commands_roots(spec)
    index = {name: i for i, name in enumerate(CLASSES)}
    unknown = index["_unknown_"]
    train_list, valid_list = split_dataset(train_root)
    splits = {split: [Clip(str(path), (index.get(word, unknown),)) for word, path in sorted(items)]
              for split, items in (("train", train_list), ("dev", valid_list))}
    noise = sorted((train_root / "_background_noise_").glob("*.wav"))
    if not noise:
        raise ProbeDataError(f"{train_root / '_background_noise_'} has no .wav files: the _silence_ class is cut "
                             f"from them ({SPEECH_COMMANDS_LAYOUT})")
    segment = 0
    for path in noise:
        seconds = soundfile.info(str(path)).duration
        for n in range(int(seconds // SILENCE_SECONDS)):
            clip = Clip(str(path), (index["_silence_"],), start=n * SILENCE_SECONDS, duration=SILENCE_SECONDS)
            splits["dev" if segment % 10 == 0 else "train"].append(clip)
            segment += 1
    test = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise ProbeDataError(f"{folder}: class {folder.name!r} is not one of s3prl's Speech Commands classes "
                                 f"{CLASSES}; is {test_root} the v0.01 test set (speech_commands_test_set_v0.01)?")
        test += [Clip(str(path), (index[folder.name],)) for path in sorted(folder.glob("*.wav"))]
    splits["test"] = test
    for split, clips in splits.items():
        if not clips:
            raise ProbeDataError(f"speech_commands: no {split} clips under {train_root} / {test_root}; "
                                 f"expected {SPEECH_COMMANDS_LAYOUT}")
    return splits, list(CLASSES)


def emotion_paths(spec: str | Path) -> tuple[Path, Path]:
    root, meta = _two_paths(spec, "emotion", [("", "meta_data")], "emotion=ROOT or emotion=ROOT,META_DATA")
    if not meta.is_dir():
        raise ProbeDataError(f"emotion: {meta} is not a folder; expected {EMOTION_LAYOUT}")
    return root, meta


def emotion_folds(spec: str | Path) -> List[str]:
    _, meta = emotion_paths(spec)
    sessions = sorted(p.name for p in meta.iterdir() if p.is_dir() and p.name.startswith("Session")
                      and (p / "test_meta_data.json").is_file())
    if len(sessions) < 3:
        raise ProbeDataError(f"emotion: {meta} has {len(sessions)} Session*/test_meta_data.json; cross-validation "
                             f"needs at least 3 ({EMOTION_LAYOUT})")
    return [name.replace("Session", "fold") for name in sessions]


def emotion_splits(spec: str | Path, test_fold: str | None) -> tuple[Dict[str, List[Clip]], List[str]]:
    root, meta = emotion_paths(spec)
    by_fold, labels = {}, None
    for fold in emotion_folds(spec):
        path = meta / fold.replace("fold", "Session") / "test_meta_data.json"
        try:
            content = json.loads(path.read_text())
            entries, fold_labels = content["meta_data"], content["labels"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ProbeDataError(f"{path}: expected {{'labels': {{name: index}}, 'meta_data': [{{'path', 'label'}}]}} "
                                 f"as IEMOCAP_preprocess.py writes ({type(err).__name__}: {err})") from None
        if labels is not None and fold_labels != labels:
            raise ProbeDataError(f"{path}: its 'labels' {fold_labels} differ from the other sessions' {labels}")
        labels = fold_labels
        try:
            by_fold[fold] = [Clip(str(root / e["path"]), (int(labels[e["label"]]),)) for e in entries]
        except KeyError as err:
            raise ProbeDataError(f"{path}: an entry lacks 'path'/'label' or has a label outside {sorted(labels)} "
                                 f"({err})") from None
    classes = [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
    return fold_splits(by_fold, test_fold), classes


def speech_commands_task(spec: str | Path, test_fold: str | None = None) -> ProbeTask:
    """Speech Commands v0.01 as s3prl's recipe reads it (no folds: ``test_fold`` is ignored)."""
    splits, classes = speech_commands_splits(spec)
    return check_task(ProbeTask("speech_commands", splits, classes, layout=SPEECH_COMMANDS_LAYOUT), spec)


def emotion_task(spec: str | Path, test_fold: str | None = None) -> ProbeTask:
    """IEMOCAP as s3prl's emotion recipe reads it, session ``test_fold`` tested (the first when None)."""
    splits, classes = emotion_splits(spec, test_fold)
    return check_task(ProbeTask("emotion", splits, classes, layout=EMOTION_LAYOUT), spec)


RECIPES = {
    "speech_commands": TaskSource(lambda spec: [None], speech_commands_task),
    "emotion": TaskSource(emotion_folds, emotion_task),
}
