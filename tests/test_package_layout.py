"""The folder-to-package mapping (package_layout.py), the one that setup.py, scripts/typecheck.sh, the benchmark
scripts and compat all use."""
from pathlib import Path

import encodecmae_s3prl.downstream_probes.esc50
import encodecmae_s3prl.pretrain_task
import encodecmae_s3prl.upstream
from encodecmae_s3prl.package_layout import is_checkout_root, lay_out, package_dir

ROOT = Path(__file__).resolve().parent.parent


def test_the_checkout_laid_out_as_installed(tmp_path):
    folders = package_dir(ROOT)
    assert folders["encodecmae_s3prl.upstream"] == "upstream"
    assert folders["encodecmae_s3prl.downstream_probes.esc50"] == "downstream_probes/esc50"  # probes found
    for module in (encodecmae_s3prl.upstream, encodecmae_s3prl.pretrain_task,
                   encodecmae_s3prl.downstream_probes.esc50):  # the installed package is this mapping
        assert Path(module.__file__).parent.resolve() == (ROOT / folders[module.__name__]).resolve()
    tree = lay_out(ROOT, tmp_path / "tree")
    for package, folder in folders.items():  # each package's modules are its folder's
        laid = tree.joinpath(*package.split("."), "__init__.py")
        assert laid.resolve() == (ROOT / folder / "__init__.py").resolve(), package
    assert (tree / "encodecmae_s3prl" / "errors.py").resolve() == (ROOT / "encodecmae_s3prl" / "errors.py").resolve()
    assert not list(ROOT.glob("encodecmae_s3prl/upstream"))  # nothing written into the checkout


def test_a_checkout_root_is_told_from_other_folders(tmp_path):
    assert is_checkout_root(ROOT) and not is_checkout_root(tmp_path) and not is_checkout_root(ROOT / "upstream")
