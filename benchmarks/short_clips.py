"""Many short clips: our embedding paths against the model's own throughput and the authors' batched extraction.

    git --git-dir=$(fetch github:habla-liaa/encodecmae) archive v.1.0.0 | tar x -C /tmp/encodecmae_v1
    .venv/bin/python benchmarks/short_clips.py --work /tmp/shortclips [--sizes small,base] \\
        [--sets 2000x5,10000x1] [--scale 0.1] [--precision fp32] [--reference /tmp/encodecmae_v1]

For each size (a random EnCodecMAE checkpoint: random-init EnCodec fitted to synthetic audio; weights do not change
the cost) and each set of N clips of S seconds (``--sets``, N scaled by ``--scale``; harmonic notes in noise,
24 kHz wav files), each path is timed alone, wall clock, from files on disk to embeddings in memory or on disk:

- model: ``model.encode`` on padded batches of ``--batch`` clips already in memory at 24 kHz: the floor, no I/O;
- extract: ``python -m encodecmae_s3prl.extract`` on the folder (reading, s3prl's 16 kHz, batching by length,
  writing one .npy per clip and the manifest);
- hear cache: ``embedding_cache.embed_splits`` on the same clips as a HEAR task at 24000 Hz (every layer's time-mean,
  the kit's batches);
- long files: the same audio as ``--long-files`` files, through extract;
- theirs (with ``--reference``): the authors' v1 ``extract_features_from_array`` on padded batches of ``--batch``
  (their answer to batch processing; the last layer: their batched path returns one layer), on our codec, fp32.
Overhead = path time / model time - 1. Prints a markdown table with machine, torch and date; writes WORK/short_clips.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # synthetic_data: the test-data writers


def write_clips(folder: Path, count: int, seconds: float, seed: int = 0) -> list:
    import numpy as np
    import soundfile

    from encodecmae_s3prl.demo_data import harmonic_tone

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        wav = harmonic_tone(110.0 * 2 ** (i % 24 / 12), seconds, 24000, rng) + rng.normal(0, 0.05, int(seconds * 24000))
        wav = (0.5 * wav / np.abs(wav).max()).astype("float32")
        soundfile.write(folder / f"clip{i:05d}.wav", wav, 24000)
        clips.append(wav)
    return clips


def write_long(folder: Path, clips: list, files: int) -> None:
    import numpy as np
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(clips) // files)
    for f in range(files):
        soundfile.write(folder / f"long{f:02d}.wav", np.concatenate(clips[f * per:(f + 1) * per]), 24000)


def write_hear_task(root: Path, names: list, labels: list, seconds: float) -> Path:
    """The same clips as a HEAR scene task at 24000 Hz (train / valid / test thirds; the cache embeds them alike)."""
    (root / "24000").mkdir(parents=True, exist_ok=True)
    (root / "task_metadata.json").write_text(json.dumps({
        "task_name": "short", "embedding_type": "scene", "prediction_type": "multiclass", "split_mode": "trainvaltest",
        "splits": ["train", "valid", "test"], "sample_duration": seconds, "evaluation": ["top1_acc"]}))
    (root / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
    thirds = [names[: len(names) // 3], names[len(names) // 3: 2 * len(names) // 3], names[2 * len(names) // 3:]]
    for split, part in zip(("train", "valid", "test"), thirds, strict=True):
        (root / "24000" / split).mkdir(exist_ok=True)
        for path in part:
            (root / "24000" / split / path.name).symlink_to(path)
        (root / f"{split}.json").write_text(json.dumps({p.name: [labels[i % 2]] for i, p in enumerate(part)}))
    return root


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--sets", default="2000x5,10000x1", help="NxS: N clips of S seconds, comma-separated")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N (a quicker look)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--long-files", type=int, default=4)
    parser.add_argument("--precision", default="fp32", help="auto | bf16 | fp32 (our paths; theirs is fp32)")
    parser.add_argument("--reference", type=Path, help="the authors' v.1.0.0 checkout (adds the 'theirs' column)")
    args = parser.parse_args(argv)
    import torch

    from encodecmae_s3prl.demo_data import write_tiny_encodecmae_checkpoint
    from encodecmae_s3prl.evaluation import embedding_cache, task_table
    from encodecmae_s3prl.extract import main as extract_main
    from encodecmae_s3prl.machine import cpu_flags
    from encodecmae_s3prl.registry import load_hub_upstream
    from encodecmae_s3prl.settings import UpstreamSettings

    rows = []
    settings = UpstreamSettings(precision=args.precision)
    for size in args.sizes.split(","):
        ckpt = args.work / f"{size}.ckpt"
        if not ckpt.is_file():
            write_tiny_encodecmae_checkpoint(ckpt, size=size)
        upstream = load_hub_upstream("encodecmae_local", str(ckpt), "cpu", settings)
        model = upstream.model
        theirs = None
        if args.reference:
            from vs_reference import reference_model

            theirs = reference_model(args.reference, model.codec, model.config.dim, model.config.encoder_layers,
                                     model.config.heads).eval()
        for spec in args.sets.split(","):
            count, seconds = spec.split("x")
            count, seconds = max(1, int(int(count) * args.scale)), float(seconds)
            folder = args.work / f"clips-{count}x{seconds:g}"
            if not folder.is_dir():
                clips = write_clips(folder / "audio", count, seconds)
                write_long(folder / "long", clips, args.long_files)
                write_hear_task(folder / "task", sorted((folder / "audio").glob("*.wav")), ["a", "b"], seconds)
            import soundfile

            audio = [torch.from_numpy(soundfile.read(p, dtype="float32")[0])
                     for p in sorted((folder / "audio").glob("*.wav"))]
            total = count * seconds
            row = {"size": size, "clips": count, "seconds": seconds, "audio_s": total, "precision": upstream.ran_as()}
            with torch.no_grad():
                model.encode(torch.stack(audio[: args.batch]))  # warm-up
                start = time.perf_counter()
                for i in range(0, count, args.batch):
                    model.encode(torch.stack(audio[i:i + args.batch]))
                row["model"] = time.perf_counter() - start
            for name, target in (("extract", folder / "audio"), ("long files", folder / "long")):
                out = args.work / "out"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                code = extract_main(["-u", "encodecmae_local", "-k", str(ckpt), str(target), "--out", str(out),
                                     "--device", "cpu", "--batch-size", str(args.batch), "--precision",
                                     args.precision, "--long-seconds", str(max(60.0, seconds))])
                row[name] = time.perf_counter() - start
                assert code == 0, name
            cache = args.work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            task = task_table.load_task("hear", folder / "task")
            start = time.perf_counter()
            embedding_cache.embed_splits(lambda up=upstream: up, f"{size}|{args.precision}", task, cache, "cpu",
                                       batch_size=args.batch)
            row["hear cache"] = time.perf_counter() - start
            if theirs is not None:
                with torch.no_grad():
                    theirs.extract_features_from_array(torch.stack(audio[: args.batch]).numpy(), layer=-1)
                    start = time.perf_counter()
                    for i in range(0, count, args.batch):
                        theirs.extract_features_from_array(torch.stack(audio[i:i + args.batch]).numpy(), layer=-1)
                    row["theirs"] = time.perf_counter() - start
            rows.append(row)
            print(json.dumps(row), flush=True)
    paths = ["model", "extract", "hear cache", "long files"] + (["theirs"] if args.reference else [])
    lines = [f"{datetime.date.today()}, {platform.processor() or platform.machine()}, cpu={cpu_flags()}, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads, our transformer in {rows[0]['precision']}",
             f"command: .venv/bin/python benchmarks/short_clips.py --work WORK --sizes {args.sizes} --sets {args.sets} "
             f"--scale {args.scale:g} --batch {args.batch} --precision {args.precision}"
             + (" --reference V1_CHECKOUT" if args.reference else ""), "",
             "| size | clips | " + " | ".join(f"{p} (s, audio-s/s)" for p in paths) + " | overhead: extract, cache, "
             "long files |", "|---|---|" + "---|" * (len(paths) + 1)]
    for r in rows:
        cells = [f"{r[p]:.1f}, {r['audio_s'] / r[p]:.1f}" for p in paths]
        overhead = ", ".join(f"{r[p] / r['model'] - 1:+.0%}" for p in ("extract", "hear cache", "long files"))
        lines.append(f"| {r['size']} | {r['clips']} x {r['seconds']:g} s | " + " | ".join(cells) + f" | {overhead} |")
    text = "\n".join(lines)
    (args.work / "short_clips.md").write_text(text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    main()
