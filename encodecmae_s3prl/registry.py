"""Make s3prl see our upstream, pretrain task and probes without editing its files.

s3prl finds things by module name: ``s3prl.hub.<entry>``, ``pretrain.<name>.pretrain_expert``
(inside ``cd s3prl``) and ``s3prl.downstream.<name>.expert``. We answer those names with an
import alias: the s3prl name and our name are the same module object, imported once.

Probes: every folder holding a ``dataset.py`` (and a ``config.yaml``), in ``downstream_probes/`` or in a
folder listed in ``ENCODECMAE_PROBE_PATH`` (``os.pathsep``-separated, like ``PATH``). Each is
``encodecmae_s3prl.downstream_probes.<name>`` and ``s3prl.downstream.<name>``; its ``expert`` is the shared
``downstream_probes/expert.py`` unless the folder has its own. So adding a probe is adding one folder.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.abc
import importlib.util
import inspect
import os
import sys
from pathlib import Path

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.settings import UpstreamSettings

OUR_PRETRAIN_TASK = "encodecmae"
PROBES_PACKAGE = "encodecmae_s3prl.downstream_probes"
GENERIC_EXPERT = f"{PROBES_PACKAGE}.expert"  # the DownstreamExpert of a probe folder without its own expert.py
PROBE_PATH_ENV = "ENCODECMAE_PROBE_PATH"  # more folders of probe folders, os.pathsep-separated
RECIPE_CONFIGS = "recipe_configs"  # downstream_probes/recipe_configs/<recipe>/config.yaml: s3prl recipes' configs


def package_folder(package: str) -> Path:
    """Where one of our subpackages lives (the checkout's top-level folder in an editable install)."""
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _probe_folder() -> Path:
    return package_folder(PROBES_PACKAGE)


def _probes_in(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir())
            if p.name.isidentifier() and (p / "dataset.py").is_file()}


def probe_folders() -> dict[str, Path]:
    """Every probe, name -> folder: each ``downstream_probes/<name>/`` holding a ``dataset.py``, then each such
    ``<name>/`` in the folders ``ENCODECMAE_PROBE_PATH`` lists (read at every call). A name is taken once: a
    listed folder named like anything in ``downstream_probes/`` (a probe, ``task``, ``expert``, ...) or like an
    earlier one is skipped. (A probe named like one of s3prl's recipes would take over ``s3prl.downstream.<name>``:
    pick another name.)"""
    shipped = _probe_folder()
    found = _probes_in(shipped)
    for entry in os.environ.get(PROBE_PATH_ENV, "").split(os.pathsep):
        if entry.strip():
            for name, folder in _probes_in(Path(entry.strip()).expanduser()).items():
                if name not in found and not (shipped / name).exists() and not (shipped / f"{name}.py").exists():
                    found[name] = folder
    return found


def probe_names() -> list[str]:
    """Our s3prl-style probes (see :func:`probe_folders`), sorted."""
    return sorted(probe_folders())


def recipe_names() -> list[str]:
    """The s3prl recipes whose config we ship (s3prl's pip package omits them)."""
    folder = _probe_folder() / RECIPE_CONFIGS
    return sorted(p.parent.name for p in folder.glob("*/config.yaml"))


def shipped_recipe_config(name: str) -> Path | None:
    """The ``config.yaml`` of ``-d NAME`` that we provide: a probe folder's, or ours for an s3prl recipe whose
    config pip omits (``downstream_probes/recipe_configs/NAME/config.yaml``)."""
    folder = probe_folders().get(name) or _probe_folder() / RECIPE_CONFIGS / name
    path = folder / "config.yaml"
    return path if path.is_file() else None


def _aliases() -> dict[str, str]:
    """The fixed aliases; probes are resolved at import time (:func:`_probe_spec`)."""
    return {
        f"pretrain.{OUR_PRETRAIN_TASK}": "encodecmae_s3prl.pretrain_task",
        f"s3prl.pretrain.{OUR_PRETRAIN_TASK}": "encodecmae_s3prl.pretrain_task",
        "s3prl.upstream.encodecmae": "encodecmae_s3prl.upstream",
    }


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


