"""The side-by-side command: all four outputs, cached embeddings on rerun, failures in the table, s3prl's real
hubert_local / wav2vec2_local entries next to ours on s3prl's recipes, and the HEAR 2021 API."""
import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from encodecmae_s3prl.demo_data import write_esc50, write_nsynth
from encodecmae_s3prl.evaluation import compare, embedding_cache, task_table

from conftest import run_script, side_by_side
from fakes import write_tiny_hubert_checkpoint, write_tiny_wav2vec2_checkpoint
from synthetic_data import write_iemocap, write_speech_commands


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    return {"nsynth_pitch": write_nsynth(root / "ns"), "esc50": write_esc50(root / "esc")}


def test_two_upstreams_two_probes_all_outputs_and_cache(tmp_path, datasets, monkeypatch, capsys):
    out = tmp_path / "cmp"
    args = ["--upstreams", "fbank_no_cmvn,fbank,missing=/no/such.ckpt", "--probes", "nsynth_pitch,esc50",
            "--data", f"nsynth_pitch={datasets['nsynth_pitch']}", "--data", f"esc50={datasets['esc50']}",
            "--out", str(out), "--grid-size", "2", "--max-epochs", "45", "--hidden-dim", "256", "--device", "cpu",
            "--mode", "weighted"]
    assert compare.run(args) == 1  # one upstream cannot load: its cells are errors, the command says so
    err = capsys.readouterr().err
    assert "compare: 2 of 6 cell(s) failed:" in err
    assert "missing / nsynth_pitch: " in err and "missing / esc50: " in err
    for name in ("results.md", "results.csv", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"fbank_no_cmvn", "fbank", "missing"}
    assert set(results["fbank_no_cmvn"]["nsynth_pitch"]) == {"pitch_acc", "chroma_acc", "pitch_acc_std",
                                                             "chroma_acc_std", "precision"}
    assert results["fbank_no_cmvn"]["nsynth_pitch"]["precision"] == "fp32"  # s3prl's own upstreams run as built
    assert results["fbank_no_cmvn"]["esc50"]["acc_std"] > 0  # 5 folds: their spread, beside the mean
    assert results["fbank_no_cmvn"]["nsynth_pitch"]["pitch_acc"] > 0.5  # 12 pitches: chance 0.08
    assert results["fbank_no_cmvn"]["esc50"]["acc"] > 0.6  # 4 classes, mean over the 5 folds
    # fbank is CMVN'd per clip: its time-mean is zero, the pooled probe sits at chance
    assert results["fbank"]["esc50"]["acc"] < 0.5
    for probe in ("esc50", "nsynth_pitch"):  # the failing upstream is reported for every probe, once loaded
        assert "not found" in results["missing"][probe]["error"] or "no such" in results["missing"][probe]["error"]
    table = (out / "results.md").read_text()
    assert "| missing | error: " in table and "Learned layer weights" in table and "± " in table
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["upstream", "nsynth_pitch pitch_acc", "nsynth_pitch pitch_acc std", "nsynth_pitch chroma_acc",
                       "nsynth_pitch chroma_acc std", "esc50 acc", "esc50 acc std"]
    assert float(rows[1][5]) == pytest.approx(results["fbank_no_cmvn"]["esc50"]["acc"], abs=1e-3)
    assert float(rows[1][6]) == pytest.approx(results["fbank_no_cmvn"]["esc50"]["acc_std"], abs=1e-3)
    details = json.loads((out / "details.json").read_text())
    folds = details["fbank_no_cmvn"]["esc50"]["folds"]
    assert [f["fold"] for f in folds] == [f"fold{k}" for k in range(1, 6)]
    assert np.mean([f["test"]["acc"] for f in folds]) == pytest.approx(results["fbank_no_cmvn"]["esc50"]["acc"])
    assert details["fbank_no_cmvn"]["esc50"]["layer_weights"] == [1.0]  # one layer: the weighting is trivial
    assert len(list((out / "cache").glob("*.npy"))) == 4  # one per (upstream, task), shared by the 5 folds

    # a rerun reuses every cached embedding: the upstream is neither built nor called again
    def fail(*a, **k):
        raise AssertionError("embeddings recomputed")

    monkeypatch.setattr(embedding_cache, "embed_clips", fail)
    monkeypatch.setattr(compare, "load_hub_upstream", fail)
    before = (out / "results.md").read_text()
    compare.main(args)
    assert json.loads((out / "results.json").read_text())["fbank_no_cmvn"]["esc50"] == results["fbank_no_cmvn"]["esc50"]
    # that rerun failed a cell again: the earlier table stays, this run's is beside it
    assert (out / "results.md").read_text() == before and (out / "results.partial.md").is_file()


