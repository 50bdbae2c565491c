"""What every test file shares: the repository's scripts run as a user runs them, one tiny EnCodecMAE checkpoint
for the whole session, synthetic tones, and the settings that make a pretraining run take seconds.

``make test`` runs everything (CI); ``make test-fast`` leaves out the tests marked ``slow``: end-to-end runs of
run_pretrain.py / run_downstream.py / the demo / commands that load s3prl's runner, in fresh interpreters, and
the 10-minute-audio run (5 s to minutes each on 2 cores). Both run two test processes (pytest-xdist, each file
whole in one), one torch thread each.
The independent v1 reference (the authors' modules, re-derived) lives in ``v1_reference.py`` beside this file.
"""
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

# keep the 2-core machine responsive and results repeatable; set before torch is imported by any test module.
# `make test` runs two test processes (pytest-xdist), one core each: two torch jobs of 2 threads each on two cores
# slow each other several times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
import torch

from encodecmae_s3prl.demo_data import harmonic_tone, write_tiny_encodecmae_checkpoint, write_wav

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# pretraining in seconds: tiny batches of 1 s crops in fp32, a small corpus sample for the codec's fit
FAST = ("config.pretrain_expert.datarc.train_batch_size=4,,config.pretrain_expert.datarc.crop_seconds=1.0,,"
        "config.pretrain_expert.datarc.num_workers=1,,config.pretrain_expert.datarc.codec_init_clips=16,,"
        "config.pretrain_expert.datarc.precision=fp32,,config.optimizer.lr=1.0e-3")


def pretrain_overrides(corpus, *, steps: int, save: int, extra: str = "") -> str:
    """``run_pretrain.py -o``: train on ``corpus`` (a folder or a manifest) with FAST for ``steps`` steps, log every
    step, checkpoint every ``save``; ``extra`` appends more ``,,``-separated overrides."""
    override = (f"config.pretrain_expert.datarc.corpus=['{corpus}'],,{FAST},,config.runner.total_steps={steps},,"
                f"config.runner.log_step=1,,config.runner.save_step={save}")
    return f"{override},,{extra}" if extra else override


def run_script(script: str, *args: str, cwd: Path, timeout: int = 600, threads: int | None = None) -> str:
    """Run one of the repository's root scripts as a user would, from ``cwd``; return its output. ``threads``: its
    torch threads (OMP_NUM_THREADS), for runs side by side on the two cores."""
    env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed with {proc.returncode}:\n{output[-4000:]}")
    return output


Case = TypeVar("Case")
Result = TypeVar("Result")


def side_by_side(run: Callable[[Case], Result], cases: Iterable[Case]) -> dict[Case, Result]:
    """``{case: run(case)}``, two cases at a time: for independent fresh-interpreter commands started with one torch
    thread each (``run_script(threads=1)``), which spend much of their time importing, so two share the machine's
    two cores better than one uses both. A case's error is raised (in case order) after every case has run."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run, case) for case in cases}
        return {case: future.result() for case, future in futures.items()}


def tone(seconds: float, freq: float = 220.0, seed: int = 0, *, rate: int = 16000) -> torch.Tensor:
    """A harmonic note (harmonic_tone) as a float32 tensor: the test signal of the upstream tests."""
    return torch.from_numpy(harmonic_tone(freq, seconds, rate, np.random.default_rng(seed)))


def tone_batch(lengths, rate: int = 24_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded (B, S) batch of notes at ``rate``, clip i at 110 * (i + 1) Hz, and its lengths."""
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = tone(n / rate, 110.0 * (i + 1), seed + i, rate=rate)[:n]
    return wav, torch.tensor(lengths)


def write_tone_corpus(root: Path, files: int = 4, seconds: float = 2.0) -> Path:
    """A small pretraining corpus: ``files`` 16 kHz notes n0.wav, n1.wav, ... at 220, 440, ... Hz."""
    rng = np.random.default_rng(0)
    for i in range(files):
        write_wav(root / f"n{i}.wav", harmonic_tone(220.0 * (i + 1), seconds, 16000, rng), 16000)
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A checkpoint as ``run_pretrain.py -u encodecmae`` writes it: the tiny model, its random-init codec fitted
    to synthetic tones (what encodecmae_local / encodec_features / encodecmae_random take with -k, offline).
    Shared by the session, so read-only: a test that needs to change it copies it first."""
    path = write_tiny_encodecmae_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "states-1.ckpt")
    path.chmod(0o444)
    return path
