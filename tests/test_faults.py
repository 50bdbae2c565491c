"""Faults survived, each driven through the real command: SIGKILL mid-work then the same command again (outputs
identical to an uninterrupted run, nothing half-written taken as done), a full disk (a real tmpfs a few KB free,
in a private mount namespace: one ``error:`` line, no partial file under a final name, the previous checkpoint
intact), and a NaN loss in pretraining (steps skipped and counted, the run stopped after too many in a row).

The codec cache build and ``table1`` have their kill tests beside them (test_codec_cache.py, test_table1.py)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from encodecmae_s3prl.demo_data import harmonic_tone, write_wav

from conftest import REPO, pretrain_overrides


def _write_notes(root: Path, files: int, seconds: float, rate: int = 16000) -> Path:
    rng = np.random.default_rng(1)
    for i in range(files):
        write_wav(root / f"note{i:02d}.wav", harmonic_tone(110.0 * (1 + i % 7) * (1 + i // 7), seconds, rate, rng),
                  rate)
    return root


def _kill_when(command: list, ready, cwd: Path, timeout: float = 300) -> None:
    """Start ``command``; SIGKILL its process group as soon as ``ready()`` is true (polled), or when it exits."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- SIGKILL, then the same command again --------------------------------------------------------------------------

@pytest.mark.slow  # runs a command in a fresh interpreter
def test_extract_killed_after_some_files_then_rerun_gives_the_same_embeddings(tmp_path, tiny_ckpt):
    from encodecmae_s3prl import extract

    audio = _write_notes(tmp_path / "audio", files=3, seconds=1.0)
    _write_notes(audio / "sub", files=3, seconds=1.0)
    # longer than --long-seconds: streamed into its .npy, whose temporary is there while the clip goes through
    _write_notes(audio / "sub" / "deeper", files=1, seconds=8.0)
    args = ["-u", "encodecmae_local", "-k", str(tiny_ckpt), str(audio), "--batch-size", "1", "--long-seconds", "4",
            "--device", "cpu"]
    reference = tmp_path / "reference"
    assert extract.main([*args, "--out", str(reference)]) == 0

    def files(folder: Path) -> list:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    out = tmp_path / "out"
    _kill_when([sys.executable, "-m", "encodecmae_s3prl.extract", *args, "--out", str(out)],
               lambda: any((out / "sub" / "deeper").glob(".*.tmp")), cwd=REPO)
    assert list((out / "sub" / "deeper").glob(".*.tmp")), "the kill must land while the long file is written"
    finished = [name for name in files(out) if name.endswith(".npy")]
    assert 1 <= len(finished) < 7, f"the kill must land between the first file and the last: {finished}"
    for name in finished:  # whatever is under a final name is complete
        np.testing.assert_allclose(np.load(out / name), np.load(reference / name), rtol=1e-5, atol=1e-6)

    assert extract.main([*args, "--out", str(out)]) == 0
    assert files(out) == files(reference)  # every output, nested ones included, and no temporary anywhere
    for name in files(reference):
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(out / name), np.load(reference / name), rtol=1e-5, atol=1e-6)
    assert (out / "manifest.tsv").read_text().replace(str(out), "") == \
        (reference / "manifest.tsv").read_text().replace(str(reference), "")


@pytest.mark.slow  # runs a command in a fresh interpreter
def test_self_training_killed_while_labelling_then_rerun_gives_the_same_store(tmp_path, tiny_ckpt):
    from encodecmae_s3prl.pretrain_task.self_training import main as st_main

    corpus = _write_notes(tmp_path / "corpus", files=8, seconds=1.0)
    args = ["-k", str(tiny_ckpt), "--corpus", str(corpus), "--num-clips", "2", "--clusters", "2", "--iterations", "2",
            "--labels", "file"]
    st_main([*args, "--out", str(tmp_path / "reference")])

    out = tmp_path / "st"
    # the store is labelled in a hidden folder beside --out, moved into place when complete: kill while it is there
    _kill_when([sys.executable, "-m", "encodecmae_s3prl.pretrain_task.self_training", *args, "--out", str(out)],
               lambda: any(tmp_path.glob(".st.*")), cwd=REPO)
    assert any(tmp_path.glob(".st.*")), "the kill must land while the corpus is being labelled"
    assert not out.exists(), "a store killed while labelling must not appear under its final name"

    st_main([*args, "--out", str(out)])
    reference = tmp_path / "reference"
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:  # shards, their indexes and the model config: byte for byte
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


