"""Pretraining through s3prl's runner: loss goes down, checkpoints load upstream, resume is exact, ST, DDP."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from encodecmae_s3prl.demo_data import harmonic_tone, write_wav
from encodecmae_s3prl.upstream.checkpoint import safe_load

from conftest import REPO, pretrain_overrides, run_script, side_by_side

# tiny model, 1 s crops (conftest.FAST): a step costs ~0.3 s on 2 CPU cores


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Mono/stereo at 8-48 kHz, one corrupt, one empty, one silent and one all-NaN file."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(12):
        rate = [16000, 22050, 44100, 48000, 8000, 24000][i % 6]
        wav = harmonic_tone(110 * 2 ** (i / 4), 3.0, rate, rng)
        if i % 3 == 0:
            soundfile.write(root / f"note{i}.flac", np.stack([wav, 0.5 * wav], axis=1), rate)
        else:
            write_wav(root / f"note{i}.wav", wav, rate)
    (root / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunk")
    soundfile.write(root / "empty.wav", np.zeros(0, np.float32), 16000)
    soundfile.write(root / "silent.wav", np.zeros(3 * 24000, np.float32), 24000)
    soundfile.write(root / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    return root


def _pretrain(tmp_path, name, corpus, *extra, steps=20, save=10, overrides="", threads=None):
    override = pretrain_overrides(corpus, steps=steps, save=save, extra=overrides)
    return run_script("run_pretrain.py", "-u", "encodecmae", "-g", "tiny", "-n", name, "-o", override, *extra,
                      cwd=tmp_path, threads=threads)


def _killed_then_resumed(folder, corpus) -> tuple[Path, str]:
    """A 16-step run (checkpoint every 8) SIGKILLed right after writing states-8.ckpt, then continued with -e; its
    experiment folder and the resumed run's output."""
    override = pretrain_overrides(corpus, steps=16, save=8)
    cut = folder / "result/pretrain/cut"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_pretrain.py"), "-u", "encodecmae", "-g", "tiny",
                             "-n", "cut", "-o", override], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while not (cut / "states-8.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cut / "states-8.ckpt").exists() and not (cut / "states-16.ckpt").exists()
    return cut, run_script("run_pretrain.py", "-e", str(cut / "states-8.ckpt"), cwd=folder, threads=1)


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory, corpus) -> dict[str, tuple[Path, str]]:
    """The tests' run_pretrain.py runs, independent of each other, two at a time on one core each: {name: (its
    experiment folder, its output)}. "tiny": 50 steps (checkpoints at 25 and 50); "full": 16 steps uninterrupted;
    "cut": the same killed after step 8 and resumed; "stage1": 6 steps (checkpoints at 3 and 6), the first stage of
    the self-training test."""
    folder = tmp_path_factory.mktemp("pretrain")

    def run(name: str) -> tuple[Path, str]:
        if name == "cut":
            return _killed_then_resumed(folder, corpus)
        steps, save = {"tiny": (50, 25), "full": (16, 8), "stage1": (6, 3)}[name]
        return folder / "result/pretrain" / name, _pretrain(folder, name, corpus, steps=steps, save=save, threads=1)

    return side_by_side(run, ["tiny", "cut", "full", "stage1"])  # the longest two first


