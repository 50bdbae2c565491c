"""Which folder of a checkout each package of ``encodecmae_s3prl`` comes from, in one place.

The repository is an overlay of s3prl's tree: ``upstream/``, ``pretrain_task/`` and ``downstream_probes/`` sit at
its top level, as in s3prl; installed, they become subpackages of ``encodecmae_s3prl`` so that nothing claims a
bare top-level name. setup.py installs by this mapping; scripts/typecheck.sh and the benchmark scripts that run a
checkout without installing it lay the package out by it; ``compat`` keeps a checkout's top-level folders from
shadowing s3prl's. Standard library only, and loadable by file path (setup.py runs before anything is installed):

    python encodecmae_s3prl/package_layout.py TREE [--root CHECKOUT] [--copy]   # TREE/encodecmae_s3prl/...
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Dict, Sequence

ROOT_PACKAGE = "encodecmae_s3prl"
# package -> folder, relative to the checkout's root
SUBPACKAGE_ROOTS = {
    "encodecmae_s3prl": "encodecmae_s3prl",
    "encodecmae_s3prl.upstream": "upstream",
    "encodecmae_s3prl.pretrain_task": "pretrain_task",
    "encodecmae_s3prl.downstream_probes": "downstream_probes",
    "encodecmae_s3prl.evaluation": "encodecmae_s3prl/evaluation",
}


def probe_packages(root: str | os.PathLike) -> Dict[str, str]:
    """Every ``downstream_probes/<name>/`` with a ``dataset.py`` is a probe package (an s3prl recipe)."""
    probes = Path(root) / SUBPACKAGE_ROOTS["encodecmae_s3prl.downstream_probes"]
    return {f"encodecmae_s3prl.downstream_probes.{p.name}": f"downstream_probes/{p.name}"
            for p in sorted(probes.iterdir()) if (p / "dataset.py").is_file()}


def package_dir(root: str | os.PathLike) -> Dict[str, str]:
    """setuptools' ``package_dir`` of a checkout: every package, probes included, and its folder."""
    return {**SUBPACKAGE_ROOTS, **probe_packages(root)}


def overlay_folders() -> Sequence[str]:
    """The checkout's top-level folders that are subpackages (and would shadow s3prl's names on sys.path)."""
    return [folder for package, folder in SUBPACKAGE_ROOTS.items()
            if package != ROOT_PACKAGE and "/" not in folder]


def is_checkout_root(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a sys.path entry) is a checkout of this repository, whose top-level ``upstream/`` etc.
    would be imported in place of s3prl's."""
    folder = Path(os.path.abspath(path or os.curdir))
    return (folder / ROOT_PACKAGE).is_dir() and all((folder / name).is_dir() for name in overlay_folders())


def lay_out(root: str | os.PathLike, tree: str | os.PathLike, copy: bool = False) -> Path:
    """``tree/encodecmae_s3prl/...`` as installed, from the checkout ``root``: symlinks (or copies) of its
    folders, nothing written into the checkout. Returns ``tree``, the folder to put on sys.path."""
    root, tree = Path(root).resolve(), Path(tree)

    def place(source: Path, target: Path) -> None:
        if not copy:
            target.symlink_to(source)
        elif source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)

    package = tree / ROOT_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for item in sorted((root / SUBPACKAGE_ROOTS[ROOT_PACKAGE]).iterdir()):  # item by item: subpackages go in too
        if item.name != "__pycache__" and not (package / item.name).exists():
            place(item, package / item.name)
    for name, folder in SUBPACKAGE_ROOTS.items():
        target = tree.joinpath(*name.split("."))
        if not os.path.lexists(target):  # those inside the root package's folder are there already
            place(root / folder, target)
    return tree


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="lay a checkout out as the installed package")
    parser.add_argument("tree", help="folder to write (then put it on PYTHONPATH)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="the checkout")
    parser.add_argument("--copy", action="store_true", help="copies instead of symlinks")
    args = parser.parse_args(argv)
    lay_out(args.root, args.tree, args.copy)


if __name__ == "__main__":
    main()