class _EmptyPackageLoader(importlib.abc.Loader):
    """A probe folder from ENCODECMAE_PROBE_PATH without ``__init__.py``: an empty package at that folder."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pass


def _alias_spec(fullname: str, real_name: str):
    """``fullname`` as another name for the importable ``real_name`` (one module object), or None."""
    real_spec = importlib.util.find_spec(real_name)
    if real_spec is None:
        return None
    spec = importlib.util.spec_from_loader(
        fullname, _AliasLoader(real_name), is_package=real_spec.submodule_search_locations is not None
    )
    if real_spec.submodule_search_locations is not None:
        spec.submodule_search_locations = list(real_spec.submodule_search_locations)
    return spec


def _probe_spec(fullname: str):
    """``s3prl.downstream.<probe>[.sub]`` -> ``encodecmae_s3prl.downstream_probes.<probe>[.sub]``; that package for a
    probe from ENCODECMAE_PROBE_PATH (at its folder); ``<probe>.expert`` -> the shared expert when the folder has
    none. None for every other name (s3prl's own recipes, our other modules)."""
    for prefix in ("s3prl.downstream.", PROBES_PACKAGE + "."):
        if fullname.startswith(prefix):
            break
    else:
        return None
    rest = fullname[len(prefix):]
    name, _, sub = rest.partition(".")
    folder = probe_folders().get(name)
    if folder is None:
        return None
    if prefix == "s3prl.downstream.":
        return _alias_spec(fullname, f"{PROBES_PACKAGE}.{rest}")
    if not sub and folder.parent != _probe_folder():
        init = folder / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(folder)])
        spec = importlib.util.spec_from_loader(fullname, _EmptyPackageLoader(), is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec
    if sub == "expert" and not (folder / "expert.py").is_file():
        return _alias_spec(fullname, GENERIC_EXPERT)
    return None


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``alias[.sub]`` to the already-importable ``target[.sub]``, makes the probe folders importable
    (:func:`_probe_spec`), and hooks ``s3prl`` (compat shims) and ``s3prl.hub`` (our entries)."""

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
        spec = _probe_spec(fullname)
        if spec is not None:
            return spec
        for alias, real in self.aliases.items():
            if fullname == alias or fullname.startswith(alias + "."):
                return _alias_spec(fullname, real + fullname[len(alias):])
        return None


def _hubconf():
    return importlib.import_module("encodecmae_s3prl.upstream.hubconf")


def upstream_entries() -> dict:
    """Our hubconf's public entry points (name -> callable)."""
    hubconf = _hubconf()
    return {name: getattr(hubconf, name) for name in hubconf.ENTRIES}


def entry_settings(entry: str, settings: UpstreamSettings) -> dict:
    """The keyword arguments our hub entry ``entry`` takes for a command's ``settings``; none for s3prl's own."""
    hubconf = _hubconf()
    if entry not in hubconf.ENTRIES:
        return {}
    kwargs = {"trust": settings.trust, "encodec_weights": settings.encodec_weights, "precision": settings.precision}
    if entry in hubconf.PUBLISHED_ENTRIES:
        kwargs["online"] = settings.online
    return kwargs


def _with_settings(name: str, entry, settings: UpstreamSettings):
    """``entry`` with ``settings`` as keyword defaults: what s3prl's runner calls with only ckpt, model_config
    and refresh."""
    bound = entry_settings(name, settings)

    @functools.wraps(entry)
    def call(*args, **kwargs):
        return entry(*args, **{**bound, **kwargs})

    return call


def _add_hub_entries(hub, settings: UpstreamSettings | None = None) -> None:
    for name, entry in upstream_entries().items():
        setattr(hub, name, entry if settings is None else _with_settings(name, entry, settings))


def use_settings_in_hub(settings: UpstreamSettings) -> None:
    """Make ``s3prl.hub``'s entries of ours take a command's ``settings`` (trust, EnCodec weights, the hub's
    reachability): s3prl's runners call them with ``ckpt``, ``model_config`` and ``refresh`` only."""
    register()
    from s3prl import hub

    _add_hub_entries(hub, settings)


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


class UnknownUpstreamError(UserError, ValueError):
    """An upstream name that ``s3prl.hub`` does not have."""


def load_hub_upstream(entry: str, ckpt: str | None = None, device: str = "cpu",
                      settings: UpstreamSettings | None = None, **options):
    """``s3prl.hub.<entry>(ckpt=ckpt, **options)`` (``ckpt`` only when given), on ``device``, in eval mode: any s3prl
    upstream, ours included. How ``extract``, ``compare`` and the HEAR API build upstreams. Our entries also get
    the command's ``settings`` (``entry_settings``; None: the library's defaults, nothing trusted).

    Raises UnknownUpstreamError (a ValueError) with the closest entry names when ``entry`` is not one of the hub's,
    and when a ``*_local`` entry, which loads a checkpoint, is given none."""
    register()
    if entry.endswith("_local") and not ckpt:
        raise UnknownUpstreamError(f"upstream {entry} loads a checkpoint and none was given: pass its path (-k PATH, "
                                   f"or ENTRY=PATH / ENTRY:PATH where the command takes specs)")
    kwargs = {"ckpt": ckpt} if ckpt else {}
    ours = upstream_entries()
    if entry in ours:  # our entries need none of s3prl.hub's imports (every upstream's, a lot of memory)
        bound = entry_settings(entry, settings or UpstreamSettings())
        return ours[entry](**kwargs, **bound, **options).to(device).eval()
    require_hub_entry(entry)
    from s3prl import hub

    return getattr(hub, entry)(**kwargs, **options).to(device).eval()


def require_hub_entry(entry: str) -> None:
    """Raise UnknownUpstreamError, with the closest entry names, unless ``entry`` is an upstream of s3prl.hub."""
    register()
    if entry in upstream_entries():
        return
    from s3prl import hub

    if entry.startswith("_") or not inspect.isfunction(getattr(hub, entry, None)):
        known = [n for n in dir(hub) if not n.startswith("_") and inspect.isfunction(getattr(hub, n))]
        close = difflib.get_close_matches(entry, known, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else \
            "list them with: python -c 'import s3prl.hub as h; print(dir(h))'"
        raise UnknownUpstreamError(f"unknown upstream {entry!r}; {hint}")
