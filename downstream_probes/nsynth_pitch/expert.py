"""NSynth pitch (88 classes), the paper's NS column: pitch accuracy and chroma accuracy."""
from encodecmae_s3prl.downstream_probes.common import PooledProbeExpert
from encodecmae_s3prl.downstream_probes.nsynth_pitch.dataset import LAYOUT, build_splits


class DownstreamExpert(PooledProbeExpert):
    metrics = ("pitch_acc", "chroma_acc")
    layout = LAYOUT

    def build_splits(self, root):
        return build_splits(root)
