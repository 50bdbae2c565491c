"""ESC-50 (50 classes), the paper's ESC column: accuracy, 5-fold CV (datarc.test_fold)."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.esc50.dataset import LAYOUT, build_splits, folds


class DownstreamExpert(PooledProbeExpert):
    layout = LAYOUT

    @classmethod
    def folds(cls, root):
        return folds(root)

    def build_splits(self, root):
        return build_splits(root, self.datarc.get("test_fold"))
