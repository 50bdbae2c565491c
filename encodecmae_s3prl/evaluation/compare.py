"""Side by side: upstreams x probes under the HEAR protocol, as a Table-1-style table.

    python -m encodecmae_s3prl.evaluation.compare \\
        --upstreams encodecmae_base,hubert,wav2vec2,fbank_no_cmvn,mine=ckpt.pt \\
        --probes nsynth_pitch,esc50 --data nsynth_pitch=/data/nsynth --data esc50=/data/ESC-50 --out cmp/

``label=CKPT`` runs ``encodecmae_local`` on CKPT; ``ENTRY=CKPT`` with a hub entry name runs that entry
(``hubert_local=CKPT``, ``wav2vec2_local=CKPT``, ``encodec_features=CKPT`` for a checkpoint's codec);
``LABEL=ENTRY=CKPT`` names it (two checkpoints of one entry side by side). Writes ``results.md``,
``results.csv``, ``results.json`` (``{upstream: {probe: {metric: value}}}``) and ``results.png`` into
``--out``; embeddings are cached in ``--out/cache`` so reruns only retrain the small MLPs. A failing upstream or probe
is reported in the table, the others still run. ``--mode weighted`` learns s3prl-style softmax
layer weights and reports them.

Probes: ours (``nsynth_pitch``, ``gtzan_genre``, ``esc50``, ``fsd50k``, ``hear``, and any probe folder in
``ENCODECMAE_PROBE_PATH``) and s3prl's recipes
``speech_commands`` (``--data speech_commands=TRAIN_ROOT,TEST_ROOT``, Speech Commands v0.01) and
``emotion`` (``--data emotion=IEMOCAP_ROOT``, with s3prl's ``meta_data/`` inside, or ``ROOT,META_DATA``).
k-fold probes run every test fold as the HEAR kit does (heareval 2021.1.3): the MLP configuration is selected
on the first fold and reused on the others; tables show the mean (± std over folds, ddof 1, in results.md).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from encodecmae_s3prl.downstream_probes.metrics import fold_std
from encodecmae_s3prl.evaluation.embedding_cache import embed_splits
from encodecmae_s3prl.evaluation.mlp_grid import CHECK_VAL_EVERY, HIDDEN_DIM, MAX_EPOCHS, evaluate_folds
from encodecmae_s3prl.evaluation.task_table import load_task, task_folds, task_names
from encodecmae_s3prl.registry import load_hub_upstream
from encodecmae_s3prl.settings import UpstreamSettings, add_precision_flag, default_device
from encodecmae_s3prl.upstream.atomic import atomic_write, atomic_write_text

PAPER_NAMES = {"encodec_features": "EC", "encodecmae_random": "ECMAE-R", "fbank_no_cmvn": "fbank (no CMVN)"}


def parse_upstream(spec: str) -> tuple[str, str, str | None]:
    """'name' -> (label, hub entry, None); 'LABEL=ENTRY' -> that hub entry under another name (ECMAE-B=encodecmae_base);
    'ENTRY=CKPT' -> that hub entry on CKPT (hubert_local=..., or encodec_features=... / encodecmae_random=... to take a
    checkpoint's codec); 'LABEL=ENTRY=CKPT' -> ENTRY on CKPT under another name (two hubert_local checkpoints side by
    side); 'label=CKPT' -> encodecmae_local."""
    if "=" not in spec:
        return spec, spec, None
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401

    label, ckpt = spec.split("=", 1)
    if "=" in ckpt and hasattr(hub, ckpt.split("=", 1)[0]):
        entry, ckpt = ckpt.split("=", 1)
        return label, entry, ckpt
    if hasattr(hub, ckpt) and not Path(ckpt).expanduser().exists():
        return label, ckpt, None
    return label, (label if hasattr(hub, label) else "encodecmae_local"), ckpt


def upstream_key(label: str, entry: str, ckpt: str | None, precision: str = "fp32") -> str:
    """What an embedding cache is valid for: the entry, the checkpoint file's identity (path, size, mtime), so a
    retrained checkpoint under the same label never reuses stale embeddings, and what the transformer ran as
    (``ran_as``), so a rerun at another precision never mixes with this one."""
    key = f"{label}|{entry}"
    if ckpt:
        path = Path(ckpt).expanduser().resolve()
        stat = path.stat() if path.is_file() else None
        key += f"|{path}|{stat.st_size}|{stat.st_mtime_ns}" if stat else f"|{path}"
    return f"{key}|{precision}"


def ran_as(entry: str, device: str, precision: str) -> str:
    """What an entry's transformer runs as: our entries as ``precision`` resolves on ``device`` (bf16 or fp32),
    s3prl's own upstreams float32 (as they are built)."""
    from encodecmae_s3prl.registry import upstream_entries
    from encodecmae_s3prl.upstream.precision import resolved_name

    return resolved_name(device, precision) if entry in upstream_entries() else "fp32"


