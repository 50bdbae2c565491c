"""Probes in the layouts their publishers distribute: through run_downstream.py and in HEAR-cached mode,
above chance with fbank_no_cmvn and with encodec_features; metrics against scikit-learn / by hand; bad input."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from encodecmae_s3prl.demo_data import write_esc50, write_nsynth, write_tiny_encodecmae_checkpoint
from encodecmae_s3prl.downstream_probes.metrics import chroma_accuracy, mean_average_precision
from encodecmae_s3prl.downstream_probes.task import ProbeDataError, ProbeTask, fold_splits
from encodecmae_s3prl.evaluation import embedding_cache, mlp_grid, task_table

from conftest import run_script, side_by_side
from synthetic_data import write_fsd50k, write_gtzan, write_hear_task


def _write_hear_multilabel_kfold(root):
    return write_hear_task(root, prediction_type="multilabel", folds=4, per_split=(10,))


PROBES = {
    # probe: (dataset writer, metric, chance level)
    "nsynth_pitch": (write_nsynth, "pitch_acc", 1 / 12),
    "gtzan_genre": (write_gtzan, "acc", 1 / 3),
    "esc50": (write_esc50, "acc", 1 / 4),
    "fsd50k": (write_fsd50k, "mAP", None),  # None: chance mAP computed from the test labels
    "hear": (_write_hear_multilabel_kfold, "mAP", None),
}


def _chance_map(targets: np.ndarray) -> float:
    """Expected AP of a random ranking is the class's prevalence: chance mAP = mean prevalence."""
    present = targets.sum(0) > 0
    return float(targets[:, present].mean(0).mean())


def _metric(output: str, split: str, name: str) -> float:
    values = re.findall(rf"^{split} {name}: ([0-9.]+)", output, flags=re.M)
    assert values, output[-3000:]
    return float(values[-1])


