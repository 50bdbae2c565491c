"""``make demo`` end to end at a few steps: corpus, run_pretrain.py, the four-row comparison and its outputs."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from encodecmae_s3prl import demo, demo_data, errors
from encodecmae_s3prl.settings import UpstreamSettings, encodec_weights
from encodecmae_s3prl.upstream.checkpoint import CheckpointError
from encodecmae_s3prl.upstream.codec import ENCODEC_FILE, build_encodec

from conftest import REPO, pretrain_overrides, side_by_side, write_tone_corpus


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_where_everything_is(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "encodecmae_s3prl.demo", "--out", str(tmp_path / "demo"),
                           "--steps", "12", "--grid-size", "1", "--max-epochs", "20",
                           "--threads", str(torch.get_num_threads())],  # 1 beside another test process
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    results = json.loads((tmp_path / "demo" / "compare" / "results.json").read_text())
    assert list(results) == ["encodec_features", "encodecmae_random", "ECMAE-tiny (pretrained here)", "fbank_no_cmvn"]
    for upstream, row in results.items():
        for probe in ("nsynth_pitch", "esc50"):
            assert "error" not in row[probe], (upstream, probe, row[probe])
    for row in ("| EC |", "| ECMAE-R |", "| ECMAE-tiny (pretrained here) |", "| fbank (no CMVN) |"):
        assert row in out
    assert "EnCodec: random-init (" in out or "EnCodec: real pretrained weights (" in out
    assert (tmp_path / "demo" / "compare" / "results.png").stat().st_size > 0
    assert "pitch accuracy: the pretrained model" in out
    checkpoints = list((tmp_path / "demo" / "pretrain").glob("states-*.ckpt"))
    events = list((tmp_path / "demo" / "pretrain").glob("events.out.tfevents.*"))
    assert checkpoints and events and f"checkpoint: {checkpoints[0]}" in out


def _fake_encodec_weights(path):
    """A random-init EnCodec 24 kHz state dict (encoder.*, quantizer.*) standing in for the real weights file,
    which cannot be downloaded here."""
    codec = build_encodec("random")
    state = {f"{part}.{key}": value for part in ("encoder", "quantizer")
             for key, value in getattr(codec, part).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_demo_finds_the_real_encodec_where_the_codec_looks(tmp_path, monkeypatch):
    fake = _fake_encodec_weights(tmp_path / "weights" / ENCODEC_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty torch hub cache
    monkeypatch.delenv("ENCODEC_CKPT", raising=False)
    assert not demo.choose_encodec(encodec_weights(), download=False).real
    monkeypatch.setenv("ENCODEC_CKPT", "random")
    assert not demo.choose_encodec(encodec_weights(), download=False).real
    monkeypatch.setenv("ENCODEC_CKPT", str(fake))
    choice = demo.choose_encodec(encodec_weights(), download=False)
    assert choice.real and choice.weights == fake.resolve() and "ENCODEC_CKPT" in choice.where

    monkeypatch.delenv("ENCODEC_CKPT")
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / ENCODEC_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fake.read_bytes())
    choice = demo.choose_encodec(encodec_weights(), download=False)
    assert choice.real and choice.weights == cached.resolve() and "torch hub cache" in choice.where

    # a weights file that is named but missing, or is not EnCodec, is an error, never a silent random codec
    monkeypatch.setenv("ENCODEC_CKPT", str(tmp_path / "missing.th"))
    with pytest.raises(errors.UserError, match="missing.th: no such file"):
        demo.choose_encodec(encodec_weights(), download=False)
    (tmp_path / "other.th").write_bytes(b"")
    monkeypatch.setenv("ENCODEC_CKPT", str(tmp_path / "other.th"))
    with pytest.raises(CheckpointError, match="empty") as not_encodec:
        demo.choose_encodec(encodec_weights(), download=False)
    message = errors.user_error_message(not_encodec.value)  # a user error: one line naming the file, exit 2
    assert message is not None and str(tmp_path / "other.th") in message


def test_the_demo_passes_its_encodec_down_and_leaves_its_environment_alone(tmp_path, monkeypatch):
    """The EnCodec the demo settles on reaches compare as an argument and the pretraining process through that
    process's environment; the demo's own environment is unchanged (here ENCODEC_CKPT names a file that is not
    there: a step reading it instead of the settings would fail)."""
    from encodecmae_s3prl.evaluation import compare

    monkeypatch.setenv("ENCODEC_CKPT", str(tmp_path / "not_there.th"))
    before = dict(os.environ)
    seen = {}

    def pretrain(corpus, expdir, model_config, steps, env, cwd):
        seen["env"] = env
        return tmp_path / "states-1.ckpt"

    def compare_main(argv, settings):
        seen["settings"] = settings
        return {row: {"nsynth_pitch": {"error": "not run in this test"}}
                for row in ("ECMAE-tiny (pretrained here)", "encodecmae_random")}

    monkeypatch.setattr(demo, "write_corpus", lambda root: root)
    monkeypatch.setattr(demo, "write_probes", lambda root: {"nsynth_pitch": root, "esc50": root})
    monkeypatch.setattr(demo, "pretrain", pretrain)
    monkeypatch.setattr(demo, "checkpoint_codec", lambda checkpoint: "random-init")
    monkeypatch.setattr(compare, "main", compare_main)
    args = demo.parser().parse_args(["--out", str(tmp_path / "demo"), "--threads", str(torch.get_num_threads())])
    demo.run(args, UpstreamSettings(trust=True, encodec_weights="random"))
    assert seen["settings"] == UpstreamSettings(trust=True, encodec_weights="random")
    assert seen["env"]["ENCODEC_CKPT"] == "random"
    assert dict(os.environ) == before


@pytest.mark.slow
def test_demo_runs_every_row_on_the_real_encodec_when_found(tmp_path):
    """The demo's pretraining config with (stand-in) real weights: the checkpoint carries that EnCodec, and
    EC / ECMAE-R, which take the checkpoint's codec, run on it too."""
    assert demo.pretrain_model_config(demo.EncodecChoice(None, "offline"), tmp_path) == "tiny"
    fake = _fake_encodec_weights(tmp_path / "weights" / ENCODEC_FILE)
    model_config = demo.pretrain_model_config(demo.EncodecChoice(fake, "test"), tmp_path / "config")
    override = pretrain_overrides(write_tone_corpus(tmp_path / "corpus"), steps=4, save=2)
    proc = subprocess.run([sys.executable, str(REPO / "run_pretrain.py"), "-u", "encodecmae", "-g", model_config,
                           "-n", "real", "-o", override], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, ENCODEC_CKPT=str(fake), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    checkpoint = tmp_path / "result" / "pretrain" / "real" / "states-4.ckpt"
    assert demo.checkpoint_codec(checkpoint) == "real"

    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401

    for entry in (hub.encodec_features, hub.encodecmae_random, hub.encodecmae_local):
        assert not bool(entry(ckpt=str(checkpoint)).model.codec.random_weights), entry.__name__


# --- the same table on every run, and the README's table is the demo's ------------------------------------------
@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="espeak-ng / sox not installed")
def test_spoken_words_are_the_same_bytes_on_every_run(tmp_path):
    """sox dithers when it reduces the bit depth, seeded from the clock unless told otherwise: the demo's corpus (and
    so its whole table) differed from run to run."""
    first, second = tmp_path / "a" / "cat.wav", tmp_path / "b" / "cat.wav"
    assert demo_data.espeak_word("cat", first, pitch=35, speed=150)
    assert demo_data.espeak_word("cat", second, pitch=35, speed=150)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.slow
