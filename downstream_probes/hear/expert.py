"""Any HEAR 2021 scene task: accuracy (pitch/chroma accuracy when the task evaluates them), or mAP if multilabel."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.hear.dataset import build_splits


class DownstreamExpert(PooledProbeExpert):
    def build_splits(self, root):
        splits, classes, meta = build_splits(root, self.datarc.get("test_fold"))
        self.multilabel = meta["prediction_type"] == "multilabel"
        evaluation = meta.get("evaluation", [])
        if self.multilabel:
            self.metrics = ("mAP",)
        elif "pitch_acc" in evaluation:
            self.metrics = ("pitch_acc", "chroma_acc")
        else:
            self.metrics = ("acc",)
        return splits, classes
