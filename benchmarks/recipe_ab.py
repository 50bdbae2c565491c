"""A/B of the two pretraining recipes (issue 18, item 3) at CPU smoke scale: the ``tiny`` EnCodecMAE pretrained
with ``recipe: v1`` (the authors' code) and with ``recipe: paper`` (the paper's text), N seeds each, on the demo's
corpus, then the demo's two probes (NSynth-layout pitch, ESC-50 layout) under the HEAR protocol.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_ab.py --steps 150 --seeds 0,1,2 --out /tmp/recipe_ab

Everything comes from the demo (``encodecmae_s3prl.demo``: corpus, probe datasets, pretraining through
``run_pretrain.py -u encodecmae -g <tiny + recipe>``) and from ``encodecmae_s3prl.evaluation.compare.evaluate``
(the HEAR protocol). The seed is ``config.pretrain_expert.datarc.seed``: it seeds the model's initialisation, the
crops, the masks and the fitting of the random-init EnCodec to the corpus; a seed gives both recipes the same
codec, crops and initial weights, so the recipes differ only in the span layout and the decoder input at masked
frames. Corpus and probes are fixed (the demo's, seed 0). Each (recipe, seed) writes ``run.json`` in its folder
and a rerun skips the runs already done; the table goes to ``--out``/recipe_ab.md and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import torch

from encodecmae_s3prl import demo
from encodecmae_s3prl.evaluation.compare import LazyUpstream, evaluate, upstream_key
from encodecmae_s3prl.machine import describe
from encodecmae_s3prl.settings import UpstreamSettings

REPO = Path(__file__).resolve().parent.parent

RECIPES = ("v1", "paper")
METRICS = {"nsynth_pitch": "pitch_acc", "esc50": "acc"}  # the demo's two probes, the metric reported of each


def model_config(choice: demo.EncodecChoice, folder: Path, recipe: str) -> Path:
    """The demo's ``-g`` (``tiny``, on the EnCodec the demo chose) with ``recipe`` set."""
    base = demo.pretrain_model_config(choice, folder)
    text = "model: tiny\n" if base == "tiny" else Path(base).read_text()
    path = folder / f"config_model_tiny_{recipe}.yaml"
    path.write_text(text + f"# A/B (benchmarks/recipe_ab.py): the {recipe} recipe\nrecipe: {recipe}\n")
    return path