def _scalars(events_path, tag):
    """{step: value} of one scalar, from an experiment folder (all its event files) or one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(events_path), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


@pytest.mark.slow
def test_tiny_pretraining_lowers_masked_loss_and_loads_upstream(pretrain_runs):
    expdir, out = pretrain_runs["tiny"]
    assert "skipped 2 unreadable" in out  # corrupt + empty, reported once at scan time
    masked = _scalars(expdir, "encodecmae/train-masked_loss")
    first, last = np.mean([masked[s] for s in range(1, 6)]), np.mean([masked[s] for s in range(46, 51)])
    assert last < 0.9 * first, (first, last)
    for tag in ("masked_loss_q0", "unmasked_loss_q7", "masked_accuracy", "audio_seconds_per_second", "loss"):
        logged = _scalars(expdir, f"encodecmae/train-{tag}")
        first_step = 2 if tag == "audio_seconds_per_second" else 1  # a rate: from the second step on
        assert sorted(logged) == list(range(first_step, 51)) and np.isfinite(list(logged.values())).all(), tag
    checkpoints = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    assert [p.name for p in checkpoints] == ["states-25.ckpt", "states-50.ckpt"]
    assert not list(expdir.glob(".*.tmp"))  # written atomically, no leftovers

    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401

    upstream = hub.encodecmae_local(ckpt=str(checkpoints[-1])).eval()
    with torch.no_grad():
        out = upstream([torch.randn(16000) * 0.1])
    assert out["last_hidden_state"].shape == (1, 75, 64)


@pytest.mark.slow
def test_killed_run_resumes_exactly(pretrain_runs):
    """SIGKILL right after the step-8 checkpoint; -e continues with the same losses as an uninterrupted run."""
    full = _scalars(pretrain_runs["full"][0], "encodecmae/train-loss")
    cut = pretrain_runs["cut"][0]
    latest = max(cut.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)  # the resumed run's
    resumed = _scalars(latest, "encodecmae/train-loss")
    assert sorted(resumed) == list(range(9, 17))
    for step in range(9, 17):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step


def test_bad_config_keys_and_empty_corpus_are_clear(tmp_path, corpus):  # both fail before training: ~2 s each
    with pytest.raises(AssertionError, match="no such key .* did you mean config.pretrain_expert.datarc.train_batch"):
        _pretrain(tmp_path, "bad", corpus, overrides="config.pretrain_expert.datarc.batchsize=3")
    (tmp_path / "silence").mkdir()
    with pytest.raises(AssertionError, match="no readable audio"):
        _pretrain(tmp_path, "empty", tmp_path / "silence")


@pytest.mark.slow
def test_self_training_stage_end_to_end(tmp_path, corpus, pretrain_runs):
    """Stage 1 -> k-means over last-layer embeddings -> target store -> stage 2 with Q+1 target streams."""
    from encodecmae_s3prl.pretrain_task.corpus import load_corpus
    from encodecmae_s3prl.pretrain_task.self_training import TargetStore, TargetStoreError
    from encodecmae_s3prl.pretrain_task.self_training import main as st_main

    stage1 = pretrain_runs["stage1"][0] / "states-6.ckpt"
    store_dir = tmp_path / "st"
    st_main(["-k", str(stage1), "--corpus", str(corpus), "--out", str(store_dir), "--num-clips", "16",
             "--clusters", "8", "--iterations", "5"])
    store = TargetStore.open(store_dir)
    files = load_corpus([str(corpus)], progress=False)
    usable = store.check(files, 8)  # every file, its length in 75 Hz frames, k
    assert sorted(Path(f.path).name for f in files if f not in usable) == ["nan.wav"]  # unreadable: no targets
    with pytest.raises(TargetStoreError, match="k=8"):
        store.check(files, 16)
    codes = np.concatenate([store.store.read(key, "codes", 0, clip.frames) for key, clip in store.store.clips.items()])
    assert codes.min() >= 0 and codes.max() < 8 and len(np.unique(codes)) > 1
    assert not list(tmp_path.glob(".st.*"))  # written atomically, no leftovers

    run_script("run_pretrain.py", "-u", "encodecmae", "-g", str(store_dir / "config_model_st.yaml"), "-n", "stage2b",
               "-o", pretrain_overrides(corpus, steps=4, save=2,
                                        extra=f"config.pretrain_expert.datarc.target_store={store_dir},,"
                                              f"config.pretrain_expert.datarc.init_from={stage1}"), cwd=tmp_path)
    st_loss = _scalars(tmp_path / "result/pretrain/stage2b", "encodecmae/train-masked_loss_st")
    assert sorted(st_loss) == [1, 2, 3, 4] and np.isfinite(list(st_loss.values())).all()
    checkpoint = safe_load(tmp_path / "result/pretrain/stage2b/states-4.ckpt")
    assert checkpoint["EncodecMAE"]["config"]["extra_targets"] == 8


def test_self_training_clusters_the_last_layer_a_stream_as_v1(tmp_path):
    """v1 clusters get_activations(...)[-1], the last layer's ``a`` stream, not the output a + LN_final(b)."""
    from encodecmae_s3prl.pretrain_task.self_training import embed_file_frames
    from encodecmae_s3prl.upstream.import_v1 import load_v1

    from v1_reference import make_v1_checkpoint, ref_features

    path, state, encodec = make_v1_checkpoint(tmp_path)
    wav = torch.from_numpy(harmonic_tone(220.0, 2.0, 24000, np.random.default_rng(0)))
    with torch.no_grad():
        _, output, per_layer = ref_features(encodec, state, wav)
    frames = embed_file_frames(load_v1(path), wav)
    torch.testing.assert_close(frames, per_layer[-1], atol=1e-5, rtol=1e-5)
    assert (frames - output).norm() / output.norm() > 0.1


def test_codebook_weights_tool_writes_a_model_config(tmp_path, corpus):
    from encodec import EncodecModel

    from encodecmae_s3prl.pretrain_task.quantizer_weights import main as weights_main
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml

    torch.manual_seed(0)
    encodec = EncodecModel.encodec_model_24khz(pretrained=False)
    for layer in encodec.quantizer.vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1)
    weights_file = tmp_path / "encodec_24khz.th"
    torch.save(encodec.state_dict(), weights_file)
    (tmp_path / "in.yaml").write_text(f"model: tiny\nencodec_source: {weights_file}\nstandardise_features: false\n")
    weights_main(["--corpus", str(corpus), "-g", str(tmp_path / "in.yaml"), "--out", str(tmp_path / "out.yaml"),
                  "--clips", "6"])
    config = model_config_from_yaml(str(tmp_path / "out.yaml"))
    assert len(config.codebook_weights) == 8 and sum(config.codebook_weights) == pytest.approx(1.0, abs=1e-6)
    assert all(w > 0 for w in config.codebook_weights)


@pytest.mark.slow
def test_ddp_with_gloo_on_two_processes(tmp_path, corpus):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    override = pretrain_overrides(corpus, steps=3, save=2, extra="config.pretrain_expert.datarc.num_workers=0")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(torchrun + [str(REPO / "run_pretrain.py"), "-u", "encodecmae", "-g", "tiny", "-n", "ddp",
                                      "--device", "cpu", "-o", override], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    expdir = tmp_path / "result/pretrain/ddp"
    checkpoint = safe_load(expdir / "states-3.ckpt")
    assert checkpoint["Step"] == 3 and "EncodecMAE" in checkpoint
    assert not any(k.startswith("module.") for k in checkpoint["EncodecMAE"]["state_dict"])
