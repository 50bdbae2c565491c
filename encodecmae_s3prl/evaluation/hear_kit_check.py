"""Our HEAR protocol against the organisers' own kit (heareval 2021.1.3), each side running on its own.

Builds four small synthetic HEAR scene tasks as hear-preprocess lays them out, audio at 48000 Hz only (as HEAR
distributes them): two 5-fold ``new_split_kfold`` multiclass tasks (1 s clips; 5 s clips, longer than the 4 s
inference chunk as ESC-50's, on which a tiny EnCodecMAE scores well between chance and 1), a ``trainvaltest``
multilabel one with a class absent from its test split, and a ``trainvaltest`` multiclass pitch task (MIDI pitch
labels, ``pitch_acc`` / ``chroma_acc``, the layout of NSynth pitch). Then per upstream:

1. the kit's ``heareval.embeddings.runner`` embeds every task through ``encodecmae_s3prl.evaluation.hear_api`` (48000 Hz
   declared, resampled inside), and our cache (``embedding_cache.embed_splits``) embeds it on its own; the two are
   compared row by row (same order, same labels, values);
2. the kit's ``heareval.predictions.runner`` trains and tests on the kit's own embeddings, and
   ``compare.evaluate`` on ours, from an empty cache (nothing is copied from one side to the other);
3. both sides' selected configuration, per-grid-point validation scores, every fold's validation score, best
   epoch and test scores are printed side by side and written to ``WORK/agreement.json`` and ``WORK/agreement.md``;
   ours is also trained on the kit's own embeddings (its memmaps, folds as its ``data_splits_from_folds``), which
   checks the training rules apart from the embeddings;
4. the stock ``hear-validator`` runs on ``fbank_no_cmvn``, the tiny checkpoint and ``encodecmae_random`` on
   that checkpoint's fitted codec.

The kit lives in its own folder, never in .venv (see README, "HEAR kit agreement"); ``--install`` puts it
there with pip (``--no-deps --target``), and the stubs it needs are written to ``--stubs``:

    .venv/bin/python -m encodecmae_s3prl.evaluation.hear_kit_check --work /tmp/kitcheck --kit /tmp/hearkit --install
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from encodecmae_s3prl import doc_blocks
from encodecmae_s3prl.errors import user_errors
from encodecmae_s3prl.machine import describe

HEAR_MODULE = "encodecmae_s3prl.evaluation.hear_api"  # what the kit's runners and the validator load
# the kit's score name -> ours
KIT_METRIC = {"top1_acc": "acc", "mAP": "mAP", "pitch_acc": "pitch_acc", "chroma_acc": "chroma_acc"}
# heareval 2021.1.3 and what it imports, without their pinned 2021 stacks (numpy 1.19, tensorflow, numba 0.48):
# pure-python packages, installed with --no-deps into their own folder and layered on .venv by PYTHONPATH
KIT_PACKAGES = ["heareval==2021.1.3", "hearvalidator==2021.0.2", "pytorch-lightning==1.9.5", "torchmetrics==1.4.3",
                "lightning-utilities==0.11.9", "torchinfo==1.8.0", "pandas", "python-dateutil", "pytz", "tzdata", "six",
                "more-itertools", "python-slugify", "text-unidecode", "intervaltree", "sortedcontainers",
                "setuptools<80"]  # setuptools: pkg_resources for lightning_fabric
STUBS = {  # imported at module top by the kit, used only by TensorFlow models and event (timestamp) tasks
    "tensorflow/__init__.py": (
        "class Module:  # isinstance(model, tf.Module) is False for torch models\n    pass\n\n\n"
        "class _Test:\n    @staticmethod\n    def is_gpu_available(*args, **kwargs):\n"
        "        return True  # heareval.embeddings.runner refuses a GPU torch sees and TF does not\n\n\n"
        "test = _Test()\n\n\ndef device(name):\n    raise RuntimeError('tensorflow stub: no TF models')\n"),
    "sed_eval/__init__.py": "from . import sound_event  # noqa: F401\n",
    "sed_eval/sound_event.py": (
        "class SoundEventMetrics:\n    def __init__(self, *a, **k):\n"
        "        raise RuntimeError('sed_eval stub: event-based scores are not available')\n\n\n"
        "class SegmentBasedMetrics(SoundEventMetrics):\n    pass\n\n\n"
        "class EventBasedMetrics(SoundEventMetrics):\n    pass\n"),
    "dcase_util/__init__.py": "from . import containers  # noqa: F401\n",
    "dcase_util/containers.py": "class MetaDataContainer(list):\n    pass\n",
    "librosa/__init__.py": "",  # hearkit.baseline only
    # numpy 2 dropped the aliases pytorch-lightning 1.9 uses (np.Inf in EarlyStopping / ModelCheckpoint)
    "sitecustomize.py": (
        "import numpy as _np\n\nfor _name, _value in (('Inf', _np.inf), ('NaN', _np.nan), ('NAN', _np.nan), "
        "('PINF', _np.inf)):\n    if not hasattr(_np, _name):\n        setattr(_np, _name, _value)\n"),
}


def install_kit(kit: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(kit), *KIT_PACKAGES],
                   check=True)


def write_stubs(stubs: Path) -> None:
    for name, text in STUBS.items():
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).write_text(text)


# --- the synthetic tasks ---------------------------------------------------------------------------------

def _clip(labels, seconds: float, rng: np.random.Generator, rate: int = 48_000,
          noise: tuple = (0.3, 0.9)) -> np.ndarray:
    """A mixture of the labels' sound classes in loud noise (std drawn from ``noise``), so that scores are neither
    chance nor perfect."""
    from encodecmae_s3prl.demo_data import sound_class

    wav = sum(sound_class(c, seconds, rate, rng) * rng.uniform(0.3, 1.0) for c in labels)
    wav = wav / (np.abs(wav).max() + 1e-9) + rng.normal(0, rng.uniform(*noise), wav.shape)
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


RATE = 48_000  # HEAR distributes its tasks at 48000 Hz


def _pitch_clip(pitch: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A harmonic note at a MIDI pitch in loud noise."""
    from encodecmae_s3prl.demo_data import harmonic_tone

    wav = harmonic_tone(440.0 * 2 ** ((pitch - 69) / 12), seconds, RATE, rng, noise=0.0)
    wav = wav + rng.normal(0, rng.uniform(0.5, 2.0), wav.shape)
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