def final_loss(expdir: Path, delta: float, weights) -> Dict[str, float]:
    """The training objective Σ_q γ_q [δ masked_q + (1-δ) unmasked_q] at the last logged step (the mean over that
    log interval, from the run's TensorBoard scalars), and the step it was logged at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: Dict[str, list] = {}
    for events in sorted(expdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(acc.Scalars(tag))

    def last(name: str):
        tag = next(t for t in scalars if t.endswith(name))
        return max(scalars[tag], key=lambda e: e.step)

    loss, step = 0.0, None
    for q, w in enumerate(weights):
        masked, unmasked = last(f"masked_loss_q{q}"), last(f"unmasked_loss_q{q}")
        loss += w * (delta * masked.value + (1 - delta) * unmasked.value)
        step = masked.step
    return {"loss": loss, "loss_step": step}


def one_run(recipe: str, seed: int, args, corpus: Path, probes: Dict[str, Path], choice, env,
            settings: UpstreamSettings) -> dict:
    """Pretrain (recipe, seed) in a process with ``env``, then the probes on its checkpoint, loaded with
    ``settings``; ``run.json`` in its folder (reused if there)."""
    folder = args.out / f"{recipe}_seed{seed}"
    done = folder / "run.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("steps") == args.steps:
            print(f"[{recipe} seed {seed}] done before: {done}")
            return result
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml

    config_path = model_config(choice, folder, recipe)
    config = model_config_from_yaml(str(config_path))
    assert config.recipe == recipe, (config.recipe, recipe)
    start = time.time()
    print(f"[{recipe} seed {seed}] pretraining {args.steps} steps")
    checkpoint = demo.pretrain(corpus, folder / "pretrain", str(config_path), args.steps, env, cwd=folder,
                               name=f"{recipe}_seed{seed}",
                               overrides=[f"config.pretrain_expert.datarc.seed={seed}"])
    pretrain_s = time.time() - start
    result = {"recipe": recipe, "seed": seed, "steps": args.steps, "checkpoint": str(checkpoint),
              "pretrain_s": pretrain_s,
              **final_loss(folder / "pretrain", config.delta, config.codebook_weights)}
    stored = _stored_recipe(checkpoint)
    assert stored == recipe, f"{checkpoint} says recipe {stored!r}, expected {recipe!r}"
    upstream = LazyUpstream("encodecmae_local", str(checkpoint), "cpu", settings)
    key = upstream_key(f"{recipe}_seed{seed}", "encodecmae_local", str(checkpoint))
    for probe, root in probes.items():
        scores = evaluate(upstream, key, probe, str(root), folder / "cache", weighted=False,
                          grid_size=args.grid_size, max_epochs=args.max_epochs, device="cpu")
        result[probe] = scores[METRICS[probe]]
    result["total_s"] = time.time() - start
    done.write_text(json.dumps(result, indent=2))
    print(f"[{recipe} seed {seed}] loss {result['loss']:.4f}, pitch {result['nsynth_pitch']:.3f}, "
          f"esc {result['esc50']:.3f}; {result['total_s'] / 60:.1f} min")
    return result


def _stored_recipe(checkpoint: Path) -> str:
    """The recipe a pretraining checkpoint records (its model config)."""
    from encodecmae_s3prl.upstream.loading import load_checkpoint

    return load_checkpoint(str(checkpoint)).config.recipe


def mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def table(results: List[dict], args, header: str) -> str:
    lines = [header, "",
             "| recipe | NS-probe pitch acc | ESC-probe acc | final train loss |", "|---|---|---|---|"]
    for recipe in RECIPES:
        rows = [r for r in results if r["recipe"] == recipe]
        lines.append(f"| `{recipe}` | {mean_std([r['nsynth_pitch'] for r in rows])} | "
                     f"{mean_std([r['esc50'] for r in rows])} | {mean_std([r['loss'] for r in rows])} |")
    lines += ["", f"Mean ± std (sample std, ddof 1) over {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}). "
              "Per run:", "", "| recipe | seed | pitch acc | ESC acc | final loss | pretrain min | total min |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (RECIPES.index(r["recipe"]), r["seed"])):
        lines.append(f"| `{r['recipe']}` | {r['seed']} | {r['nsynth_pitch']:.3f} | {r['esc50']:.3f} | "
                     f"{r['loss']:.4f} | {r['pretrain_s'] / 60:.1f} | {r['total_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "recipe_ab_output")
    parser.add_argument("--steps", type=int, default=150, help="pretraining steps of each run (demo: 300)")
    parser.add_argument("--seeds", default="0,1,2", help="pretraining seeds, comma-separated")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="which recipes to run (all: the table)")
    parser.add_argument("--grid-size", type=int, default=4, help="HEAR MLP configurations tried per probe (demo: 4)")
    parser.add_argument("--max-epochs", type=int, default=200, help="HEAR MLP epochs, early stopping (demo: 200)")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out = args.out.resolve()
    threads = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    start = time.time()

    settings = UpstreamSettings.from_environment()
    choice = demo.choose_encodec(settings.encodec_weights, download=False)
    settings = replace(settings, encodec_weights=str(choice.weights) if choice.real else "random")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ENCODEC_CKPT=settings.encodec_weights)
    print(f"EnCodec: {'real, ' + str(choice.weights) if choice.real else 'seeded random-init (' + choice.where + ')'}")
    corpus = demo.write_corpus(args.out / "corpus")
    probes = demo.write_probes(args.out / "probes")
    results = [one_run(recipe, seed, args, corpus, probes, choice, env, settings)
               for recipe in args.recipes.split(",") for seed in args.seeds]
    if {r["recipe"] for r in results} != set(RECIPES):
        return
    command = "OMP_NUM_THREADS=%d .venv/bin/python benchmarks/recipe_ab.py %s" % (threads, " ".join(
        sys.argv[1:] if argv is None else argv))
    codec = (f"the real EnCodec ({choice.weights})" if choice.real
             else "a seeded random-init EnCodec fitted to the corpus")
    header = (f"Machine: {describe()}. Date {time.strftime('%Y-%m-%d')}. Command: `{command}`. "
              f"Tiny model, {args.steps} pretraining steps per run (batch 8 × 2 s crops), {codec}; HEAR protocol "
              f"(last layer, grid {args.grid_size}, ≤ {args.max_epochs} epochs); "
              f"wall time {(time.time() - start) / 60:.1f} min for this invocation.")
    text = table(results, args, header)
    (args.out / "recipe_ab.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
