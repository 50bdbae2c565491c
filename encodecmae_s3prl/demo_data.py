"""Deterministic synthetic audio and the small datasets of the offline demo, in the official layouts of public corpora.

No dataset can be downloaded offline, so the demo writes small ones whose labels are learnable from the audio
(tones, harmonic notes, noises, words spoken by espeak-ng when it is installed); and a tiny random EnCodecMAE
checkpoint whose codec is fitted to such audio, for offline checks that need a model (the HEAR kit check, tests).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile


def harmonic_tone(freq: float, seconds: float, sample_rate: int, rng: np.random.Generator,
                  harmonics: int = 4, noise: float = 0.01) -> np.ndarray:
    """A note with decaying harmonics, a random phase and a little noise: (samples,) float32 in [-1, 1]."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wav = np.zeros_like(t)
    for k in range(1, harmonics + 1):
        if freq * k < sample_rate / 2:
            wav += np.sin(2 * np.pi * freq * k * t + rng.uniform(0, 2 * np.pi)) / k
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / max(seconds, 1e-3))
    wav = 0.5 * wav * envelope / max(np.abs(wav).max(), 1e-6) + noise * rng.standard_normal(t.shape)
    return np.clip(wav, -1, 1).astype(np.float32)


def write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wav, sample_rate, subtype="PCM_16")
    return path


def espeak_word(word: str, path: Path, pitch: int, speed: int) -> bool:
    """Write ``word`` spoken by espeak-ng at 16 kHz; False when espeak-ng or sox is unavailable."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return False
    raw = path.with_suffix(".raw.wav")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-p", str(pitch), "-s", str(speed), "-w", str(raw), word], check=True,
                   capture_output=True)
    # -R: sox's dither (on by default when it reduces the bit depth) seeded with a fixed number, not the clock
    subprocess.run(["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path), "pad", "0", "0.2",
                    "trim", "0", "1"], check=True, capture_output=True)
    raw.unlink()
    return True


# --- probe datasets in their publishers' layouts ----------------------------------------------

def _noise(seconds: float, rate: int, rng: np.random.Generator, colour: float) -> np.ndarray:
    """Coloured noise: spectrum ~ f^-colour (0 white, 1 pink, 2 brown)."""
    n = int(seconds * rate)
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / rate), 20.0)
    wav = np.fft.irfft(spectrum / freqs ** (colour / 2), n)
    return (0.3 * wav / (np.abs(wav).max() + 1e-9)).astype(np.float32)


def sound_class(index: int, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A learnable 'environmental' class: even classes are noise colours (white, pink, brown, ...), odd ones
    tone bands a minor third apart."""
    if index % 2 == 0:
        return _noise(seconds, rate, rng, colour=index / 2)
    return harmonic_tone(150.0 * 2 ** (index / 3) * rng.uniform(0.97, 1.03), seconds, rate, rng, harmonics=2,
                         noise=0.02)


def write_nsynth(root: Path, pitches=range(60, 72), instruments: int = 3, seed: int = 0,
                 test_harmonics: int | None = None) -> Path:
    """``nsynth-{train,valid,test}/examples.json`` + ``audio/<note>.wav`` (16 kHz, 1 s notes); instruments
    differ in timbre (2 + i % 4 harmonics) and the test split uses an instrument unseen in training;
    ``test_harmonics`` gives it a timbre unlike any training one (a harder, cross-timbre pitch test)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    plan = {"nsynth-train": range(instruments), "nsynth-valid": [instruments], "nsynth-test": [instruments + 1]}
    for folder, family in plan.items():
        examples = {}
        for instrument in family:
            harmonics = 2 + instrument % 4
            if folder == "nsynth-test" and test_harmonics is not None:
                harmonics = test_harmonics
            for pitch in pitches:
                name = f"synth_{instrument:03d}-{pitch:03d}-100"
                freq = 440.0 * 2 ** ((pitch - 69) / 12)
                wav = harmonic_tone(freq, 1.0, 16000, rng, harmonics=harmonics)
                write_wav(root / folder / "audio" / f"{name}.wav", wav, 16000)
                examples[name] = {"pitch": pitch, "instrument": instrument, "velocity": 100,
                                  "instrument_family_str": "synth_lead"}
        (root / folder / "examples.json").write_text(json.dumps(examples))
    return root


def write_esc50(root: Path, classes: int = 4, per_fold: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target in range(classes):
            for n in range(per_fold):
                name = f"{fold}-{target:03d}{n:02d}-A-{target}.wav"
                write_wav(Path(root) / "audio" / name, sound_class(target, 1.0, 44100, rng), 44100)
                rows.append(f"{name},{fold},{target},class{target},False,{target}{n},A")
    (Path(root) / "meta").mkdir(parents=True, exist_ok=True)
    (Path(root) / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return Path(root)


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
