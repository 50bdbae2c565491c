"""The EnCodecMAE paper's Table 1 in one command, on the HEAR 2021 tasks as they are distributed.

    python -m encodecmae_s3prl.evaluation.table1 --tasks /data/hear --out table1/
    python -m encodecmae_s3prl.evaluation.table1 --tasks /data/hear --out table1/ \\
        --upstreams ECMAE-B=encodecmae_base,hubert,wav2vec2,mine=result/pretrain/x/states-500000.ckpt

``--tasks`` holds HEAR task folders as hear-preprocess writes them (found by their ``task_metadata.json``, at
any rate present; HEAR ships 48000): NSynth pitch 50 h, GTZAN genre, Speech Commands v2, CREMA-D, FSD50K and
ESC-50. Each upstream x task cell runs the HEAR 2021 protocol as the organisers' kit (heareval 2021.1.3) does
(``embedding_cache`` and ``mlp_grid``): the time-mean of the last layer, its MLP grid and rules; our
EnCodecMAE upstreams read 24 kHz (resampled from the nearest rate present), other upstreams their own rate.

Upstreams use ``compare``'s specs: an s3prl hub entry (``hubert``), ``LABEL=ENTRY`` (``ECMAE-B=encodecmae_base``),
``ENTRY=CKPT``, ``LABEL=ENTRY=CKPT``, or ``LABEL=CKPT`` (``encodecmae_local`` on a checkpoint). A row labelled
(or built from a hub entry) as one of the paper's rows gets the paper's value and our difference beside each cell.

Long and resumable: embeddings are cached per upstream x task (every layer; ``--mode weighted`` reuses them) in
``OUT/cache``, built in blocks that are kept as they finish; each finished cell is saved in ``OUT/cells`` as it
finishes. Killed at any point and rerun with the same command, nothing finished is computed again and the table
is the same. Writes ``table1.md``, ``table1.csv``, ``table1.json`` and ``table1.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from encodecmae_s3prl.errors import UserError, user_errors
from encodecmae_s3prl.evaluation import compare, embedding_cache, mlp_grid, task_table
from encodecmae_s3prl.evaluation.native_rate import encode_native, upstream_rate
from encodecmae_s3prl.evaluation.paper_table1 import (
    COLUMNS,
    DEFAULT_UPSTREAMS,
    PERCENT,
    ROWS,
    SOURCE,
    paper_row,
    paper_value,
)
from encodecmae_s3prl.upstream.atomic import atomic_write, atomic_write_text

CELL_FORMAT = 1  # part of every finished cell's fingerprint


class Table1Error(UserError, ValueError):
    """A task folder that is missing or malformed, or an option that cannot work."""


@dataclass(frozen=True)
class PaperTask:
    """One column of Table 1: the HEAR task (``task_name`` in its metadata), the variant the paper ran and the
    one accepted in its place, and the metric the paper reports (our name for it)."""

    column: str
    task_name: str
    mode: str
    fallback_mode: str | None
    metric: str


TASKS = (
    PaperTask("NS", "nsynth_pitch", "50h", "5h", "pitch_acc"),
    PaperTask("GC", "gtzan_genre", "full", None, "acc"),
    PaperTask("SC", "speech_commands", "full", "5h", "acc"),
    PaperTask("ER", "tfds_crema_d", "full", None, "acc"),
    PaperTask("FSD", "fsd50k", "full", None, "mAP"),
    PaperTask("ESC", "esc50", "full", None, "acc"),
)
TASK_BY_COLUMN = {t.column: t for t in TASKS}


@dataclass(frozen=True)
class FoundTask:
    spec: PaperTask
    folder: Path
    mode: str
    note: str = ""  # what differs from the paper's variant, said in the table
    probe_task: object = None  # the task as the HEAR protocol reads it (its first test fold)


def _mode(folder: Path, meta: dict) -> str:
    """A HEAR task folder is named ``<task_name>-<version>-<mode>`` (``nsynth_pitch-v2.2.3-50h``); the metadata's
    ``mode`` wins when it has one."""
    if meta.get("mode"):
        return str(meta["mode"])
    name = folder.name
    return name.rsplit("-", 1)[1] if name.startswith(meta.get("task_name", "")) and "-" in name else "full"


def discover(root: Path) -> Dict[str, List[tuple]]:
    """task_name -> [(folder, mode, metadata)] for every task folder under ``root`` (``root`` itself, its children
    and grandchildren; audio folders are not searched)."""
    if not root.is_dir():
        raise Table1Error(f"--tasks {root} is not a folder; give the folder holding the HEAR task folders "
                          f"(e.g. nsynth_pitch-v2.2.3-50h/, each with task_metadata.json)")
    found: Dict[str, List[tuple]] = {}
    frontier = [root]
    for _ in range(3):
        deeper = []
        for folder in frontier:
            meta_path = folder / "task_metadata.json"
            if meta_path.is_file():
                try:
                    meta = json.loads(meta_path.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise Table1Error(f"{meta_path} is not valid JSON ({err}); re-run hear-preprocess for "
                                      f"this task") from None
                found.setdefault(str(meta.get("task_name", folder.name)), []).append(
                    (folder, _mode(folder, meta), meta))
                continue
            deeper += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.isdigit()
                             and not p.name.startswith("."))
        frontier = deeper
    return found


def choose_tasks(root: Path, columns: Sequence[str]) -> Dict[str, FoundTask]:
    """The task folder of each column; every missing one named at once, before any work."""
    found = discover(root)
    chosen, missing = {}, []
    for column in columns:
        spec = TASK_BY_COLUMN[column]
        candidates = found.get(spec.task_name, [])
        by_mode = {mode: folder for folder, mode, _ in sorted(candidates, key=lambda c: str(c[0]))}
        if spec.mode in by_mode:
            chosen[column] = FoundTask(spec, by_mode[spec.mode], spec.mode)
        elif spec.fallback_mode in by_mode:
            chosen[column] = FoundTask(spec, by_mode[spec.fallback_mode], spec.fallback_mode,
                                       f"{spec.task_name} {spec.fallback_mode}, not the paper's {spec.mode}")
        elif candidates and spec.fallback_mode is None:
            folder, mode, _ = candidates[0]
            chosen[column] = FoundTask(spec, folder, mode)
        else:
            wanted = spec.mode + (f" (or {spec.fallback_mode})" if spec.fallback_mode else "")
            have = f"; found {spec.task_name} only as {', '.join(sorted(by_mode))}" if by_mode else ""
            missing.append(f"{column} = {spec.task_name} {wanted}{have}")
    if missing:
        raise Table1Error(f"missing HEAR task folder(s) under {root}: {'; '.join(missing)}. Download HEAR's 48000 Hz "
                          f"tasks there (folders like nsynth_pitch-v2.2.3-50h/ with task_metadata.json), or run a "
                          f"subset with --only {','.join(c for c in columns if c in chosen) or 'NS,GC'}")
    for column, task in list(chosen.items()):
        probe_task = task_table.load_task("hear", task.folder, task_table.task_folds("hear", task.folder)[0])
        if task.spec.metric not in probe_task.metrics:
            raise Table1Error(f"{task.folder}/task_metadata.json: {column} needs {task.spec.metric}, the task "
                              f"evaluates {', '.join(probe_task.metrics)}; is this the HEAR {task.spec.task_name} "
                              f"task?")
        chosen[column] = replace(task, probe_task=probe_task)
    return chosen


@dataclass(frozen=True)
class Row:
    label: str
    entry: str
    ckpt: str | None
    key: str
    paper: str | None  # the paper's row it is compared with


def parse_rows(specs: Sequence[str], device: str = "cpu", precision: str = "fp32") -> List[Row]:
    """The rows of ``--upstreams``; each keyed by what its transformer runs as on ``device`` at ``precision``, so
    cells and caches of another precision are never reused."""
    rows = []
    for spec in specs:
        label, entry, ckpt = compare.parse_upstream(spec)
        key = compare.upstream_key(label, entry, ckpt, compare.ran_as(entry, device, precision))
        rows.append(Row(label, entry, ckpt, key, paper_row(label, entry)))
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise Table1Error(f"two upstreams share a label in {labels}: name them LABEL=ENTRY or LABEL=ENTRY=CKPT")
    return rows


def _fingerprint(row: Row, task: FoundTask, settings: dict) -> str:
    meta = (task.folder / "task_metadata.json").read_bytes()
    text = json.dumps([CELL_FORMAT, embedding_cache.CACHE_FORMAT, row.key, str(task.folder.resolve()),
                       hashlib.sha1(meta).hexdigest(), settings], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in label)


def cell_path(out: Path, row: Row, column: str) -> Path:
    return out / "cells" / _safe(row.label) / f"{column}.json"


def load_cell(path: Path, fingerprint: str) -> dict | None:
    """A finished cell of this very run (same upstream, task folder and settings), else None."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cell if cell.get("fingerprint") == fingerprint and "result" in cell else None


