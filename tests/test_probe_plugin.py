"""Adding a probe is one folder, ``dataset.py`` + ``config.yaml``, and no other file edited: a folder listed in
ENCODECMAE_PROBE_PATH is found by the registry, runs under the HEAR protocol, and is s3prl's ``-d NAME`` through
the shared DownstreamExpert."""
import importlib
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from encodecmae_s3prl import cli, registry
from encodecmae_s3prl.demo_data import write_esc50
from encodecmae_s3prl.downstream_probes.task import ProbeDataError
from encodecmae_s3prl.errors import quiet_when_main_leaves
from encodecmae_s3prl.evaluation import embedding_cache, mlp_grid, task_table

from conftest import run_script

REPO = Path(__file__).resolve().parent.parent
NAME = "tones_plugin"  # the new probe: a copy of esc50's two files under another name, outside the repository



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_esc50(tmp_path_factory.mktemp("data") / "esc", per_fold=3)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    folder = tmp_path / "my_probes" / NAME
    folder.mkdir(parents=True)
    for name in ("dataset.py", "config.yaml"):
        shutil.copy(REPO / "downstream_probes" / "esc50" / name, folder / name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "dataset.py"]
    # a list like PATH; a missing entry is skipped
    monkeypatch.setenv(registry.PROBE_PATH_ENV, os.pathsep.join([str(tmp_path / "missing"), str(folder.parent)]))
    yield folder
    for module in [m for m in sys.modules if NAME in m]:  # the next test's folder is another tmp_path
        del sys.modules[module]


def test_the_registry_finds_the_folder(plugin):
    assert NAME in registry.probe_names() and registry.probe_folders()[NAME] == plugin
    assert cli.downstream_config(NAME) == plugin / "config.yaml"  # run_downstream.py -d NAME without -c
    assert NAME in task_table.task_names()
    module = importlib.import_module(f"encodecmae_s3prl.downstream_probes.{NAME}.dataset")
    assert Path(module.__file__) == plugin / "dataset.py"
    # a listed folder never takes over a name of ours (a probe, or a module such as task)
    for taken in ("esc50", "task"):
        shutil.copytree(plugin, plugin.parent / taken)
    assert registry.probe_folders()["esc50"] == REPO / "downstream_probes" / "esc50"
    assert "task" not in registry.probe_names()


def test_without_the_folder_listed_the_probe_is_unknown(tmp_path, monkeypatch, data):
    monkeypatch.delenv(registry.PROBE_PATH_ENV, raising=False)
    assert NAME not in registry.probe_names()
    with pytest.raises(ProbeDataError, match=f"unknown probe '{NAME}'"):
        task_table.load_task(NAME, data)


def test_it_runs_under_the_hear_protocol(plugin, data, tmp_path):
    """Same clips, classes, folds and metrics as the probe it was copied from, under its own name (its own embedding
    cache), and the HEAR protocol learns it."""
    assert task_table.task_folds(NAME, data) == task_table.task_folds("esc50", data) == [f"fold{k}"
                                                                                               for k in range(1, 6)]
    task, original = task_table.load_task(NAME, data, "fold2"), task_table.load_task("esc50", data, "fold2")
    assert task.name == NAME
    assert (task.splits, task.classes, task.multilabel, task.metrics) == \
        (original.splits, original.classes, original.multilabel, original.metrics)
    from s3prl import hub

    upstream = hub.fbank_no_cmvn().eval()
    data_ = embedding_cache.embed_splits(lambda: upstream, "fbank_no_cmvn", task, tmp_path / "cache")
    assert [p.name.split("-")[1] for p in (tmp_path / "cache").glob("*.npy")] == [NAME]
    best = mlp_grid.grid_search(task, data_, grid_size=1, max_epochs=60, hidden_dim=64)
    assert best["test"]["acc"] > 0.5  # 4 classes: chance 0.25


def test_it_is_s3prls_downstream_through_the_shared_expert(plugin, data, tmp_path):
    """What s3prl's runner does with -d NAME: import s3prl.downstream.NAME.expert, build DownstreamExpert from the
    config and args, then train and log through its interface."""
    expert_module = importlib.import_module(f"s3prl.downstream.{NAME}.expert")
    assert expert_module is importlib.import_module("encodecmae_s3prl.downstream_probes.expert")
    config = yaml.safe_load((plugin / "config.yaml").read_text())
    config["downstream_expert"]["datarc"].update(root=str(data), num_workers=0, train_batch_size=4)
    expert = expert_module.DownstreamExpert(upstream_dim=8, upstream_rate=160, **config, downstream=NAME,
                                            expdir=str(tmp_path), mode="train")
    assert expert.task.name == NAME and len(expert.task.classes) == 4
    loader = expert.get_dataloader("train")
    assert loader.worker_init_fn is quiet_when_main_leaves  # Ctrl-C: no worker traceback under the one line
    wavs, targets, names = next(iter(loader))
    assert len(wavs) == 4 and targets.dtype == torch.long
    records = defaultdict(list)
    features = [torch.randn(int(np.ceil(len(w) / 160)), 8) for w in wavs]
    loss = expert("train", features, targets, names, records)
    loss.backward()
    assert expert.model.mlp[0].weight.grad is not None

    class Logger:
        scalars = {}

        def add_scalar(self, key, value, global_step):
            self.scalars[key] = value

    logger = Logger()
    expert("dev", features, targets, names, records)
    assert expert.log_records("dev", records, logger, global_step=1) == ["dev-best.ckpt"]
    assert set(logger.scalars) == {f"{NAME}/dev-acc", f"{NAME}/dev-loss"}
    assert "step 1 dev acc=" in (tmp_path / "log.log").read_text()


@pytest.mark.slow
def test_run_downstream_trains_and_evaluates_it(plugin, data, tmp_path):
    """``run_downstream.py -d NAME`` in a fresh process: the folder's config.yaml, s3prl's runner, test metrics."""
    overrides = (f"config.downstream_expert.datarc.root={data},,config.downstream_expert.datarc.num_workers=0,,"
                 "config.downstream_expert.datarc.train_batch_size=8,,config.runner.total_steps=20,,"
                 "config.runner.log_step=10,,config.runner.eval_step=20,,config.runner.save_step=20")
    out = run_script("run_downstream.py", "-m", "train", "-u", "fbank_no_cmvn", "-d", NAME, "-p",
                     str(tmp_path / "exp"), "-o", overrides, cwd=tmp_path)
    assert "test acc: " in out
    assert "test acc=" in (tmp_path / "exp" / "log.log").read_text()
