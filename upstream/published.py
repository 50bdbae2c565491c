"""Where the published EnCodecMAE v1 checkpoints come from: a local copy, or the Hugging Face hub cache.

Each variant is a hub repository ``lpepino/encodecmae-<variant>`` holding ``model.pt`` and,
beside it, ``config.gin`` (sizes and head count, which the weights alone cannot tell).
"""
from __future__ import annotations

from pathlib import Path

VARIANTS = ("small", "base", "large", "base-st", "large-st")
HUB_FILES = ("model.pt", "config.gin")


class PublishedCheckpointError(RuntimeError):
    pass


def hub_repository(variant: str) -> str:
    if variant not in VARIANTS:
        raise PublishedCheckpointError(f"unknown EnCodecMAE variant {variant!r}; published: {', '.join(VARIANTS)}")
    return f"lpepino/encodecmae-{variant}"


def published_checkpoint(variant: str, ckpt: str | None = None, refresh: bool = False) -> str:
    """Path of ``model.pt`` of a published variant: ``ckpt`` (a file, or a folder holding model.pt)
    when given, else the hub copy (downloaded once into the Hugging Face cache, again with ``refresh``)."""
    repository = hub_repository(variant)
    if ckpt:
        path = Path(ckpt).expanduser()
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            raise PublishedCheckpointError(
                f"-k {ckpt}: no such checkpoint. Give the model.pt of {repository} (config.gin beside it).")
        return str(path)
    try:
        from huggingface_hub import hf_hub_download

        online = hub_reachable()
        if refresh and not online:
            raise PublishedCheckpointError("refresh needs the Hugging Face hub, which does not answer; pass a local "
                                           "model.pt with -k instead")
        # offline: the cached copy at once, or a clear failure at once (hf_hub_download would retry for ~25 s)
        paths = [hf_hub_download(repository, name, force_download=refresh, local_files_only=not online)
                 for name in HUB_FILES]
    except PublishedCheckpointError:
        raise
    except Exception as err:  # offline, hub unreachable, or not cached
        raise PublishedCheckpointError(
            f"could not get {repository} from the Hugging Face hub ({type(err).__name__}: {err}). Either go "
            f"online once (it is cached afterwards), or download model.pt and config.gin of "
            f"https://huggingface.co/{repository} elsewhere and pass the file with -k /path/to/model.pt "
            f"(config.gin in the same folder)."
        ) from None
    return paths[0]


def hub_reachable(timeout: float = 5.0) -> bool:
    """One HEAD request to the hub, no retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    import requests

    try:
        requests.head(constants.ENDPOINT, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return True
