"""Which attention kernels our training step and extraction launch (flash, memory-efficient or math).

    .venv/bin/python benchmarks/sdpa_kernels.py [--device cuda] [--size small] [--batch 8]

A training step from codec-cache features (no padding: all crops 4 s) and an ``encode`` of one 30 s clip,
each under torch.profiler at our best precision; prints the attention kernels by name and count.
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}
ATTENTION_WORDS = ("flash", "fmha", "efficient_attention", "attention", "sdpa", "softmax")


def attention_kernels(prof) -> Counter:
    counts: Counter = Counter()
    for event in prof.events():
        name = event.name
        if any(word in name.lower() for word in ATTENTION_WORDS):
            counts[name[:110]] += 1
    return counts


def main() -> None:
    from encodecmae_s3prl.settings import default_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--size", default="small")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model
    from encodecmae_s3prl.upstream.precision import autocast

    device = torch.device(args.device)
    model = build_model(model_config_from_yaml({"model": args.size, **RANDOM_CODEC}), seed=0).to(device).train()
    frames = 300
    features = torch.randn(args.batch, frames, 128, device=device).half()
    codes = torch.randint(0, 1024, (args.batch, frames, 8), device=device).short()
    lengths = torch.full((args.batch,), frames, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def step():
        with autocast(device, "auto"):
            out = model(features=features, frame_lengths=lengths, codes=codes,
                        generator=torch.Generator().manual_seed(0))
        out.loss.backward()

    step()
    with profile(activities=activities) as prof:
        step()
    print(f"training step, batch {args.batch} x 4 s, {args.size}, {device}:")
    for name, count in attention_kernels(prof).most_common():
        print(f"  {count:4d}  {name}")

    model.eval()
    clip = torch.randn(1, 30 * 24000, device=device) * 0.1
    with torch.no_grad(), autocast(device, "auto"):
        model.encode(clip)
        with profile(activities=activities) as prof:
            model.encode(clip)
    print(f"encode, one 30 s clip, {args.size}, {device}:")
    for name, count in attention_kernels(prof).most_common():
        print(f"  {count:4d}  {name}")


if __name__ == "__main__":
    main()
