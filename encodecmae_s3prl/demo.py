"""``make demo``: the whole pipeline, offline, on a 2-core CPU in well under 20 minutes.

1. writes a small deterministic corpus (music notes of many pitches and timbres, environmental-like
   sounds, spoken words when espeak-ng is installed) and two probe datasets (NSynth-layout pitch whose
   test instrument has a timbre unseen in training, ESC-50-layout sound classes), none of it in the corpus;
2. pretrains the ``tiny`` EnCodecMAE through ``run_pretrain.py -u encodecmae`` (s3prl's runner);
3. compares it, under the HEAR protocol, with the EnCodec features (EC), a random-init MAE on the
   same codec (ECMAE-R) and s3prl's ``fbank_no_cmvn``; prints the table and where everything is.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence

import numpy as np

from encodecmae_s3prl import doc_blocks
from encodecmae_s3prl.demo_data import espeak_word, harmonic_tone, sound_class, write_esc50, write_nsynth, write_wav
from encodecmae_s3prl.errors import UserError, user_errors
from encodecmae_s3prl.settings import ENCODEC_ENV, UpstreamSettings, add_precision_flag
from encodecmae_s3prl.upstream.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent


class EncodecChoice(NamedTuple):
    """Which EnCodec the demo runs on: ``weights`` is the real 24 kHz weights file, or None for the seeded
    random-init EnCodec (then fitted to the corpus); ``where`` says how it was decided."""

    weights: Optional[Path]
    where: str

    @property
    def real(self) -> bool:
        return self.weights is not None


def choose_encodec(weights: Optional[str], download: bool = True) -> EncodecChoice:
    """The real EnCodec when its weights are found, by the library's one lookup
    (``upstream.codec.locate_encodec_weights``) of ``weights`` (``settings.encodec_weights()``, ``$ENCODEC_CKPT``): a
    file; ``random``, the random-init codec; None, the torch hub cache
    (``<torch hub dir>/checkpoints/encodec_24khz-d7cc33bc.th``), then, with ``download``, the encodec package's
    download into that cache. A named file that is missing or is not EnCodec 24 kHz weights is an error, never a
    silent fallback to the random codec; pretrained weights that are neither cached nor downloadable fall back
    to it."""
    from encodecmae_s3prl.upstream.codec import (
        EncodecWeightsError,
        build_encodec,
        cached_encodec_weights,
        locate_encodec_weights,
    )

    was_cached = cached_encodec_weights().is_file()
    try:
        path = locate_encodec_weights(weights, download=download)
    except EncodecWeightsError:
        if weights is not None:  # a named file that is not there
            raise
        return EncodecChoice(None, "not found " + ("offline " if download else "")
                             + "(no $ENCODEC_CKPT, nothing in the torch hub cache)")
    if path is None:
        return EncodecChoice(None, f"{ENCODEC_ENV}=random")
    where = f"${ENCODEC_ENV}" if weights is not None else \
        "the torch hub cache" if was_cached else "downloaded to the torch hub cache"
    build_encodec(str(path))  # EncodecWeightsError / CheckpointError (user errors) if it is not EnCodec
    return EncodecChoice(path.resolve(), f"{where}: {path}")


def pretrain_model_config(choice: EncodecChoice, folder: Path) -> str:
    """``-g`` of the demo's pretraining: the ``tiny`` model on the real EnCodec (no corpus standardisation, as
    the paper's models), or ``tiny`` as shipped (random-init EnCodec, standardised and fitted to the corpus)."""
    if not choice.real:
        return "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config_model_tiny_real_encodec.yaml"
    path.write_text("# the demo's tiny EnCodecMAE on the real EnCodec 24 kHz (ENCODEC_CKPT points at its weights)\n"
                    "model: tiny\nencodec_source: pretrained\nstandardise_features: false\n")
    return str(path)


