"""FSD50K (200 classes, multi-label), the paper's FSD column: sigmoid BCE, mAP."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.fsd50k.dataset import LAYOUT, build_splits


class DownstreamExpert(PooledProbeExpert):
    metrics = ("mAP",)
    multilabel = True
    layout = LAYOUT

    def build_splits(self, root):
        return build_splits(root)
