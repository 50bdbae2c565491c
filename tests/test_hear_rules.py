"""The HEAR protocol's rules, each pinned to what heareval 2021.1.3 (the organisers' kit) does for scene tasks:
its grid and grid sampling, MLP layout and initialisation, training order, validation cadence and early
stopping, selection on the first fold, mAP, fold std; and the 24 kHz input of our upstream in the HEAR paths.
``encodecmae_s3prl.evaluation.hear_kit_check`` checks the whole against the kit itself (docs/evaluation.md,
"HEAR kit agreement")."""
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from encodecmae_s3prl.demo_data import sound_class, write_tiny_encodecmae_checkpoint, write_wav
from encodecmae_s3prl.downstream_probes.clips import read_clip
from encodecmae_s3prl.downstream_probes.metrics import fold_std, mean_average_precision
from encodecmae_s3prl.downstream_probes.mlp import PooledMLP
from encodecmae_s3prl.downstream_probes.task import Clip, ProbeTask
from encodecmae_s3prl.evaluation import embedding_cache, mlp_grid, task_table
from encodecmae_s3prl.evaluation.native_rate import encode_native, upstream_rate

from synthetic_data import write_hear_task


def _toy(n_train=120, n_dev=40, n_test=40, classes=3, dim=8, seed=0, multilabel=False):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim))

    def split(n):
        y = rng.integers(0, classes, n)
        x = centres[y] + rng.normal(0, 1.0, (n, dim))
        if multilabel:
            return {"x": x[:, None].astype(np.float32), "y": np.eye(classes, dtype=np.float32)[y]}
        return {"x": x[:, None].astype(np.float32), "y": y.astype(np.int64)}

    task = ProbeTask("toy", {}, [f"c{i}" for i in range(classes)], multilabel,
                                   ("mAP",) if multilabel else ("acc",))
    return task, {"train": split(n_train), "dev": split(n_dev), "test": split(n_test)}


def test_grid_and_its_sampling_are_the_kits():
    """PARAM_GRID through scikit-learn's ParameterGrid (keys sorted, last fastest), shuffled by `random` after
    seed_everything(42), the first 8 tried; everything else in the grid is a single value."""
    from sklearn.model_selection import ParameterGrid

    kit_grid = {"hidden_layers": [1, 2], "hidden_dim": [1024], "dropout": [0.1], "lr": [3.2e-3, 1e-3, 3.2e-4, 1e-4],
                "patience": [20], "max_epochs": [500], "check_val_every_n_epoch": [3], "batch_size": [1024],
                "hidden_norm": ["BatchNorm1d"], "norm_after_activation": [False], "embedding_norm": ["Identity"],
                "initialization": ["xavier_uniform", "xavier_normal"], "optim": ["Adam"]}
    state = random.getstate()
    try:
        confs = list(ParameterGrid(kit_grid))
        random.seed(42)
        random.shuffle(confs)
    finally:
        random.setstate(state)
    expected = [{"hidden_layers": c["hidden_layers"], "init": c["initialization"], "lr": c["lr"]} for c in confs]
    assert mlp_grid.grid_configs(8) == expected[:8]
    assert mlp_grid.grid_configs(16) == expected
    assert [c for c in ParameterGrid(kit_grid)][0]["initialization"] == "xavier_uniform"
    assert (mlp_grid.HIDDEN_DIM, mlp_grid.DROPOUT, mlp_grid.BATCH_SIZE) == (1024, 0.1, 1024)
    assert (mlp_grid.MAX_EPOCHS, mlp_grid.CHECK_VAL_EVERY, mlp_grid.PATIENCE) == (500, 3, 20)
    assert mlp_grid.KIT_SEED == 42


