"""Files written whole or not at all: a failure (a full disk included) leaves the previous file and no temporary."""
import errno

import pytest

from encodecmae_s3prl.errors import user_error_message
from encodecmae_s3prl.upstream.atomic import DiskFullError, atomic_write, atomic_write_text, remove_temporaries


def test_full_disk_is_one_clear_error_and_the_previous_file_survives(tmp_path):
    target = atomic_write_text(tmp_path / "table.md", "the good table\n")

    def fills_the_disk(handle):
        handle.write(b"half of a new ")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        atomic_write(target, fills_the_disk)
    assert str(target) in str(err.value) and "free some space" in str(err.value)
    assert user_error_message(err.value) is not None  # a command prints it as one error: line
    assert target.read_text() == "the good table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temporary left


def test_an_interrupt_mid_write_leaves_nothing_under_the_final_name(tmp_path):
    def interrupted(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.npy", interrupted)
    assert not any(tmp_path.iterdir())


def test_a_rerun_removes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    import signal
    import subprocess
    import sys

    sub = tmp_path / "sub"
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\n"
                             "from encodecmae_s3prl.upstream.atomic import atomic_write\n"
                             "atomic_write(sys.argv[1], lambda handle: os.kill(os.getpid(), signal.SIGKILL))",
                             str(sub / "x.npy")])
    assert killed.returncode == -signal.SIGKILL
    [left] = sub.iterdir()
    assert left.name.startswith(".x.npy.") and left.name.endswith(".tmp")
    users = [".notes.tmp", ".backup.20240101.tmp", ".x.npy.tmp", "x.npy.1-abcdefgh.tmp"]
    for name in users:
        (sub / name).write_text("the user's")
    assert remove_temporaries(tmp_path) == 0 and left.exists()  # a folder's own files, not its subfolders'
    removed = []

    def removing_while_writing(handle):  # this process's temporary is being written: left alone
        handle.write(b"y")
        removed.append(remove_temporaries([tmp_path, sub]))

    atomic_write(sub / "y.npy", removing_while_writing)
    assert removed == [1] and not left.exists() and (sub / "y.npy").read_bytes() == b"y"
    assert sorted(p.name for p in sub.iterdir()) == sorted(users + ["y.npy"])