def _train_through_run_downstream(folder: Path, probe: str) -> tuple[Path, Path, str]:
    """``run_downstream.py -m train`` on fbank_no_cmvn for ``probe``'s synthetic data in ``folder``; nsynth_pitch
    then once through ``-m evaluate`` in a fresh process (args restored from the checkpoint), from another folder,
    by absolute path. Returns the data root, the experiment folder and the output that reports the test split."""
    writer = PROBES[probe][0]
    root = writer(folder / "data")
    exp = folder / "exp"
    overrides = (f"config.downstream_expert.datarc.root={root},,config.downstream_expert.datarc.num_workers=0,,"
                 "config.downstream_expert.datarc.train_batch_size=8,,config.runner.total_steps=150,,"
                 "config.runner.log_step=50,,config.runner.eval_step=150,,config.runner.save_step=150")
    where = ["-n", "ns"] if probe == "nsynth_pitch" else ["-p", str(exp)]  # -n: an experiment folder relative to cwd
    out = run_script("run_downstream.py", "-m", "train", "-u", "fbank_no_cmvn", "-d", probe, *where, "-o",
                     overrides, cwd=folder, threads=1)
    if probe == "nsynth_pitch":
        exp = folder / "result" / "downstream" / "ns"
        (folder / "elsewhere").mkdir()
        out = run_script("run_downstream.py", "-m", "evaluate", "-e", str(exp / "states-150.ckpt"),
                         cwd=folder / "elsewhere", threads=1)
    return root, exp, out


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory) -> dict[str, tuple[Path, Path, Path, str]]:
    """Every probe trained through run_downstream.py, two at a time on one core each (fresh interpreters that
    spend a good part of their time importing s3prl)."""
    folders = {probe: tmp_path_factory.mktemp(probe) for probe in sorted(PROBES)}
    runs = side_by_side(lambda probe: _train_through_run_downstream(folders[probe], probe), folders)
    return {probe: (folders[probe], *run) for probe, run in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("probe", sorted(PROBES))
def test_probe_learns_through_run_downstream(probe_runs, probe):
    """s3prl's own runner and Featurizer on fbank_no_cmvn; the train run evaluates dev and test at its end."""
    folder, root, exp, out = probe_runs[probe]
    _, metric, chance = PROBES[probe]
    if probe == "nsynth_pitch":
        assert not any((folder / "elsewhere").iterdir())  # the evaluation went next to its checkpoint
        assert "step 150 test" in (exp / "log.log").read_text().splitlines()[-1]  # at the checkpoint's step
    value = _metric(out, "test", metric)
    if chance is None:
        task = task_table.load_task(probe, root, task_table.task_folds(probe, root)[0])
        chance = _chance_map(embedding_cache._targets(task, task.splits["test"]))
    assert value > min(0.95, chance + 0.3), (probe, value, chance)
    if probe == "nsynth_pitch":
        assert _metric(out, "test", "chroma_acc") >= value
    assert (exp / "log.log").read_text().count(f"test {metric}=") >= 1


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_data")
    return {"nsynth_pitch": write_nsynth(root / "nsynth"),
            "gtzan_genre": write_gtzan(root / "gtzan", seconds=1.0),
            # 24 test clips for esc50 and 12 for hear: with 12 and 6 a 2-configuration search swings with its seed
            "esc50": write_esc50(root / "esc50", per_fold=6),
            "fsd50k": write_fsd50k(root / "fsd50k"),
            "hear": write_hear_task(root / "hear", per_split=(32, 12, 12))}


def test_probes_beat_chance_with_encodec_features_hear_cached(tmp_path, probe_data):
    """The paper's EC baseline (a random-init EnCodec whose standardisation and codebooks are fitted to a small
    corpus, as offline checkpoints carry it) on every probe, HEAR protocol on cached embeddings (first fold)."""
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401

    ckpt = write_tiny_encodecmae_checkpoint(tmp_path / "tiny.ckpt")
    upstream = hub.encodec_features(ckpt=str(ckpt)).eval()
    results = {}
    for probe, root in probe_data.items():
        task = task_table.load_task(probe, root, task_table.task_folds(probe, root)[0])
        data = embedding_cache.embed_splits(lambda: upstream, f"ec|{ckpt}", task, tmp_path / "cache")
        assert data["train"]["x"].shape[1:] == (1, 128)  # EC: one layer, EnCodec's 128 channels
        best = mlp_grid.grid_search(task, data, grid_size=2, max_epochs=150, hidden_dim=256, seed=1)
        metric = task.metrics[0]
        chance = _chance_map(data["test"]["y"]) if task.multilabel else 1 / len(set(data["train"]["y"].tolist()))
        results[probe] = (best["test"][metric], chance)
    for probe, (value, chance) in results.items():
        assert value > chance + 0.15, (probe, results)


def test_hear_protocol_learned_layer_weights_and_last_layer():
    """Weighted mode learns a softmax over layers (reported), last mode reads the last layer only; both learn."""
    task = ProbeTask("toy", {}, ["a", "b", "c", "d"], False, ("acc",))
    rng = np.random.default_rng(0)

    def layered(n, informative_layer):  # 3 layers of embeddings; one carries the label, the others are noise
        y = rng.integers(0, 4, n)
        x = rng.normal(0, 1, (n, 3, 4))
        x[:, informative_layer] = np.eye(4)[y] * 2 + rng.normal(0, 0.5, (n, 4))
        return {"x": x.astype(np.float32), "y": y}

    data = {split: layered(n, 1) for split, n in (("train", 200), ("dev", 100), ("test", 100))}
    weighted = mlp_grid.grid_search(task, data, weighted=True, grid_size=2, max_epochs=150, hidden_dim=64)
    assert len(weighted["layer_weights"]) == 3 and sum(weighted["layer_weights"]) == pytest.approx(1.0)
    assert weighted["layer_weights"][1] > 0.4  # from 1/3 towards the informative layer
    assert weighted["test"]["acc"] > 0.8  # 4 classes
    last = mlp_grid.grid_search(task, data, weighted=False, grid_size=2, max_epochs=150, hidden_dim=64)
    assert last["layer_weights"] is None and last["test"]["acc"] < 0.5  # the last layer is noise here
    data = {split: layered(n, 2) for split, n in (("train", 200), ("dev", 100), ("test", 100))}
    last = mlp_grid.grid_search(task, data, weighted=False, grid_size=2, max_epochs=150, hidden_dim=64)
    assert last["test"]["acc"] > 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_average_precision_matches_sklearn(seed):
    import warnings

    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    targets = (rng.random((40, 6)) < 0.3).astype(np.float32)
    targets[0, :5] = 1
    targets[:, 5] = 0  # a class without positives counts as AP 0, as in the HEAR kit (scikit-learn's macro AP)
    scores = np.round(rng.random((40, 6)) + targets * 0.3, 1)  # rounding makes ties, which sklearn groups
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found in y_true"
        expected = average_precision_score(targets, scores, average="macro")
    assert mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets)) == pytest.approx(expected)


def test_mean_average_precision_by_hand():
    # class 0: positives ranked 1st and 3rd -> AP = (1/1 + 2/3) / 2; class 1: positive ranked 2nd -> 1/2
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.7, 0.8]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)


def test_chroma_accuracy_ignores_octaves():
    targets = torch.tensor([0, 12, 5, 7])
    logits = torch.nn.functional.one_hot(torch.tensor([12, 12, 17, 8]), 24).float()
    assert chroma_accuracy(logits, targets) == pytest.approx(0.75)  # 12~0, 12=12, 17~5 right; 8 vs 7 wrong


def test_folds_follow_hear_rule_in_natural_order(tmp_path):
    from encodecmae_s3prl.downstream_probes.esc50.dataset import load_task

    task = load_task(write_esc50(tmp_path / "esc"), "fold5")
    assert len(task.classes) == 4
    folds = {split: {int(c.path.split("/")[-1][0]) for c in clips} for split, clips in task.splits.items()}
    assert folds == {"test": {5}, "dev": {1}, "train": {2, 3, 4}}
    by_fold = {f"fold{k}": [k] for k in range(1, 11)}  # GTZAN's 10 folds: fold9 is validated by fold10
    assert fold_splits(by_fold, "fold9")["dev"] == [10] and fold_splits(by_fold, "fold10")["dev"] == [1]