def _kit_mlp(nfeatures, nlabels, hidden_layers, init, hidden_dim):
    """heareval's FullyConnectedPrediction, transcribed: Linear, init(weight, gain of the previous activation),
    BatchNorm1d, Dropout, ReLU per hidden layer; the projection likewise."""
    modules, curdim, last = [], nfeatures, "linear"
    for _ in range(hidden_layers):
        linear = nn.Linear(curdim, hidden_dim)
        init(linear.weight, gain=nn.init.calculate_gain(last))
        modules += [linear, nn.BatchNorm1d(hidden_dim), nn.Dropout(0.1), nn.ReLU()]
        curdim, last = hidden_dim, "relu"
    projection = nn.Linear(curdim, nlabels)
    init(projection.weight, gain=nn.init.calculate_gain(last))
    return nn.Sequential(*modules, projection)


@pytest.mark.parametrize("hidden_layers,init", [(1, "xavier_uniform"), (2, "xavier_normal")])
def test_mlp_layout_and_initialisation_are_the_kits(hidden_layers, init):
    """Same modules in the same order, same parameters from the same seed: gain 1 after the input, sqrt(2) after
    a ReLU, PyTorch's default biases (not zeros), drawn in the kit's order."""
    torch.manual_seed(3)
    ours = mlp_grid.LayerWeightedMLP(1, 40, 5, hidden_layers, init, weighted=False, hidden_dim=64).mlp
    torch.manual_seed(3)
    kit = _kit_mlp(40, 5, hidden_layers, getattr(nn.init, init + "_"), 64)
    assert [type(m) for m in ours] == [type(m) for m in kit]
    assert all(m.p == 0.1 for m in ours if isinstance(m, nn.Dropout))
    for (name, a), (_, b) in zip(ours.state_dict().items(), kit.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert float(ours[0].bias.detach().abs().max()) > 0  # PyTorch's default bias, not zeros
    # the gains, seen in the weights' spread: xavier std = gain * sqrt(2 / (fan_in + fan_out))
    big = mlp_grid.LayerWeightedMLP(1, 512, 512, 2, "xavier_normal", weighted=False, hidden_dim=512).mlp
    linears = [m for m in big if isinstance(m, nn.Linear)]
    stds = [float(m.weight.detach().std()) / math.sqrt(2 / sum(m.weight.shape)) for m in linears]
    assert stds == pytest.approx([1.0, math.sqrt(2), math.sqrt(2)], rel=0.02)


def test_one_mlp_for_the_runner_probes_and_the_hear_protocol():
    """The HEAR protocol's MLP is the runner probes' PooledMLP with the kit's initialisation. Without one (the
    runner probes) it keeps PyTorch's default: the same parameters as its layers built alone from the same seed.
    Its Dropout before the ReLU (the kit's order) gives exactly what a ReLU before the Dropout gives, in training
    too: a ReLU commutes with the dropout's positive scale, and the mask is the same draw."""
    assert isinstance(mlp_grid.LayerWeightedMLP(3, 40, 5, 2, "xavier_uniform", weighted=True, hidden_dim=64),
                      PooledMLP)
    torch.manual_seed(0)
    runner = PooledMLP(40, 5, hidden_dim=64, hidden_layers=2, dropout=0.1)
    torch.manual_seed(0)
    alone = [nn.Linear(40, 64), nn.BatchNorm1d(64), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 5)]
    with_params = [m for m in runner.mlp if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    for ours, built in zip(with_params, alone, strict=True):
        for a, b in zip(ours.state_dict().values(), built.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    relu_first = nn.Sequential(*alone[:2], nn.ReLU(), nn.Dropout(0.1), *alone[2:4], nn.ReLU(), nn.Dropout(0.1),
                               alone[4]).train()
    x = torch.randn(32, 40)
    torch.manual_seed(1)
    ours = runner.train()(x)
    torch.manual_seed(1)
    assert torch.equal(ours, relu_first(x))


def test_training_order_batches_validation_and_early_stopping(monkeypatch):
    """Batches of 1024 in the data's order every epoch (the kit never reshuffles), a last batch of one clip
    skipped; validation after every 3rd epoch; an equal score is no improvement (ModelCheckpoint and
    EarlyStopping: strict, min_delta 0), so with scores 0.1, 0.5, 0.5, ... the second validation (epoch 5)
    stays best and training stops 20 validations later (patience 20)."""
    task, data = _toy(n_train=2049, dim=4)
    first_rows, passes, scores = [], [], iter([0.1] + [0.5] * 100)
    forward = mlp_grid.LayerWeightedMLP.forward

    def spy(self, x):
        if self.training:
            first_rows.append(x[0, -1].clone())
        return forward(self, x)

    monkeypatch.setattr(mlp_grid.LayerWeightedMLP, "forward", spy)
    monkeypatch.setattr(mlp_grid, "_loader_pass", lambda: passes.append(1))
    monkeypatch.setattr(mlp_grid, "_score", lambda task, logits, y: {"acc": next(scores)})
    result = mlp_grid.train_one(task, data, mlp_grid.GRID[0], weighted=False, max_epochs=500, seed=0,
                                     hidden_dim=16)
    validations = 2 + 20
    epochs = 3 * validations
    assert result["epoch"] == 5 and result["valid"] == 0.5
    assert len(passes) == epochs + validations  # one DataLoader pass per epoch and per validation
    assert len(first_rows) == 2 * epochs  # rows 0-1023 and 1024-2047; the lone 2049th clip is skipped
    x = torch.from_numpy(data["train"]["x"][:, -1])
    for epoch in range(epochs):
        torch.testing.assert_close(first_rows[2 * epoch], x[0])
        torch.testing.assert_close(first_rows[2 * epoch + 1], x[1024])
    with pytest.raises(ValueError, match="at least 3"):
        mlp_grid.train_one(task, data, mlp_grid.GRID[0], weighted=False, max_epochs=2)


def test_selection_on_the_first_fold_reused_on_the_others(monkeypatch):
    """k-fold: the grid runs on the first fold only; the best configuration (the first of equal validation
    scores, as the kit's stable sort) trains on every other fold; mean and std (ddof 1) over folds."""
    configs = mlp_grid.grid_configs(8)
    valid = [0.1, 0.2, 0.9, 0.3, 0.9, 0.4, 0.5, 0.6]  # configurations 2 and 4 tie: 2 was tried first
    calls = []

    def fake_train(task, data, params, weighted, max_epochs, seed, device, hidden_dim):
        calls.append((data["fold"], dict(params)))
        return {"valid": valid[configs.index(params)] if data["fold"] == "f0" else 0.0,
                "test": {"acc": {"f0": 0.6, "f1": 0.7, "f2": 0.8}[data["fold"]]}, "layer_weights": None,
                "epoch": 5}

    monkeypatch.setattr(mlp_grid, "train_one", fake_train)
    loaded = []

    def load(fold):
        loaded.append(fold)
        return None, {"fold": fold}

    out = mlp_grid.evaluate_folds(["f0", "f1", "f2"], load, grid_size=8)
    assert loaded == ["f0", "f1", "f2"]
    assert [c for f, c in calls if f == "f0"] == configs
    assert out["params"] == configs[2]
    assert [(f, c) for f, c in calls if f != "f0"] == [("f1", configs[2]), ("f2", configs[2])]
    assert [f["params"] for f in out["folds"]] == [configs[2]] * 3
    assert out["acc"] == pytest.approx(0.7) and out["std"]["acc"] == pytest.approx(0.1)  # ddof 1
    assert [g["params"] for g in out["grid"]] == configs and [g["valid"] for g in out["grid"]] == valid


def test_one_seeded_stream_per_task_leaves_the_callers_alone():
    task, data = _toy()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = mlp_grid.grid_search(task, data, grid_size=2, max_epochs=30, hidden_dim=32)
    assert torch.equal(torch.get_rng_state(), before)
    again = mlp_grid.grid_search(task, data, grid_size=2, max_epochs=30, hidden_dim=32)
    assert first["grid"] == again["grid"] and first["test"] == again["test"]
    other = mlp_grid.grid_search(task, data, grid_size=2, max_epochs=30, hidden_dim=32, seed=7)
    assert other["grid"] != first["grid"]  # another seed draws other configurations


def test_map_counts_classes_without_positives_as_zero_like_the_kit():
    """heareval's MeanAveragePrecision is scikit-learn's macro average_precision_score over every class."""
    import warnings

    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    targets = (rng.random((30, 5)) < 0.4).astype(np.float32)
    targets[:, 3] = 0
    scores = np.round(rng.random((30, 5)), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = average_precision_score(targets, scores, average="macro")
    value = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert value == pytest.approx(expected)
    present = [0, 1, 2, 4]
    left_out = average_precision_score(targets[:, present], scores[:, present], average="macro")
    assert value == pytest.approx(left_out * 4 / 5)  # the absent class weighs in as AP 0


def test_fold_std_is_the_kits_ddof_1():
    assert fold_std([0.5, 0.7, 0.9]) == pytest.approx(0.2)
    assert fold_std([0.5, 0.7, 0.9]) == pytest.approx(float(np.std([0.5, 0.7, 0.9], ddof=1)))
    assert fold_std([0.8]) == 0.0


def test_hear_task_clips_come_in_the_kits_order(tmp_path):
    """heareval writes each split's embeddings in the order random.Random(0) shuffles its files, splits in
    metadata order, and trains in that order: the hear probe lists clips the same way."""
    root = write_hear_task(tmp_path / "task", folds=4, per_split=(5,))
    meta = json.loads((root / "task_metadata.json").read_text())
    prng, expected = random.Random(0), {}
    for split in meta["splits"]:
        names = list(json.loads((root / f"{split}.json").read_text()))
        prng.shuffle(names)
        expected[split] = names
    task = task_table.load_task("hear", root, "fold01")
    names = {split: [c.path.rsplit("/", 1)[1] for c in clips] for split, clips in task.splits.items()}
    assert names["test"] == expected["fold01"] and names["dev"] == expected["fold02"]
    assert names["train"] == expected["fold00"] + expected["fold03"]  # train folds in sorted order


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401

    ckpt = write_tiny_encodecmae_checkpoint(tmp_path_factory.mktemp("ckpt") / "states-1.ckpt")
    return ckpt, hub.encodecmae_local(ckpt=str(ckpt)).eval()


def test_our_upstream_is_fed_24k_directly_in_the_hear_paths(tmp_path, ours):
    """HEAR paths: 24 kHz audio straight into model.encode (the s3prl UpstreamExpert would resample 16k -> 24k);
    a 24000/ copy of a HEAR clip is read as it is, a 16 kHz file once and resampled straight to 24 kHz; pooling
    uses each clip's own 75 Hz frames, so a clip embeds the same alone or beside a longer one."""
    from encodecmae_s3prl.evaluation import hear_api

    ckpt, upstream = ours
    assert upstream_rate(upstream) == 24_000
    rng = np.random.default_rng(0)
    wav24 = {"a": sound_class(1, 0.8, 24_000, rng), "b": sound_class(2, 1.5, 24_000, rng)}
    for name, wav in wav24.items():
        write_wav(tmp_path / "task" / "24000" / "train" / f"{name}.wav", wav, 24_000)
        resampled = read_clip(tmp_path / "task" / "24000" / "train" / f"{name}.wav", rate=16_000)
        write_wav(tmp_path / "task" / "16000" / "train" / f"{name}.wav", resampled.numpy(), 16_000)
    write_wav(tmp_path / "only16k.wav", sound_class(3, 0.5, 16_000, rng), 16_000)
    clips = [Clip(str(tmp_path / "task" / "16000" / "train" / "a.wav"), (0,)),
             Clip(str(tmp_path / "task" / "16000" / "train" / "b.wav"), (1,)),
             Clip(str(tmp_path / "only16k.wav"), (0,))]
    pooled = embedding_cache.embed_clips(upstream, clips, batch_size=3)
    with torch.no_grad():
        for i, name in enumerate(("a", "b")):
            alone = upstream.model.encode(read_clip(tmp_path / "task" / "24000" / "train" / f"{name}.wav",
                                                    rate=24_000)[None])
            expected = torch.stack([h[0].mean(0) for h in alone.hidden_states]).numpy()
            np.testing.assert_allclose(pooled[i], expected, rtol=1e-4, atol=1e-5)
        straight = read_clip(tmp_path / "only16k.wav", rate=24_000)
        alone = upstream.model.encode(straight[None])
        np.testing.assert_allclose(pooled[2], torch.stack([h[0].mean(0) for h in alone.hidden_states]).numpy(),
                                   rtol=1e-4, atol=1e-5)
        # the HEAR API with sample_rate=24000: fed to model.encode as it is, 75 frames/s
        model = hear_api.load_model(str(ckpt), device="cpu", sample_rate=24_000, precision="fp32")
        assert model.sample_rate == 24_000
        audio = torch.from_numpy(np.stack([wav24["b"][:24_000], wav24["b"][12_000:]]))
        frames, stamps = hear_api.get_timestamp_embeddings(audio, model)
        torch.testing.assert_close(frames, upstream.model.encode(audio).hidden_states[-1])
        assert frames.shape[1] == 75 and float(stamps[0, 1] - stamps[0, 0]) == pytest.approx(1000 / 75, abs=1e-3)
        via_s3prl = upstream([read_clip(tmp_path / "task" / "24000" / "train" / "b.wav", rate=16_000)])
        assert not torch.allclose(via_s3prl["hidden_states"][-1].mean(1)[0],
                                  torch.from_numpy(pooled[1][-1]), atol=1e-4)  # 16 kHz input loses 8-12 kHz
        # another s3prl upstream stays at 16 kHz
        hidden, frames16 = encode_native(hear_api.load_model("fbank_no_cmvn", device="cpu").upstream,
                                         [torch.zeros(16_000), torch.zeros(8_000)])
        assert frames16.tolist()[1] < frames16.tolist()[0] <= hidden[-1].shape[1]


def test_hear_api_model_file_path_names_any_upstream(tmp_path, ours):
    """What the validator passes as --model: a checkpoint file, a hub entry name, ENTRY:CKPT; clear errors."""
    from encodecmae_s3prl.evaluation import hear_api

    ckpt, _ = ours
    assert hear_api.resolve(str(ckpt)) == ("encodecmae_local", str(ckpt))
    assert hear_api.resolve("fbank_no_cmvn") == ("fbank_no_cmvn", None)
    assert hear_api.resolve(f"encodecmae_random:{ckpt}") == ("encodecmae_random", str(ckpt))
    assert hear_api.resolve("") == ("encodecmae", None)
    assert hear_api.resolve("", upstream="fbank_no_cmvn") == ("fbank_no_cmvn", None)
    assert hear_api.load_model("fbank_no_cmvn", device="cpu").sample_rate == 16_000
    assert hear_api.load_model(f"encodecmae_random:{ckpt}", device="cpu").sample_rate == 48_000
    random_mae = hear_api.load_model(f"encodecmae_random:{ckpt}", device="cpu", sample_rate=24_000)
    audio = torch.from_numpy(np.stack([sound_class(c, 1.0, 24_000, np.random.default_rng(c))
                                       for c in range(4)]))
    scene = hear_api.get_scene_embeddings(audio, random_mae)
    assert float(scene.std(dim=0).mean()) > 1e-3  # a fitted codec: clips differ
    with pytest.raises(ValueError, match="neither a file nor an s3prl hub entry"):
        hear_api.load_model("no_such_upstream")
    with pytest.raises(ValueError, match="not an s3prl hub entry"):
        hear_api.load_model(f"no_such_entry:{ckpt}")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        hear_api.load_model(f"encodecmae_random:{tmp_path / 'missing.ckpt'}")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        hear_api.load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        hear_api.load_model("hubert_local")
