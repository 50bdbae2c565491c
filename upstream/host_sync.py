"""Find where a block of code makes the host wait on the device: ``forbid_host_syncs(device)``.

On CUDA it is torch's own sync debug mode set to ``"error"``: every call that waits on the GPU raises (a scalar
read, a blocking copy, a shape that depends on data). On a CPU, where the host never waits, the same mistakes are
caught by the torch operations they go through, so that a CPU test shows what a GPU run would flag: a scalar read
(``.item()``, ``bool()``, ``int()``, ``float()``, a tensor used as an index: all ``aten._local_scalar_dense``), a
comparison answered on the host (``torch.equal``, ``torch.allclose``), an output whose shape depends on values
(``nonzero``, ``masked_select``, ``unique``, indexing with a bool mask), and a copy to the host (``.cpu()``,
``.tolist()``, ``.numpy()``). Blocking host->device copies cannot be told apart on a CPU; only CUDA sees them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


class HostSyncError(RuntimeError):
    """An operation inside ``forbid_host_syncs`` would make the host wait on the device."""


_aten = torch.ops.aten
# operations that read values on the host, or give a shape only the values decide
_SYNCING_OPS = {
    _aten._local_scalar_dense.default, _aten.item.default, _aten.is_nonzero.default, _aten.equal.default,
    _aten.allclose.default, _aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default,
    _aten.unique_dim.default, _aten.unique_consecutive.default, _aten.repeat_interleave.Tensor,
}
_INDEXING_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}
_HOST_COPIES = {torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__array__}


class _SyncingOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING_OPS:
            raise HostSyncError(f"{func} reads the device on the host (a sync)")
        if func in _INDEXING_OPS and any(index is not None and index.dtype in (torch.bool, torch.uint8)
                                         for index in args[1]):
            raise HostSyncError(f"{func} with a bool mask gives a shape that depends on the values (a sync)")
        return func(*args, **(kwargs or {}))


class _HostCopies(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _HOST_COPIES:
            raise HostSyncError(f"Tensor.{func.__name__}() copies to the host (a sync)")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbid_host_syncs(device: torch.device | str) -> Iterator[None]:
    """Raise inside the block at the first operation that makes the host wait on ``device`` (``HostSyncError`` on
    a CPU, torch's RuntimeError on CUDA). Not for timed code: on a CPU every operation goes through Python."""
    if torch.device(device).type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return
    with _HostCopies(), _SyncingOps():
        yield
