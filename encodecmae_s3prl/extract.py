"""Embeddings for everyone else: any s3prl upstream (ours included) -> one .npy per audio file.

    python -m encodecmae_s3prl.extract -u encodecmae_local -k model.pt clips/ more.wav --out feats/
    python -m encodecmae_s3prl.extract -u hubert --all-layers a.wav --out feats/

Each output is (frames, dim) float32 (``--all-layers``: (layers, frames, dim)). Outputs mirror the
inputs' paths: ``clips/sub/x.wav`` -> ``feats/sub/x.npy`` (relative to a folder argument; a file
argument keeps its relative path). Two inputs that would write one output are an error before any
work. ``manifest.tsv`` lists input, output and shape of what is on disk.

Short files are batched; a file longer than ``--long-seconds`` goes alone and, for EnCodecMAE, is
streamed: a few 4 s chunks at a time through the model, written straight into its ``.npy``, so
memory does not grow with its length. A bad file fails alone with its own reason; the job goes on
and exits 1 if any input failed (2 for a usage error).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Sequence, Tuple

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from encodecmae_s3prl.errors import UserError, user_errors
from encodecmae_s3prl.evaluation.native_rate import upstream_precision
from encodecmae_s3prl.fixes import upstream_fixes
from encodecmae_s3prl.pretrain_task.corpus import AUDIO_EXTENSIONS
from encodecmae_s3prl.registry import load_hub_upstream
from encodecmae_s3prl.settings import UpstreamSettings, add_precision_flag, add_trust_flag, default_device
from encodecmae_s3prl.upstream.atomic import atomic_write, remove_temporaries
from encodecmae_s3prl.upstream.audio import AudioReadError, read_audio
from encodecmae_s3prl.upstream.expert import INPUT_RATE, WaveformError  # s3prl: 16 kHz mono

LONG_SECONDS = 60.0


class UsageError(UserError, ValueError):
    """A mistake in the command line: reported as one ``error:`` line, exit 2."""


def load_upstream(name: str, ckpt: str | None = None, model_config: str | None = None, device: str = "cpu",
                  settings: UpstreamSettings | None = None):
    """``registry.load_hub_upstream`` (an unknown name is a user error listing s3prl.hub's entries)."""
    return load_hub_upstream(name, ckpt, device, settings, **({"model_config": model_config} if model_config else {}))


def plan(inputs: Iterable[str]) -> List[Tuple[Path, Path]]:
    """(audio file, output path relative to --out) for every input file and every audio file under a folder.

    Raises UsageError for a missing input or two inputs that map to one output."""
    pairs, owner = [], {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            candidates = [(file, file.relative_to(path).with_suffix(".npy")) for file in found]
        elif path.is_file():
            relative = not path.is_absolute() and ".." not in path.parts
            candidates = [(path, (path if relative else Path(path.name)).with_suffix(".npy"))]
        else:
            raise UsageError(f"input {path} does not exist; give audio files or folders")
        for file, out in candidates:
            key = file.resolve()
            if out in owner:
                if owner[out] == key:
                    continue  # the same file named twice
                raise UsageError(f"{owner[out]} and {file} would both write {out}: rename one, or extract them "
                                 f"into different --out folders")
            owner[out] = key
            pairs.append((file, out))
    return pairs


def _move(bar: tqdm, position: float) -> None:
    """The bar at ``position`` audio-seconds, never past its total: durations added up in another order than the
    total's sum can exceed it by a rounding error, which tqdm reports as an overshoot."""
    bar.n = min(position, bar.total)
    bar.update(0)  # redrawn as ``update`` redraws


def _advance(bar: tqdm, seconds: float, fraction: float) -> None:
    _move(bar, bar.n + fraction * seconds)


def _seconds(path: Path) -> float:
    try:
        return soundfile.info(str(path)).duration
    except Exception:
        return 0.0  # unreadable: it fails on reading, alone, with its reason


@torch.no_grad()
def features(upstream, wavs: Sequence[torch.Tensor], layer: int | None, all_layers: bool,
             device: str) -> List[np.ndarray]:
    """Per clip: (frames, dim), or (layers, frames, dim) with ``all_layers``; frames cut to each clip's length."""
    output = upstream([w.to(device) for w in wavs])
    states = output["hidden_states"]
    if all_layers:
        stacked = torch.stack(list(states), dim=1)  # (batch, layers, frames, dim)
    else:
        if layer is not None and not -len(states) <= layer < len(states):
            raise UsageError(f"--layer {layer}: this upstream has {len(states)} hidden states "
                             f"(0..{len(states) - 1}, or negative from the end)")
        stacked = states[layer if layer is not None else -1]
    rate = upstream.get_downsample_rates("hidden_states") if hasattr(upstream, "get_downsample_rates") else None
    results = []
    for row, wav in enumerate(wavs):
        frames = stacked.shape[-2] if rate is None else min(stacked.shape[-2], max(1, round(len(wav) / rate)))
        results.append(stacked[row, ..., :frames, :].float().cpu().numpy())
    return results


def _atomic_npy(target: Path, array: np.ndarray) -> None:
    atomic_write(target, lambda handle: np.save(handle, array))


@torch.no_grad()
def stream_to_npy(upstream, wav: torch.Tensor, target: Path, layer: int | None, all_layers: bool,
                  progress: Callable[[float], object] | None = None) -> tuple:
    """One long clip through ``UpstreamExpert.stream``, each block written at its place in the ``.npy``
    (positioned writes, no memory map): memory holds one block, not the clip's embeddings.
    ``progress(fraction)`` is called with the share of the clip each block covered."""
    count = upstream.model.hidden_count()
    layers = list(range(count)) if all_layers else [layer if layer is not None else -1]
    if not all(-count <= i < count for i in layers):
        raise UsageError(f"--layer {layer}: this upstream has {count} hidden states (0..{count - 1}, or negative "
                         f"from the end)")
    frames = upstream.output_frames(len(wav))
    shape: tuple = ()

    def write(handle) -> None:
        nonlocal shape
        offset, written, dim = None, 0, 0
        for first, values in upstream.stream(wav, layers):
            if offset is None:
                dim = values[0].shape[-1]
                shape = (len(layers), frames, dim) if all_layers else (frames, dim)
                np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                              "shape": shape})
                handle.flush()
                offset = handle.tell()
                handle.truncate(offset + int(np.prod(shape)) * 4)
            for index, value in enumerate(values):
                block = value.float().cpu().numpy()
                os.pwrite(handle.fileno(), block.tobytes(), offset + ((index * frames + first) * dim) * 4)
            written += values[0].shape[0]
            if progress is not None:
                progress(values[0].shape[0] / frames)
        if written != frames:
            raise RuntimeError(f"streamed {written} of {frames} frames")

    atomic_write(target, write)  # a failure or an interrupt leaves no file under the final name, no temporary
    return shape


