"""Files that appear whole or not at all: write beside the target, fsync, rename over it.

A process killed mid-write (SIGKILL included) leaves the previous file, or none, under the final name, and at
worst a hidden ``.<name>.<pid>-<random>.tmp`` beside it that no reader ever takes as done and a rerun deletes
(:func:`remove_temporaries`); a full disk is a ``DiskFullError`` naming the file, with the temporary removed.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from encodecmae_s3prl.errors import UserError


class DiskFullError(UserError, OSError):
    """No space left while writing a file: what was being written and where."""


# atomic_write's temporaries, as mkstemp names them: "." + the target's name + "." + the writer's process id + "-" +
# 8 random characters + ".tmp"; nothing else is ever taken for one
_TEMPORARY = re.compile(r"\..+\.(?P<pid>[0-9]+)-[a-z0-9_]{8}\.tmp")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (this one and other users' included)."""
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the process is only looked up
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's; a number no process has: not ours, left alone
        return True
    return True


def remove_temporaries(folders: str | os.PathLike | Iterable[str | os.PathLike]) -> int:
    """Delete the temporaries that killed writers left in ``folders`` (one or several; not their subfolders), for
    a command that resumes there: only :func:`atomic_write`'s names, never another file, and not those of a
    writer still running on this machine (builders of one folder side by side). Returns how many there were."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    stale = [path for folder in folders for path in Path(folder).glob(".*.tmp")
             if (name := _TEMPORARY.fullmatch(path.name)) and not _running(int(name["pid"]))]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """``write(handle)`` into a temporary file in ``path``'s folder, then rename it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        full = _out_of_space(err, path.parent)  # before the temporary's space is freed again
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise DiskFullError(errno.ENOSPC, f"no space left on the device while writing {path}; free some space "
                                              f"there (or choose another output folder) and rerun") from None
        raise
    return path


_NEARLY_FULL = 1 << 20  # bytes: a write that failed with less than this left was a full disk


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space. numpy's C writer ("N requested and M written") and torch's zip
    writer ("unexpected pos") report a full disk without ENOSPC, so the space left decides for them."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    if not isinstance(err, (OSError, RuntimeError)):
        return False
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _NEARLY_FULL


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def replace_folder(built: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A folder built completely beside ``path`` (``built``) takes its place: the old one is removed first, so a
    crash in between leaves no folder under ``path`` (readers rebuild) but never a mixture of old and new files."""
    import shutil

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    os.replace(built, path)
    return path