class LazyUpstream:
    """Builds the upstream on first use: a rerun whose embeddings are all cached never loads the model."""

    def __init__(self, entry: str, ckpt: str | None, device: str, settings: UpstreamSettings | None = None):
        self.entry, self.ckpt, self.device, self.settings = entry, ckpt, device, settings
        self.model, self.error = None, None

    def __call__(self):
        if self.error is not None:
            raise self.error
        if self.model is None:
            try:
                self.model = load_hub_upstream(self.entry, self.ckpt, self.device, self.settings)
            except Exception as err:
                self.error = err
                raise
        return self.model


NOT_METRICS = ("folds", "layer_weights", "std", "params", "grid", "precision")  # what a cell holds besides metrics


def evaluate(get_upstream, key: str, probe: str, root: str, cache: Path, weighted: bool, grid_size: int,
             max_epochs: int, device: str, hidden_dim: int = HIDDEN_DIM, batch_size: int = 8) -> dict:
    """Metrics averaged over the probe's test folds (HEAR: configuration selected on the first fold, reused on
    the others), their std, the selected configuration, per-fold values and learned layer weights."""
    def load(fold):
        task = load_task(probe, root, fold)
        return task, embed_splits(get_upstream, key, task, cache, device, batch_size,
                                  layers="all" if weighted else "last")

    return evaluate_folds(task_folds(probe, root), load, weighted=weighted, grid_size=grid_size,
                          max_epochs=max_epochs, device=device, hidden_dim=hidden_dim)