def test_compare_loads_its_upstreams_with_the_settings_it_is_given(tmp_path, datasets, monkeypatch):
    """Settings passed to compare are the ones its upstreams load with, whatever the environment says; without
    them the command reads the environment (ENCODEC_CKPT), and it never changes it."""
    import os

    from encodecmae_s3prl.settings import UpstreamSettings

    monkeypatch.setenv("ENCODEC_CKPT", str(tmp_path / "from_the_environment.th"))
    before = dict(os.environ)
    loaded = []

    def load(entry, ckpt, device, settings):
        loaded.append(settings)
        raise RuntimeError("not built in this test")

    monkeypatch.setattr(compare, "load_hub_upstream", load)
    argv = ["--upstreams", "fbank_no_cmvn", "--probes", "esc50", "--data", f"esc50={datasets['esc50']}",
            "--device", "cpu"]
    given = UpstreamSettings(trust=True, encodec_weights="random")
    results = compare.main([*argv, "--out", str(tmp_path / "given")], given)
    assert loaded == [given] and "not built" in results["fbank_no_cmvn"]["esc50"]["error"]
    compare.main([*argv, "--out", str(tmp_path / "command")])
    assert loaded[1] == UpstreamSettings(encodec_weights=str(tmp_path / "from_the_environment.th"), precision="auto")
    assert dict(os.environ) == before


def test_cache_key_follows_the_checkpoint_file(tmp_path, tiny_ckpt):
    """A retrained checkpoint under the same path and label must not reuse the old embeddings."""
    import os
    import shutil

    ckpt = shutil.copy(tiny_ckpt, tmp_path / "model.ckpt")
    before = compare.upstream_key("mine", "encodecmae_local", str(ckpt))
    assert before == compare.upstream_key("mine", "encodecmae_local", str(ckpt))
    os.utime(ckpt, ns=(1, 1))
    assert compare.upstream_key("mine", "encodecmae_local", str(ckpt)) != before
    assert compare.parse_upstream("hubert_local=/x.pt") == ("hubert_local", "hubert_local", "/x.pt")
    assert compare.parse_upstream("big=hubert_local=/x.pt") == ("big", "hubert_local", "/x.pt")
    assert compare.parse_upstream("mine=/x.ckpt") == ("mine", "encodecmae_local", "/x.ckpt")


