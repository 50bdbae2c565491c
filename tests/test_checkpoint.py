"""Checkpoints load without running code from them, and are written atomically."""
import argparse
import datetime
import os
import pickle

import pytest
import torch

from encodecmae_s3prl import settings
from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.upstream.checkpoint import CheckpointError, atomic_save, safe_load


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    assert "ENCODECMAE_TRUST_CHECKPOINT" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_s3prl_style_checkpoint_with_namespace_loads(tmp_path):
    path = tmp_path / "states-1.ckpt"
    atomic_save({"Args": argparse.Namespace(a=1), "Config": {"x": [1, 2]}, "w": torch.ones(2)}, path)
    loaded = safe_load(path)
    assert loaded["Args"].a == 1 and torch.equal(loaded["w"], torch.ones(2))
    # plain torch.load under torch's default (weights_only) works too once the plugin registered the allow-list
    assert torch.load(path)["Args"].a == 1


def test_missing_empty_and_truncated_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path / "nope.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        safe_load(tmp_path / "empty.ckpt")
    full = tmp_path / "full.ckpt"
    atomic_save({"w": torch.randn(1000)}, full)
    (tmp_path / "cut.ckpt").write_bytes(full.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated"):
        safe_load(tmp_path / "cut.ckpt")
    # trusted or not, bytes torch cannot parse are the same clear error, not a traceback from deep in pickle
    (tmp_path / "random.ckpt").write_bytes(bytes(range(256)) * 8)
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="not a torch checkpoint"):
            safe_load(tmp_path / "random.ckpt", trust=trust)
        with pytest.raises(CheckpointError, match="truncated"):
            safe_load(tmp_path / "cut.ckpt", trust=trust)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.ckpt"
    atomic_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("boom")

    with pytest.raises(pickle.PicklingError, match="boom"):
        atomic_save({"v": Unpicklable()}, path)
    assert safe_load(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def test_trust_is_an_argument_read_from_the_environment_only_by_commands(tmp_path, monkeypatch):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"Args": datetime.timedelta(days=1)}, path)
    monkeypatch.setenv(settings.TRUST_ENV, "1")
    with pytest.raises(CheckpointError, match="refused to load") as refused:  # the library takes trust= only
        safe_load(path)
    assert isinstance(refused.value, UserError)
    assert safe_load(path, trust=True)["Args"] == datetime.timedelta(days=1)
    assert settings.trust_checkpoint()  # what a command passes as trust=
    monkeypatch.setenv(settings.TRUST_ENV, "0")
    assert not settings.trust_checkpoint() and settings.trust_checkpoint(flag=True)