def write_outputs(results: Dict[str, Dict[str, dict]], probes: Sequence[str], out: Path,
                  stem: str = "results") -> Path:
    """``<stem>.md`` / ``.csv`` / ``.json`` / ``.png`` and ``details.json`` (``<stem>.details.json`` for another
    stem) in ``out``; returns the markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {u: {p: ({**{k: v for k, v in r.items() if k not in NOT_METRICS},
                        **{f"{k}_std": v for k, v in (r.get("std") or {}).items()},
                        **({"precision": r["precision"]} if "precision" in r else {})} if "error" not in r
                       else {"error": r["error"]}) for p, r in row.items()} for u, row in results.items()}
    details = "details.json" if stem == "results" else f"{stem}.details.json"
    atomic_write_text(out / f"{stem}.json", json.dumps(summary, indent=2))
    atomic_write_text(out / details, json.dumps(results, indent=2, default=str))
    columns = [(p, m) for p in probes for m in _metrics_of(results, p)]
    header = ["upstream"] + [f"{p} {m}" for p, m in columns]
    rows, csv_rows = [], []
    for upstream, row in results.items():
        cells = [PAPER_NAMES.get(upstream, upstream)]
        stds = []
        for probe, metric in columns:
            result = row.get(probe, {})
            cells.append(f"error: {result['error']}" if "error" in result else
                         f"{result[metric]:.3f}" if metric in result else "")
            std = (result.get("std") or {}).get(metric) if "error" not in result else None
            stds.append("" if std is None else f"{std:.3f}")
        rows.append(cells)
        csv_rows.append([c for pair in zip(cells[1:], stds, strict=True) for c in pair])
    table = io.StringIO(newline="")
    csv.writer(table).writerows([["upstream"] + [f"{p} {m}{s}" for p, m in columns for s in ("", " std")]]
                                + [[cells[0], *values] for cells, values in zip(rows, csv_rows, strict=True)])
    atomic_write_text(out / f"{stem}.csv", table.getvalue())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # markdown: mean ± std over test folds where there are folds
    for upstream, cells in zip(results, rows, strict=True):
        shown = cells[:1]
        for (probe, metric), cell in zip(columns, cells[1:], strict=True):
            folds = results[upstream].get(probe, {}).get("folds") or []
            if len(folds) > 1 and metric in folds[0]["test"]:
                std = fold_std([f["test"][metric] for f in folds])
                cell = f"{cell} ± {std:.3f}"
            shown.append(cell.replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(shown) + " |")
    folded = sorted({f"{p} ({len(r['folds'])} folds)" for row in results.values() for p, r in row.items()
                     if len(r.get("folds") or []) > 1})
    if folded:
        lines += ["", "Mean ± std over test folds for " + ", ".join(folded) + f"; per-fold results in {details}."]
    weights = [f"- {u} / {p}: " + ", ".join(f"{w:.2f}" for w in r["layer_weights"])
               for u, row in results.items() for p, r in row.items() if r.get("layer_weights")]
    if weights:
        lines += ["", "Learned layer weights (softmax, first = embedding, last = model output):", *weights]
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    _bar_chart(results, columns, out / f"{stem}.png")
    return out / f"{stem}.md"


def _metrics_of(results, probe) -> List[str]:
    for row in results.values():
        if probe in row and "error" not in row[probe]:
            return [k for k in row[probe] if k not in NOT_METRICS]
    return ["error"]


def _bar_chart(results, columns, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    upstreams = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns) * max(1, len(upstreams)) / 2), 4))
    width = 0.8 / max(1, len(upstreams))
    for i, upstream in enumerate(upstreams):
        values, errors = [], []
        for column, (probe, metric) in enumerate(columns):
            result = results[upstream].get(probe, {})
            folds = [f["test"][metric] for f in result.get("folds") or [] if metric in f["test"]]
            values.append(result.get(metric, 0.0) if "error" not in result else 0.0)
            errors.append(fold_std(folds))
            if "error" in result:
                ax.text(column + i * width, 0.02, "error", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.bar(np.arange(len(columns)) + i * width, values, width, yerr=errors, capsize=2,
               label=PAPER_NAMES.get(upstream, upstream))
    ax.set_xticks(np.arange(len(columns)) + width * (len(upstreams) - 1) / 2)
    ax.set_xticklabels([f"{p}\n{m}" for p, m in columns])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("HEAR protocol, test metrics (error bars: std over folds)")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)


def main(argv: Sequence[str] | None = None, settings: UpstreamSettings | None = None) -> Dict[str, Dict[str, dict]]:
    """The comparison ``argv`` asks for: {upstream: {probe: metrics or error}}. ``settings``: trust and the EnCodec
    weights of the upstreams; None: the command's, from the environment (``ENCODECMAE_TRUST_CHECKPOINT``,
    ``ENCODEC_CKPT``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstreams", required=True,
                        help="comma-separated: hub entry names, ENTRY=CKPT (hubert_local=...), LABEL=ENTRY=CKPT, "
                             "or LABEL=CKPT (encodecmae_local)")
    parser.add_argument("--probes", required=True, help="comma-separated probe names: " + ", ".join(task_names()))
    parser.add_argument("--data", action="append", default=[],
                        help="PROBE=PATH, once per probe (speech_commands=TRAIN_ROOT,TEST_ROOT; "
                             "emotion=IEMOCAP_ROOT[,META_DATA])")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", choices=["last", "weighted"], default="last",
                        help="last layer (the paper's HEAR protocol) or learned softmax layer weights")
    parser.add_argument("--grid-size", type=int, default=8, help="HEAR configurations tried (of 16)")
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS,
                        help="HEAR: 500 (early stopping usually ends sooner; validation every 3rd epoch)")
    parser.add_argument("--hidden-dim", type=int, default=HIDDEN_DIM,
                        help="MLP width; HEAR: 1024 (smaller: quick looks)")
    parser.add_argument("--device", default=default_device())
    add_precision_flag(parser)
    args = parser.parse_args(argv)

    if not 1 <= args.grid_size <= 16:
        parser.error(f"--grid-size must be in 1..16 (HEAR's grid has 16 configurations), got {args.grid_size}")
    if args.max_epochs < CHECK_VAL_EVERY or args.hidden_dim < 1:
        parser.error(f"--max-epochs must be >= {CHECK_VAL_EVERY} (HEAR validates every {CHECK_VAL_EVERY} epochs) and "
                     f"--hidden-dim positive, got {args.max_epochs}, {args.hidden_dim}")
    bad = [item for item in args.data if "=" not in item]
    if bad:
        parser.error(f"--data takes PROBE=PATH, got {bad[0]!r}")
    data = dict(item.split("=", 1) for item in args.data)
    probes = [p for p in args.probes.split(",") if p]
    known = task_names()
    unknown = [p for p in probes + list(data) if p not in known]
    if unknown:
        parser.error(f"unknown probe {unknown[0]!r}; known: {', '.join(known)}")
    missing = [p for p in probes if p not in data]
    if missing:
        parser.error(f"no --data PROBE=PATH for: {', '.join(missing)}")
    for probe, paths in data.items():
        absent = [p for p in paths.split(",") if p and not Path(p).expanduser().exists()]
        if absent:
            parser.error(f"--data {probe}={paths}: {absent[0]} does not exist; give the folder holding the "
                         f"{probe} dataset")
    specs = [parse_upstream(s) for s in args.upstreams.split(",") if s]
    labels = [label for label, _, _ in specs]
    if len(set(labels)) != len(labels):
        parser.error(f"two upstreams share a label in {labels}: name them LABEL=ENTRY=CKPT")
    results: Dict[str, Dict[str, dict]] = {}
    if settings is None:
        settings = UpstreamSettings.from_environment(precision=args.precision)
    for label, entry, ckpt in specs:
        precision = ran_as(entry, args.device, settings.precision)
        print(f"compare: {label} runs in {precision} (precision {settings.precision})")
        key = upstream_key(label, entry, ckpt, precision)
        upstream = LazyUpstream(entry, ckpt, args.device, settings)
        results[label] = {}
        for probe in probes:
            try:
                results[label][probe] = {**evaluate(upstream, key, probe, data[probe], args.out / "cache",
                                                    args.mode == "weighted", args.grid_size, args.max_epochs,
                                                    args.device, args.hidden_dim), "precision": precision}
            except Exception as err:  # reported in the table; the other upstreams and probes still run
                traceback.print_exc()
                results[label][probe] = {"error": f"{type(err).__name__}: {err}"[:300]}
                if upstream.error is not None:  # the upstream failed to load: the same error for its other probes
                    for rest in probes[probes.index(probe) + 1:]:
                        results[label][rest] = dict(results[label][probe])
                    break
        del upstream
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    failed = any("error" in r for row in results.values() for r in row.values())
    keep = failed and (args.out / "results.md").is_file()  # a failed rerun never replaces a complete table
    written = write_outputs(results, probes, args.out, "results.partial" if keep else "results")
    print(written.read_text())
    if keep:
        print(f"compare: some cells failed, so {args.out / 'results.md'} (an earlier run's) is kept; this run's "
              f"table is {written}", file=sys.stderr)
    return results


def run(argv: Sequence[str] | None = None) -> int:
    """The command: ``main``, then every failed cell listed on stderr; exit status 1 if any cell failed, 2 for a
    usage error (one ``error:`` line), 0 when every upstream x probe cell has its metrics."""
    from encodecmae_s3prl.errors import user_errors

    with user_errors():
        results = main(argv)
    failed = [(u, p, r["error"]) for u, row in results.items() for p, r in row.items() if "error" in r]
    if failed:
        print(f"compare: {len(failed)} of {sum(len(row) for row in results.values())} cell(s) failed:",
              *(f"{u} / {p}: {e}" for u, p, e in failed), sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
