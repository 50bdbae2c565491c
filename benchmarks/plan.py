"""What a pretraining run will cost, before running it: the codec cache's disk, its build time, the run's time.

    .venv/bin/python benchmarks/plan.py --corpus /data/train.tsv -g base [-c pretrain_task/config_runner.yaml]
    .venv/bin/python benchmarks/plan.py --hours 16000 -g base --steps 500000 --batch 128 [--device h200]

The corpus is a list of folders and/or manifests (as ``datarc.corpus``; a manifest is read without opening the
audio) or ``--hours``. Batch, crop length and steps come from the runner config (the paper's recipe by default)
unless given. Times come only from rates measured by the benchmark scripts (``benchmarks/measured_rates.json``,
each with its device, torch version and command): a rate not measured for this device, size and batch is printed
as unknown, with the nearest measured one beside it for orientation, never scaled.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RATES = HERE / "measured_rates.json"
RUNNER_CONFIG = HERE.parent / "pretrain_task" / "config_runner.yaml"
FRAME_RATE = 75            # EnCodec frames per second at 24 kHz
FEATURE_BYTES = 128 * 2    # a cached frame: 128 EnCodec features in float16 ...
CODE_BYTES = 2             # ... and one int16 code per codebook


def corpus_seconds(entries: list[str]) -> float:
    from encodecmae_s3prl.pretrain_task.corpus import load_corpus

    return sum(f.seconds for f in load_corpus(entries))


def num_codebooks(model_config: str) -> int:
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml

    source = model_config if Path(model_config).is_file() else {"model": model_config}
    return model_config_from_yaml(source).num_codebooks


def duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h ({hours / 24:.1f} days)" if hours >= 48 else f"{hours:.2f} h"


def rate_line(rates: list[dict], what: str, device: str, size: str | None, batch: int | None,
              crop: float | None) -> tuple:
    """(the rate measured for exactly this device, size, batch and crop length, or None; if None, what was
    measured instead on this device, as a sentence)."""
    here = [r for r in rates if r["what"] == what and r["device"] == device]
    exact = [r for r in here if (size is None or r.get("size") == size) and (batch is None or r.get("batch") == batch)
             and (crop is None or r.get("crop_seconds", 4.0) == crop)]
    if exact:
        return exact[0], ""
    if not here:
        return None, "not measured on this device"
    measured = ", ".join(f"{r.get('size', '?')} at batch {r.get('batch')} x {r.get('crop_seconds', 4.0):g} s: "
                         f"{r['audio_s_per_s']:g} audio-s/s" for r in here)
    return None, f"measured here only for {measured}"


def runner_run(runner_config: Path = RUNNER_CONFIG) -> tuple[int, int, float]:
    """(optimizer steps, global batch, crop seconds) of a runner config: the paper's run for the shipped one."""
    runner = yaml.safe_load(Path(runner_config).read_text())
    datarc = runner["pretrain_expert"]["datarc"]
    batch = datarc["train_batch_size"] * runner["runner"].get("gradient_accumulate_steps", 1)
    return runner["runner"]["total_steps"], batch, datarc["crop_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--corpus", nargs="+", help="folders and/or manifest .tsv files")
    where.add_argument("--hours", type=float, help="the corpus's hours of audio")
    parser.add_argument("-g", "--model-config", default="base", help="tiny | small | base | large | a YAML")
    parser.add_argument("-c", "--runner-config", type=Path, default=RUNNER_CONFIG)
    parser.add_argument("--steps", type=int, help="default: the runner config's total_steps")
    parser.add_argument("--batch", type=int, help="global batch; default: the runner config's train_batch_size")
    parser.add_argument("--crop-seconds", type=float, help="default: the runner config's crop_seconds")
    parser.add_argument("--device", help="a device of measured_rates.json (default: every one listed there)")
    parser.add_argument("--rates", type=Path, default=RATES)
    args = parser.parse_args()

    steps, batch, crop = runner_run(args.runner_config)
    steps, batch, crop = args.steps or steps, args.batch or batch, args.crop_seconds or crop
    size = args.model_config if not Path(args.model_config).is_file() else None
    seconds = args.hours * 3600 if args.hours is not None else corpus_seconds(args.corpus)
    q = num_codebooks(args.model_config)
    cache_bytes = seconds * FRAME_RATE * (FEATURE_BYTES + q * CODE_BYTES)
    trained = steps * batch * crop
    print(f"corpus: {seconds / 3600:,.1f} h of audio; model {args.model_config} ({q} codebooks); "
          f"{steps:,} steps x batch {batch} x {crop:g} s = {trained / 3600:,.0f} audio-hours seen "
          f"({trained / seconds:.1f} passes over the corpus)")
    print(f"codec cache on disk: {cache_bytes / 2 ** 30:,.1f} GiB (float16 features + int16 codes, "
          f"{FEATURE_BYTES + q * CODE_BYTES} bytes x {FRAME_RATE} frames per audio-second)")

    table = json.loads(args.rates.read_text())["rates"]
    devices = [args.device] if args.device else sorted({r["device"] for r in table})
    for device in devices:
        names = {r.get("device_name", device) for r in table if r["device"] == device} or {"no rate measured"}
        print(f"\n{device} ({'; '.join(sorted(names))}):")
        build, why = rate_line(table, "cache_build", device, None, None, None)
        print("  cache build: " + (f"{duration(seconds / build['audio_s_per_s'])} at {build['audio_s_per_s']:g} "
                                   f"audio-s/s, one process (torch {build['torch']}; {build['command']})"
                                   if build else f"unknown ({why})"))
        for what, label in (("train_from_cache", "training from the cache"), ("train_on_the_fly", "training, codec "
                                                                                                  "in the step")):
            rate, why = rate_line(table, what, device, size, batch, crop)
            print(f"  {label}: " + (f"{duration(trained / rate['audio_s_per_s'])} at {rate['audio_s_per_s']:g} "
                                    f"audio-s/s, {rate.get('precision', '?')} (torch {rate['torch']}; "
                                    f"{rate['command']})" if rate else f"unknown ({why})"))
        loader, why = rate_line(table, "loader_per_worker", device, None, None, None)
        train, _ = rate_line(table, "train_from_cache", device, size, batch, crop)
        if loader and train:
            workers = -(-train["audio_s_per_s"] // loader["audio_s_per_s"])
            print(f"  loader: {int(workers)} worker process(es) keep that step fed "
                  f"({loader['audio_s_per_s']:g} audio-s/s each)")
        else:
            print(f"  loader workers needed: unknown ({why if not loader else 'no training rate'})")


if __name__ == "__main__":
    main()
