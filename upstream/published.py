"""Where the published EnCodecMAE v1 checkpoints come from: a local copy, or the Hugging Face hub cache.

Each variant is a hub repository ``lpepino/encodecmae-<variant>`` holding ``model.pt`` and,
beside it, ``config.gin`` (sizes and head count, which the weights alone cannot tell).
"""
from __future__ import annotations

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
        from huggingface_hub import hf_hub_download

        if online is None:
            online = hub_reachable()
        if refresh and not online:
            raise PublishedCheckpointUnavailableError("refresh needs the Hugging Face hub, which does not answer; "
                                                      "give the path of a local model.pt instead")
        paths = [hf_hub_download(repository, name, force_download=refresh, local_files_only=not online)
                 for name in HUB_FILES]
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

