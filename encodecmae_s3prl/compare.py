"""Side by side: upstreams x probes under the HEAR protocol, as a Table-1-style table.

    python -m encodecmae_s3prl.compare --upstreams encodecmae_base,hubert,wav2vec2,fbank_no_cmvn,mine=ckpt.pt \\
        --probes nsynth_pitch,esc50 --data nsynth_pitch=/data/nsynth --data esc50=/data/ESC-50 --out cmp/

``name=CKPT`` runs ``encodecmae_local`` on CKPT (``hubert_local=CKPT`` or ``wav2vec2_local=CKPT``
run those s3prl entries). Writes ``results.md``, ``results.csv``, ``results.json``
(``{upstream: {probe: {metric: value}}}``) and ``results.png`` into ``--out``; embeddings are
cached in ``--out/cache`` so reruns only retrain the small MLPs. A failing upstream or probe
is reported in the table, the others still run. ``--mode weighted`` learns s3prl-style softmax
layer weights and reports them.
"""
from __future__ import annotations

import argparse
import csv
import json
import traceback
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from encodecmae_s3prl import compat
from encodecmae_s3prl.downstream_probes.hear_protocol import embed_splits, grid_search, load_task, task_folds

PAPER_NAMES = {"encodec_features": "EC", "encodecmae_random": "ECMAE-R", "fbank_no_cmvn": "fbank (no CMVN)"}


def parse_upstream(spec: str) -> tuple[str, str, str | None]:
    """'name' -> (label, hub entry, None); 'label=CKPT' -> encodecmae_local on CKPT (or label's own _local entry)."""
    if "=" not in spec:
        return spec, spec, None
    label, ckpt = spec.split("=", 1)
    entry = label if label.endswith("_local") else "encodecmae_local"
    return label, entry, ckpt


def build_upstream(entry: str, ckpt: str | None, device: str):
    import encodecmae_s3prl  # noqa: F401  (registers our entries)
    from s3prl import hub

    if not hasattr(hub, entry):
        raise ValueError(f"unknown upstream {entry!r} (not in s3prl.hub)")
    kwargs = {"ckpt": ckpt} if ckpt else {}
    return getattr(hub, entry)(**kwargs).to(device).eval()


def evaluate(upstream, label: str, probe: str, root: str, cache: Path, weighted: bool, grid_size: int,
             max_epochs: int, device: str) -> dict:
    """Metrics averaged over the probe's test folds, plus per-fold values and learned layer weights."""
    per_fold = []
    for fold in task_folds(probe, root):
        task = load_task(probe, root, {"test_fold": fold} if fold else {})
        data = embed_splits(upstream, label, task, cache, device)
        best = grid_search(task, data, weighted=weighted, grid_size=grid_size, max_epochs=max_epochs, device=device)
        per_fold.append({"fold": fold, **best})
    metrics = {m: float(np.mean([f["test"][m] for f in per_fold])) for m in per_fold[0]["test"]}
    weights = [f["layer_weights"] for f in per_fold if f["layer_weights"]]
    return {**metrics, "folds": per_fold, "layer_weights": np.mean(weights, axis=0).tolist() if weights else None}


def write_outputs(results: Dict[str, Dict[str, dict]], probes: Sequence[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {u: {p: ({k: v for k, v in r.items() if k not in ("folds", "layer_weights")} if "error" not in r
                       else {"error": r["error"]}) for p, r in row.items()} for u, row in results.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "details.json").write_text(json.dumps(results, indent=2, default=str))
    columns = [(p, m) for p in probes for m in _metrics_of(results, p)]
    header = ["upstream"] + [f"{p} {m}" for p, m in columns]
    rows = []
    for upstream, row in results.items():
        cells = [PAPER_NAMES.get(upstream, upstream)]
        for probe, metric in columns:
            result = row.get(probe, {})
            cells.append(f"error: {result['error']}" if "error" in result else
                         f"{result[metric]:.3f}" if metric in result else "")
        rows.append(cells)
    with open(out / "results.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header] + rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    weights = [f"- {u} / {p}: " + ", ".join(f"{w:.2f}" for w in r["layer_weights"])
               for u, row in results.items() for p, r in row.items() if r.get("layer_weights")]
    if weights:
        lines += ["", "Learned layer weights (softmax, first = embedding, last = model output):", *weights]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _bar_chart(results, columns, out / "results.png")


def _metrics_of(results, probe) -> List[str]:
    for row in results.values():
        if probe in row and "error" not in row[probe]:
            return [k for k in row[probe] if k not in ("folds", "layer_weights")]
    return ["error"]


def _bar_chart(results, columns, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    upstreams = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns) * max(1, len(upstreams)) / 2), 4))
    width = 0.8 / max(1, len(upstreams))
    for i, upstream in enumerate(upstreams):
        values = [results[upstream].get(p, {}).get(m, 0.0) if "error" not in results[upstream].get(p, {}) else 0.0
                  for p, m in columns]
        ax.bar(np.arange(len(columns)) + i * width, values, width, label=PAPER_NAMES.get(upstream, upstream))
    ax.set_xticks(np.arange(len(columns)) + width * (len(upstreams) - 1) / 2)
    ax.set_xticklabels([f"{p}\n{m}" for p, m in columns])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("HEAR protocol, test metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> Dict[str, Dict[str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstreams", required=True, help="comma-separated hub names and/or label=CKPT")
    parser.add_argument("--probes", required=True, help="comma-separated probe names")
    parser.add_argument("--data", action="append", default=[], help="PROBE=PATH, once per probe")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", choices=["last", "weighted"], default="last",
                        help="last layer (the paper's HEAR protocol) or learned softmax layer weights")
    parser.add_argument("--grid-size", type=int, default=8, help="HEAR configurations tried (of 16)")
    parser.add_argument("--max-epochs", type=int, default=500)
    parser.add_argument("--device", default=compat.default_device())
    args = parser.parse_args(argv)

    data = dict(item.split("=", 1) for item in args.data)
    probes = args.probes.split(",")
    missing = [p for p in probes if p not in data]
    if missing:
        parser.error(f"no --data PROBE=PATH for: {', '.join(missing)}")
    results: Dict[str, Dict[str, dict]] = {}
    for spec in args.upstreams.split(","):
        label, entry, ckpt = parse_upstream(spec)
        results[label] = {}
        try:
            upstream = build_upstream(entry, ckpt, args.device)
        except Exception as err:  # reported in the table, the other upstreams still run
            results[label] = {p: {"error": f"{type(err).__name__}: {err}"[:200]} for p in probes}
            continue
        for probe in probes:
            try:
                results[label][probe] = evaluate(upstream, label, probe, data[probe], args.out / "cache",
                                                 args.mode == "weighted", args.grid_size, args.max_epochs,
                                                 args.device)
            except Exception as err:
                traceback.print_exc()
                results[label][probe] = {"error": f"{type(err).__name__}: {err}"[:200]}
        del upstream
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    write_outputs(results, probes, args.out)
    print((args.out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
