"""Pretraining input pipeline: fairseq2 data pipeline (CropLoader) vs a torch DataLoader, same crops.

    .venv/bin/python benchmarks/data_pipeline.py [--files 40] [--batch 32] [--batches 20] [--workers 2]

Writes a synthetic corpus (mixed 16/44.1/48 kHz, mono/stereo, 30 s files) to a temp folder, then
times how many 4 s crops per second each loader delivers at 24 kHz mono.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from encodecmae_s3prl.demo_data import harmonic_tone, write_wav
from encodecmae_s3prl.pretrain_task.corpus import CropLoader, CropSampler, load_corpus


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp()  # kept: pipelines may still prefetch from it as the script exits
    if True:
        for i in range(args.files):
            rate = [16000, 44100, 48000][i % 3]
            wav = harmonic_tone(100 + 10 * i, 30.0, rate, rng)
            write_wav(Path(tmp) / f"f{i}.wav", np.stack([wav, wav], 1) if i % 2 else wav, rate)
        sampler = CropSampler(load_corpus([tmp], progress=False), args.batch, seed=0)

        rates = {}
        for backend in CropLoader.BACKENDS:
            stream = iter(CropLoader(sampler, num_workers=args.workers, backend=backend))
            next(stream)
            start = time.perf_counter()
            for _ in range(args.batches):
                next(stream)
            rates[backend] = args.batches * args.batch / (time.perf_counter() - start)
            del stream
        fairseq2_rate, torch_rate = rates["fairseq2"], rates["torch"]
    print(f"| crops/s, fairseq2 pipeline ({args.workers} threads) | {fairseq2_rate:.0f} |")
    print(f"| crops/s, torch DataLoader ({args.workers} workers) | {torch_rate:.0f} |")
    print(f"| ratio fairseq2 / DataLoader | {fairseq2_rate / torch_rate:.2f} |")


if __name__ == "__main__":
    main()
