"""encodecmae-s3prl: EnCodecMAE as an s3prl plugin.

The repository is an overlay of s3prl's tree (``upstream/``, ``pretrain_task/``,
``downstream_probes/`` at the top level); installed, those folders become
subpackages of ``encodecmae_s3prl`` so nothing claims a bare top-level name
(the mapping: ``encodecmae_s3prl/package_layout.py``).
"""
import importlib.util
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

HERE = Path(__file__).resolve().parent


def _package_layout():
    """encodecmae_s3prl/package_layout.py, loaded by its path: nothing is installed yet."""
    spec = importlib.util.spec_from_file_location("package_layout", HERE / "encodecmae_s3prl" / "package_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


package_dir = _package_layout().package_dir(HERE)
packages = list(package_dir)

# Imports the package at interpreter start-up, which only registers an import hook (no torch, no s3prl):
# then `import s3prl.hub` / `from s3prl.nn import S3PRLUpstream` get the compat shims and our entries in any
# import order, even without `import encodecmae_s3prl`. A broken or removed package never breaks start-up.
AUTOLOAD_PTH = "encodecmae_s3prl-autoload.pth"
AUTOLOAD_LINE = "import sys; exec('try:\\n import encodecmae_s3prl\\nexcept Exception:\\n pass')\n"


class build_autoload_pth(Command):
    """Write AUTOLOAD_PTH at the top of site-packages, in wheels and in editable installs alike.

    A regular build puts it in build_lib (copied into the wheel's root). An editable (PEP 660) build
    copies nothing from build_lib: there the file goes straight into the wheel being assembled, which
    setuptools' editable_wheel hands to its build steps as the install command's install_lib.
    """

    description = f"write {AUTOLOAD_PTH}"
    user_options = []
    editable_mode = False  # set by setuptools' editable_wheel

    def initialize_options(self):
        self.build_lib = None
        self.outputs = []

    def finalize_options(self):
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def run(self):
        folder = self.build_lib
        if self.editable_mode:
            folder = getattr(self.get_finalized_command("install"), "install_lib", None) or folder
        target = Path(folder) / AUTOLOAD_PTH
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(AUTOLOAD_LINE)
        self.outputs = [str(target)]

    def get_outputs(self):
        return self.outputs


class build_with_autoload(build):
    sub_commands = build.sub_commands + [("build_autoload_pth", None)]


setup(
    name="encodecmae-s3prl",
    version="0.1.0",
    description="EnCodecMAE (Pepino et al. 2023) as an s3prl upstream, pretraining task and probes",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"": ["*.yaml"], "encodecmae_s3prl.downstream_probes": ["recipe_configs/*/config.yaml"]},
    cmdclass={"build": build_with_autoload, "build_autoload_pth": build_autoload_pth},
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
