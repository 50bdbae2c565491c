"""The machine a recorded figure comes from, named the same way by every command and benchmark that records one: the
CPU model, the CPU flags that decide bf16 on a CPU (AVX2 alone emulates it; AVX-512 BF16 and AMX run it natively),
cores, torch version and threads, and the GPU when torch sees one."""
from __future__ import annotations

import os
import platform
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpuinfo() -> tuple[str, set]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_flags() -> str:
    """Which of CPU_FLAGS this CPU has, joined by '+' ('avx2+avx512f+avx512_bf16')."""
    flags = _cpuinfo()[1]
    return "+".join(f for f in CPU_FLAGS if f in flags) or "none of " + "/".join(CPU_FLAGS)


def describe() -> str:
    """One line: CPU model, cores, CPU flags present and absent, torch version and threads, the GPU if any."""
    import torch

    model, flags = _cpuinfo()
    present = [f for f in CPU_FLAGS if f in flags]
    absent = [f for f in CPU_FLAGS if f not in flags]
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    return (f"{model}, {os.cpu_count()} cores; CPU flags: {', '.join(present) or 'none'} present"
            + (f", {', '.join(absent)} absent" if absent else "")
            + f"; torch {torch.__version__}, {torch.get_num_threads()} thread(s){gpu}")
