"""A new user's mistakes with an upstream or a checkpoint: one ``error:`` line that says what to do, exit 2."""
import numpy as np
import pytest

from encodecmae_s3prl import extract
from encodecmae_s3prl.synthetic import harmonic_tone, write_wav


@pytest.fixture()
def clip(tmp_path):
    return write_wav(tmp_path / "a.wav", harmonic_tone(220, 0.5, 16000, np.random.default_rng(0)), 16000)


def _error_line(capsys, argv) -> str:
    try:
        code = extract.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_local_entry_without_checkpoint(clip, tmp_path, capsys):
    line = _error_line(capsys, ["-u", "encodecmae_local", str(clip), "--out", str(tmp_path / "f")])
    assert "encodecmae_local loads a checkpoint and none was given" in line and "-k PATH" in line


def test_misspelt_upstream_gets_the_closest_names(clip, tmp_path, capsys):
    line = _error_line(capsys, ["-u", "encodecmae_locl", str(clip), "--out", str(tmp_path / "f")])
    assert "did you mean encodecmae_local" in line
    assert "FileLock" not in line and "Path" not in line  # the hub module's imports are not upstreams


@pytest.mark.parametrize("content", [b"just some notes\n", bytes(np.random.default_rng(0).integers(0, 256, 5000,
                                                                                                      np.uint8))])
def test_a_file_that_is_no_checkpoint_is_called_unreadable_not_untrusted(clip, tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    line = _error_line(capsys, ["-u", "encodecmae_local", "-k", str(bad), str(clip), "--out", str(tmp_path / "f")])
    assert f"checkpoint {bad} is not a torch checkpoint" in line
    assert "TRUST" not in line and "allow-list" not in line