def write_task(root: Path, name: str, split_mode: str, prediction_type: str, counts: dict, classes: int,
               seed: int, absent_from_test: tuple = (), pitches: tuple = (), seconds: float = 1.0,
               noise: tuple = (0.3, 0.9)) -> Path:
    """One HEAR scene task: task_metadata.json, labelvocabulary.csv, <split>.json and 48000/<split>/<file>.wav.
    ``pitches``: a pitch task (labels MIDI numbers as NSynth's, ints in the json; pitch_acc, chroma_acc)."""
    from encodecmae_s3prl.demo_data import write_wav

    rng = np.random.default_rng(seed)
    task = root / name
    vocabulary = [str(p) for p in pitches] or [f"class{i}" for i in range(classes)]
    for split, count in counts.items():
        labels = {}
        for n in range(count):
            file = f"{split}_{n:03d}.wav"
            if pitches:
                pitch = int(rng.choice(pitches[len(pitches) // 4: 3 * len(pitches) // 4]))  # some never occur
                write_wav(task / str(RATE) / split / file, _pitch_clip(pitch, seconds, rng), RATE)
                labels[file] = [pitch]
                continue
            if prediction_type == "multilabel":
                allowed = [c for c in range(classes) if not (split == "test" and c in absent_from_test)]
                chosen = sorted(rng.choice(allowed, size=int(rng.integers(1, 3)), replace=False).tolist())
            else:
                chosen = [int(rng.integers(0, classes))]
            write_wav(task / str(RATE) / split / file, _clip(chosen, seconds, rng, RATE, noise), RATE)
            labels[file] = [f"class{c}" for c in chosen]
        (task / f"{split}.json").write_text(json.dumps(labels, indent=1))
    (task / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(vocabulary)))
    evaluation = (["pitch_acc", "chroma_acc"] if pitches else ["mAP", "d_prime"] if prediction_type == "multilabel"
                  else ["top1_acc"])
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": name, "version": "kitcheck", "embedding_type": "scene", "prediction_type": prediction_type,
        "split_mode": split_mode, "splits": list(counts), "sample_duration": seconds, "evaluation": evaluation},
        indent=1))
    return task


