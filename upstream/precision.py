"""Which autocast dtype is worth using on a device: one decision, used by training and extraction.

bf16 autocast is the lever on GPUs and on CPUs with native bf16 matmuls (AVX-512 BF16 / AMX);
on a CPU without them torch emulates bf16 matmuls, orders of magnitude slower than fp32 (measured in
benchmarks/README.md), so 'auto' stays fp32 there.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
INFERENCE_PRECISIONS = ("auto", "bf16", "fp32")  # extraction: bf16 where native (auto), or forced, or fp32


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype to autocast to (None = plain fp32). 'auto' picks bf16 only where it is fast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None  # fp16 would need a GradScaler
    return torch.bfloat16 if device_type == "cpu" and cpu_has_fast_bf16() else None


def autocast(device: str | torch.device, precision: str = "auto"):
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def resolved_name(device: str | torch.device, precision: str = "auto") -> str:
    """What ``precision`` runs as on ``device``: 'bf16', 'fp16' or 'fp32' (what outputs record)."""
    dtype = autocast_dtype(device, precision)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
