"""Where the published EnCodecMAE v1 checkpoints come from: a local copy, or the Hugging Face hub cache.

Each variant is a hub repository ``lpepino/encodecmae-<variant>`` holding ``model.pt`` and,
beside it, ``config.gin`` (sizes and head count, which the weights alone cannot tell).
"""
from __future__ import annotations

import os
from pathlib import Path

from encodecmae_s3prl.errors import UserError
from encodecmae_s3prl.settings import hub_reachable

VARIANTS = ("small", "base", "large", "base-st", "large-st")
HUB_FILES = ("model.pt", "config.gin")


class PublishedCheckpointError(UserError, RuntimeError):
    pass


class PublishedCheckpointUnavailableError(PublishedCheckpointError):
    """The published weights are not at hand (no such local file; the hub unreachable and nothing cached): a
    local model.pt fixes it, given with the option the command names."""


def hub_repository(variant: str) -> str:
    if variant not in VARIANTS:
        raise PublishedCheckpointError(f"unknown EnCodecMAE variant {variant!r}; published: {', '.join(VARIANTS)}")
    return f"lpepino/encodecmae-{variant}"


def _online(online: bool | None, refresh: bool, local: str) -> bool:
    """Whether the hub answers (asked now when the command did not decide it); ``refresh`` needs it."""
    if online is None:
        online = hub_reachable()
    if refresh and not online:
        raise PublishedCheckpointUnavailableError(f"refresh needs the Hugging Face hub, which does not answer; give "
                                                  f"the path of a local {local} instead")
    return online


def _download(repository: str, filename: str, refresh: bool, online: bool) -> str:
    """The file from the Hugging Face cache, fetched first when online (again with ``refresh``)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repository, filename, force_download=refresh, local_files_only=not online)


def published_checkpoint(variant: str, ckpt: str | None = None, refresh: bool = False,
                         online: bool | None = None) -> str:
    """Path of ``model.pt`` of a published variant: ``ckpt`` (a file, or a folder holding model.pt)
    when given, else the hub copy (downloaded once into the Hugging Face cache, again with ``refresh``).

    ``online``: whether the hub answers, as the command decided it once (``settings.hub_reachable``); None asks
    that function now. Offline, the cached copy loads at once or the error comes at once (huggingface_hub would
    retry for ~25 s)."""
    repository = hub_repository(variant)
    if ckpt:
        path = Path(ckpt).expanduser()
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            raise PublishedCheckpointUnavailableError(
                f"{ckpt}: no such checkpoint; give the path of the model.pt of {repository} (config.gin beside it)")
        return str(path)
    try:
        online = _online(online, refresh, "model.pt")
        paths = [_download(repository, name, refresh, online) for name in HUB_FILES]
    except PublishedCheckpointError:
        raise
    except Exception as err:  # offline, hub unreachable, or not cached
        raise PublishedCheckpointUnavailableError(
            f"could not get {repository} from the Hugging Face hub ({type(err).__name__}: {err}). Either go "
            f"online once (it is cached afterwards), or download model.pt and config.gin of "
            f"https://huggingface.co/{repository} elsewhere and give the path of that model.pt (config.gin in "
            f"the same folder)"
        ) from None
    return paths[0]



# --- the authors' v2 models --------------------------------------------------------------------------------
V2_REPOSITORY = "lpepino/encodecmae-v2"
V2_DEFAULT = "mel256-ec-base_st"  # the first example of the authors' README
# run_pretraining.sh of the authors' main branch trains these (and their _st self-trained versions)
V2_FAMILY = ("ec-ec-small", "ec-ec-base", "ec-ec-large", "mel256-ec-small", "mel256-ec-base", "mel256-ec-large",
             "mel256-ec-base-as", "mel256-ec-base-ll", "mel256-ec-base-fma", "mel256-ec-large-as")


def v2_checkpoint(model: str | None = None, refresh: bool = False, online: bool | None = None) -> str:
    """Path of a v2 file: ``model`` a local ``.pt`` when it is one, else a model name of the v2 hub repository
    (``mel256-ec-base_st``...), downloaded once into the Hugging Face cache (again with ``refresh``). Offline, a
    name not in the cache is an error saying so at once."""
    model = model or V2_DEFAULT
    path = Path(model).expanduser()
    if path.is_file():
        return str(path)
    if model.endswith(".pt") or model.startswith((".", "~", os.sep)):  # meant as a file (names may hold a '/')
        raise PublishedCheckpointUnavailableError(f"{model}: no such file; give the path of a v2 .pt file or the "
                                                  f"name of a model of {V2_REPOSITORY} (e.g. {V2_DEFAULT})")
    try:
        online = _online(online, refresh, "v2 .pt file")
        return _download(V2_REPOSITORY, f"{model}.pt", refresh, online)
    except PublishedCheckpointError:
        raise
    except Exception as err:  # offline and not cached, hub unreachable, or no such model
        where = ("is not in the Hugging Face cache and the hub does not answer" if not online else
                 f"could not be fetched ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        raise PublishedCheckpointUnavailableError(
            f"v2 model {model!r} of {V2_REPOSITORY} {where}. Either go online once (it is cached afterwards), or "
            f"download {model}.pt from https://huggingface.co/{V2_REPOSITORY} elsewhere and give the path of that "
            f"local .pt file in place of the name") from None
