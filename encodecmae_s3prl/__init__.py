"""EnCodecMAE for s3prl: importing this package registers the plugin with s3prl.

After ``import encodecmae_s3prl``, ``s3prl.hub`` has our upstream entries, ``pretrain.encodecmae``
is s3prl's name for our pretraining task and ``s3prl.downstream.<probe>`` names our probes.
s3prl is imported lazily, so ``encodecmae_s3prl.upstream`` works without it.
"""
from encodecmae_s3prl.registry import register

register()
