"""GTZAN genre (10 classes), the paper's GC column: accuracy, 10-fold CV (datarc.test_fold)."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.gtzan_genre.dataset import build_splits


class DownstreamExpert(PooledProbeExpert):
    def build_splits(self, root):
        return build_splits(root, self.datarc.get("test_fold", "fold1"))
