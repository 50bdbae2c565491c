"""Probes in the layouts their publishers distribute, through run_downstream.py: above chance, metrics checked."""
import re

import numpy as np
import pytest
import torch

from conftest import run_script
from encodecmae_s3prl import synthetic
from encodecmae_s3prl.downstream_probes.common import ProbeDataError, chroma_accuracy, mean_average_precision

PROBES = {
    # probe: (dataset writer, metric, chance level)
    "nsynth_pitch": (synthetic.write_nsynth, "pitch_acc", 1 / 12),
    "gtzan_genre": (synthetic.write_gtzan, "acc", 1 / 3),
    "esc50": (synthetic.write_esc50, "acc", 1 / 4),
    "fsd50k": (synthetic.write_fsd50k, "mAP", 0.55),  # mAP of random scores with ~1.5 of 3 labels per clip
    "hear": (synthetic.write_hear_task, "acc", 1 / 4),
}


def _metric(output: str, split: str, name: str) -> float:
    values = re.findall(rf"^{split} {name}: ([0-9.]+)", output, flags=re.M)
    assert values, output[-3000:]
    return float(values[-1])


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_probe_learns_with_fbank_no_cmvn(tmp_path, probe):
    writer, metric, chance = PROBES[probe]
    root = writer(tmp_path / "data")
    exp = tmp_path / "exp"
    overrides = (f"config.downstream_expert.datarc.root={root},,config.downstream_expert.datarc.num_workers=0,,"
                 "config.downstream_expert.datarc.train_batch_size=8,,config.runner.total_steps=150,,"
                 "config.runner.log_step=50,,config.runner.eval_step=150,,config.runner.save_step=150")
    run_script("run_downstream.py", "-m", "train", "-u", "fbank_no_cmvn", "-d", probe, "-p", str(exp), "-o",
               overrides, cwd=tmp_path)
    out = run_script("run_downstream.py", "-m", "evaluate", "-e", str(exp / "states-150.ckpt"), cwd=tmp_path)
    value = _metric(out, "test", metric)
    assert value > min(0.95, chance + 0.3), (probe, value)
    if probe == "nsynth_pitch":
        assert _metric(out, "test", "chroma_acc") >= value


def test_mean_average_precision_matches_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    targets = (rng.random((40, 6)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # a class without positives is left out, as HEAR does
    scores = rng.random((40, 6)).astype(np.float32) + targets * 0.3
    present = targets.sum(0) > 0
    expected = average_precision_score(targets[:, present], scores[:, present], average="macro")
    assert mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets)) == pytest.approx(expected)


def test_chroma_accuracy_ignores_octaves():
    targets = torch.tensor([0, 12, 5, 7])
    logits = torch.nn.functional.one_hot(torch.tensor([12, 12, 17, 8]), 24).float()
    assert chroma_accuracy(logits, targets) == pytest.approx(0.75)


def test_missing_dataset_is_a_clear_error(tmp_path):
    from encodecmae_s3prl.downstream_probes.esc50.expert import DownstreamExpert

    config = {"datarc": {"root": str(tmp_path)}, "modelrc": {}}
    with pytest.raises(ProbeDataError, match="meta/esc50.csv"):
        DownstreamExpert(upstream_dim=8, downstream_expert=config, expdir=str(tmp_path))
    config["datarc"]["root"] = str(tmp_path / "nope")
    with pytest.raises(ProbeDataError, match="datarc.root"):
        DownstreamExpert(upstream_dim=8, downstream_expert=config, expdir=str(tmp_path))


def test_fold_rule_of_hear(tmp_path):
    from encodecmae_s3prl.downstream_probes.esc50.dataset import build_splits

    splits, classes = build_splits(synthetic.write_esc50(tmp_path / "esc"), "fold5")
    assert len(classes) == 4
    folds = {split: {int(c.path.split("/")[-1][0]) for c in clips} for split, clips in splits.items()}
    assert folds == {"test": {5}, "dev": {1}, "train": {2, 3, 4}}
