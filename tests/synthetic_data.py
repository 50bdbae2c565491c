"""Test data: tiny datasets in the publishers' layouts, HEAR tasks, and random EnCodecMAE checkpoints.

What the tests and the benchmarks write (the benchmarks put this folder on ``sys.path``); the audio itself and the
datasets the offline demo also writes come from ``encodecmae_s3prl.demo_data``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from encodecmae_s3prl.demo_data import espeak_word, harmonic_tone, sound_class, write_wav

SPEECH_COMMANDS_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def write_speech_commands(root: Path, per_word: int = 12, test_per_word: int = 3, extra_words=("bed", "cat"),
                          seed: int = 0, spoken: bool = False) -> tuple[Path, Path]:
    """Speech Commands v0.01 layout: ``train/<word>/<speaker>_nohash_<n>.wav``, ``train/_background_noise_``,
    ``validation_list.txt``, ``testing_list.txt``, and the separate ``test/<class>/`` root.

    Words are espeak-ng speech when ``spoken`` and available, else one harmonic tone per word.
    Returns (train_root, test_root).
    """
    rng = np.random.default_rng(seed)
    train_root, test_root = Path(root) / "train", Path(root) / "test"
    words = list(SPEECH_COMMANDS_WORDS) + list(extra_words)
    validation, testing = [], []

    def one(path: Path, word_index: int, word: str) -> None:
        if spoken and espeak_word(word, path, pitch=int(rng.integers(30, 70)), speed=int(rng.integers(140, 200))):
            return
        freq = 220.0 * 2 ** (word_index / 3)  # a minor third apart: easy to tell apart
        write_wav(path, harmonic_tone(freq * rng.uniform(0.98, 1.02), 1.0, 16000, rng), 16000)

    for index, word in enumerate(words):
        for n in range(per_word):
            name = f"{word}/{n:04x}beef_nohash_0.wav"
            one(train_root / name, index, word)
            (validation if n % 6 == 1 else testing if n % 6 == 2 else []).append(name)
        label = word if word in SPEECH_COMMANDS_WORDS else "_unknown_"
        for n in range(test_per_word):
            one(test_root / label / f"{word}_{n:04x}cafe_nohash_0.wav", index, word)
    noise_dir = train_root / "_background_noise_"
    for n in range(2):
        write_wav(noise_dir / f"noise_{n}.wav", (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    for n in range(test_per_word):
        write_wav(test_root / "_silence_" / f"silence_{n}.wav",
                  (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    (train_root / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (train_root / "testing_list.txt").write_text("\n".join(testing) + "\n")
    return train_root, test_root


IEMOCAP_EMOTIONS = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}


def write_iemocap(root: Path, sessions: int = 5, per_emotion: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """IEMOCAP_full_release layout: ``SessionN/sentences/wav/<dialog>/<utt>.wav`` and
    ``SessionN/dialog/EmoEvaluation/<dialog>.txt``, plus the ``meta_data/SessionN/{train,test}_meta_data.json``
    that s3prl's ``IEMOCAP_preprocess.py`` writes. Each emotion is a tone band. Returns (root, meta_data)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    entries: dict[int, list[dict]] = {}
    for s in range(1, sessions + 1):
        dialog = f"Ses0{s}F_impro01"
        lines = []
        entries[s] = []
        for emotion, index in IEMOCAP_EMOTIONS.items():
            for n in range(per_emotion):
                utt = f"{dialog}_F{index}{n:02d}"
                rel = f"Session{s}/sentences/wav/{dialog}/{utt}.wav"
                freq = 200.0 * 2 ** (index / 2) * rng.uniform(0.97, 1.03)
                write_wav(root / rel, harmonic_tone(freq, rng.uniform(0.8, 1.6), 16000, rng), 16000)
                lines.append(f"[0.0 - 1.0]\t{utt}\t{emotion}\t[2.5, 2.5, 2.5]\n")
                entries[s].append({"path": rel, "label": emotion, "speaker": f"Ses0{s}F"})
        label_dir = root / f"Session{s}/dialog/EmoEvaluation"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{dialog}.txt").write_text("".join(lines))
    meta = root / "meta_data"
    for s in entries:
        folder = meta / f"Session{s}"
        folder.mkdir(parents=True, exist_ok=True)
        train = [e for other, items in entries.items() if other != s for e in items]
        (folder / "train_meta_data.json").write_text(json.dumps({"labels": IEMOCAP_EMOTIONS, "meta_data": train}))
        (folder / "test_meta_data.json").write_text(json.dumps({"labels": IEMOCAP_EMOTIONS,
                                                                "meta_data": entries[s]}))
    return root, meta