def write_tasks(root: Path) -> list[Path]:
    return [write_task(root, "kfold_scenes", "new_split_kfold", "multiclass",
                       {f"fold{k:02d}": 40 for k in range(5)}, classes=5, seed=1),
            # 5 s clips (longer than the 4 s inference chunk, as ESC-50's), scores well between chance and 1
            write_task(root, "kfold_5s", "new_split_kfold", "multiclass",
                       {f"fold{k:02d}": 12 for k in range(5)}, classes=5, seed=4, seconds=5.0, noise=(0.05, 0.4)),
            write_task(root, "tvt_multilabel", "trainvaltest", "multilabel",
                       {"train": 120, "valid": 40, "test": 40}, classes=5, seed=2, absent_from_test=(4,)),
            write_task(root, "tvt_pitch", "trainvaltest", "multiclass", {"train": 240, "valid": 24, "test": 24},
                       classes=0, seed=3, pitches=tuple(range(21, 109)))]


# --- the kit, in its own folder ---------------------------------------------------------------------------

def kit_env(kit: Path, stubs: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), str(kit)])  # ours: the installed package
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # the kit's torch.load of its own Lightning checkpoints
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_kit(args: list, env: dict, cwd: Path, log: Path) -> None:
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"kit command failed ({proc.returncode}): {' '.join(args)}\n"
                         + "".join(log.read_text().splitlines(True)[-40:]))
    print(f"  kit {args[0]} done in {time.perf_counter() - start:.0f} s (log {log})")


def _params(hparams: dict) -> dict:
    init = "xavier_uniform" if "xavier_uniform" in hparams["initialization"] else "xavier_normal"
    return {"hidden_layers": int(hparams["hidden_layers"]), "init": init, "lr": float(hparams["lr"])}


def kit_grid(task_dir: Path) -> list:
    """The kit's grid points in the order tried: (validation score, epoch, hparams), from prediction.log."""
    points = []
    for line in (task_dir / "prediction.log").read_text().splitlines():
        match = re.search(r" result: (\[.*\])$", line)
        if match:
            score, epoch, hparams, _ = json.loads(match.group(1))
            points.append({"valid": score, "epoch": epoch, "params": _params(hparams)})
    return points


# --- one upstream on one task -------------------------------------------------------------------------------

def kit_targets(kit_dir: Path, split: str) -> np.ndarray:
    """The class indices the kit trains on: its pickled json labels through labelvocabulary.csv, as its
    ``SplitMemmapDataset`` maps them (``label_to_idx[str(label)]``, the vocabulary's labels read by pandas)."""
    import csv
    import pickle

    with open(kit_dir / "labelvocabulary.csv", newline="") as handle:  # pandas turns "60" into 60, then back
        vocabulary = {str(int(r["label"])) if r["label"].lstrip("-").isdigit() else r["label"]: int(r["idx"])
                      for r in csv.DictReader(handle)}
    with open(kit_dir / f"{split}.target-labels.pkl", "rb") as handle:
        labels = pickle.load(handle)
    rows = np.zeros((len(labels), len(vocabulary)), np.float32)
    for row, values in enumerate(labels):
        rows[row, [vocabulary[str(v)] for v in values]] = 1
    return rows


