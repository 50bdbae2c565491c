"""Checkpoint I/O that never runs code from a file and never leaves a half-written file.

Every checkpoint is a pickle, which can carry code. We load with ``weights_only=True`` plus an
explicit allow-list of the plain classes that s3prl and Lightning store; anything else
is refused with a message that names the class and the opt-in for trusted files.
"""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from encodecmae_s3prl.errors import ConfigError, UserError
from encodecmae_s3prl.settings import TRUST_ENV
from encodecmae_s3prl.upstream.atomic import atomic_write

# The only non-tensor, non-builtin classes found in checkpoints we load:
# s3prl stores its CLI args as an argparse.Namespace; Lightning-era files store pathlib paths.
SAFE_GLOBALS = (argparse.Namespace, Path, type(Path(".")))


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, truncated, unsafe or of the wrong kind."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs classes outside the safe allow-list, loaded without ``trust``."""


class CheckpointNotGivenError(ConfigError):
    """An upstream that loads a checkpoint was given no path; the command adds its option for one."""


def register_safe_globals() -> None:
    """Allow-list SAFE_GLOBALS for every ``torch.load(weights_only=True)`` in the process."""
    torch.serialization.add_safe_globals([*SAFE_GLOBALS])


def safe_load(path: str | os.PathLike, trust: bool = False, map_location: Any = "cpu") -> Any:
    """Load a torch checkpoint without executing code from it.

    ``trust=True`` is the explicit opt-in for a file that needs other classes; it is never taken silently
    (commands pass ``--trust-checkpoint`` / ``ENCODECMAE_TRUST_CHECKPOINT=1`` as it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; check the path (a states-N.ckpt or a published model.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the file is truncated, copy or download it "
                              "again.")
    register_safe_globals()
    if trust:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError,
                IndexError) as err:  # trusted or not, a file torch cannot parse is the user's file, not our bug
            raise _unreadable(path, err) from None
    try:
        # memory-mapped: tensors are read from the file as they are used, not copied in first
        return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if not _names_a_class(err):  # torch reports any unpickling failure this way: random bytes, a text file
            raise _unreadable(path, err) from None
        raise UntrustedCheckpointError(
            f"refused to load {path}: it needs a class outside the safe allow-list ({_first_line(err)}). "
            f"Loading it would run code stored in the file. If you trust who wrote it, set {TRUST_ENV}=1"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError, IndexError) as err:
        raise _unreadable(path, err) from None


def _names_a_class(err: BaseException) -> bool:
    """torch's weights-only refusal of a class (``Unsupported global: GLOBAL x.y``), not a file it cannot parse."""
    return "Unsupported global" in str(err) or "GLOBAL" in str(err)


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == b"PK" and not zipfile.is_zipfile(path):
        what = "it is truncated (a zip archive without its end)"
    elif not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        what = "it is not a torch checkpoint (neither a zip archive nor a pickle)"
    else:
        what = f"{_first_line(err)[:160]}: probably truncated or not a torch checkpoint"
    return CheckpointError(f"cannot read checkpoint {path}: {what}; give the states-N.ckpt written by "
                           f"run_pretrain.py or a published model.pt, or copy / download it again")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.split(" Please use", 1)[0]  # torch's advice would allow-list the class: not ours to give
    return text.splitlines()[0] if text else type(err).__name__


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that a crash mid-write never leaves truncated under ``path`` (``atomic_write``)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))
