"""The machine's ceiling and the model's cost, for the 'distance to the limit' figures.

``matmul_gflops`` is what a plain square matmul sustains (the best a transformer can hope for);
``count_gflop`` counts the FLOPs torch dispatches for one call (matmuls, convolutions, attention).
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def count_gflop(fn) -> float:
    """GFLOP of one call of ``fn()`` (forward, and backward if ``fn`` runs it)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9
