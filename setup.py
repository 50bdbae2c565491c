"""encodecmae-s3prl: EnCodecMAE as an s3prl plugin.

The repository is an overlay of s3prl's tree (``upstream/``, ``pretrain_task/``,
``downstream_probes/`` at the top level); installed, those folders become
subpackages of ``encodecmae_s3prl`` so nothing claims a bare top-level name.
"""
from pathlib import Path

from setuptools import setup

SUBPACKAGE_ROOTS = {
    "encodecmae_s3prl": "encodecmae_s3prl",
    "encodecmae_s3prl.upstream": "upstream",
    "encodecmae_s3prl.pretrain_task": "pretrain_task",
    "encodecmae_s3prl.downstream_probes": "downstream_probes",
}

HERE = Path(__file__).resolve().parent
# every downstream_probes/<name>/ folder is one probe package (an s3prl recipe)
PROBES = sorted(p.name for p in (HERE / "downstream_probes").iterdir() if (p / "__init__.py").is_file())

packages = list(SUBPACKAGE_ROOTS) + [f"encodecmae_s3prl.downstream_probes.{p}" for p in PROBES]
package_dir = dict(SUBPACKAGE_ROOTS)
package_dir.update({f"encodecmae_s3prl.downstream_probes.{p}": f"downstream_probes/{p}" for p in PROBES})

setup(
    name="encodecmae-s3prl",
    version="0.1.0",
    description="EnCodecMAE (Pepino et al. 2023) as an s3prl upstream, pretraining task and probes",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"": ["*.yaml"]},
    include_package_data=True,
    install_requires=[
        "torch==2.9.1",
        "torchaudio==2.9.1",
        "fairseq2==0.8.1",
        "s3prl==0.4.18",
        "encodec==0.1.1",
        "numpy",
        "soundfile",
        "pyyaml",
        "tensorboardX",
        "tqdm",
    ],
)