def test_demo_pretraining_and_probes_give_the_same_numbers_twice(tmp_path):
    """The demo's deterministic parts end to end, at a few steps: two pretraining runs through run_pretrain.py (the
    codec's fit, crops, masks, the optimizer) give the same checkpoint, and the HEAR-protocol table of each (embedding
    caches built from scratch, the MLP grid) is the same text."""
    from encodecmae_s3prl.evaluation import compare
    from encodecmae_s3prl.upstream.checkpoint import safe_load

    corpus = write_tone_corpus(tmp_path / "corpus")
    esc50 = demo_data.write_esc50(tmp_path / "esc50", classes=2, per_fold=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", ENCODEC_CKPT="random")

    def pretrain(run: str):
        return demo.pretrain(corpus, tmp_path / run / "pretrain", "tiny", 2, env, cwd=tmp_path,
                             overrides=["config.pretrain_expert.datarc.codec_init_clips=4"])

    checkpoints = list(side_by_side(pretrain, ["a", "b"]).values())  # one core each
    tables, states = [], []
    for run, checkpoint in zip(["a", "b"], checkpoints, strict=True):
        states.append(safe_load(checkpoint))
        compare.main(["--upstreams", f"ours={checkpoint},fbank_no_cmvn", "--probes", "esc50", "--data",
                      f"esc50={esc50}", "--out", str(tmp_path / run / "compare"), "--grid-size", "1",
                      "--max-epochs", "6", "--device", "cpu"])
        tables.append((tmp_path / run / "compare" / "results.md").read_text())
    model_a, model_b = (state["EncodecMAE"]["state_dict"] for state in states)
    assert model_a.keys() == model_b.keys()
    assert [k for k in model_a if not torch.equal(model_a[k], model_b[k])] == []
    assert tables[0] == tables[1] and "| ours |" in tables[0]


def _numbers_out(text: str) -> str:
    return re.sub(r"\d+\.\d+", "N", text)


def test_the_readme_table_is_the_block_the_demo_writes(tmp_path, monkeypatch):
    """README.md's demo table is a block the demo wrote (``--readme``): its settings line is the one of `make demo`'s
    settings, and its table is compare's results.md for the demo's rows and probes, the fold note included."""
    from encodecmae_s3prl.evaluation import compare

    readme = (REPO / "README.md").read_text()
    assert readme.count(demo.TABLE_BEGIN) == 1 and readme.count(demo.TABLE_END) == 1
    block = demo.TABLE_BEGIN + readme.split(demo.TABLE_BEGIN)[1].split(demo.TABLE_END)[0] + demo.TABLE_END + "\n"
    settings, table = block.splitlines()[1], "\n".join(block.splitlines()[3:-1])
    defaults = demo.parser().parse_args([])
    expected = demo.settings_line(defaults, "a random-init", 1.5, "2026-01-01")
    assert settings.startswith("Printed by `make demo` on ") and expected.startswith("Printed by `make demo` on ")
    assert (f"({defaults.steps} pretraining steps, {defaults.grid_size} MLP configurations, at most "
            f"{defaults.max_epochs} epochs; ") in settings
    assert f"; torch threads: {defaults.threads}, " in settings
    assert any(f"{precision} on the CPU" in settings for precision in ("bf16 autocast", "fp32"))
    # the table compare writes for the demo's four rows and two probes (made-up numbers), numbers aside
    fold = {"test": {"acc": 0.5}}
    row = {"nsynth_pitch": {"pitch_acc": 0.5, "chroma_acc": 0.5, "folds": [{"test": {"pitch_acc": 0.5}}]},
           "esc50": {"acc": 0.5, "std": {"acc": 0.1}, "folds": [fold] * 5}}
    labels = ["encodec_features", "encodecmae_random", "ECMAE-tiny (pretrained here)", "fbank_no_cmvn"]
    monkeypatch.setattr(compare, "_bar_chart", lambda *args: None)  # the picture is not what is checked
    written = compare.write_outputs({label: row for label in labels}, ["nsynth_pitch", "esc50"], tmp_path)
    assert _numbers_out(table) == _numbers_out(written.read_text().strip())
    # --readme puts a block in place of the old one and nothing else changes
    assert demo.readme_with_table(readme, block) == readme
    other = demo.table_block("Printed by someone.", "| a |\n|---|")
    replaced = demo.readme_with_table(readme, other)
    assert replaced.split(demo.TABLE_BEGIN)[0] == readme.split(demo.TABLE_BEGIN)[0]
    assert replaced.split(demo.TABLE_END)[1] == readme.split(demo.TABLE_END)[1] and "Printed by someone." in replaced
    with pytest.raises(errors.UserError, match="exactly one demo table block"):
        demo.readme_with_table("no block here", other)