def ours_on_kit_embeddings(kit_dir: Path, task_root: Path, grid_points: int, max_epochs: int) -> dict:
    """Our HEAR-protocol training (``mlp_grid.evaluate_folds``) on the kit's own embedding memmaps, split as the
    kit's ``get_splits_from_metadata`` splits them: {"valid", "epoch", "test": {metric: {fold: value}}}."""
    from encodecmae_s3prl.evaluation import mlp_grid, task_table

    meta = json.loads((kit_dir / "task_metadata.json").read_text())

    def part(split: str):
        shape = tuple(json.loads((kit_dir / f"{split}.embedding-dimensions.json").read_text()))
        x = np.array(np.memmap(kit_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=shape))
        y = kit_targets(kit_dir, split)
        return {"x": x[:, None], "y": y if meta["prediction_type"] == "multilabel" else y.argmax(1)}

    def load(fold):
        if fold is None:
            splits = {"train": ["train"], "dev": ["valid"], "test": ["test"]}
        else:  # heareval's data_splits_from_folds: sorted folds, the next one validates, the rest train in order
            folds = sorted(meta["splits"])
            valid = folds[(folds.index(fold) + 1) % len(folds)]
            splits = {"train": [f for f in folds if f not in (fold, valid)], "dev": [valid], "test": [fold]}
        data = {}
        for name, parts in splits.items():
            pieces = [part(p) for p in parts]
            data[name] = {k: np.concatenate([p[k] for p in pieces]) for k in ("x", "y")}
        return task_table.load_task("hear", task_root, fold), data

    folds = task_table.task_folds("hear", task_root)
    result = mlp_grid.evaluate_folds(folds, load, grid_size=grid_points, max_epochs=max_epochs)
    names = [f["fold"] or "test" for f in result["folds"]]
    metrics = [m for m in meta["evaluation"] if m in KIT_METRIC]
    return {"valid": {n: f["valid"] for n, f in zip(names, result["folds"], strict=True)},
            "epoch": {n: f["epoch"] for n, f in zip(names, result["folds"], strict=True)},
            "test": {m: {n: f["test"][KIT_METRIC[m]] for n, f in zip(names, result["folds"], strict=True)}
                     for m in metrics}}


def same_folds(a: dict, b: dict) -> bool:
    """Every fold's validation score, best epoch and test scores equal (scores to float32 logging, 1e-6)."""
    return (a["epoch"] == b["epoch"] and a["valid"].keys() == b["valid"].keys()
            and all(abs(a["valid"][f] - b["valid"][f]) < 1e-6 for f in a["valid"])
            and all(abs(a["test"][m][f] - b["test"][m][f]) < 1e-6 for m in a["test"] for f in a["test"][m]))