def _shown(column: str, value: float) -> float:
    """Our value in the paper's units: % for accuracies, mAP as a fraction."""
    return 100.0 * value if column in PERCENT else value


def _fmt(column: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if column in PERCENT else f"{value:.3f}".replace("0.", ".", 1)


def summarise(rows: Sequence[Row], tasks: Dict[str, FoundTask], cells: Dict[tuple, dict]) -> dict:
    """The table as data: {row label: {"paper_row", "params", column: {"value", "std", "folds", "paper", "diff"} or
    {"error"}}} in the paper's units."""
    table = {}
    for row in rows:
        line = {"entry": row.entry, "ckpt": row.ckpt, "paper_row": row.paper,
                "paper_params": ROWS[row.paper][0] if row.paper in ROWS else None}
        for column, task in tasks.items():
            cell = cells.get((row.label, column))
            if cell is None:
                continue
            if "error" in cell:
                line[column] = {"error": cell["error"]}
                continue
            result, metric = cell["result"], task.spec.metric
            folds = [f["test"][metric] for f in result["folds"]]
            value = _shown(column, result[metric])
            paper = paper_value(row.paper, column)
            line[column] = {"value": round(value, 6), "std": round(_shown(column, result["std"][metric]), 6),
                            "folds": len(folds), "paper": paper,
                            "diff": None if paper is None else round(value - paper, 6),
                            "params": result["params"], "task": str(task.folder), "mode": task.mode}
        table[row.label] = line
    return table


def render_markdown(table: dict, tasks: Dict[str, FoundTask]) -> str:
    columns = list(tasks)
    lines = ["| upstream | " + " | ".join(f"{c} (paper, diff)" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, line in table.items():
        cells = []
        for column in columns:
            cell = line.get(column)
            if cell is None:
                cells.append("")
            elif "error" in cell:
                cells.append("error: " + cell["error"].replace("|", "/").replace("\n", " ")[:120])
            else:
                text = _fmt(column, cell["value"])
                if cell["folds"] > 1:
                    text += " ± " + _fmt(column, cell["std"])
                if cell["paper"] is not None:
                    text += f" ({_fmt(column, cell['paper'])}, {cell['diff']:+.1f})" if column in PERCENT else \
                        f" ({_fmt(column, cell['paper'])}, {cell['diff']:+.3f})"
                cells.append(text)
        name = label if line["paper_row"] in (None, label) else f"{label} (paper: {line['paper_row']})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = [f"- {c}: {COLUMNS[c]}; {t.spec.task_name} {t.mode} at {t.folder}" + (f" ({t.note})" if t.note else "")
             for c, t in tasks.items()]
    return "\n".join(lines + ["", "Ours, ± std over test folds (k-fold tasks), then the paper's value and our "
                              "difference (ours - paper) where the paper has the row. Paper: " + SOURCE + ".",
                              *notes]) + "\n"


def write_outputs(out: Path, table: dict, tasks: Dict[str, FoundTask], precisions: Dict[str, str] | None = None
                  ) -> str:
    """table1.md / .csv / .json / .png, each written whole or not at all; ``precisions``: what each row's
    transformer ran as (recorded in table1.json)."""
    columns = list(tasks)
    markdown = render_markdown(table, tasks)
    header = ["upstream", "paper_row"] + [f"{c}{s}" for c in columns for s in ("", "_std", "_paper", "_diff")]
    body = []
    for label, line in table.items():
        values = [label, line["paper_row"] or ""]
        for column in columns:
            cell = line.get(column) or {}
            values += (["error", "", "", ""] if "error" in cell else
                       [cell.get(k, "") if cell.get(k) is not None else "" for k in ("value", "std", "paper", "diff")])
        body.append(values)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header] + body)
    document = {"source": SOURCE, "units": {c: ("%" if c in PERCENT else "mAP") for c in columns},
                "tasks": {c: {"task": t.spec.task_name, "mode": t.mode, "folder": str(t.folder), "note": t.note}
                          for c, t in tasks.items()},
                "rows": table, "precision": precisions or {}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table1.md", markdown)
    atomic_write_text(out / "table1.csv", text.getvalue())
    atomic_write_text(out / "table1.json", json.dumps(document, indent=1) + "\n")
    _plot(out / "table1.png", table, columns)
    return markdown


def _plot(path: Path, table: dict, columns: Sequence[str]) -> None:
    """One panel per task: each row's value (error bar: fold std) beside the paper's (hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        x = np.arange(len(labels))
        ours = [table[u].get(column, {}).get("value", np.nan) for u in labels]
        std = [table[u].get(column, {}).get("std", 0.0) or 0.0 for u in labels]
        paper = [np.nan if table[u].get(column, {}).get("paper") is None else table[u][column]["paper"]
                 for u in labels]
        ax.bar(x - 0.2, ours, 0.4, yerr=std, capsize=2, label="ours")
        ax.bar(x + 0.2, paper, 0.4, hatch="//", alpha=0.6, label="paper")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{column}: {COLUMNS[column].split(' (')[0]}", fontsize=8)
        ax.set_ylim(0, 100 if column in PERCENT else 1)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()

    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=90))
    plt.close(fig)


def _task_size(task: FoundTask) -> tuple[int, float]:
    """(clips, seconds of audio) of a task, from its split files and ``sample_duration``."""
    meta = json.loads((task.folder / "task_metadata.json").read_text())
    clips = sum(len(json.loads((task.folder / f"{s}.json").read_text())) for s in meta["splits"])
    return clips, clips * float(meta.get("sample_duration") or 1.0)


def _cache_shape(row: Row, out: Path, upstream: compare.LazyUpstream) -> tuple[int, int]:
    """(layers, dim) of an upstream's cache rows, remembered in OUT/shapes.json (loads the upstream once)."""
    import torch

    shapes_path = out / "shapes.json"
    shapes = json.loads(shapes_path.read_text()) if shapes_path.is_file() else {}
    if row.key not in shapes:
        model = upstream()
        rate = upstream_rate(model)
        with torch.no_grad():
            hidden, _ = encode_native(model, [torch.zeros(rate, device=upstream.device)])
        shapes[row.key] = [len(hidden), int(hidden[0].shape[-1])]
        atomic_write_text(shapes_path, json.dumps(shapes, indent=1))
    return tuple(shapes[row.key])


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def plan_disk(rows: Sequence[Row], tasks: Dict[str, FoundTask], sizes: dict, out: Path, pending: set,
              upstreams: Dict[str, compare.LazyUpstream]) -> None:
    """Print the disk the embedding caches need before any work; refuse to start when the folder lacks it."""
    need = 0
    for row in rows:
        columns = [c for c in tasks if (row.label, c) in pending
                   and not embedding_cache.cache_path(out / "cache", row.key, tasks[c].probe_task).is_file()]
        if not columns:
            continue
        try:
            layers, dim = _cache_shape(row, out, upstreams[row.label])
        except Exception as err:  # the row fails in its cells, with this error
            print(f"[table1] {row.label}: cannot load ({type(err).__name__}: {str(err)[:200]})", file=sys.stderr)
            continue
        finally:
            upstreams[row.label].model = None  # probed only; loaded again when its cells run
        need += sum(sizes[c][0] * layers * dim * 4 for c in columns)
    free = shutil.disk_usage(out / "cache" if (out / "cache").is_dir() else out).free  # the caches' own disk
    print(f"[table1] embedding caches need up to {_gib(need)} in {out / 'cache'} ({_gib(free)} free)", flush=True)
    if need > free:
        raise Table1Error(f"{out} has {_gib(free)} free but the embedding caches need {_gib(need)}: free space "
                          f"there or give another --out")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", required=True, type=Path, help="folder holding the HEAR task folders")
    parser.add_argument("--out", required=True, type=Path, help="where the table, cells and caches go")
    parser.add_argument("--upstreams", default=",".join(DEFAULT_UPSTREAMS),
                        help="comma-separated specs as compare's (default: the paper's rows EC, ECMAE-R, ECMAE-S, "
                             "ECMAE-B, ECMAE-B+ST, ECMAE-L, ECMAE-L+ST on our hub entries)")
    parser.add_argument("--only", default=None, help="a subset of the columns, e.g. NS,SC (default: all six)")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--mode", choices=["last", "weighted"], default="last",
                        help="last layer (the paper's protocol) or learned softmax layer weights (ours)")
    parser.add_argument("--grid-size", type=int, default=8, help="HEAR configurations tried (of 16); HEAR: 8")
    parser.add_argument("--max-epochs", type=int, default=mlp_grid.MAX_EPOCHS, help="HEAR: 500")
    parser.add_argument("--hidden-dim", type=int, default=mlp_grid.HIDDEN_DIM, help="HEAR: 1024")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per upstream call while embedding")
    from encodecmae_s3prl.settings import UpstreamSettings, add_precision_flag, default_device

    add_precision_flag(parser)
    args = parser.parse_args(argv)

    device = args.device or default_device()
    if not 1 <= args.grid_size <= 16:
        parser.error(f"--grid-size must be in 1..16 (HEAR's grid has 16 configurations), got {args.grid_size}")
    if args.max_epochs < mlp_grid.CHECK_VAL_EVERY or args.hidden_dim < 1 or args.batch_size < 1:
        parser.error(f"--max-epochs must be >= {mlp_grid.CHECK_VAL_EVERY}, --hidden-dim and --batch-size "
                     f"positive")
    columns = list(TASK_BY_COLUMN)
    if args.only:
        columns = [c.strip().upper() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in columns if c not in TASK_BY_COLUMN]
        if unknown:
            parser.error(f"--only {unknown[0]!r} is not a column of Table 1; give some of {', '.join(TASK_BY_COLUMN)}")
    tasks = choose_tasks(args.tasks, columns)
    rows = parse_rows([s for s in args.upstreams.split(",") if s.strip()], device, args.precision)
    precisions = {row.label: row.key.rsplit("|", 1)[1] for row in rows}
    print(f"[table1] precision {args.precision}: " + ", ".join(f"{k} {v}" for k, v in precisions.items()), flush=True)
    settings = {"mode": args.mode, "grid_size": args.grid_size, "max_epochs": args.max_epochs,
                "hidden_dim": args.hidden_dim}
    out, cache = args.out, args.out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    sizes = {c: _task_size(t) for c, t in tasks.items()}
    for column, task in tasks.items():
        clips, seconds = sizes[column]
        print(f"[table1] {column}: {task.spec.task_name} {task.mode}, {clips} clips, {seconds / 3600:.1f} h of audio, "
              f"{task.folder}" + (f" (note: {task.note})" if task.note else ""), flush=True)

    cells: Dict[tuple, dict] = {}
    fingerprints = {(r.label, c): _fingerprint(r, t, settings) for r in rows for c, t in tasks.items()}
    for row in rows:
        for column in tasks:
            cell = load_cell(cell_path(out, row, column), fingerprints[(row.label, column)])
            if cell is not None:
                cells[(row.label, column)] = cell
    pending = {key for key in fingerprints if key not in cells}
    # ENCODECMAE_TRUST_CHECKPOINT, ENCODEC_CKPT, --precision
    upstream_settings = UpstreamSettings.from_environment(precision=args.precision)
    upstreams = {row.label: compare.LazyUpstream(row.entry, row.ckpt, device, upstream_settings) for row in rows}
    if cells:
        print(f"[table1] {len(cells)} of {len(fingerprints)} cells already finished in {out / 'cells'}: reused")
    if pending:
        plan_disk(rows, tasks, sizes, out, pending, upstreams)

    from tqdm import tqdm

    failed = 0
    with tqdm(total=len(pending), desc="table1 cells", unit="cell", dynamic_ncols=True) as bar:
        for row in rows:
            upstream = upstreams[row.label]
            for column, task in tasks.items():
                if (row.label, column) not in pending:
                    continue
                bar.set_postfix_str(f"{row.label} / {column}")
                start = time.perf_counter()
                try:
                    result = compare.evaluate(upstream, row.key, "hear", str(task.folder), cache,
                                              args.mode == "weighted", args.grid_size, args.max_epochs, device,
                                              args.hidden_dim, batch_size=args.batch_size)
                except Exception as err:  # the table shows it; the other cells still run; a rerun retries it
                    if upstream.error is None:
                        traceback.print_exc()
                    failed += 1
                    cells[(row.label, column)] = {"error": f"{type(err).__name__}: {err}"[:300]}
                else:
                    cell = {"fingerprint": fingerprints[(row.label, column)], "upstream": row.label,
                            "column": column, "result": result,
                            "seconds": round(time.perf_counter() - start, 1)}
                    atomic_write_text(cell_path(out, row, column), json.dumps(cell, default=str) + "\n")
                    cells[(row.label, column)] = cell
                bar.update(1)
            upstream.model = None  # free it before the next upstream loads
    markdown = write_outputs(out, summarise(rows, tasks, cells), tasks, precisions)
    print(markdown)
    if failed:
        print(f"table1: {failed} of {len(fingerprints)} cell(s) failed (listed in {out / 'table1.md'}); rerun the "
              f"same command to retry them", file=sys.stderr)
        return 1
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The command: exit 0 when every cell has its value, 1 when some failed, 2 for a usage error (one
    ``error:`` line), 130 when interrupted (finished cells are kept; the same command continues)."""
    try:
        with user_errors():
            return main(argv)
    except KeyboardInterrupt:
        print("\ntable1: interrupted; finished cells and embedding blocks are kept, rerun the same command to "
              "continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
