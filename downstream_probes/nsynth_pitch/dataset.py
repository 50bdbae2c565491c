"""NSynth as Magenta distributes it: ``nsynth-{train,valid,test}/examples.json`` + ``audio/<note>.wav``.

88 classes: MIDI pitch 21..108 (piano range, as HEAR's nsynth_pitch); other notes are left out.
"""
import json
from pathlib import Path

from encodecmae_s3prl.downstream_probes.common import Clip, ProbeDataError

LOWEST, HIGHEST = 21, 108
CLASSES = [str(p) for p in range(LOWEST, HIGHEST + 1)]
SPLITS = {"train": "nsynth-train", "dev": "nsynth-valid", "test": "nsynth-test"}


def build_splits(root: Path):
    splits = {}
    for split, folder in SPLITS.items():
        meta = root / folder / "examples.json"
        if not meta.is_file():
            raise ProbeDataError(f"{meta} not found: nsynth_pitch expects {root}/nsynth-{{train,valid,test}}/"
                                 f"examples.json and audio/ as distributed by Magenta")
        examples = json.loads(meta.read_text())
        splits[split] = [Clip(str(root / folder / "audio" / f"{name}.wav"), (int(info["pitch"]) - LOWEST,))
                         for name, info in sorted(examples.items()) if LOWEST <= int(info["pitch"]) <= HIGHEST]
    return splits, CLASSES
