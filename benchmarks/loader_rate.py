"""The pretraining loader alone: cache reader + crops + collation + span masks, per DataLoader worker process.

    .venv/bin/python benchmarks/loader_rate.py [--workers 0,1,2] [--batch 128] [--batches 20] [--audio]

Builds the codec cache of a synthetic corpus through the pretraining task itself (``datarc.codec_cache``: the
cache a run would build), then times ``CropLoader`` over it with 0, 1, 2... worker processes: batches of
--batch crops of 4 s, no model. A training step consumes ``batch x 4`` audio-seconds; a loader keeps up when its
audio-s/s is above the step's, so the workers a GPU needs = the step's audio-s/s / one worker's (the last
column). ``--audio`` also times the loader without a cache (read, mix down, resample to 24 kHz, crop).
With CUDA, ``--pin`` pins the batches (as training does on a GPU) and times the copy to the device apart.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}


def write_corpus(folder: Path, files: int, seconds: float) -> None:
    from encodecmae_s3prl.demo_data import harmonic_tone, write_wav

    rng = np.random.default_rng(0)
    for i in range(files):
        rate = [16000, 44100, 48000][i % 3]
        write_wav(folder / f"f{i:03d}.wav", harmonic_tone(100 + 10 * i, seconds, rate, rng), rate)


def expert_with_cache(corpus: Path, cache: Path, batch: int, crop_seconds: float, size: str = "tiny",
                      workers: int = 0, device: str = "cpu", precision: str = "fp32"):
    """The pretraining task over ``corpus``, its codec cache built at start on ``device`` (recipe v1, the named
    sizes' masks, which the loader draws). The tiny model by default: the loader alone does not care; a named size
    and ``workers`` for a step fed as training feeds it (``get_train_dataloader``; train_throughput.py)."""
    from encodecmae_s3prl.pretrain_task.pretrain_expert import UpstreamPretrainExpert

    datarc = {"corpus": [str(corpus)], "train_batch_size": batch, "crop_seconds": crop_seconds,
              "num_workers": workers, "codec_cache": str(cache), "codec_init_clips": 8, "precision": precision}
    return UpstreamPretrainExpert(datarc, {"model": size, "recipe": "v1", **RANDOM_CODEC}, device=device)


def time_loader(sampler, masks, workers: int, batches: int, pin: bool, device: str) -> tuple[float, float]:
    """(seconds per batch from the loader, seconds per batch for the host-to-device copy; 0 on the CPU)."""
    from encodecmae_s3prl.pretrain_task.corpus import CropLoader

    stream = iter(CropLoader(sampler, num_workers=workers, prefetch=2, pin_memory=pin, masks=masks))
    next(stream)  # workers started, first batches in flight
    loading = copying = 0.0
    for _ in range(batches):
        start = time.perf_counter()
        batch = next(stream)
        loading += time.perf_counter() - start
        if pin:  # CropBatch.pin_memory ran in the DataLoader's pinning thread
            assert all(t.is_pinned() for t in (batch.features, batch.codes, batch.wavs, batch.mask.mask)
                       if t is not None)
        if device != "cpu":
            start = time.perf_counter()
            for tensor in (batch.features, batch.codes, batch.wavs, batch.mask.mask):
                if tensor is not None:
                    tensor.to(device, non_blocking=pin)
            torch.cuda.synchronize()
            copying += time.perf_counter() - start
    del stream
    return loading / batches, copying / batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="0,1,2", help="worker process counts to time")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--crop-seconds", type=float, default=4.0)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each corpus file")
    parser.add_argument("--audio", action="store_true", help="also time crops read from the audio (no cache)")
    parser.add_argument("--pin", action="store_true", help="pinned batches (with --device cuda)")
    parser.add_argument("--device", default="cpu",
                        help="where the codec cache is built and batches are copied to (cuda: the copy is timed)")
    parser.add_argument("--work", type=Path, help="folder for the corpus and cache (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp())
    corpus = work / "corpus"
    if not corpus.is_dir():
        write_corpus(corpus, args.files, args.seconds)
    expert = expert_with_cache(corpus, work / "cache", args.batch, args.crop_seconds, device=args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    audio_per_batch = args.batch * args.crop_seconds
    print(f"loader alone: batch {args.batch} x {args.crop_seconds:g} s, {args.batches} batches, {cores} cores, "
          f"torch {torch.__version__}, {args.files} files x {args.seconds:g} s")
    print("| source | workers | s/batch | audio-s/s | audio-s/s per worker | copy to device s/batch |")
    print("|---|---|---|---|---|---|")
    sources = [("codec cache", expert.sampler)]
    if args.audio:
        from encodecmae_s3prl.pretrain_task.corpus import CropSampler, load_corpus

        sources.append(("audio", CropSampler(load_corpus([str(corpus)], progress=False), args.batch,
                                             args.crop_seconds, seed=0)))
    for name, sampler in sources:
        for workers in (int(w) for w in args.workers.split(",")):
            per_batch, copy = time_loader(sampler, expert.masks, workers, args.batches, args.pin, args.device)
            rate = audio_per_batch / per_batch
            print(f"| {name} | {workers} | {per_batch:.4f} | {rate:.0f} | {rate / max(1, workers):.0f} | "
                  f"{copy:.4f} |")


if __name__ == "__main__":
    main()
