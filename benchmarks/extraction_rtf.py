"""Feature-extraction real-time factor of the EnCodecMAE upstream (s3prl path: 16 kHz list in, all layers out).

    .venv/bin/python benchmarks/extraction_rtf.py [--sizes small,base] [--seconds 10] [--batch 4] [--device cpu]

RTF = compute seconds / audio seconds (lower is better; 0.01 = 100x faster than real time).
Random-init weights (sizes are what matter); the EnCodec is random-init when offline, same cost.
Prints one markdown row per size for benchmarks/README.md, with the model's GFLOP per audio second
and the share of the plain-matmul ceiling it sustains.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from limits import count_gflop, matmul_gflops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_data: the test-data writers

# benchmarks run offline: the seeded random-init EnCodec (same cost as the real one), standardised
RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}



def main():
    from encodecmae_s3prl.settings import default_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    from encodecmae_s3prl.demo_data import fit_codec_to_synthetic_audio
    from encodecmae_s3prl.upstream.expert import UpstreamExpert
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model
    from encodecmae_s3prl.upstream.precision import autocast_dtype

    device = torch.device(args.device)
    # the ceiling in the precision the model runs at (a bf16 step against an fp32 matmul would read > 100 %)
    dtype = autocast_dtype(device, args.precision) or torch.float32
    ceiling = matmul_gflops(device, dtype)
    print(f"plain 2048^2 {str(dtype).split('.')[-1]} matmul: {ceiling:.0f} GFLOP/s")
    wavs = [torch.randn(int(args.seconds * 16000), device=device) * 0.1 for _ in range(args.batch)]
    for size in args.sizes.split(","):
        model = build_model(model_config_from_yaml({"model": size, **RANDOM_CODEC}), seed=0)
        if model.codec.needs_corpus_init():  # offline random codec: fit it, or every clip embeds the same
            fit_codec_to_synthetic_audio(model)
        expert = UpstreamExpert(model, precision=args.precision).to(device)  # the product's own autocast
        with torch.inference_mode():
            expert(wavs)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.repeats):
                expert(wavs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = (time.perf_counter() - start) / args.repeats
            gflop = count_gflop(lambda expert=expert: expert(wavs))
        audio = args.seconds * args.batch
        threads = f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
        name = torch.cuda.get_device_name() if device.type == "cuda" else threads
        print(f"| extraction RTF {size} ({args.precision}) | {elapsed / audio:.4f} | "
              f"{audio / elapsed:.1f}x real time | "
              f"{gflop / audio:.1f} GFLOP per audio-s, {gflop / elapsed:.0f} GFLOP/s = "
              f"{gflop / elapsed / ceiling:.0%} of matmul | {name} | batch {args.batch} x {args.seconds:.0f} s |")


if __name__ == "__main__":
    main()