def write_gtzan(root: Path, genres=("blues", "classical", "metal"), per_genre: int = 20, seconds: float = 2.0,
                seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for index, genre in enumerate(genres):
        for n in range(per_genre):
            write_wav(Path(root) / "genres" / genre / f"{genre}.{n:05d}.wav",
                      sound_class(index * 2 + 1, seconds, 22050, rng), 22050)
    return Path(root)


def write_fsd50k(root: Path, labels=("Bark", "Siren", "Rain"), per_split=(24, 8, 8), seed: int = 0) -> Path:
    """Multi-label clips: each a mixture of one or two of ``labels``, label c a harmonic tone band of its own."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "vocabulary.csv").write_text("".join(f"{i},{label},/m/{i:04d}\n" for i, label in enumerate(labels)))
    dev, evaluation, fname = ["fname,labels,mids,split"], ["fname,labels,mids"], 0
    for split, count in zip(("train", "val", "eval"), per_split, strict=True):
        for _ in range(count):
            chosen = sorted(rng.choice(len(labels), size=int(rng.integers(1, 3)), replace=False).tolist())
            wav = sum(sound_class(2 * c + 1, 1.0, 16000, rng) for c in chosen)
            folder = "FSD50K.eval_audio" if split == "eval" else "FSD50K.dev_audio"
            write_wav(root / folder / f"{fname}.wav", np.clip(wav, -1, 1), 16000)
            names = ",".join(labels[c] for c in chosen)
            mids = ",".join(f"/m/{c:04d}" for c in chosen)
            if split == "eval":
                evaluation.append(f'{fname},"{names}","{mids}"')
            else:
                dev.append(f'{fname},"{names}","{mids}",{split}')
            fname += 1
    (truth / "dev.csv").write_text("\n".join(dev) + "\n")
    (truth / "eval.csv").write_text("\n".join(evaluation) + "\n")
    return root


def write_hear_task(root: Path, classes: int = 4, per_split=(16, 6, 6), seed: int = 0,
                    task_name: str = "synthetic_sounds", prediction_type: str = "multiclass",
                    folds: int = 0, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A HEAR 2021 scene task as hear-preprocess writes it: multiclass (one sound class per clip) or
    multilabel (a mixture of one or two classes), ``trainvaltest`` or, with ``folds`` > 0,
    ``presplit_kfold`` with ``fold00``.. each holding ``per_split[0]`` clips; clips of ``seconds`` in ``<rate>/``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    if folds:
        splits, counts, mode = [f"fold{k:02d}" for k in range(folds)], [per_split[0]] * folds, "presplit_kfold"
    else:
        splits, counts, mode = ["train", "valid", "test"], list(per_split), "trainvaltest"
    for split, count in zip(splits, counts, strict=True):
        labels = {}
        for n in range(count):
            if prediction_type == "multilabel":
                chosen = sorted(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False).tolist())
                wav = np.clip(sum(sound_class(2 * c + 1, seconds, rate, rng) for c in chosen), -1, 1)
            else:
                chosen = [n % classes]
                wav = sound_class(chosen[0], seconds, rate, rng)
            name = f"{split}_{n:03d}.wav"
            write_wav(root / str(rate) / split / name, wav, rate)
            labels[name] = [f"class{c}" for c in chosen]
        (root / f"{split}.json").write_text(json.dumps(labels))
    (root / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},class{i}\n" for i in range(classes)))
    (root / "task_metadata.json").write_text(json.dumps({
        "task_name": task_name, "version": "synthetic", "embedding_type": "scene",
        "prediction_type": prediction_type, "split_mode": mode, "splits": splits, "sample_duration": seconds,
        "evaluation": ["mAP", "d_prime"] if prediction_type == "multilabel" else ["top1_acc"]}))
    return root


def fit_codec_to_synthetic_audio(model, seed: int = 0) -> None:
    """Fit a random-init codec (the per-channel standardisation statistics of its features and its RVQ
    codebooks, which a random EnCodec lacks) to 2 s of each of a spread of tones and noise colours, so that
    clips embed differently (benchmarks, tests, offline demos)."""
    import torch

    from encodecmae_s3prl.upstream.codec import SAMPLE_RATE

    rng = np.random.default_rng(seed)
    corpus = [harmonic_tone(f, 2.0, SAMPLE_RATE, rng) for f in (110, 165, 220, 330, 440, 660, 880)]
    corpus += [sound_class(index, 2.0, SAMPLE_RATE, rng) for index in range(8)]
    model.codec.init_from_audio([torch.from_numpy(np.asarray(w, np.float32)) for w in corpus], seed=seed)


def write_tiny_encodecmae_checkpoint(path: Path, seed: int = 0, size: str = "tiny", recipe: str | None = None
                                     ) -> Path:
    """A random EnCodecMAE checkpoint (``size``: tiny unless told; ``recipe``: the size's unless told) as
    ``run_pretrain.py -u encodecmae`` writes it, its random-init codec fitted to synthetic audio: what
    ``encodecmae_local``, ``encodec_features`` and ``encodecmae_random`` take with ``-k`` offline."""
    from dataclasses import asdict, replace

    from encodecmae_s3prl.upstream.checkpoint import atomic_save
    from encodecmae_s3prl.upstream.loading import CHECKPOINT_KEY, model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model

    config = model_config_from_yaml({"model": size, **({"recipe": recipe} if recipe else {})})
    if config.encodec_source == "pretrained":  # offline: the random codec, standardised
        config = replace(config, encodec_source="random", standardise_features=True)
    model = build_model(config, seed=seed)
    fit_codec_to_synthetic_audio(model, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({CHECKPOINT_KEY: {"config": asdict(model.config), "state_dict": model.state_dict()}, "Step": 0},
                path)
    return path


# Table 1's HEAR tasks as HEAR distributes them: folder, task_name, split mode, folds (0: train/valid/test), type,
# evaluation, real clip duration (s); FSD50K's clips vary up to 30 s (HEAR pads or trims to sample_duration)
HEAR_TABLE1_TASKS = (
    ("nsynth_pitch-v2.2.3-50h", "nsynth_pitch", "trainvaltest", 0, "multiclass", ["pitch_acc", "chroma_acc"], 4.0),
    ("gtzan_genre-1.0.0-full", "gtzan_genre", "new_split_kfold", 10, "multiclass", ["top1_acc"], 30.0),
    ("speech_commands-v0.0.2-full", "speech_commands", "trainvaltest", 0, "multiclass", ["top1_acc"], 1.0),
    ("tfds_crema_d-1.0.0-full", "tfds_crema_d", "new_split_kfold", 5, "multiclass", ["top1_acc"], 5.0),
    ("fsd50k-v1.0-full", "fsd50k", "trainvaltest", 0, "multilabel", ["mAP", "d_prime"], 10.0),
    ("esc50-v2.0.0-full", "esc50", "presplit_kfold", 5, "multiclass", ["top1_acc"], 5.0),
)


def write_hear_table1_tasks(root: Path, clips: int = 24, classes: int = 4, seconds: float | None = 1.0,
                            rate: int = 48_000, seed: int = 0, per_task: int | None = None) -> Path:
    """Stand-ins of Table 1's six HEAR tasks in the layout HEAR distributes (folder names, task names, split
    modes, fold counts, metrics as the real ones; audio at ``rate`` only, 48000 as HEAR ships): ``clips`` clips
    per split or fold (``per_task``: that many per task, shared out over its splits) of ``seconds`` each (None: the
    real tasks' clip durations), ``classes`` learnable classes
    (NSynth: MIDI pitches 60.., harmonic notes; the others sound classes; FSD50K mixtures of one or two)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder, name, mode, folds, kind, evaluation, real_seconds in HEAR_TABLE1_TASKS:
        task = root / folder
        duration = real_seconds if seconds is None else seconds
        splits = [f"fold{k:02d}" for k in range(folds)] if folds else ["train", "valid", "test"]
        count = clips if per_task is None else max(2, per_task // len(splits))
        labels_of = ([str(60 + i) for i in range(classes)] if name == "nsynth_pitch"
                     else [f"{name}_class{i}" for i in range(classes)])
        for split in splits:
            labels = {}
            for n in range(count):
                if kind == "multilabel":
                    chosen = sorted(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False).tolist())
                    wav = np.clip(sum(sound_class(2 * c + 1, duration, rate, rng) for c in chosen), -1, 1)
                elif name == "nsynth_pitch":
                    chosen = [n % classes]
                    wav = harmonic_tone(440.0 * 2 ** ((60 + chosen[0] - 69) / 12), duration, rate, rng,
                                        harmonics=2 + n % 3)
                else:
                    chosen = [n % classes]
                    wav = sound_class(chosen[0], duration, rate, rng)
                file = f"{split}_{n:04d}.wav"
                write_wav(task / str(rate) / split / file, np.asarray(wav, np.float32), rate)
                labels[file] = [labels_of[c] for c in chosen]
            (task / f"{split}.json").write_text(json.dumps(labels))
        (task / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{label}\n"
                                                                          for i, label in enumerate(labels_of)))
        (task / "task_metadata.json").write_text(json.dumps({
            "task_name": name, "version": folder.split("-")[1], "embedding_type": "scene", "prediction_type": kind,
            "split_mode": mode, "splits": splits, "sample_duration": duration, "evaluation": evaluation}))
    return root