# --- a full disk ----------------------------------------------------------------------------------------------------

def _private_tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    folder = tempfile.mkdtemp()
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {folder}"],
                           capture_output=True)
    os.rmdir(folder)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _private_tmpfs_works(),
                                 reason="a small tmpfs needs user and mount namespaces (unshare -r -m)")


def _on_small_disk(folder: Path, size: str, script: str, cwd: Path) -> tuple[int, str, dict]:
    """Run ``script`` (sh) with ``folder`` a fresh tmpfs of ``size`` (e.g. '64k'), in a mount namespace of its own
    (gone with it); ``$DISK`` names the folder. Returns the exit status of the script's last command before the
    listing, its stderr, and {name: size} of every file left in the tmpfs (hidden ones included)."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = ("echo '--files--' >&2; cd \"$DISK\" && find . -type f -printf '%P\\t%s\\n' >&2; exit $status")
    wrapped = f"mount -t tmpfs -o size={size} tmpfs \"$DISK\" || exit 99\n{script}\nstatus=$?\n{listing}"
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", wrapped], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "DISK": str(folder)}, timeout=600)
    assert proc.returncode != 99, proc.stderr
    stderr, _, files = proc.stderr.rpartition("--files--\n")
    return proc.returncode, stderr, dict(line.split("\t") for line in files.splitlines() if line)


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow  # runs a command in a fresh interpreter
@needs_tmpfs
def test_extract_onto_a_full_disk_is_one_error_line_and_no_partial_file(tmp_path, tiny_ckpt):
    audio = _write_notes(tmp_path / "audio", files=3, seconds=3.0)
    # the tiny model's last layer: 225 frames x 64 float32 = 57.6 KB a file, so the second file does not fit
    status, stderr, files = _on_small_disk(
        tmp_path / "out", "96k", f"{sys.executable} -m encodecmae_s3prl.extract -u encodecmae_local -k {tiny_ckpt} "
                                 f"{audio} --out \"$DISK\" --batch-size 1 --device cpu", cwd=REPO)
    assert status == 2, stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "no space left" in errors[0] and "free some space" in errors[0] and str(tmp_path / "out") in errors[0]
    npy = {name: int(size) for name, size in files.items() if name.endswith(".npy")}
    assert npy == {"note00.npy": 128 + 225 * 64 * 4}, files  # the finished file whole, nothing else
    assert not [name for name in files if name.endswith(".tmp")], files


@pytest.mark.slow  # runs a command in a fresh interpreter
@needs_tmpfs
def test_table1_onto_a_full_disk_is_one_error_line_and_no_partial_table(tmp_path, tiny_ckpt):
    import synthetic_data

    tasks = synthetic_data.write_hear_table1_tasks(tmp_path / "tasks", clips=6, classes=3)
    out = tmp_path / "out"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cells").mkdir()
    command = (f"ln -s {tmp_path / 'cache'} \"$DISK/cache\" && ln -s {tmp_path / 'cells'} \"$DISK/cells\" && "
               f"head -c 2000 /dev/zero > \"$DISK/filler\" && "  # a few KB free: the caches and cells are elsewhere
               f"{sys.executable} -m encodecmae_s3prl.evaluation.table1 --tasks {tasks} --out \"$DISK\" "
               f"--upstreams ECMAE-S={tiny_ckpt} --only ns --grid-size 1 --max-epochs 3 --hidden-dim 16 --device cpu")
    status, stderr, files = _on_small_disk(out, "8k", command, cwd=REPO)
    assert status == 2, stderr
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "no space left" in errors[0] and "free some space" in errors[0]
    assert not [name for name in files if name.endswith(".tmp")], files  # no temporary left behind
    tables = [name for name in files if name.startswith("table1.")]
    assert len(tables) < 4 and all(int(files[name]) > 0 for name in tables), files  # stopped; none empty


@pytest.mark.slow  # runs a command in a fresh interpreter
@needs_tmpfs
def test_checkpoint_onto_a_full_disk_keeps_the_previous_one(tmp_path):
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model

    corpus = _write_notes(tmp_path / "corpus", files=4, seconds=2.0)
    expdir = tmp_path / "result" / "pretrain" / "full"
    override = pretrain_overrides(corpus, steps=6, save=2,
                                  extra="config.runner.max_keep=1,,config.pretrain_expert.datarc.codec_init_clips=4")
    # a checkpoint holds the weights (the frozen codec's included) and AdamW's two moments of the trainable ones
    model = build_model(model_config_from_yaml({"model": "tiny"}))
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + \
        2 * sum(p.numel() * p.element_size() for p in model.trainable_parameters())
    room = size * 3 // 2  # one checkpoint fits, a second beside it does not
    status, stderr, files = _on_small_disk(
        expdir, f"{room}", f"{sys.executable} {REPO / 'run_pretrain.py'} -u encodecmae -g tiny -n full -p \"$DISK\" "
                           f"-o \"{override}\"", cwd=tmp_path)
    assert status == 2, stderr[-3000:]
    errors = _error_lines(stderr)
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "no space left" in errors[0] and "states-4.ckpt" in errors[0]
    checkpoints = {name: int(length) for name, length in files.items() if name.endswith(".ckpt")}
    # max_keep 1: s3prl's runner deletes the old checkpoint before writing the new one; ours only after
    assert list(checkpoints) == ["states-2.ckpt"] and size * 0.9 < checkpoints["states-2.ckpt"] < size * 1.1, files
    assert not [name for name in files if name.endswith(".tmp")], files


# --- a loss that is not finite --------------------------------------------------------------------------------------

# run_pretrain.py with the audio of some batches replaced by NaN (a corrupt input): batch b is step b + 1
_NAN_BATCHES_DRIVER = """
import sys
import torch
from encodecmae_s3prl.pretrain_task import corpus
from encodecmae_s3prl.cli import run_pretrain

