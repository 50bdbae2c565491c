"""How fast the codec cache is built, and whether a cache built on another device holds the same codes.

    .venv/bin/python benchmarks/codec_cache_rate.py [--device cuda] [--files 12] [--seconds 60]

Builds the cache of a synthetic corpus (harmonic tones at 44.1 kHz) with the seeded random-init EnCodec
fitted to synthetic audio (the weights do not change the cost) on --device, prints hours of audio per
minute, then (when --device is not the CPU) rebuilds the first file on the CPU and compares.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}


def main() -> None:
    from encodecmae_s3prl.settings import default_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    from encodecmae_s3prl.pretrain_task.codec_cache import CodecCache, build
    from encodecmae_s3prl.pretrain_task.corpus import load_corpus
    from encodecmae_s3prl.synthetic import fit_codec_to_synthetic_audio, harmonic_tone, write_wav
    from encodecmae_s3prl.upstream.loading import build_model, model_config_from_yaml

    model = build_model(model_config_from_yaml({"model": "small", **RANDOM_CODEC}), seed=0)
    fit_codec_to_synthetic_audio(model)
    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(args.files):
        write_wav(work / "audio" / f"f{i:03d}.wav", harmonic_tone(110 + 7 * i, args.seconds, 44100, rng), 44100)
    files = load_corpus([str(work / "audio")], progress=False)
    if args.device.startswith("cuda"):  # warm-up: cuDNN picks its kernels
        build(files[:1], model.codec, work / "warm", 8, device=args.device, progress=False)
        torch.cuda.synchronize()
    start = time.perf_counter()
    build(files, model.codec, work / "cache", 8, device=args.device, progress=False)
    elapsed = time.perf_counter() - start
    hours = args.files * args.seconds / 3600
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}"
    print(f"| codec cache build | {args.files} files x {args.seconds:g} s | {elapsed:.1f} s | "
          f"{hours / (elapsed / 60):.3f} audio-hours per minute | {name} |")
    if not args.device.startswith("cpu"):
        build(files[:1], model.codec, work / "cpu", 8, device="cpu", progress=False)
        gpu = CodecCache.open(work / "cache").crop(files[0].path, 0, 10 ** 9)
        cpu = CodecCache.open(work / "cpu").crop(files[0].path, 0, 10 ** 9)
        rel = float((gpu.features.float() - cpu.features.float()).norm() / cpu.features.float().norm())
        agree = [float((gpu.codes[:, q] == cpu.codes[:, q]).float().mean()) for q in (0, 7)]
        print(f"| {args.device} vs cpu, first file | feature rel. L2 {rel:.2e} | codes equal: codebook 1 "
              f"{agree[0]:.3f}, codebook 8 {agree[1]:.3f} |")


if __name__ == "__main__":
    main()
