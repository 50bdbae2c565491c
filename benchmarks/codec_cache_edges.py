"""How far crops cut from whole-file EnCodec features (the codec cache) are from EnCodec run on the crop alone.

    .venv/bin/python benchmarks/codec_cache_edges.py [--files 6] [--seconds 20] [--crops 24]

For random 4 s crops (on frame boundaries) of synthetic files (tones, noise, words when espeak-ng is there),
compares the cache's features/codes with those of the crop encoded alone: relative L2 error of the features
and agreement of the first-codebook and all-8 codes, in the crop's first 0.5 s, last 0.5 s and interior.
The seeded random-init EnCodec, fitted to synthetic audio (the real weights cannot be fetched here).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_data: the test-data writers

from encodecmae_s3prl.machine import cpu_flags  # noqa: E402

# benchmarks run offline: the seeded random-init EnCodec (same cost as the real one), standardised
RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--crops", type=int, default=24)
    args = parser.parse_args()
    from encodecmae_s3prl.demo_data import fit_codec_to_synthetic_audio, harmonic_tone, sound_class
    from encodecmae_s3prl.pretrain_task.codec_cache import whole_file_features
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model

    model = build_model(model_config_from_yaml({"model": "tiny", **RANDOM_CODEC}))
    if model.codec.needs_corpus_init():
        fit_codec_to_synthetic_audio(model)
    codec = model.codec.eval()
    rng = np.random.default_rng(0)
    files = []
    for _ in range(args.files):
        parts = [harmonic_tone(110 * 2 ** (rng.integers(0, 36) / 12), 1.0, 24000, rng) if k % 2 else
                 sound_class(int(rng.integers(0, 8)), 1.0, 24000, rng) for k in range(int(args.seconds))]
        files.append(torch.from_numpy(np.concatenate(parts).astype(np.float32)))
    edge = 38  # frames in 0.5 s
    stats = {region: {"rel": [], "q1": [], "q8": []} for region in ("start", "interior", "end")}
    with torch.no_grad():
        whole = [(whole_file_features(codec, wav), wav) for wav in files]
        for _ in range(args.crops):
            features, wav = whole[int(rng.integers(0, len(whole)))]
            start = int(rng.integers(0, features.shape[0] - 300))
            cached = features[start: start + 300]
            alone = codec.features(wav[start * 320: (start + 300) * 320][None])[0]
            codes_cached, codes_alone = (codec.codes(f[None], 8)[0].T for f in (cached, alone))
            for region, span in (("start", slice(0, edge)), ("interior", slice(edge, 300 - edge)),
                                 ("end", slice(300 - edge, 300))):
                stats[region]["rel"].append(float((cached[span] - alone[span]).norm() / alone[span].norm()))
                stats[region]["q1"].append(float((codes_cached[span, 0] == codes_alone[span, 0]).float().mean()))
                stats[region]["q8"].append(float((codes_cached[span] == codes_alone[span]).float().mean()))
    codec_kind = "random-init, fitted to synthetic audio" if bool(codec.random_weights) else "pretrained"
    print(f"cpu flags {cpu_flags()}, {time.strftime('%Y-%m-%d')}, EnCodec {codec_kind}, {args.crops} crops of 4 s")
    print("| crop region | feature rel. L2 error | codebook 1 codes equal | all 8 codebooks' codes equal |")
    print("|---|---|---|---|")
    for region, values in stats.items():
        rel, q1, q8 = (np.mean(values[k]) for k in ("rel", "q1", "q8"))
        print(f"| {region} | {rel:.4f} | {q1:.3f} | {q8:.3f} |")


if __name__ == "__main__":
    main()
