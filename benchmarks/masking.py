"""Span masking: time per batch of 128 x 300 frames for both recipes, and the masking statistics of the
v1 layout beside the authors' own TimeGapMask (run from a scratch checkout of their code, never copied).

    .venv/bin/python benchmarks/masking.py [--reference /tmp/ecmae_v1] [--clips 20000]

--reference: a folder holding their repository at tag v.1.0.0 (git archive v.1.0.0 | tar x -C DIR); its
encodecmae/tasks/models/encodecmae/masking.py is imported alone (it needs only numpy, torch and random).
"""
import argparse
import importlib.util
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from encodecmae_s3prl.upstream.masking import span_mask


def figures(mask: np.ndarray) -> str:
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    runs = np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]
    counts = mask.sum(1)
    return (f"masked {counts.min()}..{counts.max()} | runs/clip {(edges == 1).sum(1).mean():.4f} | mean run "
            f"{runs.mean():.3f} | runs > 15 {(runs > 15).mean():.4f} | P(frame 0) {mask[:, 0].mean():.4f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", type=Path, help="scratch checkout of the authors' code at v.1.0.0")
    parser.add_argument("--clips", type=int, default=20_000)
    args = parser.parse_args()
    lengths = torch.full((128,), 300)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for recipe in ("v1", "paper"):
            generator = torch.Generator().manual_seed(0)
            for _ in range(20):
                span_mask(lengths, 300, generator=generator, recipe=recipe)
            times = []
            for _ in range(15):
                start = time.perf_counter()
                for _ in range(20):
                    span_mask(lengths, 300, generator=generator, recipe=recipe)
                times.append((time.perf_counter() - start) / 20)
            median = statistics.median(times) * 1e3
            print(f"| span_mask recipe={recipe}, 128 x 300, {threads} thread(s) | median {median:.2f} ms "
                  f"(min {min(times) * 1e3:.2f}) |")
    reference = None
    if args.reference:
        path = args.reference / "encodecmae/tasks/models/encodecmae/masking.py"
        spec = importlib.util.spec_from_file_location("timegapmask_v1", path)
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
        random.seed(0)
        masker = reference.TimeGapMask(gap_size=15, mask_prop=0.5)
        start = time.perf_counter()
        masker.create_mask(torch.zeros(128, 300, 1), None, 15, lengths)
        print(f"| TimeGapMask.create_mask, 128 x 300 | {(time.perf_counter() - start) * 1e3:.1f} ms |")
    for frames in (75, 300, 301):
        for prop in (0.5, 0.3):
            ours = span_mask(torch.full((args.clips,), frames), frames, prop, 15,
                             torch.Generator().manual_seed(frames), recipe="v1").numpy()
            print(f"L={frames} prop={prop} ours v1    | {figures(ours)}")
            if reference is not None:
                masker = reference.TimeGapMask(gap_size=15, mask_prop=prop)
                theirs = np.concatenate([masker.create_mask(torch.zeros(500, frames, 1), None, 15,
                                                            torch.full((500,), frames)).numpy()
                                         for _ in range(args.clips // 500)])
                print(f"L={frames} prop={prop} TimeGapMask | {figures(theirs)}")


if __name__ == "__main__":
    main()
