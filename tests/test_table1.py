"""The Table 1 command on stand-ins of the six HEAR tasks as HEAR distributes them (48000 Hz only, the real task
names, split modes and fold counts): a complete table beside the paper's, resumable after SIGKILL without
recomputing anything finished, and one-line errors for missing tasks."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from encodecmae_s3prl.evaluation import embedding_cache, mlp_grid, paper_table1, table1

from conftest import REPO
from synthetic_data import HEAR_TABLE1_TASKS, write_hear_table1_tasks

QUICK = ["--grid-size", "1", "--max-epochs", "3", "--hidden-dim", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def hear_tasks(tmp_path_factory):
    return write_hear_table1_tasks(tmp_path_factory.mktemp("hear"), clips=6, classes=3)


@pytest.fixture(scope="module")
def uninterrupted(hear_tasks, tiny_ckpt, tmp_path_factory):
    """One complete run: the reference table of the resume test."""
    out = tmp_path_factory.mktemp("table1")
    assert table1.run(["--tasks", str(hear_tasks), "--out", str(out),
                       "--upstreams", f"ECMAE-S={tiny_ckpt},fbank_no_cmvn", *QUICK]) == 0
    return out


def test_layout_as_distributed(hear_tasks):
    """What the stand-ins must share with the real tasks for the test to mean anything."""
    for folder, name, mode, folds, kind, evaluation, _ in HEAR_TABLE1_TASKS:
        meta = json.loads((hear_tasks / folder / "task_metadata.json").read_text())
        assert meta["task_name"] == name and meta["split_mode"] == mode and meta["evaluation"] == evaluation
        assert meta["prediction_type"] == kind
        assert len(meta["splits"]) == (folds or 3)
        assert [p.name for p in (hear_tasks / folder).iterdir() if p.is_dir()] == ["48000"]


@pytest.mark.slow
def test_complete_table_with_paper_values(uninterrupted, tiny_ckpt):
    for name in ("table1.md", "table1.csv", "table1.json", "table1.png"):
        assert (uninterrupted / name).stat().st_size > 0, name
    assert (uninterrupted / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads((uninterrupted / "table1.json").read_text())
    assert document["source"] == paper_table1.SOURCE
    rows = document["rows"]
    assert list(rows) == ["ECMAE-S", "fbank_no_cmvn"]
    folds = {"NS": 1, "GC": 10, "SC": 1, "ER": 5, "FSD": 1, "ESC": 5}
    for label, row in rows.items():
        for column, count in folds.items():
            cell = row[column]
            assert "error" not in cell and cell["folds"] == count, (label, column, cell)
            assert 0.0 <= cell["value"] <= (1.0 if column == "FSD" else 100.0)
            if label == "ECMAE-S":
                paper = paper_table1.ROWS["ECMAE-S"][1][column]
                assert cell["paper"] == paper and cell["diff"] == pytest.approx(cell["value"] - paper, abs=1e-5)
            else:  # the paper has no fbank row: nothing beside it
                assert cell["paper"] is None and cell["diff"] is None
    assert rows["ECMAE-S"]["paper_params"] == "51M"
    markdown = (uninterrupted / "table1.md").read_text()
    assert "| ECMAE-S | " in markdown and "(91.3, " in markdown and "(.420, " in markdown
    assert markdown.count(" ± ") >= 6  # the three k-fold columns of both rows
    header = (uninterrupted / "table1.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["upstream", "paper_row", "NS", "NS_std", "NS_paper", "NS_diff"]
    # every layer is cached, so --mode weighted reuses the caches
    caches = list((uninterrupted / "cache").glob("*.npy"))
    assert len(caches) == 12 and not list((uninterrupted / "cache").glob("*.parts"))


@pytest.mark.slow
def test_killed_after_first_cell_rerun_recomputes_nothing_finished(hear_tasks, tiny_ckpt, uninterrupted, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "out"
    args = ["--tasks", str(hear_tasks), "--out", str(out), "--upstreams", f"ECMAE-S={tiny_ckpt},fbank_no_cmvn", *QUICK]
    proc = subprocess.Popen([sys.executable, "-m", "encodecmae_s3prl.evaluation.table1", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(out.glob("cells/*/*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p.stem for p in out.glob("cells/*/*.json")]
    assert finished and len(finished) < 12, "the kill must land after the first cell and before the last"
    caches_done = len(list((out / "cache").glob("*.npy")))
    parts_only = [p for p in (out / "cache").glob("*.parts") if any(p.glob("*.npy"))
                  and not (out / "cache" / (p.name[:-len(".parts")] + ".npy")).is_file()]

    calls = {"embed": 0, "train": 0}
    real_embed, real_train = embedding_cache.embed_clips, mlp_grid.train_one

    def counting_embed(*a, **k):
        calls["embed"] += 1
        return real_embed(*a, **k)

    def counting_train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    monkeypatch.setattr(embedding_cache, "embed_clips", counting_embed)
    monkeypatch.setattr(mlp_grid, "train_one", counting_train)
    assert table1.run(args) == 0
    # one block per cache at this size: embedded again only where neither the cache nor its block was kept
    assert calls["embed"] == 12 - caches_done - len(parts_only)
    folds = {"NS": 1, "GC": 10, "SC": 1, "ER": 5, "FSD": 1, "ESC": 5}  # grid of 1 + the other folds
    assert calls["train"] == sum(folds[c] for c in folds) * 2 - sum(folds[c] for c in finished)
    assert json.loads((out / "table1.json").read_text()) == json.loads((uninterrupted / "table1.json").read_text())
    assert not list(out.rglob(".*.tmp"))


def test_missing_task_is_one_line_before_any_work(hear_tasks, tmp_path, capsys):
    import shutil

    tasks = tmp_path / "tasks"
    shutil.copytree(hear_tasks, tasks)
    shutil.rmtree(tasks / "fsd50k-v1.0-full")
    with pytest.raises(SystemExit) as exit_info:
        table1.run(["--tasks", str(tasks), "--out", str(tmp_path / "out"), "--upstreams", "fbank_no_cmvn", *QUICK])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: missing HEAR task folder(s) under ")
    assert "FSD = fsd50k" in err[0] and "--only" in err[0]
    assert not (tmp_path / "out" / "cache").exists()


def test_subset_and_5h_variant_noted(hear_tasks, tmp_path, capsys):
    import shutil

    tasks = tmp_path / "tasks"
    shutil.copytree(hear_tasks / "speech_commands-v0.0.2-full", tasks / "speech_commands-v0.0.2-5h")
    out = tmp_path / "out"
    assert table1.run(["--tasks", str(tasks), "--out", str(out), "--upstreams", "fbank_no_cmvn", "--only", "sc",
                       *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "embedding caches need up to" in printed
    document = json.loads((out / "table1.json").read_text())
    assert list(document["tasks"]) == ["SC"] and "5h, not the paper's full" in document["tasks"]["SC"]["note"]
    assert "5h, not the paper's full" in (out / "table1.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        table1.run(["--tasks", str(tasks), "--out", str(out), "--only", "NS,XX", *QUICK])
    assert exit_info.value.code == 2 and "'XX' is not a column of Table 1" in capsys.readouterr().err


def test_paper_rows_by_label_or_entry():
    assert paper_table1.paper_row("ECMAE-B") == "ECMAE-B"
    assert paper_table1.paper_row("ecmae-b+st") == "ECMAE-B+ST"
    assert paper_table1.paper_row("encodecmae_large_st", "encodecmae_large_st") == "ECMAE-L+ST"
    assert paper_table1.paper_row("mine", "encodecmae_local") is None
    assert paper_table1.paper_row("Fuse HuBERT") == "Fuse HuBERT"
    assert len(paper_table1.ROWS) == 13
    assert all(set(values) == set(paper_table1.COLUMNS) for _, values in paper_table1.ROWS.values())
    # large+ST has the higher six-task mean (accuracies in %, FSD x 100), as the paper's table gives
    mean = {r: sum(v if c != "FSD" else 100 * v for c, v in paper_table1.ROWS[r][1].items()) / 6
            for r in ("ECMAE-B+ST", "ECMAE-L+ST")}
    assert mean["ECMAE-L+ST"] == pytest.approx(77.65, abs=0.01) and mean["ECMAE-B+ST"] == pytest.approx(77.45,
                                                                                                       abs=0.01)