def test_bad_arguments_are_usage_errors(tmp_path, capsys, datasets):
    for argv, message in (
            (["--probes", "esc50", "--data", "esc50"], "--data takes PROBE=PATH"),
            (["--probes", "speech_command", "--data", "speech_command=/x"], "unknown probe 'speech_command'"),
            (["--probes", "esc50,nsynth_pitch", "--data", f"esc50={datasets['esc50']}"], "no --data PROBE=PATH for: "
                                                                                           "nsynth_pitch"),
            (["--probes", "esc50", "--data", f"esc50={datasets['esc50']}", "--grid-size", "17"], "1..16")):
        with pytest.raises(SystemExit):
            compare.main(["--upstreams", "fbank_no_cmvn", "--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
    # a --data path that does not exist stops the command before any work
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--upstreams", "fbank_no_cmvn", "--probes", "esc50", "--data", f"esc50={tmp_path / 'nowhere'}",
                      "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "nowhere does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a probe whose data is broken is reported in the table, the other probe still runs
    (tmp_path / "empty").mkdir()
    results = compare.main(["--upstreams", "fbank_no_cmvn", "--probes", "esc50,nsynth_pitch", "--data",
                            f"esc50={tmp_path / 'empty'}", "--data", f"nsynth_pitch={datasets['nsynth_pitch']}",
                            "--out", str(tmp_path / "o"), "--grid-size", "1", "--max-epochs", "9",
                            "--hidden-dim", "32", "--device", "cpu"])
    assert str(tmp_path / "empty") in results["fbank_no_cmvn"]["esc50"]["error"]
    assert "pitch_acc" in results["fbank_no_cmvn"]["nsynth_pitch"]


@pytest.mark.slow
def test_side_by_side_s3prl_hubert_wav2vec2_and_ours_on_s3prl_recipes(tmp_path, tiny_ckpt):
    """The user's command, as a subprocess: s3prl's real hubert_local and wav2vec2_local entries on tiny random
    checkpoints in the converted format they load, our encodecmae_local (label=CKPT) and fbank_no_cmvn, over
    s3prl's own speech_commands (v0.01 layout) and emotion (IEMOCAP meta_data) datasets."""
    hubert = write_tiny_hubert_checkpoint(tmp_path / "hubert_tiny.pt")
    wav2vec2 = write_tiny_wav2vec2_checkpoint(tmp_path / "wav2vec2_tiny.pt")
    # 12 speakers per word: s3prl's speaker-hash split then puts some of every word into dev
    train_root, test_root = write_speech_commands(tmp_path / "sc", per_word=12, test_per_word=2)
    iemocap, _ = write_iemocap(tmp_path / "IEMOCAP", per_emotion=3)
    out = tmp_path / "cmp"
    upstreams = [f"hubert_local={hubert}", f"wav2vec2_local={wav2vec2}", f"mae_tiny={tiny_ckpt}", "fbank_no_cmvn"]
    proc = subprocess.run(
        [sys.executable, "-m", "encodecmae_s3prl.evaluation.compare", "--upstreams", ",".join(upstreams),
         "--probes", "speech_commands,emotion", "--data", f"speech_commands={train_root},{test_root}",
         "--data", f"emotion={iemocap}", "--out", str(out), "--mode", "weighted", "--grid-size", "2",
         "--max-epochs", "90", "--hidden-dim", "128", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["hubert_local", "wav2vec2_local", "mae_tiny", "fbank_no_cmvn"]
    for upstream, row in results.items():
        assert set(row) == {"speech_commands", "emotion"}
        for probe, metrics in row.items():
            assert "error" not in metrics, (upstream, probe, metrics)
    assert results["fbank_no_cmvn"]["speech_commands"]["acc"] > 0.5  # 12 classes
    assert results["fbank_no_cmvn"]["emotion"]["acc"] > 0.6  # 4 classes, mean of 5 session folds
    details = json.loads((out / "details.json").read_text())
    assert len(details["hubert_local"]["speech_commands"]["layer_weights"]) == 3  # conv features + 2 layers
    assert len(details["mae_tiny"]["emotion"]["layer_weights"]) == 4  # embedding, 2 layers, output
    assert len(details["fbank_no_cmvn"]["emotion"]["folds"]) == 5
    table = (out / "results.md").read_text()
    for line in ("- hubert_local / speech_commands: ", "- wav2vec2_local / emotion: ", "- mae_tiny / emotion: "):
        assert line in table
    assert "| fbank (no CMVN) |" in table  # baselines show under their paper-style names
    assert (out / "results.png").stat().st_size > 0 and (out / "results.csv").is_file()


def test_speech_commands_task_reads_s3prl_split(tmp_path):
    """Same train/dev membership as s3prl's own split_dataset; _silence_ cut from the background noise."""
    from encodecmae_s3prl import compat

    compat.apply()
    from s3prl.downstream.speech_commands.expert import split_dataset

    train_root, test_root = write_speech_commands(tmp_path / "sc", per_word=6, test_per_word=2)
    task = task_table.load_task("speech_commands", f"{train_root},{test_root}")
    s3prl_train, s3prl_dev = split_dataset(train_root)
    silence = task.classes.index("_silence_")
    assert {c.path for c in task.splits["train"] if c.target[0] != silence} == {str(p) for _, p in s3prl_train}
    assert {c.path for c in task.splits["dev"] if c.target[0] != silence} == {str(p) for _, p in s3prl_dev}
    silences = [c for split in ("train", "dev") for c in task.splits[split] if c.target[0] == silence]
    assert len(silences) == 6 and all(c.duration == 1.0 for c in silences)  # 2 noise files x 3 s
    assert len({c.key for c in silences}) == 6
    unknown = task.classes.index("_unknown_")
    assert any(c.target[0] == unknown for c in task.splits["train"])  # bed/cat map to _unknown_
    assert {task.classes[c.target[0]] for c in task.splits["test"]} == set(task.classes)
    # the parent folder works too when it holds train/ and test/
    assert len(task_table.load_task("speech_commands", tmp_path / "sc").splits["test"]) == len(task.splits["test"])


def test_one_cache_of_every_layer_serves_both_modes_and_reruns(tmp_path, datasets, tiny_ckpt):
    """The cache holds the time-mean of every hidden state of each clip at the upstream's own rate: the last
    layer (last mode) and any weighting of layers (weighted mode: the weighted sum commutes with the time-mean)
    come from it, and a rerun never calls the upstream."""
    from s3prl import hub

    from encodecmae_s3prl.downstream_probes.clips import read_clip

    task = task_table.load_task("esc50", datasets["esc50"])
    built = []

    def upstream():
        built.append(hub.encodecmae_local(ckpt=str(tiny_ckpt)).eval())
        return built[-1]

    first = embedding_cache.embed_splits(upstream, "mae", task, tmp_path)

    def no_upstream():
        raise AssertionError("the cache was missed")

    again = embedding_cache.embed_splits(no_upstream, "mae", task, tmp_path)
    assert len(built) == 1 and len(list(tmp_path.glob("*.npy"))) == 1
    for split in first:
        np.testing.assert_array_equal(first[split]["x"], again[split]["x"])
    x = first["test"]["x"]
    assert x.shape[1:] == (4, 64)  # embedding, 2 layers, output; 64 dims
    clip = task.splits["test"][0]
    with torch.no_grad():  # the clip alone, at 24 kHz, straight into the model
        hidden = built[0].model.encode(read_clip(clip.path, clip.start, clip.duration, 24000)[None]).hidden_states
    means = np.stack([h[0].mean(0).numpy() for h in hidden])
    np.testing.assert_allclose(x[0], means, atol=1e-5, rtol=1e-4)
    weights = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    np.testing.assert_allclose((weights[:, None] * x[0]).sum(0),
                               (weights[:, None, None] * np.stack([h[0].numpy() for h in hidden])).sum(0).mean(0),
                               atol=1e-5, rtol=1e-4)


def test_hear_api_for_ours_hubert_and_fbank(tmp_path, tiny_ckpt):
    from encodecmae_s3prl.evaluation import hear_api

    hubert = write_tiny_hubert_checkpoint(tmp_path / "hubert_tiny.pt")
    models = {"ours": (hear_api.load_model(str(tiny_ckpt), device="cpu"), 64, 1000 / 75, 48000),
              "hubert": (hear_api.load_model(str(hubert), upstream="hubert_local", device="cpu"), 32, 20.0, 16000),
              "hubert_spec": (hear_api.load_model(f"hubert_local:{hubert}", device="cpu"), 32, 20.0, 16000),
              "fbank": (hear_api.load_model("", upstream="fbank_no_cmvn", device="cpu"), None, None, 16000)}
    for name, (model, size, hop_ms, rate) in models.items():
        assert model.sample_rate == rate, name  # EnCodecMAE declares HEAR's 48 kHz; other s3prl upstreams 16 kHz
        audio = torch.randn(3, rate) * 0.1
        scene = hear_api.get_scene_embeddings(audio, model)
        frames, stamps = hear_api.get_timestamp_embeddings(audio, model)
        assert scene.shape == (3, model.scene_embedding_size)
        assert frames.shape[0] == 3 and frames.shape[2] == model.timestamp_embedding_size
        assert stamps.shape == frames.shape[:2] and torch.all(stamps[:, 1:] > stamps[:, :-1])
        torch.testing.assert_close(scene, frames.mean(dim=1))
        if size:
            assert model.scene_embedding_size == size, name
            assert float(stamps[0, 1] - stamps[0, 0]) == pytest.approx(hop_ms, abs=1e-3), name  # ms per frame
    torch.testing.assert_close(hear_api.get_scene_embeddings(audio[:, :16000], models["hubert"][0]),
                               hear_api.get_scene_embeddings(audio[:, :16000], models["hubert_spec"][0]))
    # a declared rate other than the native one is resampled inside (ours by default: HEAR's 48 kHz -> 24 kHz)
    at24 = hear_api.load_model(str(tiny_ckpt), device="cpu", sample_rate=24000)
    assert at24.sample_rate == 24000 and models["ours"][0].native_rate == 24000
    assert hear_api.get_scene_embeddings(torch.randn(2, 24000) * 0.1, at24).shape == (2, 64)
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        hear_api.load_model(str(tmp_path / "no_such.pt"), upstream="hubert_local")
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear_api.get_scene_embeddings(torch.zeros(16000), models["ours"][0])


def _train_ours_then_evaluate(folder, checkpoint, recipe: str) -> list[str]:
    """``run_downstream.py -u encodecmae_local -k CKPT -d recipe``: 6 steps with the weighted sum of our layers,
    evaluating at the last one, then ``-m evaluate -e`` in a fresh process; both outputs."""
    if recipe == "speech_commands":
        train_root, test_root = write_speech_commands(folder / "sc", per_word=6, test_per_word=1)
        data = (f"config.downstream_expert.datarc.speech_commands_root={train_root},,"
                f"config.downstream_expert.datarc.speech_commands_test_root={test_root},,"
                "config.downstream_expert.datarc.batch_size=8")
    else:
        root, meta = write_iemocap(folder / "IEMOCAP", per_emotion=2)
        data = (f"config.downstream_expert.datarc.root={root},,config.downstream_expert.datarc.meta_data={meta},,"
                "config.downstream_expert.datarc.train_batch_size=8,,config.runner.gradient_accumulate_steps=1")
    overrides = (f"{data},,config.downstream_expert.datarc.num_workers=0,,config.runner.total_steps=6,,"
                 "config.runner.log_step=3,,config.runner.eval_step=6,,config.runner.save_step=6")
    exp = folder / "exp"
    return [run_script("run_downstream.py", "-m", "train", "-u", "encodecmae_local", "-k", str(checkpoint), "-d",
                       recipe, "-p", str(exp), "-o", overrides, cwd=folder, threads=1),
            run_script("run_downstream.py", "-m", "evaluate", "-e", str(exp / "states-6.ckpt"), cwd=folder,
                       threads=1)]


@pytest.fixture(scope="module")
def our_recipe_runs(tmp_path_factory, tiny_ckpt) -> dict[str, list[str]]:
    """Both recipes with our upstream, side by side on one core each."""
    return side_by_side(lambda recipe: _train_ours_then_evaluate(tmp_path_factory.mktemp(recipe), tiny_ckpt, recipe),
                        ("speech_commands", "emotion"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["speech_commands", "emotion"])
def test_our_upstream_in_s3prl_recipes_through_run_downstream(our_recipe_runs, recipe):
    """Our upstream trains in s3prl's recipes, and ``-m evaluate -e`` in a fresh process rebuilds it from the args
    stored in s3prl's checkpoint and reports the test accuracy the trained model had."""
    runs = our_recipe_runs[recipe]
    accuracies = [[float(v) for v in re.findall(r"^test acc: ([0-9.]+)", out, flags=re.M)] for out in runs]
    assert len(accuracies[0]) == len(accuracies[1]) == 1 and accuracies[0] == accuracies[1], runs[1][-2000:]