def checkpoint_codec(checkpoint: Path) -> str:
    """What EnCodec a pretraining checkpoint carries (EC, ECMAE-R and the pretrained model all run on it)."""
    from encodecmae_s3prl.upstream.checkpoint import safe_load
    from encodecmae_s3prl.upstream.loading import CHECKPOINT_KEY

    state = safe_load(checkpoint)[CHECKPOINT_KEY]["state_dict"]
    return "random-init" if bool(state["codec.random_weights"]) else "real"


def write_corpus(root: Path, seed: int = 0) -> Path:
    """Notes (MIDI 36-96, 6 timbres, 2-5 s, mixed rates), sound classes, and spoken words if espeak-ng is there."""
    rng = np.random.default_rng(seed)
    for n in range(160):
        pitch = int(rng.integers(36, 97))
        rate = [16000, 22050, 44100, 48000][n % 4]
        wav = harmonic_tone(440.0 * 2 ** ((pitch - 69) / 12), float(rng.uniform(2, 5)), rate, rng,
                                      harmonics=1 + n % 6)
        write_wav(root / "notes" / f"note{n:03d}.wav", wav, rate)
    for n in range(60):
        write_wav(root / "sounds" / f"sound{n:03d}.wav",
                            sound_class(n % 8, float(rng.uniform(2, 4)), 24000, rng), 24000)
    words = ["music", "sound", "pitch", "tone", "cat", "dog", "rain", "bird"]
    for n, word in enumerate(words * 3):
        espeak_word(word, root / "speech" / f"{word}{n}.wav", pitch=30 + 5 * (n % 8), speed=150)
    return root


def write_probes(root: Path) -> Dict[str, Path]:
    """The demo's two probe datasets under ``root``: NSynth-layout pitch (48 notes; the test instrument's timbre,
    8 harmonics, is unlike the training ones, 2-4: pitch must transfer across timbre) and ESC-50-layout sound
    classes (8 classes, 5 folds of 4 clips each)."""
    return {"nsynth_pitch": write_nsynth(root / "nsynth", pitches=range(36, 84), instruments=3,
                                                   test_harmonics=8),
            "esc50": write_esc50(root / "esc50", classes=8, per_fold=4, seed=1)}


def pretrain(corpus: Path, expdir: Path, model_config: str, steps: int, env: Dict[str, str], cwd: Path,
             name: str = "demo", overrides: Sequence[str] = ()) -> Path:
    """The demo's pretraining: ``run_pretrain.py -u encodecmae -g MODEL_CONFIG`` on ``corpus`` for ``steps`` steps
    (batch 8 of 2 s crops, lr 1e-3) into ``expdir``, plus ``overrides`` (more ``config.a.b=value`` items of
    ``-o``); returns the newest checkpoint. A user error of the runner (exit status 2) is a UserError."""
    override = ",,".join([
        f"config.pretrain_expert.datarc.corpus=['{corpus}']", "config.pretrain_expert.datarc.train_batch_size=8",
        "config.pretrain_expert.datarc.crop_seconds=2.0", "config.pretrain_expert.datarc.num_workers=1",
        "config.pretrain_expert.datarc.codec_init_clips=128", "config.optimizer.lr=1.0e-3",
        f"config.runner.total_steps={steps}", f"config.runner.log_step={max(1, min(20, steps // 2))}",
        f"config.runner.save_step={max(1, steps // 2)}", "config.runner.max_keep=1", *overrides])
    proc = subprocess.run([sys.executable, str(REPO / "run_pretrain.py"), "-u", "encodecmae", "-g", model_config,
                           "-n", name, "-p", str(expdir), "-o", override], env=env, cwd=cwd)
    if proc.returncode == 2:  # a user error, already printed by run_pretrain.py
        raise UserError(f"pretraining failed (run_pretrain.py's message above); see {expdir}")
    if proc.returncode != 0:
        raise RuntimeError(f"run_pretrain.py failed with exit status {proc.returncode} (its traceback above)")
    return max(expdir.glob("states-*.ckpt"), key=lambda p: p.stat().st_mtime)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps of the tiny model")
    parser.add_argument("--grid-size", type=int, default=4, help="HEAR MLP configurations tried per probe")
    parser.add_argument("--max-epochs", type=int, default=200, help="HEAR MLP epochs (early stopping)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, here and in the pretraining process, whatever OMP_NUM_THREADS says: float "
                             "sums, hence the table, depend on it. 1 by default: the same table on every machine of "
                             "the same CPU arithmetic, and no collapse when other jobs share the cores (the "
                             "pretraining's loader worker takes a second core)")
    add_precision_flag(parser)
    parser.add_argument("--readme", type=Path, help="also put the table into this README, between its demo-table "
                                                    "markers (python -m encodecmae_s3prl.demo --readme README.md)")
    return parser


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    with user_errors():
        # ENCODECMAE_TRUST_CHECKPOINT, ENCODEC_CKPT, --precision
        run(args, UpstreamSettings.from_environment(precision=args.precision))


