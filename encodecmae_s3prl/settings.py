"""Settings that come from outside the program, each read by one function, once, at a command's edge.

The library never looks at the environment: it takes these values as arguments (``trust=``,
``encodec_weights=``, ``online=``, ``device=``). A command (``run_pretrain.py``, ``run_downstream.py``,
``extract``, ``compare``, ``table1``, the demo, the HEAR API's ``load_model``) reads them here and passes
them down. The environment variables (README, "Environment variables"):

- ``ENCODECMAE_TRUST_CHECKPOINT=1``: the same as ``--trust-checkpoint`` (:func:`trust_checkpoint`);
- ``ENCODEC_CKPT``: where the pretrained EnCodec 24 kHz weights are, or ``random`` (:func:`encodec_weights`);
- ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``: huggingface_hub's own, which :func:`hub_reachable` asks it for;
- ``WORLD_SIZE``, ``LOCAL_RANK``: set by torchrun for each process (:func:`distributed_environment`).

- ``ENCODECMAE_DEBUG=1``: user errors keep their traceback (:func:`debug_enabled`, asked by
  :mod:`encodecmae_s3prl.errors` when a command prints a user error).

``ENCODECMAE_PROBE_PATH`` (:mod:`encodecmae_s3prl.registry`) is read where it acts, outside the library's folders.
This module imports nothing beyond the standard library at import time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

TRUST_ENV = "ENCODECMAE_TRUST_CHECKPOINT"
TRUST_FLAG = "--trust-checkpoint"
ENCODEC_ENV = "ENCODEC_CKPT"
DEBUG_ENV = "ENCODECMAE_DEBUG"


def _true(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def debug_enabled() -> bool:
    """``ENCODECMAE_DEBUG`` set to anything but '', 0, false, no, off: user errors keep their traceback."""
    return _true(os.environ.get(DEBUG_ENV, ""))


def trust_checkpoint(flag: bool = False) -> bool:
    """``--trust-checkpoint`` given, or ``ENCODECMAE_TRUST_CHECKPOINT`` set to anything but '', 0, false, no, off:
    checkpoints that need classes outside the safe allow-list load (running code stored in them)."""
    return bool(flag) or _true(os.environ.get(TRUST_ENV, ""))


def add_trust_flag(parser) -> None:
    """A command's ``--trust-checkpoint`` (argparse); the command passes ``trust_checkpoint(args.trust_checkpoint)``
    down as ``trust=``."""
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help=f"load a checkpoint that needs classes outside the safe allow-list: this runs code stored "
                             f"in the file, only for files you trust (= {TRUST_ENV}=1)")


def encodec_weights() -> Optional[str]:
    """``ENCODEC_CKPT`` as given: a path to ``encodec_24khz-d7cc33bc.th``, ``random`` (the seeded random-init
    EnCodec instead of the pretrained one), or None when unset or ``pretrained`` (the torch hub cache, then a
    download). :func:`encodecmae_s3prl.upstream.codec.locate_encodec_weights` says what each means."""
    value = os.environ.get(ENCODEC_ENV, "").strip()
    return None if value in ("", "pretrained") else value


def default_device() -> str:
    """``cuda`` when this machine has it, else ``cpu`` (s3prl's scripts default to cuda everywhere)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers: False at once when huggingface_hub is offline (``HF_HUB_OFFLINE``),
    else one HEAD request to its endpoint (``HF_ENDPOINT``), no retries; honours the proxy variables."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    import requests

    try:
        requests.head(constants.ENDPOINT, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return True


def distributed_environment() -> tuple[int, int]:
    """(world size, local rank) as torchrun sets them for each process (``WORLD_SIZE``, ``LOCAL_RANK``); (1, 0)
    in a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


@dataclass(frozen=True)
class UpstreamSettings:
    """What our hub entries take besides s3prl's ``ckpt``, ``model_config`` and ``refresh``.

    Attributes:
        trust: load checkpoints that need classes outside the safe allow-list (``--trust-checkpoint``).
        encodec_weights: where the pretrained EnCodec comes from (``ENCODEC_CKPT``; None: the torch hub cache,
            then a download; ``random``: the random-init codec).
        online: whether the Hugging Face hub answers, decided once by the command (None: the published
            entries ask :func:`hub_reachable` when they need the hub).
        precision: the inference autocast of our upstreams (``--precision``: 'auto', 'bf16', 'fp32'); the
            library's default is fp32, the commands' 'auto' (bf16 where the device runs it natively).
    """

    trust: bool = False
    encodec_weights: Optional[str] = None
    online: Optional[bool] = None
    precision: str = "fp32"

    @classmethod
    def from_environment(cls, trust: bool = False, online: Optional[bool] = None,
                         precision: str = "auto") -> "UpstreamSettings":
        """A command's settings: ``trust`` from its flag or ``ENCODECMAE_TRUST_CHECKPOINT``, the EnCodec weights
        from ``ENCODEC_CKPT``, ``precision`` from its ``--precision`` (commands default to 'auto')."""
        return cls(trust=trust_checkpoint(trust), encodec_weights=encodec_weights(), online=online,
                   precision=precision)


def add_precision_flag(parser) -> None:
    """A command's ``--precision`` (argparse), passed down as ``UpstreamSettings.precision``."""
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="the transformer's autocast at inference: auto = bf16 where the device runs it natively "
                             "(CUDA with bf16, AVX-512 BF16 / AMX CPUs), else fp32 (default: auto); EnCodec stays fp32")
