"""NSynth as Magenta distributes it: ``nsynth-{train,valid,test}/examples.json`` + ``audio/<note>.wav``.

88 classes: MIDI pitch 21..108 (piano range, as HEAR's nsynth_pitch); other notes are left out. Pitch and chroma
accuracy, as the paper's NS column measures them; the paper's numbers come from HEAR's nsynth_pitch 50 h task
(``python -m encodecmae_s3prl.evaluation.table1``), not from this probe's splits.
"""
import json
from pathlib import Path

from encodecmae_s3prl.downstream_probes.task import Clip, ProbeDataError, ProbeTask

LOWEST, HIGHEST = 21, 108
CLASSES = [str(p) for p in range(LOWEST, HIGHEST + 1)]
SPLITS = {"train": "nsynth-train", "dev": "nsynth-valid", "test": "nsynth-test"}
LAYOUT = "ROOT/nsynth-{train,valid,test}/examples.json and ROOT/nsynth-*/audio/<note>.wav (Magenta's json/wav release)"


def read_examples(meta: Path) -> dict:
    if not meta.is_file():
        raise ProbeDataError(f"{meta} not found: nsynth_pitch expects {LAYOUT}")
    try:
        examples = json.loads(meta.read_text())
    except json.JSONDecodeError as err:
        raise ProbeDataError(f"{meta} is not valid JSON ({err}); re-extract it from Magenta's "
                             f"nsynth-*.jsonwav.tar.gz") from None
    if not isinstance(examples, dict):
        raise ProbeDataError(f"{meta}: expected a JSON object note_str -> {{'pitch': ..., ...}}, got "
                             f"{type(examples).__name__}")
    for name, info in examples.items():
        if not isinstance(info, dict) or not isinstance(info.get("pitch"), int):
            raise ProbeDataError(f"{meta}: note {name!r} has no integer 'pitch' field (MIDI number); every entry of "
                                 f"Magenta's examples.json has one")
    return examples


def folds(root: Path) -> list:
    return [None]  # fixed splits


def load_task(root: Path, test_fold: str | None = None) -> ProbeTask:
    splits = {}
    for split, folder in SPLITS.items():
        examples = read_examples(root / folder / "examples.json")
        splits[split] = [Clip(str(root / folder / "audio" / f"{name}.wav"), (info["pitch"] - LOWEST,))
                         for name, info in sorted(examples.items()) if LOWEST <= info["pitch"] <= HIGHEST]
    return ProbeTask("nsynth_pitch", splits, list(CLASSES), metrics=("pitch_acc", "chroma_acc"), layout=LAYOUT)