# --- the table in the README is the one the demo printed ------------------------------------------------------
TABLE_NAME, TABLE_COMMAND = "demo table", "python -m encodecmae_s3prl.demo --readme README.md"
TABLE_BEGIN, TABLE_END = doc_blocks.markers(TABLE_NAME, TABLE_COMMAND)


def settings_line(args, encodec: str, minutes: float, date: str) -> str:
    """What the table in ``demo_table.md`` came from: the command and its settings, the EnCodec, the arithmetic."""
    import torch

    from encodecmae_s3prl.upstream.precision import cpu_has_fast_bf16, resolved_name

    defaults = parser().parse_args([])
    chosen = (args.steps, args.grid_size, args.max_epochs)
    command = ("`make demo`" if chosen == (defaults.steps, defaults.grid_size, defaults.max_epochs) else
               f"`python -m encodecmae_s3prl.demo --steps {args.steps} --grid-size {args.grid_size} "
               f"--max-epochs {args.max_epochs}`")
    return (f"Printed by {command} on {date} ({args.steps} pretraining steps, {args.grid_size} MLP configurations, "
            f"at most {args.max_epochs} epochs; torch threads: {args.threads}, "
            f"pretraining in {'bf16 autocast' if cpu_has_fast_bf16() else 'fp32'} on the CPU, extraction in "
            f"{resolved_name('cpu', getattr(args, 'precision', 'fp32'))} (--precision "
            f"{getattr(args, 'precision', 'fp32')}), torch {torch.__version__}, {encodec} EnCodec), "
            f"{minutes:.1f} min in all:")


def table_body(settings: str, table: str) -> str:
    """What the README's demo-table block holds: the settings line, then the table as compare wrote it
    (results.md)."""
    return f"{settings}\n\n{table.strip()}"


def table_block(settings: str, table: str) -> str:
    """The README's demo-table block, markers included."""
    return doc_blocks.block(TABLE_NAME, TABLE_COMMAND, table_body(settings, table))


def readme_with_table(readme: str, block: str) -> str:
    """``readme`` with its demo-table block (from TABLE_BEGIN to TABLE_END) replaced by ``block``."""
    return doc_blocks.replaced(readme, TABLE_NAME, TABLE_COMMAND, block, where="the README")