def check(label: str, model_args: list, entry: str, ckpt: str | None, tasks: list[Path], work: Path, env: dict,
          grid_points: int, max_epochs: int, precision: str = "auto") -> dict:
    from encodecmae_s3prl.evaluation import compare, embedding_cache, task_table
    from encodecmae_s3prl.evaluation.native_rate import upstream_rate
    from encodecmae_s3prl.settings import UpstreamSettings

    emb_root = work / "embeddings" / label
    shutil.rmtree(emb_root, ignore_errors=True)
    print(f"[{label}] kit embeddings: heareval.embeddings.runner {HEAR_MODULE} {' '.join(model_args)}")
    run_kit(["heareval.embeddings.runner", HEAR_MODULE, *model_args, "--tasks-dir",
             str(work / "tasks"), "--embeddings-dir", str(emb_root)], env, work, work / f"embed-{label}.log")
    (module_dir,) = [d for d in emb_root.iterdir() if d.is_dir()]
    cache = work / "cache" / label
    shutil.rmtree(cache, ignore_errors=True)  # ours embeds from scratch too
    # ours at the precision the kit's hear_api runs (compare's and hear_api's default: auto), keyed by what it ran
    upstream = compare.LazyUpstream(entry, ckpt, "cpu", UpstreamSettings(precision=precision))
    key = compare.upstream_key(label, entry, ckpt, compare.ran_as(entry, "cpu", precision))
    results = {}
    for task_root in tasks:
        kit_dir = module_dir / task_root.name
        meta = json.loads((task_root / "task_metadata.json").read_text())
        # 1. the kit's predictions, on the kit's own embeddings
        print(f"[{label}] kit predictions on {task_root.name}")
        start = time.perf_counter()
        run_kit(["heareval.predictions.runner", str(kit_dir), "--grid-points", str(grid_points)], env, work,
                work / f"predict-{label}-{task_root.name}.log")
        kit_seconds = time.perf_counter() - start
        scores = json.loads((kit_dir / "test.predicted-scores.json").read_text())
        metric = meta["evaluation"][0]
        metrics = [m for m in meta["evaluation"] if m in KIT_METRIC]
        kit_folds = {name: v for name, v in scores.items() if isinstance(v, dict) and f"test_{metric}" in v}
        kit_result = {"grid": kit_grid(kit_dir), "seconds": kit_seconds,
                      "test": {m: {f: v[f"test_{m}"] for f, v in kit_folds.items()} for m in metrics},
                      "valid": {f: v["validation_score"] for f, v in kit_folds.items()},
                      "epoch": {f: v["epoch"] for f, v in kit_folds.items()}}
        if "aggregated_scores" in scores:
            kit_result["mean"] = scores["aggregated_scores"][f"test_{metric}_mean"]
            kit_result["std"] = scores["aggregated_scores"][f"test_{metric}_std"]
        else:
            kit_result["mean"], kit_result["std"] = next(iter(kit_result["test"][metric].values())), 0.0
        kit_result["params"] = _params(scores["hparams"])  # the kit's own record of its best grid point
        # 2. ours: compare.evaluate, embedding into its own (empty) cache
        print(f"[{label}] ours (compare.evaluate) on {task_root.name}")
        start = time.perf_counter()
        ours = compare.evaluate(upstream, key, "hear", str(task_root), cache, weighted=False,
                                grid_size=grid_points, max_epochs=max_epochs, device="cpu")
        our_seconds = time.perf_counter() - start
        fold_names = [f["fold"] or "test" for f in ours["folds"]]
        our_result = {"grid": ours["grid"], "params": ours["params"], "seconds": our_seconds,
                      "test": {m: {n: f["test"][KIT_METRIC[m]] for n, f in zip(fold_names, ours["folds"], strict=True)}
                               for m in metrics},
                      "valid": {n: f["valid"] for n, f in zip(fold_names, ours["folds"], strict=True)},
                      "epoch": {n: f["epoch"] for n, f in zip(fold_names, ours["folds"], strict=True)},
                      "mean": ours[KIT_METRIC[metric]], "std": ours["std"][KIT_METRIC[metric]]}
        # 3. the two sides' embeddings and targets, split by split (the kit's memmaps vs our cache, last layer)
        diffs, same_targets = [], True
        folds = task_table.task_folds("hear", task_root)
        for split in meta["splits"]:
            if meta["split_mode"] == "trainvaltest":
                task, part = task_table.load_task("hear", task_root), {"valid": "dev"}.get(split, split)
            else:  # fold j is the dev fold when fold j-1 tests (HEAR's rule)
                task, part = task_table.load_task("hear", task_root, folds[folds.index(split) - 1]), "dev"
            data = embedding_cache.embed_splits(upstream, key, task, cache, "cpu")[part]  # a cache hit
            shape = tuple(json.loads((kit_dir / f"{split}.embedding-dimensions.json").read_text()))
            kit = np.memmap(kit_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=shape)
            diffs.append(float(np.abs(kit - data["x"][:, -1]).max() / (np.abs(data["x"][:, -1]).max() + 1e-12)))
            targets = kit_targets(kit_dir, split)
            ours_y = data["y"] if data["y"].ndim == 2 else np.eye(targets.shape[1], dtype=np.float32)[data["y"]]
            same_targets &= bool(np.array_equal(targets, ours_y))
            del kit
        on_kit = ours_on_kit_embeddings(kit_dir, task_root, grid_points, max_epochs)
        results[task_root.name] = {"metric": metric, "embedding_rel_diff": max(diffs), "same_targets": same_targets,
                                   "rate": upstream_rate(upstream()), "kit": kit_result,
                                   "ours": our_result, "ours_on_kit_embeddings": on_kit,
                                   "same_folds": same_folds(kit_result, our_result),
                                   "same_folds_on_kit_embeddings": same_folds(kit_result, on_kit)}
        print(json.dumps(results[task_root.name], indent=1, default=str)[:3000])
    return results


