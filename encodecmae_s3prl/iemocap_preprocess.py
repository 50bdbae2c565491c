"""``python -m encodecmae_s3prl.iemocap_preprocess /data/IEMOCAP_full_release``: the ``meta_data`` of s3prl's
emotion recipe, without librosa.

Writes what s3prl's ``downstream/emotion/IEMOCAP_preprocess.py`` writes (that script imports librosa
only for ``librosa.util.find_files``, and librosa is not in the pinned stack): for every ``SessionN``,
``meta_data/SessionN/train_meta_data.json`` (the other sessions) and ``test_meta_data.json`` (that
session), each ``{"labels": {"neu": 0, "hap": 1, "ang": 2, "sad": 3}, "meta_data": [{"path", "label",
"speaker"}, ...]}``. Utterances labelled neu, hap, ang, sad or exc are kept, exc merged into hap, as
s3prl does. Differences, none in the usual layout: label files are read in sorted order (s3prl: the
file system's order), and a path is taken relative to the dataset root (s3prl: from the first
"Session" in the absolute path, which goes wrong when a parent folder's name contains "Session").
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from encodecmae_s3prl.errors import UserError, user_errors

LABEL_DIR = Path("dialog") / "EmoEvaluation"
WAV_DIR = Path("sentences") / "wav"
LABELS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
KEPT = ("neu", "hap", "ang", "sad", "exc")
# librosa.util.find_files' default extensions, matched in lower and upper case as it does
AUDIO_EXTENSIONS = ("aac", "au", "flac", "m4a", "mp3", "ogg", "wav")


def find_audio(folder: Path) -> list[Path]:
    """Audio files under ``folder``, recursively, sorted: ``librosa.util.find_files(folder)``."""
    extensions = {f".{e}" for e in AUDIO_EXTENSIONS} | {f".{e.upper()}" for e in AUDIO_EXTENSIONS}
    found = []
    for directory, _, files in os.walk(folder):
        # glob's '*' (what librosa uses) skips names starting with '.', e.g. macOS's ._Ses01F_*.wav
        found += [Path(directory) / f for f in files if not f.startswith(".") and Path(f).suffix in extensions]
    return sorted(found, key=lambda p: os.path.abspath(p))


def session_entries(root: Path, session: str) -> list[dict]:
    """The kept utterances of one session, as s3prl's ``preprocess`` lists them."""
    wavs = {p.stem: p.relative_to(root).as_posix() for p in find_audio(root / session / WAV_DIR)}
    label_dir = root / session / LABEL_DIR
    if not label_dir.is_dir():
        raise UserError(f"{label_dir}: no such folder; an IEMOCAP session holds dialog/EmoEvaluation/*.txt "
                        f"(give the IEMOCAP_full_release folder)")
    entries = []
    for label_file in sorted(p for p in label_dir.iterdir() if p.suffix == ".txt"):
        for line in label_file.read_text(errors="replace").splitlines(keepends=True):
            if not line.startswith("["):
                continue
            fields = [f for f in re.split("[\t\n]", line) if f]
            if len(fields) < 3 or fields[2] not in KEPT or fields[1] not in wavs:
                continue
            path = wavs[fields[1]]
            entries.append({"path": path, "label": fields[2].replace("exc", "hap"),
                            "speaker": re.split("_", os.path.basename(path))[0]})
    return entries


def write_meta_data(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``<out>/SessionN/{train,test}_meta_data.json`` (``out`` defaults to ``<root>/meta_data``)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give the IEMOCAP_full_release folder (Session1 ... Session5)")
    sessions = sorted(p.name for p in root.iterdir() if p.name[:7] == "Session" and p.is_dir())
    if not sessions:
        raise UserError(f"{root} holds no Session* folder; give the IEMOCAP_full_release folder "
                        f"(Session1 ... Session5)")
    entries = {session: session_entries(root, session) for session in sessions}
    out = root / "meta_data" if out is None else Path(out)
    for session in sessions:
        folder = out / session
        folder.mkdir(parents=True, exist_ok=True)
        train = [e for other in sessions if other != session for e in entries[other]]
        for name, items in (("train_meta_data.json", train), ("test_meta_data.json", entries[session])):
            with open(folder / name, "w") as handle:
                json.dump({"labels": LABELS, "meta_data": items}, handle)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("root", help="the IEMOCAP_full_release folder (Session1 ... Session5)")
    parser.add_argument("--out", help="where to write meta_data/ (default: ROOT/meta_data, as s3prl's script)")
    args = parser.parse_args(argv)
    with user_errors():
        out = write_meta_data(args.root, args.out)
        counts = {p.name: len(json.loads((p / "test_meta_data.json").read_text())["meta_data"])
                  for p in sorted(out.iterdir()) if (p / "test_meta_data.json").is_file()}
        print(f"wrote {out} ({', '.join(f'{k}: {v} utterances' for k, v in counts.items())}); use it with "
              f"-o \"config.downstream_expert.datarc.root={Path(args.root).resolve()},,"
              f"config.downstream_expert.datarc.meta_data={out.resolve()}\"")


if __name__ == "__main__":
    main()
