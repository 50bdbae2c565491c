"""``make demo`` end to end at a few steps: corpus, run_pretrain.py, the four-row comparison and its outputs."""
import json
import os
import subprocess
import sys

import pytest
import torch

from encodecmae_s3prl import demo, errors
from encodecmae_s3prl.upstream.checkpoint import CheckpointError
from encodecmae_s3prl.upstream.codec import ENCODEC_FILE, build_encodec

from conftest import REPO, pretrain_overrides, write_tone_corpus


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_where_everything_is(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "encodecmae_s3prl.demo", "--out", str(tmp_path / "demo"),
                           "--steps", "12", "--grid-size", "1", "--max-epochs", "20"],
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
    assert not demo.choose_encodec(download=False).real
    monkeypatch.setenv("ENCODEC_CKPT", "random")
    assert not demo.choose_encodec(download=False).real
    monkeypatch.setenv("ENCODEC_CKPT", str(fake))
    choice = demo.choose_encodec(download=False)
    assert choice.real and choice.weights == fake.resolve() and "ENCODEC_CKPT" in choice.where

    monkeypatch.delenv("ENCODEC_CKPT")
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / ENCODEC_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fake.read_bytes())
    choice = demo.choose_encodec(download=False)
    assert choice.real and choice.weights == cached.resolve() and "torch hub cache" in choice.where

    # a weights file that is named but missing, or is not EnCodec, is an error, never a silent random codec
    monkeypatch.setenv("ENCODEC_CKPT", str(tmp_path / "missing.th"))
    with pytest.raises(errors.UserError, match="missing.th: no such file"):
        demo.choose_encodec(download=False)
    (tmp_path / "other.th").write_bytes(b"")
    monkeypatch.setenv("ENCODEC_CKPT", str(tmp_path / "other.th"))
    with pytest.raises(CheckpointError, match="empty") as not_encodec:
        demo.choose_encodec(download=False)
    message = errors.user_error_message(not_encodec.value)  # a user error: one line naming the file, exit 2
    assert message is not None and str(tmp_path / "other.th") in message


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
