"""γ_q, the per-codebook loss weights: mean quantization error of each RVQ stage, normalised to sum 1.

    python -m encodecmae_s3prl.pretrain_task.quantizer_weights --corpus /data/train.tsv \\
        -g pretrain_task/config_model_base.yaml --out config_model_mine.yaml [--clips 150]

Reads ``--clips`` random 4 s crops of the corpus (the paper: 150), runs the model config's frozen
EnCodec once per crop, and writes the model config with ``codebook_weights`` replaced.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
import yaml
from tqdm import tqdm

from encodecmae_s3prl.errors import ConfigError, user_errors
from encodecmae_s3prl.pretrain_task.corpus import CropSampler, load_corpus
from encodecmae_s3prl.settings import encodec_weights
from encodecmae_s3prl.upstream.atomic import atomic_write_text
from encodecmae_s3prl.upstream.codec import build_encodec
from encodecmae_s3prl.upstream.loading import model_config_from_yaml


@torch.no_grad()
def codebook_weights(codec, sampler: CropSampler, clips: int, stream: int = 3) -> list[float]:
    """Σ-normalised mean quantization error per codebook over ``clips`` crops."""
    totals, count = None, 0
    for slot in tqdm(range(clips), desc="quantization error", dynamic_ncols=True):
        wav = sampler.example(0, slot, stream).wav
        errors = codec.quantization_errors(codec.features(wav[None])[0])
        totals = errors if totals is None else totals + errors
        count += 1
    mean = totals / count
    return (mean / mean.sum()).tolist()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", required=True, help="folders and/or manifest .tsv files")
    parser.add_argument("-g", "--model_config", required=True, help="model config YAML to start from")
    parser.add_argument("--out", required=True, type=Path, help="model config YAML to write")
    parser.add_argument("--clips", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from encodecmae_s3prl.fixes import corpus_option_fixes

    with user_errors(fixes=corpus_option_fixes()):
        spec = yaml.safe_load(Path(args.model_config).read_text()) or {}
        config = model_config_from_yaml(spec)
        codec = build_encodec(config.encodec_source, num_codebooks=config.num_codebooks, weights=encodec_weights())
        if codec.needs_corpus_init():
            raise ConfigError(f"{args.model_config}: the model config uses a random-init EnCodec whose codebooks are "
                              f"fitted to a corpus during pretraining; γ_q only means something for the real EnCodec "
                              f"(encodec_source: pretrained or a weights file)")
        sampler = CropSampler(load_corpus(args.corpus), batch_size=1, seed=args.seed)
        weights = codebook_weights(codec, sampler, args.clips)
        spec["codebook_weights"] = [round(w, 8) for w in weights]
        atomic_write_text(args.out, f"# codebook_weights (γ_q) from {args.clips} random clips of "
                                    f"{' '.join(args.corpus)}\n" + yaml.safe_dump(spec, sort_keys=False))
    print(f"wrote {args.out}: γ_q = {', '.join(f'{w:.4f}' for w in weights)}")


if __name__ == "__main__":
    main()