def same_grid(r: dict) -> bool:
    """Every grid point of the first fold: the same configuration, validation score and best epoch on both sides."""
    kit, ours = r["kit"]["grid"], r["ours"]["grid"]
    return len(kit) == len(ours) and all(a["params"] == b["params"] and abs(a["valid"] - b["valid"]) < 1e-6
                                         and a["epoch"] == b["epoch"] for a, b in zip(kit, ours, strict=True))


def agrees(r: dict) -> bool:
    """One task of one upstream: the same grid, every fold the same (from our embeddings and from the kit's), the
    same targets."""
    return same_grid(r) and r["same_folds"] and r["same_folds_on_kit_embeddings"] and r["same_targets"]


def table(results: dict) -> str:
    lines = ["| upstream | task | metric | selected (kit) | selected (ours) | every grid point: same validation score "
             "and best epoch | every fold: same validation score, best epoch and test scores (ours; ours on the "
             "kit's embeddings) | kit mean ± std | ours mean ± std | max abs test diff (every fold, every metric) | "
             "embeddings kit vs ours (rel.) | same targets |", "|" + "---|" * 12]

    def show(p):
        return f"{p['hidden_layers']}x1024, {p['init'].replace('xavier_', '')}, lr {p['lr']:g}"

    for label, tasks in results.items():
        for task, r in tasks.items():
            kit, ours = r["kit"], r["ours"]
            diff = max(abs(kit["test"][m][f] - ours["test"][m][f]) for m in kit["test"] for f in kit["test"][m])
            metric = "/".join(kit["test"])
            lines.append(f"| {label} | {task} | {metric} | {show(kit['params'])} | {show(ours['params'])} | "
                         f"{'yes' if same_grid(r) else 'no'} ({len(kit['grid'])} points) | "
                         f"{'yes' if r['same_folds'] else 'no'}; {'yes' if r['same_folds_on_kit_embeddings'] else 'no'}"
                         f" ({len(kit['epoch'])} fold{'s' if len(kit['epoch']) > 1 else ''}) | {kit['mean']:.4f} ± "
                         f"{kit['std']:.4f} | {ours['mean']:.4f} ± {ours['std']:.4f} | {diff:.1e} | "
                         f"{r['embedding_rel_diff']:.1e} | {'yes' if r['same_targets'] else 'no'} |")
    return "\n".join(lines)