def test_folds_come_from_the_dataset_files(tmp_path, probe_data):
    assert task_table.task_folds("esc50", probe_data["esc50"]) == [f"fold{k}" for k in range(1, 6)]
    assert task_table.task_folds("gtzan_genre", probe_data["gtzan_genre"])[-1] == "fold10"
    assert task_table.task_folds("nsynth_pitch", probe_data["nsynth_pitch"]) == [None]
    kfold = _write_hear_multilabel_kfold(tmp_path / "kfold")
    assert task_table.task_folds("hear", kfold) == ["fold00", "fold01", "fold02", "fold03"]
    task = task_table.load_task("hear", kfold, "fold03")
    assert task.multilabel and task.metrics == ("mAP",)
    assert {c.path.split("/")[-2] for c in task.splits["dev"]} == {"fold00"}
    nsynth = task_table.load_task("nsynth_pitch", probe_data["nsynth_pitch"])
    assert len(nsynth.classes) == 88 and nsynth.metrics == ("pitch_acc", "chroma_acc")
    assert {c.target[0] for c in nsynth.splits["test"]} == set(range(60 - 21, 72 - 21))


def _expert(probe, root, tmp_path):
    """The probe's s3prl DownstreamExpert as s3prl's runner builds it (``downstream``: its ``-d``)."""
    import importlib

    expert = importlib.import_module(f"encodecmae_s3prl.downstream_probes.{probe}.expert").DownstreamExpert
    return expert(upstream_dim=8, downstream_expert={"datarc": {"root": str(root)}, "modelrc": {}},
                  expdir=str(tmp_path), downstream=probe)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ProbeDataError, match="meta/esc50.csv"):
        _expert("esc50", tmp_path, tmp_path)
    with pytest.raises(ProbeDataError, match="datarc.root"):
        _expert("esc50", tmp_path / "nope", tmp_path)
    with pytest.raises(ProbeDataError, match="nsynth-train/examples.json"):
        _expert("nsynth_pitch", tmp_path, tmp_path)
    with pytest.raises(ProbeDataError, match="task_metadata.json"):
        _expert("hear", tmp_path, tmp_path)


def test_missing_audio_names_the_file(tmp_path):
    root = write_esc50(tmp_path / "esc")
    gone = sorted((root / "audio").iterdir())[3]
    gone.unlink()
    with pytest.raises(ProbeDataError, match=re.escape(str(gone))):
        _expert("esc50", root, tmp_path)
    with pytest.raises(ProbeDataError, match=re.escape(str(gone))):
        task_table.load_task("esc50", root, "fold1")


def test_malformed_metadata_names_file_and_fix(tmp_path):
    hear = write_hear_task(tmp_path / "hear")
    labels = json.loads((hear / "train.json").read_text())
    labels[next(iter(labels))] = ["not_a_class"]
    (hear / "train.json").write_text(json.dumps(labels))
    with pytest.raises(ProbeDataError, match=r"train\.json.*not_a_class.*labelvocabulary\.csv"):
        _expert("hear", hear, tmp_path)
    meta = json.loads((hear / "task_metadata.json").read_text())
    (hear / "task_metadata.json").write_text(json.dumps({**meta, "embedding_type": "event"}))
    with pytest.raises(ProbeDataError, match="scene"):
        _expert("hear", hear, tmp_path)

    fsd = write_fsd50k(tmp_path / "fsd")
    (fsd / "FSD50K.ground_truth" / "vocabulary.csv").write_text("0,Bark,/m/0\n1,Siren,/m/1\n")  # Rain dropped
    with pytest.raises(ProbeDataError, match=r"dev\.csv line \d+: label\(s\) \['Rain'\]"):
        _expert("fsd50k", fsd, tmp_path)

    nsynth = write_nsynth(tmp_path / "ns", pitches=[60])
    (nsynth / "nsynth-valid" / "examples.json").write_text('{"a": {"velocity": 100}}')
    with pytest.raises(ProbeDataError, match=r"nsynth-valid/examples.json.*'pitch'"):
        _expert("nsynth_pitch", nsynth, tmp_path)

    gtzan = write_gtzan(tmp_path / "gtzan", per_genre=10)
    with pytest.raises(ProbeDataError, match="datarc.test_fold 'fold11' is not one of the dataset's folds.*fold10"):
        task_table.load_task("gtzan_genre", gtzan, "fold11")
    for path in sorted((gtzan / "genres" / "metal").iterdir())[:3]:
        path.unlink()
    with pytest.raises(ProbeDataError, match=r"genres/metal: 7 audio file"):
        task_table.load_task("gtzan_genre", gtzan, "fold1")
