"""``make demo`` end to end at a few steps: corpus, run_pretrain.py, the four-row comparison and its outputs."""
import json
import subprocess
import sys

from conftest import REPO


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
    assert "EnCodec: random-init (offline)" in out or "EnCodec: real pretrained weights" in out
    assert (tmp_path / "demo" / "compare" / "results.png").stat().st_size > 0
    assert "pitch accuracy: the pretrained model" in out
    checkpoints = list((tmp_path / "demo" / "pretrain").glob("states-*.ckpt"))
    events = list((tmp_path / "demo" / "pretrain").glob("events.out.tfevents.*"))
    assert checkpoints and events and f"checkpoint: {checkpoints[0]}" in out
