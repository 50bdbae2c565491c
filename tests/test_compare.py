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


def test_hear_api_for_our_upstream_and_an_s3prl_one(tmp_path):
    import torch

    from encodecmae_s3prl import hear_api
    from dataclasses import asdict

    from encodecmae_s3prl.upstream.checkpoint import atomic_save
    from encodecmae_s3prl.upstream.loading import CHECKPOINT_KEY, build_model, model_config_from_yaml

    model = build_model(model_config_from_yaml({"model": "tiny"}), seed=0)
    path = tmp_path / "tiny.ckpt"
    atomic_save({CHECKPOINT_KEY: {"config": asdict(model.config), "state_dict": model.state_dict()}}, path)
    for hear_model, size in ((hear_api.load_model(str(path), device="cpu"), 64),
                             (hear_api.load_model("", upstream="fbank_no_cmvn", device="cpu"), None)):
        audio = torch.randn(3, 16000) * 0.1
        scene = hear_api.get_scene_embeddings(audio, hear_model)
        frames, stamps = hear_api.get_timestamp_embeddings(audio, hear_model)
        assert hear_model.sample_rate == 16000
        assert scene.shape == (3, hear_model.scene_embedding_size)
        assert frames.shape[0] == 3 and frames.shape[2] == hear_model.timestamp_embedding_size
        assert stamps.shape == frames.shape[:2] and torch.all(stamps[:, 1:] > stamps[:, :-1])
        if size:
            assert hear_model.scene_embedding_size == size
            assert abs(float(stamps[0, 1] - stamps[0, 0]) - 213 / 16) < 1e-3  # ms per frame
