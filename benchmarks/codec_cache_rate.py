"""How fast the codec cache is built, one window per EnCodec call against many, and whether they (and a cache
built on another device) hold the same codes.

    .venv/bin/python benchmarks/codec_cache_rate.py [--device cuda] [--files 24] [--seconds 60] [--batch-sizes 1,32]

Builds the cache of a synthetic corpus (harmonic tones at 44.1 kHz, lengths spread over 0.5-1.5 x --seconds so
that a batch's windows differ in length) with the seeded random-init EnCodec fitted to synthetic audio (the
weights do not change the cost) on --device, once per batch size (windows per EnCodec call; 1 is the
one-at-a-time build), and prints audio-seconds per second and audio-hours per minute for each. Then it compares
every batched cache with the batch-1 one (features: largest difference in fp16 steps; codes: share equal), and,
when --device is not the CPU, the first file rebuilt on the CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from limits import device_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_data: the test-data writers

RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}


def compare(name: str, cache, reference, files) -> None:
    """Features (in fp16 steps of the reference) and codes of every file of two caches."""
    steps, equal, frames = 0.0, [0, 0], 0
    for file in files:
        a, b = cache.crop(file.path, 0, 10 ** 9), reference.crop(file.path, 0, 10 ** 9)
        ulp = np.spacing(np.abs(b.features.numpy())).astype(np.float32)
        steps = max(steps, float((np.abs(a.features.float().numpy() - b.features.float().numpy()) / ulp).max()))
        for column, q in enumerate((0, b.codes.shape[1] - 1)):
            equal[column] += int((a.codes[:, q] == b.codes[:, q]).sum())
        frames += b.codes.shape[0]
    print(f"| {name} | features: largest difference {steps:.0f} fp16 step(s) | codes equal: codebook 1 "
          f"{equal[0] / frames:.4f}, codebook {b.codes.shape[1]} {equal[1] / frames:.4f} |")


def main() -> None:
    from encodecmae_s3prl.settings import default_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=60.0, help="mean file length")
    parser.add_argument("--batch-sizes", default="1,32", help="windows per EnCodec call, comma-separated")
    args = parser.parse_args()
    from encodecmae_s3prl.demo_data import fit_codec_to_synthetic_audio, harmonic_tone, write_wav
    from encodecmae_s3prl.pretrain_task.codec_cache import CodecCache, build
    from encodecmae_s3prl.pretrain_task.corpus import load_corpus
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model

    model = build_model(model_config_from_yaml({"model": "small", **RANDOM_CODEC}), seed=0)
    fit_codec_to_synthetic_audio(model)
    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i, length in enumerate(args.seconds * rng.uniform(0.5, 1.5, args.files)):
        write_wav(work / "audio" / f"f{i:03d}.wav", harmonic_tone(110 + 7 * i, float(length), 44100, rng), 44100)
    files = load_corpus([str(work / "audio")], progress=False)
    audio_seconds = sum(f.seconds for f in files)
    cuda = args.device.startswith("cuda")
    name = device_name(torch.device(args.device))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rates = {}
    for batch_size in sizes:
        if cuda:  # warm-up: cuDNN picks its kernels for these shapes
            build(files[:4], model.codec, work / f"warm{batch_size}", 8, device=args.device, progress=False,
                  batch_size=batch_size)
            torch.cuda.synchronize()
        start = time.perf_counter()
        build(files, model.codec, work / f"batch{batch_size}", 8, device=args.device, progress=False,
              batch_size=batch_size)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        rates[batch_size] = audio_seconds / elapsed
        print(f"| codec cache build, batch {batch_size} | {args.files} files, {audio_seconds / 60:.1f} min | "
              f"{elapsed:.1f} s | {rates[batch_size]:.0f} audio-s/s = {rates[batch_size] / 60:.1f} audio-hours "
              f"per minute | x{rates[batch_size] / rates[sizes[0]]:.2f} vs batch {sizes[0]} | {name} | "
              f"torch {torch.__version__} |")
    reference = CodecCache.open(work / f"batch{sizes[0]}")
    for batch_size in sizes[1:]:
        compare(f"batch {batch_size} vs batch {sizes[0]}", CodecCache.open(work / f"batch{batch_size}"), reference,
                files)
    if not args.device.startswith("cpu"):
        build(files[:1], model.codec, work / "cpu", 8, device="cpu", progress=False, batch_size=sizes[-1])
        compare(f"{args.device} vs cpu, first file", CodecCache.open(work / f"batch{sizes[-1]}"),
                CodecCache.open(work / "cpu"), files[:1])


if __name__ == "__main__":
    main()
