"""Any HEAR 2021 scene task: accuracy (pitch/chroma accuracy when the task evaluates them), or mAP if multilabel."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.hear.dataset import LAYOUT, build_splits, folds, metrics


class DownstreamExpert(PooledProbeExpert):
    layout = LAYOUT

    @classmethod
    def folds(cls, root):
        return folds(root)

    def build_splits(self, root):
        splits, classes, meta = build_splits(root, self.datarc.get("test_fold"))
        self.multilabel = meta["prediction_type"] == "multilabel"
        self.metrics = metrics(meta)
        return splits, classes
