"""The machine's ceiling and the model's cost, for the 'distance to the limit' figures.

``matmul_gflops`` is what a plain square matmul sustains (the best a transformer can hope for);
``count_gflop`` counts the FLOPs torch dispatches for one call (matmuls, convolutions, attention).
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                  repeats: int = 10) -> float:
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


def device_name(device: torch.device) -> str:
    """The device as a figure names it: the GPU's model, or the CPU with its torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} x{torch.get_num_threads()}"


def count_gflop(fn) -> float:
    """GFLOP of one call of ``fn()`` (forward, and backward if ``fn`` runs it)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main():
    """Print the matmul ceilings: fp32, and bf16 (which decides whether bf16 autocast pays off here)."""
    import argparse

    from encodecmae_s3prl.settings import default_device

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--device", default=default_device())
    args = parser.parse_args()
    device = torch.device(args.device)
    fp32 = matmul_gflops(device)
    # emulated bf16 on an AVX2-only CPU is ~1000x slower: a smaller matmul keeps this to seconds
    size = 2048 if device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported() else 512
    bf16 = matmul_gflops(device, torch.bfloat16, size=size, repeats=3)
    print(f"| matmul ceiling | fp32 2048²: {fp32:.1f} GFLOP/s | bf16 {size}²: {bf16:.2f} GFLOP/s | "
          f"bf16/fp32 = {bf16 / fp32:.3g} | {device} |")


if __name__ == "__main__":
    main()