def validator(models: list, env: dict, work: Path) -> list:
    """The stock hear-validator (hearvalidator 2021.0.2, unpatched) on each model spec: rows (spec, outcome)."""
    rows = []
    for spec in models:
        proc = subprocess.run([sys.executable, "-m", "hearvalidator.validate", HEAR_MODULE, "--model", spec], cwd=work,
                              env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        rate = re.search(r"Model sample rate is: (\d+)", out)
        if proc.returncode == 0 and "Looks good!" in out:
            sizes = re.findall(r"Received embedding of shape: torch.Size\((\[.*?\])\)", out)
            hop = re.search(r"Interval between timestamps is ([0-9.]+)ms", out)
            outcome = (f"passes ({rate.group(1)} Hz, timestamp {sizes[0]} every {float(hop.group(1)):.2f} ms, "
                       f"scene {sizes[-1]})")
        else:
            last = [line for line in out.splitlines() if line.strip()][-1]
            outcome = f"fails at {rate.group(1) + ' Hz: ' if rate else ''}{last.strip()[:160]}"
        rows.append((spec, outcome))
        print(f"hear-validator {spec}: {outcome}")
    return rows


DOC_BLOCK = "HEAR kit agreement table"
DOC_COMMAND = "python -m encodecmae_s3prl.evaluation.hear_kit_check --doc docs/evaluation.md ..."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (tasks, embeddings, logs)")
    parser.add_argument("--kit", type=Path, required=True,
                        help="folder holding heareval 2021.1.3, pytorch-lightning 1.9.x ... (pip --target)")
    parser.add_argument("--install", action="store_true", help="pip install the kit into --kit first")
    parser.add_argument("--stubs", type=Path, default=None,
                        help="where to write the tensorflow / sed_eval / dcase_util stubs and the numpy-alias "
                             "sitecustomize.py (default WORK/stubs)")
    parser.add_argument("--upstreams", default="fbank_no_cmvn,tiny",
                        help="fbank_no_cmvn and/or tiny (a tiny random EnCodecMAE checkpoint, 24 kHz)")
    parser.add_argument("--tasks", default="kfold_scenes,kfold_5s,tvt_multilabel,tvt_pitch",
                        help="which of the four tasks")
    parser.add_argument("--grid-points", type=int, default=8)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="both sides' precision: hear_api's model option and compare's setting (default auto, "
                             "both sides' own default: bf16 on a CPU with native bf16)")
    parser.add_argument("--doc", type=Path, help=f"also put the tables, with the machine, date and settings, into "
                                                 f"this page between its {DOC_BLOCK} markers (docs/evaluation.md)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.doc is not None:
        with user_errors():  # a page that cannot take the tables is said before the run
            doc_blocks.check(args.doc, DOC_BLOCK, DOC_COMMAND)

    from encodecmae_s3prl.demo_data import write_tiny_encodecmae_checkpoint

    work = args.work.resolve()
    shutil.rmtree(work / "tasks", ignore_errors=True)
    (work / "tasks").mkdir(parents=True, exist_ok=True)
    if args.install:
        install_kit(args.kit.resolve())
    stubs = (args.stubs or work / "stubs").resolve()
    write_stubs(stubs)
    wanted = args.tasks.split(",")
    tasks = [t for t in write_tasks(work / "tasks") if t.name in wanted]
    for extra in [t for t in (work / "tasks").iterdir() if t.name not in wanted]:
        shutil.rmtree(extra)  # the kit's runner embeds every folder under --tasks-dir
    env = kit_env(args.kit.resolve(), stubs)
    ckpt = str(write_tiny_encodecmae_checkpoint(work / "tiny" / "states-1.ckpt"))
    results = {}
    for label in [u for u in args.upstreams.split(",") if u]:
        if label == "tiny":  # our checkpoint: --model PATH, 48000 Hz declared by default
            options = json.dumps({"precision": args.precision})
            results[label] = check(label, ["--model", ckpt, "--model-options", options], "encodecmae_local", ckpt,
                                   tasks, work, env, args.grid_points, 500, args.precision)
        else:  # a hub entry through the kit's runner: --model-options (its --model must be an existing path)
            options = json.dumps({"upstream": label, "sample_rate": 48000, "precision": args.precision})
            results[label] = check(label, ["--model-options", options], label, None, tasks, work, env,
                                   args.grid_points, 500, args.precision)
    rows = validator(["fbank_no_cmvn", ckpt, f"encodecmae_random:{ckpt}"], env, work)
    text = table(results) + f"\n\n| stock hear-validator {HEAR_MODULE} --model | result |\n|---|---|\n" + \
        "\n".join(f"| `{spec.replace(str(work), 'WORK')}` | {outcome} |" for spec, outcome in rows)
    (work / "agreement.json").write_text(json.dumps({"predictions": results, "validator": rows}, indent=1,
                                                    default=str))
    (work / "agreement.md").write_text(text + "\n")
    print(text)
    agreed = all(agrees(r) for tasks in results.values() for r in tasks.values())
    passed = all(outcome.startswith("passes") for _, outcome in rows)
    if args.doc is not None:
        from encodecmae_s3prl.upstream.precision import resolved_name

        header = (f"Measured {time.strftime('%Y-%m-%d')} on {describe()}; "
                  f"{(time.perf_counter() - start) / 60:.1f} min; both sides at `--precision {args.precision}` "
                  f"(ran as {resolved_name('cpu', args.precision)}); upstreams {args.upstreams}, tasks {args.tasks}, "
                  f"{args.grid_points} grid points; `WORK` is the `--work` folder. "
                  f"{'Every row agrees.' if agreed else 'Some rows DISAGREE.'}")
        doc_blocks.write(args.doc, DOC_BLOCK, DOC_COMMAND, f"{header}\n\n{text}")
        print(f"tables written into {args.doc}")
    if not (agreed and passed):
        print("the kit and ours disagree (rows marked 'no' above), or the validator failed", file=sys.stderr)
    return 0 if agreed and passed else 1


if __name__ == "__main__":
    sys.exit(main())
