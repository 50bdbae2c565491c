"""The s3prl DownstreamExpert of every probe folder (one that ships no ``expert.py`` of its own).

s3prl's runner imports ``s3prl.downstream.<probe>.expert`` and builds ``DownstreamExpert(upstream_dim=...,
upstream_rate=..., **config, **vars(args))``; the registry answers that name with this module for every probe
folder, and ``args.downstream`` (``-d NAME``) says whose ``dataset.py`` to read.
"""
from __future__ import annotations

from pathlib import Path

from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert, ProbeDataError, load_probe_task


class DownstreamExpert(PooledProbeExpert):
    def __init__(self, upstream_dim: int, downstream_expert: dict, expdir: str, downstream: str, **kwargs):
        datarc = dict(downstream_expert["datarc"])
        root = datarc.get("root")
        if not root or not Path(root).is_dir():
            raise ProbeDataError(f"downstream_expert.datarc.root = {root!r} is not a folder: set it in the probe's "
                                 f"config.yaml or with -o config.downstream_expert.datarc.root=/path/to/dataset")
        task = load_probe_task(downstream, root, datarc.get("test_fold"))
        super().__init__(upstream_dim, task, expdir, datarc, downstream_expert.get("modelrc"))
