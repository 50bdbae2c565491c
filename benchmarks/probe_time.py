"""Time of one probe run: HEAR-cached mode vs s3prl's runner mode, same probe, upstream, fold and epochs.

    python benchmarks/probe_time.py [--upstream encodecmae_local|encodec_features|fbank_no_cmvn] [--epochs 10]

- runner mode: ``run_downstream.py -m train -d esc50`` (s3prl's runner, Featurizer, our pooled-MLP
  expert): the upstream runs on every batch of every epoch. Timed as the whole process.
- HEAR-cached mode: ``embedding_cache`` + ``mlp_grid`` on the same fold: embed every clip once (all layers,
  time-mean, cached on disk), then train the same-size MLP for the same number of epochs from the
  cache; a rerun (another grid configuration, another fold, the other layer mode) only trains.
  Timed in process, plus the process start-up measured on its own so the totals compare.

The dataset is a synthetic ESC-50 (official layout, 1 s clips at 44.1 kHz); the EnCodecMAE upstream is
the tiny random checkpoint the tests use (random-init EnCodec fitted to a small corpus), so no download.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # synthetic_data: the test-data writers


def runner_mode(upstream: str, ckpt: str | None, root: Path, work: Path, steps: int, batch: int) -> float:
    exp = work / "runner_exp"
    overrides = (f"config.downstream_expert.datarc.root={root},,config.downstream_expert.datarc.num_workers=0,,"
                 f"config.downstream_expert.datarc.train_batch_size={batch},,config.runner.total_steps={steps},,"
                 f"config.runner.log_step={steps},,config.runner.eval_step={steps * 10},,"
                 f"config.runner.save_step={steps * 10}")
    command = [sys.executable, str(REPO / "run_downstream.py"), "-m", "train", "-u", upstream, "-d", "esc50",
               "-p", str(exp), "-o", overrides] + (["-k", ckpt] if ckpt else [])
    start = time.perf_counter()
    subprocess.run(command, cwd=work, check=True, capture_output=True)
    return time.perf_counter() - start


def startup_seconds() -> float:
    """What every process pays before the first batch: importing s3prl's hub with our entries."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import encodecmae_s3prl, torch; from s3prl import hub"], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def cached_mode(upstream_name: str, ckpt: str | None, root: Path, work: Path, epochs: int) -> dict:
    from s3prl import hub

    import encodecmae_s3prl  # noqa: F401
    from encodecmae_s3prl.evaluation import embedding_cache, mlp_grid, task_table

    start = time.perf_counter()
    upstream = getattr(hub, upstream_name)(**({"ckpt": ckpt} if ckpt else {})).eval()
    build = time.perf_counter() - start
    task = task_table.load_task("esc50", root, "fold1")
    start = time.perf_counter()
    data = embedding_cache.embed_splits(lambda: upstream, f"bench|{upstream_name}|{ckpt}", task, work / "cache")
    embed = time.perf_counter() - start
    params = {"hidden_layers": 1, "lr": 1e-3, "init": "xavier_uniform"}  # the runner's MLP: 1 x 1024, lr 1e-3
    start = time.perf_counter()
    mlp_grid.train_one(task, data, params, weighted=True, max_epochs=epochs, seed=0)
    train = time.perf_counter() - start
    start = time.perf_counter()
    embedding_cache.embed_splits(lambda: upstream, f"bench|{upstream_name}|{ckpt}", task, work / "cache")
    cache_hit = time.perf_counter() - start
    start = time.perf_counter()
    full = mlp_grid.grid_search(task, data, weighted=False, grid_size=8, max_epochs=500)
    hear_grid = time.perf_counter() - start
    return {"build_upstream_s": build, "embed_once_s": embed, "train_s": train, "cache_hit_s": cache_hit,
            "hear_grid_8x500_s": hear_grid, "hear_grid_acc": full["test"]["acc"],
            "train_clips": len(task.splits["train"]), "all_clips": sum(len(v) for v in task.splits.values())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="encodecmae_local",
                        help="hub entry; encodecmae_local/encodec_features use the tiny test checkpoint")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="runner mode batch size (the configs' default)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-fold", type=int, default=4, help="clips per class and fold")
    args = parser.parse_args(argv)

    import torch

    from encodecmae_s3prl.demo_data import write_esc50, write_tiny_encodecmae_checkpoint

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = write_esc50(work / "esc50", classes=args.classes, per_fold=args.per_fold)
        ckpt = None
        if args.upstream in ("encodecmae_local", "encodec_features", "encodecmae_random"):
            ckpt = str(write_tiny_encodecmae_checkpoint(work / "tiny.ckpt"))
        cached = cached_mode(args.upstream, ckpt, root, work, args.epochs)
        steps = max(1, round(args.epochs * cached["train_clips"] / args.batch))
        runner = runner_mode(args.upstream, ckpt, root, work, steps, args.batch)
        startup = startup_seconds()
    cached_total = startup + cached["build_upstream_s"] + cached["embed_once_s"] + cached["train_s"]
    result = {"upstream": args.upstream, "epochs": args.epochs, "runner_steps": steps, "runner_batch": args.batch,
              **{k: round(v, 3) if isinstance(v, float) else v for k, v in cached.items()},
              "process_startup_s": round(startup, 2), "runner_total_s": round(runner, 2),
              "cached_total_s": round(cached_total, 2),
              "runner_per_epoch_s": round((runner - startup) / args.epochs, 3),
              "cached_per_epoch_s": round(cached["train_s"] / args.epochs, 4)}
    result["speedup_per_epoch"] = round(result["runner_per_epoch_s"] / max(result["cached_per_epoch_s"], 1e-6), 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
