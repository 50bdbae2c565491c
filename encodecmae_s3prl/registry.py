"""Make s3prl see our upstream, pretrain task and probes without editing its files.

s3prl finds things by module name: ``s3prl.hub.<entry>``, ``pretrain.<name>.pretrain_expert``
(inside ``cd s3prl``) and ``s3prl.downstream.<name>.expert``. We answer those names with an
import alias: the s3prl name and our name are the same module object, imported once.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
OUR_PRETRAIN_TASK = "encodecmae"


def package_folder(package: str) -> Path:
    """Where one of our subpackages lives (the checkout's top-level folder in an editable install)."""
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0])


def _probe_folder() -> Path:
    return package_folder("encodecmae_s3prl.downstream_probes")


def probe_names() -> list[str]:
    """Our s3prl-style probes: every ``downstream_probes/<name>/`` holding an ``expert.py``."""
    return sorted(p.name for p in _probe_folder().iterdir() if (p / "expert.py").is_file())


def shipped_recipe_config(name: str) -> Path | None:
    """A ``config.yaml`` we ship for a probe or for an s3prl recipe whose config pip omits."""
    path = _probe_folder() / name / "config.yaml"
    return path if path.is_file() else None


def _aliases() -> dict[str, str]:
    aliases = {
        f"pretrain.{OUR_PRETRAIN_TASK}": "encodecmae_s3prl.pretrain_task",
        f"s3prl.pretrain.{OUR_PRETRAIN_TASK}": "encodecmae_s3prl.pretrain_task",
        "s3prl.upstream.encodecmae": "encodecmae_s3prl.upstream",
    }
    for name in probe_names():
        aliases[f"s3prl.downstream.{name}"] = f"encodecmae_s3prl.downstream_probes.{name}"
    return aliases


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass  # already executed under its real name


class _WrappedLoader(importlib.abc.Loader):
    """s3prl's own loader, with something run around its ``exec_module``; every other attribute
    (``get_source``, ``get_resource_reader``, ...) is the real loader's."""

    def __init__(self, real_loader):
        self.real_loader = real_loader

    def __getattr__(self, name):
        return getattr(self.real_loader, name)

    def create_module(self, spec):
        return self.real_loader.create_module(spec)

    def exec_module(self, module):
        self.real_loader.exec_module(module)


class _S3prlLoader(_WrappedLoader):
    """Runs s3prl's ``__init__`` after the compat shims: whatever of s3prl is imported next (``s3prl.hub``,
    ``s3prl.nn``, ``s3prl.dataio``, ...) finds torchaudio patched, whatever the import order."""

    def exec_module(self, module):
        from encodecmae_s3prl import compat

        compat.apply()
        self.real_loader.exec_module(module)


class _HubLoader(_WrappedLoader):
    """Runs s3prl's own ``s3prl.hub`` (after the compat shims it needs), then adds our entries."""

    def exec_module(self, module):
        from encodecmae_s3prl import compat

        compat.apply()
        self.real_loader.exec_module(module)
        _add_hub_entries(module)


_WRAPPED = {"s3prl": _S3prlLoader, "s3prl.hub": _HubLoader}


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``alias[.sub]`` to the already-importable ``target[.sub]``, and hooks ``s3prl`` (compat shims)
    and ``s3prl.hub`` (our entries)."""

    def __init__(self, aliases: dict[str, str]):
        self.aliases = aliases

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _WRAPPED:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and not isinstance(spec.loader, _WrappedLoader):
                        spec.loader = _WRAPPED[fullname](spec.loader)
                    return spec
            return None
        for alias, real in self.aliases.items():
            if fullname == alias or fullname.startswith(alias + "."):
                real_name = real + fullname[len(alias):]
                real_spec = importlib.util.find_spec(real_name)
                if real_spec is None:
                    return None
                spec = importlib.util.spec_from_loader(
                    fullname, _AliasLoader(real_name), is_package=real_spec.submodule_search_locations is not None
                )
                if real_spec.submodule_search_locations is not None:
                    spec.submodule_search_locations = list(real_spec.submodule_search_locations)
                return spec
        return None


def upstream_entries() -> dict:
    """Our hubconf's public entry points (name -> callable)."""
    hubconf = importlib.import_module("encodecmae_s3prl.upstream.hubconf")
    return {name: getattr(hubconf, name) for name in hubconf.ENTRIES}


def _add_hub_entries(hub) -> None:
    for name, entry in upstream_entries().items():
        setattr(hub, name, entry)


def register() -> None:
    """Idempotently make s3prl see us. Cheap: s3prl itself is only imported when someone imports it
    (``s3prl`` gets the compat shims and ``s3prl.hub`` our entries at that moment).

    The installed package calls this at interpreter start-up (``encodecmae_s3prl-autoload.pth``, see
    setup.py), so ``import s3prl.hub`` / ``from s3prl.nn import S3PRLUpstream`` work, with our entries,
    before or without ``import encodecmae_s3prl``."""
    if any(isinstance(f, AliasFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, AliasFinder(_aliases()))
    if "s3prl.hub" in sys.modules:  # imported before us: shims came too late for it, but entries still land
        _add_hub_entries(sys.modules["s3prl.hub"])