def run(args, settings: UpstreamSettings | None = None) -> int:
    """Extract what ``args`` (``main``'s options) asks for; ``settings``: trust and EnCodec weights for the
    upstream (``UpstreamSettings``)."""
    pairs = plan(args.inputs)
    if not pairs:
        raise UsageError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {' '.join(args.inputs)}")
    upstream = load_upstream(args.upstream, args.ckpt, args.model_config, args.device, settings)
    from encodecmae_s3prl.upstream.expert import UpstreamExpert

    streams = isinstance(upstream, UpstreamExpert)
    args.ran_as = upstream_precision(upstream)
    print(f"extract: {args.upstream} runs in {args.ran_as} (precision {getattr(args, 'precision', 'fp32')})")
    args.out.mkdir(parents=True, exist_ok=True)
    remove_temporaries({args.out, *((args.out / out).parent for _, out in pairs)})  # a killed run's half-written files
    done: dict[Path, tuple] = _finished_earlier(args, pairs)
    if done:
        print(f"{len(done)} of {len(pairs)} file(s) already extracted into {args.out} with these settings: kept")
    pairs_left = [pair for pair in pairs if pair[0] not in done]
    failed: list[str] = []
    try:
        return _extract(args, upstream, streams, pairs, pairs_left, done, failed)
    finally:
        rows = [f"{path}\t{out}\t{'x'.join(map(str, shape))}\t{args.ran_as}" for path, (out, shape) in done.items()
                if (args.out / out).is_file()]
        atomic_write(args.out / "manifest.tsv", lambda handle: handle.write(
            ("input\toutput\tshape\tprecision\n" + "".join(row + "\n" for row in rows)).encode()))


SETTINGS_FILE = ".extract-settings.json"  # what the outputs in a folder were extracted with


def _settings(args) -> dict:
    ckpt = Path(args.ckpt).expanduser().resolve() if args.ckpt else None
    stat = ckpt.stat() if ckpt is not None and ckpt.is_file() else None
    return {"upstream": args.upstream, "ckpt": str(ckpt) if ckpt else None,
            "ckpt_identity": [stat.st_size, stat.st_mtime_ns] if stat else None, "model_config": args.model_config,
            "layer": args.layer, "all_layers": bool(args.all_layers), "precision": args.ran_as}