bad = {int(b) for b in sys.argv[1].split(",")}
real_collate = corpus.collate

def corrupt(crops, batch_index, targets=None):
    batch = real_collate(crops, batch_index, targets)
    if batch_index in bad:
        batch.wavs.fill_(float("nan"))
    return batch

corpus.collate = corrupt
run_pretrain(sys.argv[2:])
"""


@pytest.mark.slow  # runs a command in a fresh interpreter
def test_nonfinite_loss_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from encodecmae_s3prl.upstream.checkpoint import safe_load

    corpus = _write_notes(tmp_path / "corpus", files=4, seconds=2.0)
    override = pretrain_overrides(corpus, steps=20, save=2, extra="config.pretrain_expert.datarc.num_workers=0,,"
                                                                  "config.pretrain_expert.datarc.codec_init_clips=4,,"
                                                                  "config.pretrain_expert.datarc.max_nonfinite_steps=3")
    # step 3 alone, then steps 7, 8, 9 in a row: the third of those stops the run
    proc = subprocess.run([sys.executable, "-c", _NAN_BATCHES_DRIVER, "2,6,7,8", "-u", "encodecmae", "-g", "tiny",
                           "-n", "nan", "-o", override], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("error: training stopped at step 9: the loss was NaN or infinite for 3 steps in a "
                                "row (steps 7-9, each skipped); the last checkpoint, states-8.ckpt"), errors[0]
    assert "max_nonfinite_steps" in errors[0]
    assert proc.stderr.count("the loss is not finite") == 4

    expdir = tmp_path / "result" / "pretrain" / "nan"
    assert sorted(p.name for p in expdir.glob("states-*.ckpt")) == ["states-4.ckpt", "states-6.ckpt",
                                                                    "states-8.ckpt"]  # max_keep 3, none after 8
    states = {step: safe_load(expdir / f"states-{step}.ckpt") for step in (6, 8)}
    weights = {step: s["EncodecMAE"]["state_dict"] for step, s in states.items()}
    assert all(torch.isfinite(w).all() for w in weights[8].values() if w.is_floating_point())
    # steps 7 and 8 were skipped: the weights and the optimizer's step count of step 6 are those of step 8
    assert all(torch.equal(weights[6][k], weights[8][k]) for k in weights[6])
    adam_steps = {int(s["Optimizer"]["state"][0]["step"]) for s in states.values()}
    assert adam_steps == {5}  # 8 steps, 3 of them skipped (3, 7, 8)

    events = EventAccumulator(str(expdir), size_guidance={"scalars": 0})
    events.Reload()
    counted = {e.step: e.value for e in events.Scalars("encodecmae/train-nonfinite_steps")}
    assert counted[2] == 0 and counted[3] == 1 and counted[6] == 1 and counted[8] == 3
    waits = events.Scalars("encodecmae/train-data_wait_seconds")
    assert len(waits) >= 8 and all(e.value >= 0 for e in waits)
    masked = {e.step: e.value for e in events.Scalars("encodecmae/train-masked_loss")}
    assert 3 not in masked and np.isfinite(list(masked.values())).all()  # a skipped step's loss is not averaged in


def test_guard_keeps_a_finite_loss_exactly_and_makes_an_infinite_one_skippable():
    """A finite loss and its gradients are untouched; an infinite one (whose gradient norm s3prl's runner would
    apply) gets NaN gradients everywhere, which the runner skips; the third in a row stops the run."""
    from encodecmae_s3prl.pretrain_task.step_health import NonFiniteSteps, TrainingDiverged

    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    guard = NonFiniteSteps(limit=2)
    loss = (weight ** 2).sum()
    guarded = guard.guard(loss)
    guarded.backward()
    assert torch.equal(guarded, loss) and torch.equal(weight.grad, torch.tensor([2.0, 4.0]))
    guard.step_done(1, None)
    assert (guard.in_a_row, guard.total) == (0, 0)

    weight.grad = None
    guard.guard((weight * torch.tensor([float("inf"), 1.0])).sum()).backward()
    assert torch.isnan(weight.grad).all()
    assert torch.isnan(torch.nn.utils.clip_grad_norm_([weight], 1e9))
    guard.step_done(2, None)
    assert (guard.in_a_row, guard.total) == (1, 1)
    guard.guard(torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss was NaN or infinite for 2 steps in a row \(steps "
                                               r"2-3, each skipped\); no checkpoint was written before them"):
        guard.step_done(3, None)


def test_runner_checkpoints_pruned_only_after_the_new_one_is_whole(tmp_path, monkeypatch):
    """s3prl's runner prunes to max_keep before saving; its pruning finds nothing and ours runs after the save."""
    from encodecmae_s3prl import compat
    from encodecmae_s3prl.upstream import atomic

    runner = type(sys)("runner_stand_in")
    compat._atomic_runner_checkpoints(runner)
    states = {"Step": 2, "StepCounted": True, "Config": {"runner": {"max_keep": 1}}}
    runner.torch.save(states, tmp_path / "states-2.ckpt")
    assert runner.glob.glob(f"{tmp_path}/states-*.ckpt") == []  # what the runner's check_ckpt_num sees

    def disk_full(path, write):
        raise atomic.DiskFullError(28, f"no space left on the device while writing {path}")

    monkeypatch.setattr(atomic, "atomic_write", disk_full)
    monkeypatch.setattr(sys.modules["encodecmae_s3prl.upstream.checkpoint"], "atomic_write", disk_full)
    with pytest.raises(atomic.DiskFullError):
        runner.torch.save({**states, "Step": 4}, tmp_path / "states-4.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states-2.ckpt"]
    monkeypatch.undo()
    runner.torch.save({**states, "Step": 4}, tmp_path / "states-4.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states-4.ckpt"]
