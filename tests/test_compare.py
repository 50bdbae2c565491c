"""The side-by-side command: all four outputs, cached embeddings on rerun, failures in the table."""
import json

import numpy as np
import pytest

from encodecmae_s3prl import compare, synthetic
from encodecmae_s3prl.downstream_probes import hear_protocol


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    return {"nsynth_pitch": synthetic.write_nsynth(root / "ns"), "esc50": synthetic.write_esc50(root / "esc")}


def test_two_upstreams_two_probes_all_outputs_and_cache(tmp_path, datasets, monkeypatch):
    out = tmp_path / "cmp"
    args = ["--upstreams", "fbank_no_cmvn,fbank,missing=/no/such.ckpt", "--probes", "nsynth_pitch,esc50",
            "--data", f"nsynth_pitch={datasets['nsynth_pitch']}", "--data", f"esc50={datasets['esc50']}",
            "--out", str(out), "--grid-size", "2", "--max-epochs", "30", "--device", "cpu", "--mode", "weighted"]
    compare.main(args)
    for name in ("results.md", "results.csv", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"fbank_no_cmvn", "fbank", "missing"}
    assert results["fbank_no_cmvn"]["nsynth_pitch"]["pitch_acc"] > 0.5  # 12 pitches: chance 0.08
    assert results["fbank_no_cmvn"]["esc50"]["acc"] > 0.6  # 4 classes, mean over the 5 folds
    assert "error" in results["missing"]["esc50"] and "not found" in results["missing"]["esc50"]["error"]
    table = (out / "results.md").read_text()
    assert "error: CheckpointError" in table and "Learned layer weights" in table
    details = json.loads((out / "details.json").read_text())
    assert len(details["fbank_no_cmvn"]["esc50"]["folds"]) == 5

    # a rerun reuses every cached embedding: the upstream is never called again
    def no_upstream(*a, **k):
        raise AssertionError("embeddings recomputed")

    monkeypatch.setattr(hear_protocol, "embed_clips", no_upstream)
    compare.main(args)
    assert json.loads((out / "results.json").read_text())["fbank_no_cmvn"]["esc50"]["acc"] > 0.6


def test_weighted_sum_commutes_with_time_mean():
    """Why one cache serves both modes: mean_t(sum_l w_l h_lt) == sum_l w_l mean_t(h_lt)."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((5, 40, 8))
    w = np.exp(rng.standard_normal(5))
    w /= w.sum()
    np.testing.assert_allclose((w[:, None, None] * h).sum(0).mean(0), (w[:, None] * h.mean(1)).sum(0))