def run(args, settings: UpstreamSettings) -> None:
    """The demo with ``main``'s options; ``settings``: trust and the EnCodec weights the user asked for (the
    demo decides which EnCodec every row and process runs on from them, ``choose_encodec``)."""
    import torch

    start = time.time()
    out = args.out.resolve()
    if args.readme is not None:  # a README that cannot take the table is said before the run, not after
        doc_blocks.check(args.readme, TABLE_NAME, TABLE_COMMAND)
    torch.set_num_threads(args.threads)
    choice = choose_encodec(settings.encodec_weights)
    # every row, here and in the pretraining process: that very file, or the random-init codec
    settings = replace(settings, encodec_weights=str(choice.weights) if choice.real else "random")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               **{ENCODEC_ENV: settings.encodec_weights})
    print("EnCodec weights: " + (f"the real pretrained EnCodec 24 kHz ({choice.where}), for every row" if choice.real
                                 else f"{choice.where} -> a seeded random-init EnCodec, standardised and with "
                                      f"codebooks fitted to the corpus, for every row (numbers are a smoke test, "
                                      f"not the paper's)"))

    print("[1/3] writing the corpus and the probe datasets")
    corpus = write_corpus(out / "corpus")
    # the test instrument's timbre (8 harmonics) is unlike the training ones (2-4): pitch must transfer across timbre
    probes = write_probes(out / "probes")

    print(f"[2/3] pretraining the tiny EnCodecMAE for {args.steps} steps (s3prl's runner)")
    expdir = out / "pretrain"
    shutil.rmtree(expdir, ignore_errors=True)  # a rerun pretrains afresh instead of mixing with old checkpoints
    model_config = pretrain_model_config(choice, out / "config")
    checkpoint = pretrain(corpus, expdir, model_config, args.steps, env, cwd=out)
    codec = checkpoint_codec(checkpoint)

    print("[3/3] HEAR protocol: EC, ECMAE-R, the pretrained model and fbank_no_cmvn on the probes")
    from encodecmae_s3prl.evaluation import compare

    # EC and ECMAE-R take the checkpoint's codec: the real EnCodec, or the random-init one with the codebooks
    # and statistics fitted to this corpus
    ours = "ECMAE-tiny (pretrained here)"
    specs = [f"encodec_features={checkpoint}", f"encodecmae_random={checkpoint}", f"{ours}={checkpoint}",
             "fbank_no_cmvn"]
    print(f"EnCodec of EC, ECMAE-R and {ours}: the {codec} EnCodec stored in {checkpoint.name}"
          + (f" ({choice.weights})" if codec == "real" else " (fitted to the corpus)"))
    results = compare.main(["--upstreams", ",".join(specs), "--probes", ",".join(probes),
                            *[f"--data={p}={path}" for p, path in probes.items()], "--out", str(out / "compare"),
                            "--grid-size", str(args.grid_size), "--max-epochs", str(args.max_epochs),
                            "--device", "cpu"], settings)
    pretrained = results[ours]["nsynth_pitch"].get("pitch_acc")
    random_mae = results["encodecmae_random"]["nsynth_pitch"].get("pitch_acc")
    if pretrained is not None and random_mae is not None:
        verdict = "beats" if pretrained > random_mae else "does NOT beat"
        print(f"pitch accuracy: the pretrained model {verdict} ECMAE-R ({pretrained:.3f} vs {random_mae:.3f})")
    if codec != "real":
        print("note: with a random-init EnCodec the EC row is weak by construction (the time-mean of a random "
              "codec's output keeps little pitch); with the real EnCodec it is the paper's EC baseline.")
    print(f"chart: {out / 'compare' / 'results.png'}")
    print(f"checkpoint: {checkpoint}")
    print(f"TensorBoard logs: tensorboard --logdir {expdir}")
    used = f"real pretrained weights ({choice.weights})" if codec == "real" else f"random-init ({choice.where})"
    minutes = (time.time() - start) / 60
    if any("error" in cell for row in results.values() for cell in row.values()):
        print("some cells failed (above): no demo_table.md" + (", README not changed" if args.readme else ""))
    else:  # compare wrote this run's complete table as results.md
        settings = settings_line(args, "the real" if codec == "real" else "a random-init", minutes,
                                 time.strftime("%Y-%m-%d"))
        results = (out / "compare" / "results.md").read_text()
        atomic_write_text(out / "demo_table.md", table_block(settings, results))
        print(f"the table with its settings: {out / 'demo_table.md'}")
        if args.readme is not None:
            doc_blocks.write(args.readme, TABLE_NAME, TABLE_COMMAND, table_body(settings, results))
            print(f"README table replaced: {args.readme}")
    print(f"EnCodec: {used}; total time {minutes:.1f} min")


if __name__ == "__main__":
    main()
