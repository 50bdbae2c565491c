"""What bf16 inference costs: per-layer error of bf16 against fp32 embeddings, and probe scores at both precisions.

    .venv/bin/python benchmarks/bf16_cost.py --work /tmp/bf16cost [--sizes small,base] [--clips 60]

1. Per-layer relative error (||bf16 - fp32|| / ||fp32|| over all frames, and max |bf16 - fp32| / max |fp32|) of
   every hidden state, for random EnCodecMAE checkpoints of each ``--sizes`` (random-init EnCodec fitted to
   synthetic audio, as the tests' checkpoints), on clips of 1 s, 4.01 s and 30 s (a harmonic note in noise, 24 kHz),
   each through ``model.encode`` at precision fp32 and bf16 (the transformer under autocast, EnCodec fp32), with
   the time each took.
2. ``table1`` on the six HEAR-layout stand-ins (``write_hear_table1_tasks``, ``--clips`` clips per task at the real
   tasks' durations, 48000 Hz) with the first size's checkpoint, at --precision fp32 and bf16, the kit's settings:
   each column's score at both, the difference, and the fold std where the task has folds.
Prints markdown tables with the machine, torch version and date; writes WORK/bf16_cost.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # synthetic_data: the test-data writers
sys.path.insert(0, str(REPO / "benchmarks"))

CLIPS = {"1 s": 1.0, "4.01 s": 4.01, "30 s": 30.0}


def clip(seconds: float, seed: int = 0):
    import numpy as np
    import torch

    from encodecmae_s3prl.demo_data import harmonic_tone

    rng = np.random.default_rng(seed)
    wav = harmonic_tone(196.0, seconds, 24000, rng) + rng.normal(0, 0.05, int(round(seconds * 24000)))
    return torch.from_numpy(wav.astype("float32"))[None]


def layer_errors(ckpt: Path) -> list[dict]:
    import torch

    from encodecmae_s3prl.upstream.loading import load_checkpoint

    model = load_checkpoint(ckpt).eval()
    rows = []
    for name, seconds in CLIPS.items():
        wav = clip(seconds)
        out = {}
        for precision in ("fp32", "bf16"):
            model.precision = precision
            with torch.no_grad():
                model.encode(wav[:, :24000])  # warm-up
                start = time.perf_counter()
                out[precision] = model.encode(wav).hidden_states
                out[f"{precision}_seconds"] = time.perf_counter() - start
        for layer, (a, b) in enumerate(zip(out["fp32"], out["bf16"], strict=True)):
            rows.append({"clip": name, "layer": layer, "layers": len(out["fp32"]),
                         "rel_l2": float((b - a).norm() / a.norm()),
                         "rel_max": float((b - a).abs().max() / a.abs().max()),
                         "fp32_s": out["fp32_seconds"], "bf16_s": out["bf16_seconds"]})
    return rows


def probe_scores(ckpt: Path, work: Path, clips: int) -> dict:
    from encodecmae_s3prl.evaluation import table1

    from synthetic_data import write_hear_table1_tasks

    tasks = work / "tasks"
    if not tasks.is_dir():
        write_hear_table1_tasks(tasks, classes=8, seconds=None, per_task=clips)
    scores = {}
    for precision in ("fp32", "bf16"):
        out = work / f"table1-{precision}"
        table1.main(["--tasks", str(tasks), "--out", str(out), "--upstreams", f"mine={ckpt}", "--device", "cpu",
                     "--precision", precision])
        scores[precision] = json.loads((out / "table1.json").read_text())["rows"]["mine"]
    return scores


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--clips", type=int, default=60, help="clips per HEAR stand-in task (shared over its splits)")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args(argv)
    import torch

    from encodecmae_s3prl.demo_data import write_tiny_encodecmae_checkpoint
    from encodecmae_s3prl.machine import cpu_flags

    args.work.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, flags {cpu_flags()}, {torch.get_num_threads()} torch "
               f"threads, torch {torch.__version__}, {datetime.date.today()}")
    report: dict = {"machine": machine, "errors": {}}
    lines = [f"bf16 vs fp32 per layer ({machine}); error = ||bf16 - fp32|| / ||fp32|| (max |.| / max |.|)", "",
             "| size | clip | " + " | ".join(f"layer {i}" for i in range(12)) + " | fp32 s | bf16 s |",
             "|---|---|" + "---|" * 14]
    checkpoints = {}
    for size in args.sizes.split(","):
        ckpt = args.work / size / "states-1.ckpt"
        if not ckpt.is_file():
            write_tiny_encodecmae_checkpoint(ckpt, size=size)
        checkpoints[size] = ckpt
        rows = layer_errors(ckpt)
        report["errors"][size] = rows
        for name in CLIPS:
            mine = [r for r in rows if r["clip"] == name]
            cells = [f"{r['rel_l2']:.1e} ({r['rel_max']:.1e})" for r in mine] + [""] * (12 - len(mine))
            lines.append(f"| {size} | {name} | " + " | ".join(cells) + f" | {mine[0]['fp32_s']:.2f} | "
                         f"{mine[0]['bf16_s']:.2f} |")
        print("\n".join(lines[-len(CLIPS):]), flush=True)
    if not args.skip_probes:
        size = args.sizes.split(",")[0]
        scores = probe_scores(checkpoints[size], args.work / "probes", args.clips)
        report["probes"] = scores
        lines += ["", f"table1 on the HEAR-layout stand-ins ({args.clips} clips per task), {size} checkpoint, "
                      f"the kit's settings", "", "| column | fp32 | bf16 | bf16 - fp32 | fold std (fp32) |",
                  "|---|---|---|---|---|"]
        for column, cell in scores["fp32"].items():
            if not isinstance(cell, dict) or "value" not in cell:
                continue
            other = scores["bf16"][column]
            std = cell.get("std")
            lines.append(f"| {column} | {cell['value']:.4g} | {other['value']:.4g} | "
                         f"{other['value'] - cell['value']:+.4g} | {'' if std is None else f'{std:.4g}'} |")
    text = "\n".join(lines)
    (args.work / "bf16_cost.json").write_text(json.dumps(report, indent=1))
    (args.work / "bf16_cost.md").write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
