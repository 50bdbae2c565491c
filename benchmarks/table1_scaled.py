"""A scaled-down Table 1 run, timed per task, and its extrapolation to the real HEAR tasks' sizes.

    .venv/bin/python benchmarks/table1_scaled.py --work /tmp/t1bench [--size base] [--clips 200] [--device cpu]
        [--precision auto|bf16|fp32]

Writes stand-ins of the six HEAR tasks at the real tasks' clip durations (``write_hear_table1_tasks``,
48000 Hz, ``--clips`` clips per task) and a random EnCodecMAE checkpoint of ``--size`` (random-init EnCodec fitted
to synthetic audio: the weights do not change the cost), then per task: the embedding cache built alone
(``embedding_cache.embed_splits``, all layers, at ``--precision``) and the HEAR protocol's MLP grid on it (``table1``
with the kit's settings, the cache already there). Extrapolation: embedding time scales with audio hours, the MLP grid
with clips (roughly: early stopping ends each grid point at its own epoch). Prints a markdown table with machine
and date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from encodecmae_s3prl.machine import cpu_flags

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # synthetic_data: the test-data writers

# the real tasks (clips, audio hours): NSynth pitch 50h (50 h of 4 s notes), GTZAN 1000 x 30 s, Speech Commands v2
# (105,829 utterances of 1 s), CREMA-D 7,442 clips (HEAR: 5 s each), FSD50K 51,197 clips (108.3 h), ESC-50 2000 x 5 s
REAL = {"NS": (45_000, 50.0), "GC": (1_000, 8.33), "SC": (105_829, 29.4), "ER": (7_442, 10.3),
        "FSD": (51_197, 108.3), "ESC": (2_000, 2.78)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--size", default="base", help="tiny, small, base or large (random weights)")
    parser.add_argument("--clips", type=int, default=200, help="clips per task (split or fold sizes derived)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto | bf16 | fp32, as table1's (default auto)")
    args = parser.parse_args(argv)

    import torch

    from encodecmae_s3prl.demo_data import write_tiny_encodecmae_checkpoint
    from encodecmae_s3prl.evaluation import compare, embedding_cache, table1
    from encodecmae_s3prl.settings import UpstreamSettings

    from synthetic_data import write_hear_table1_tasks

    work = args.work.resolve()
    tasks_root, out = work / "tasks", work / "out"
    ckpt = work / f"{args.size}.ckpt"
    if not tasks_root.is_dir():
        write_hear_table1_tasks(tasks_root, classes=8, seconds=None, per_task=args.clips)
    shutil.rmtree(out, ignore_errors=True)  # timed from scratch: no cache or cell of an earlier run
    if not ckpt.is_file():
        write_tiny_encodecmae_checkpoint(ckpt, size=args.size)
    chosen = table1.choose_tasks(tasks_root, list(table1.TASK_BY_COLUMN))
    row = table1.parse_rows([f"{args.size}={ckpt}"], args.device, args.precision)[0]
    ran_as = row.key.rsplit("|", 1)[1]
    upstream = compare.LazyUpstream(row.entry, row.ckpt, args.device, UpstreamSettings(precision=args.precision))
    results = {}
    for column, task in chosen.items():
        clips, seconds = table1._task_size(task)
        start = time.perf_counter()
        embedding_cache.embed_splits(upstream, row.key, task.probe_task, out / "cache", args.device)
        embed = time.perf_counter() - start
        start = time.perf_counter()
        code = table1.main(["--tasks", str(tasks_root), "--out", str(out), "--upstreams", f"{args.size}={ckpt}",
                            "--only", column, "--device", args.device, "--precision", args.precision])
        mlp = time.perf_counter() - start
        real_clips, real_hours = REAL[column]
        results[column] = {"clips": clips, "audio_h": seconds / 3600, "embed_s": embed, "mlp_s": mlp, "exit": code,
                           "real_clips": real_clips, "real_audio_h": real_hours,
                           "real_embed_h": embed / seconds * real_hours, "real_mlp_h": mlp / clips * real_clips / 3600}
        print(json.dumps({column: results[column]}), flush=True)
    import numpy as np

    first = next(iter(chosen.values()))
    _, layers, dim = np.load(embedding_cache.cache_path(out / "cache", row.key, first.probe_task), mmap_mode="r").shape
    lines = [f"{datetime.date.today()}, {platform.node()}, cpu={cpu_flags()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, device {args.device}, {args.size} ({layers} hidden states x {dim}), "
             f"transformer in {ran_as} (--precision {args.precision})",
             f"command: .venv/bin/python benchmarks/table1_scaled.py --work WORK --size {args.size} "
             f"--clips {args.clips} --device {args.device} --precision {args.precision}", "",
             "| task | stand-in clips | audio (h) | embed (s) | MLP grid (s) | real clips | real audio (h) | "
             "embed, extrapolated (h) | MLP grid, extrapolated (h) | cache (GiB) |", "|" + "---|" * 10]
    total_embed = total_mlp = 0.0
    for column, r in results.items():
        cache_gib = r["real_clips"] * layers * dim * 4 / 2 ** 30
        total_embed += r["real_embed_h"]
        total_mlp += r["real_mlp_h"]
        lines.append(f"| {column} | {r['clips']} | {r['audio_h']:.2f} | {r['embed_s']:.0f} | {r['mlp_s']:.0f} | "
                     f"{r['real_clips']} | {r['real_audio_h']:.1f} | {r['real_embed_h']:.1f} | "
                     f"{r['real_mlp_h']:.1f} | {cache_gib:.1f} |")
    lines.append(f"| all six | | | | | | | **{total_embed:.0f}** | **{total_mlp:.0f}** | |")
    print("\n".join(lines))
    (work / "table1_scaled.md").write_text("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
