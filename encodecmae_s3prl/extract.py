"""Embeddings for everyone else: any s3prl upstream (ours included) -> one .npy per audio file.

    python -m encodecmae_s3prl.extract -u encodecmae_local -k model.pt clips/ more.wav --out feats/
    python -m encodecmae_s3prl.extract -u hubert --all-layers a.wav --out feats/

Each output is (frames, dim) float32 (``--all-layers``: (layers, frames, dim)), named after the
input's path relative to its folder argument; ``manifest.tsv`` lists input, output and shape.
Unreadable files are skipped, counted and listed at the end instead of stopping the job.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from encodecmae_s3prl import compat
from encodecmae_s3prl.pretrain_task.corpus import AUDIO_EXTENSIONS

UPSTREAM_RATE = 16_000  # s3prl hands every upstream 16 kHz mono


def load_upstream(name: str, ckpt: str | None = None, model_config: str | None = None, device: str = "cpu"):
    import encodecmae_s3prl  # noqa: F401  (registers our entries)
    from s3prl import hub

    if not hasattr(hub, name) or name.startswith("_"):
        known = sorted(n for n in dir(hub) if not n.startswith("_"))
        raise SystemExit(f"error: unknown upstream {name!r}; s3prl.hub has: {', '.join(known)}")
    kwargs = {"ckpt": ckpt} if ckpt else {}
    if model_config:
        kwargs["model_config"] = model_config
    return getattr(hub, name)(**kwargs).to(device).eval()


def read_16k_mono(path: Path) -> torch.Tensor:
    """(samples,) float32 at 16 kHz. Raises ValueError naming the file on empty/NaN/undecodable audio."""
    try:
        wav, rate = compat.load_audio(path)
    except Exception as err:
        raise ValueError(f"{path}: cannot decode ({type(err).__name__}: {err})") from None
    if wav.numel() == 0:
        raise ValueError(f"{path}: no samples")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{path}: contains NaN or infinite samples")
    wav = wav.mean(dim=0)
    if rate != UPSTREAM_RATE:
        import torchaudio

        wav = torchaudio.functional.resample(wav, rate, UPSTREAM_RATE)
    return wav


def _expand(inputs: Iterable[str]) -> list[tuple[Path, Path]]:
    """(audio path, output stem relative to --out) for every file or file under a folder."""
    pairs = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
                pairs.append((file, file.relative_to(path).with_suffix("")))
        elif path.is_file():
            pairs.append((path, Path(path.stem)))
        else:
            raise SystemExit(f"error: input {path} does not exist")
    return pairs


@torch.no_grad()
def features(upstream, wavs: Sequence[torch.Tensor], layer: int | None, all_layers: bool,
             device: str) -> list[np.ndarray]:
    """Per clip: (frames, dim), or (layers, frames, dim) with ``all_layers``; frames cut to each clip's length."""
    output = upstream([w.to(device) for w in wavs])
    states = output["hidden_states"]
    if all_layers:
        stacked = torch.stack(list(states), dim=1)  # (batch, layers, frames, dim)
    else:
        stacked = states[layer if layer is not None else -1]
    rate = upstream.get_downsample_rates("hidden_states") if hasattr(upstream, "get_downsample_rates") else None
    results = []
    for row, wav in enumerate(wavs):
        frames = stacked.shape[-2] if rate is None else min(stacked.shape[-2], max(1, round(len(wav) / rate)))
        results.append(stacked[row, ..., :frames, :].float().cpu().numpy())
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    parser.add_argument("-u", "--upstream", required=True, help="any s3prl.hub entry name, ours included")
    parser.add_argument("-k", "--ckpt", help="checkpoint for *_local entries")
    parser.add_argument("-g", "--model_config", help="model config for upstreams that take one")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--layer", type=int, help="hidden_states index (default: the last)")
    which.add_argument("--all-layers", action="store_true", help="save every hidden state: (layers, frames, dim)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=compat.default_device())
    args = parser.parse_args(argv)

    pairs = _expand(args.inputs)
    if not pairs:
        raise SystemExit("error: no audio files found in the inputs")
    upstream = load_upstream(args.upstream, args.ckpt, args.model_config, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest, failed = [], []
    # longest first: batches of similar length waste little padding
    loaded: list[tuple[Path, Path, torch.Tensor]] = []
    for path, stem in tqdm(pairs, desc="read", dynamic_ncols=True):
        try:
            loaded.append((path, stem, read_16k_mono(path)))
        except ValueError as err:
            failed.append(str(err))
    loaded.sort(key=lambda item: -len(item[2]))
    with tqdm(total=len(loaded), desc=f"extract {args.upstream}", dynamic_ncols=True) as bar:
        for start in range(0, len(loaded), args.batch_size):
            batch = loaded[start:start + args.batch_size]
            try:
                arrays = features(upstream, [w for _, _, w in batch], args.layer, args.all_layers, args.device)
            except (ValueError, RuntimeError) as err:
                failed += [f"{p}: {err}" for p, _, _ in batch]
                bar.update(len(batch))
                continue
            for (path, stem, _), array in zip(batch, arrays):
                target = args.out / stem.with_suffix(".npy")
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, array)
                manifest.append(f"{path}\t{target.relative_to(args.out)}\t{'x'.join(map(str, array.shape))}")
            bar.update(len(batch))
    (args.out / "manifest.tsv").write_text("input\toutput\tshape\n" + "\n".join(manifest) + "\n")
    print(f"wrote {len(manifest)} embedding file(s) and manifest.tsv to {args.out}")
    if failed:
        print(f"skipped {len(failed)} file(s):", *failed, sep="\n  ", file=sys.stderr)


if __name__ == "__main__":
    main()