def _finished_earlier(args, pairs) -> dict:
    """Outputs a previous run with the same settings finished (complete .npy files): a rerun keeps them. With
    other settings every output is recomputed; the settings are recorded for the next run."""
    settings_path = args.out / SETTINGS_FILE
    try:
        same = json.loads(settings_path.read_text()) == _settings(args)
    except (OSError, json.JSONDecodeError):
        same = False
    done = {}
    if same:
        for path, out in pairs:
            try:
                done[path] = (out, np.load(args.out / out, mmap_mode="r").shape)
            except (OSError, ValueError, EOFError):
                continue
    atomic_write(settings_path, lambda handle: handle.write(json.dumps(_settings(args)).encode()))
    return done


def _extract(args, upstream, streams: bool, pairs, pairs_left, done: dict, failed: list) -> int:

    def save(path: Path, out: Path, array: np.ndarray) -> None:
        _atomic_npy(args.out / out, array)
        done[path] = (out, array.shape)

    def run_batch(batch: list[tuple[Path, Path, torch.Tensor]]) -> None:
        try:
            arrays = features(upstream, [w for _, _, w in batch], args.layer, args.all_layers, args.device)
        except (ValueError, RuntimeError) as err:
            if isinstance(err, UsageError):
                raise
            if len(batch) == 1:
                failed.append(_failure(batch[0][0], err))
                return
            for item in batch:  # find the culprit: each file alone, with its own reason
                run_batch([item])
            return
        for (path, out, _), array in zip(batch, arrays, strict=True):
            save(path, out, array)

    seconds = {path: _seconds(path) for path, _ in pairs_left}
    short = sorted((p for p in pairs_left if seconds[p[0]] <= args.long_seconds), key=lambda p: -seconds[p[0]])
    long = [p for p in pairs_left if seconds[p[0]] > args.long_seconds]
    # progress in seconds of audio: a long file moves the bar block by block, not once at its end
    total = sum(seconds.values())
    with tqdm(total=total, desc=f"extract {args.upstream}", unit="audio-s", dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}]") as bar:
        batch: list[tuple[Path, Path, torch.Tensor]] = []
        for index, (path, out) in enumerate(short):  # longest first: batches of similar length
            try:
                batch.append((path, out, read_audio(path, INPUT_RATE)))
            except AudioReadError as err:
                failed.append(str(err))
            if len(batch) == args.batch_size or (index == len(short) - 1 and batch):
                run_batch(batch)
                batch = []
            _move(bar, bar.n + seconds[path])
        for path, out in long:  # one at a time
            before = bar.n
            advance = functools.partial(_advance, bar, seconds[path])
            try:
                wav = read_audio(path, INPUT_RATE)
                if streams:
                    done[path] = (out, stream_to_npy(upstream, wav.to(args.device), args.out / out, args.layer,
                                                     args.all_layers, advance))
                else:
                    run_batch([(path, out, wav)])
            except UsageError:
                raise
            except (AudioReadError, ValueError, RuntimeError) as err:
                failed.append(_failure(path, err))
            _move(bar, before + seconds[path])  # the rest of the file, or all of it if it failed

    on_disk = sum((args.out / out).is_file() for out, _ in done.values())
    kept = len(pairs) - len(pairs_left)  # finished by an earlier run with these settings
    print(f"{on_disk} of {len(pairs)} embedding file(s) and manifest.tsv in {args.out}: {on_disk - kept} written now"
          + (f", {kept} kept from an earlier run" if kept else ""))
    if failed:
        print(f"failed: {len(failed)} file(s):", *failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _failure(path: Path, err: Exception) -> str:
    """One line of the failure list: the file, then its reason (an upstream's without its batch index)."""
    if isinstance(err, AudioReadError):  # names the file itself
        return str(err)
    return f"{path}: {err.reason if isinstance(err, WaveformError) else err}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    parser.add_argument("-u", "--upstream", required=True, help="any s3prl.hub entry name, ours included")
    parser.add_argument("-k", "--ckpt", help="checkpoint for *_local entries")
    parser.add_argument("-g", "--model_config", help="model config for upstreams that take one")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--layer", type=int, help="hidden_states index (default: the last)")
    which.add_argument("--all-layers", action="store_true", help="save every hidden state: (layers, frames, dim)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8, help="short files per forward pass")
    parser.add_argument("--long-seconds", type=float, default=LONG_SECONDS,
                        help="files longer than this go alone (EnCodecMAE: streamed to disk)")
    parser.add_argument("--device", default=default_device())
    add_precision_flag(parser)
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    settings = UpstreamSettings.from_environment(trust=args.trust_checkpoint, precision=args.precision)
    try:
        with user_errors(fixes=upstream_fixes()):
            return run(args, settings)
    except SystemExit as exit_:  # user_errors exits 2 after printing the one line; callers get the status
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        print(f"\nextract: interrupted; the files finished so far are in {args.out} (manifest.tsv lists them), "
              f"rerun the same command to extract the rest", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
