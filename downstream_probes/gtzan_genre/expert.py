"""GTZAN genre (10 classes), the paper's GC column: accuracy, 10-fold CV (datarc.test_fold)."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.gtzan_genre.dataset import FOLD_NAMES, LAYOUT, build_splits


class DownstreamExpert(PooledProbeExpert):
    layout = LAYOUT

    @classmethod
    def folds(cls, root):
        return list(FOLD_NAMES)

    def build_splits(self, root):
        return build_splits(root, self.datarc.get("test_fold"))
