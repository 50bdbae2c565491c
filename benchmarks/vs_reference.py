"""Our EnCodecMAE against the authors' code (tag v.1.0.0), interleaved in one process, same CPU, same codec.

    git --git-dir=$(fetch github:habla-liaa/encodecmae) archive v.1.0.0 | tar x -C /tmp/encodecmae_v1
    .venv/bin/python benchmarks/vs_reference.py --reference /tmp/encodecmae_v1 [--size small] [--batch 8] [--repeats 5]

Training step, batch B x 4 s, small: theirs = their modules built as their gin config builds them (gin,
Lightning and librosa stubbed), fp32, EnCodec run inside the step as they run it (model in train mode),
AdamW (lr 1e-4, wd 0.05, betas 0.9/0.95); ours = the same step from the codec cache's features and codes
(the frozen codec does not run), at our best precision for this CPU (bf16 autocast where the CPU has native
bf16, else fp32). Steps alternate theirs/ours, the median of each is reported as audio-seconds per second.
Extraction: one 30 s clip, every encoder layer, theirs ``extract_features_from_array(layer='all')`` vs our
``encode`` in fp32 and at our best precision. Both use one random-init EnCodec 24 kHz fitted to synthetic
audio (weights do not change the cost). The last line reads
``train_x=<ours/theirs audio-s/s> extract_fp32_x=<theirs/ours time> extract_best_x=<...> cpu=<flags>``.

An AVX2-only CPU can be stood in for on an AVX-512 one by capping the instruction sets torch's kernels,
oneDNN and MKL may use (bf16 is then emulated and ``precision: auto`` picks fp32, as on such a CPU):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python ...

the cap is then part of ``cpu=`` (``cpu=avx2+avx512f+avx512_bf16,capped-to-avx2``).
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # synthetic_data: the test-data writers

from encodecmae_s3prl.machine import cpu_flags  # noqa: E402

# benchmarks run offline: the seeded random-init EnCodec (same cost as the real one), standardised
RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}


def _stub_modules() -> None:
    """gin, pytorch_lightning and librosa as the reference's model files import them, reduced to what runs."""
    gin = types.ModuleType("gin")
    gin.configurable = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda f: f))
    gin.get_bindings = lambda *a, **k: {}

    class LightningModule(nn.Module):
        def log_dict(self, *args, **kwargs):
            pass

        @property
        def device(self):
            return next(self.parameters()).device

        @property
        def dtype(self):
            return next(self.parameters()).dtype

    lightning = types.ModuleType("pytorch_lightning")
    lightning.LightningModule = LightningModule
    for name, module in (("gin", gin), ("pytorch_lightning", lightning), ("librosa", types.ModuleType("librosa"))):
        sys.modules.setdefault(name, module)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_model(root: Path, codec, dim: int, layers: int, heads: int = 12):
    """The authors' EncodecMAE as configs/models/encodecmae.gin builds it, on our (fitted random) codec."""
    _stub_modules()
    import encodec

    original = encodec.EncodecModel.encodec_model_24khz

    def our_codec_as_encodec(*args, **kwargs):  # their encoders call EncodecModel.encodec_model_24khz()
        model = original(pretrained=False)
        # our weights in encodec's own modules (ours pad by copying: that speed-up is ours, not theirs)
        model.encoder.load_state_dict(codec.encoder.state_dict())
        model.quantizer = copy.deepcopy(codec.quantizer)
        return model

    base = root / "encodecmae" / "tasks" / "models"
    transformers = _load(base / "transformers" / "__init__.py", "v1_transformers")
    parts = {name: _load(base / "encodecmae" / f"{name}.py", f"v1_{name}")
             for name in ("encoders", "targets", "masking", "heads", "mae")}
    encodec.EncodecModel.encodec_model_24khz = staticmethod(our_codec_as_encodec)
    try:
        def stack(count):
            return lambda: transformers.TransformerEncoder(
                dim, count, attention_layer=lambda: transformers.MultiHeadAttention(dim, heads), compile=False)

        model = parts["mae"].EncodecMAE(
            wav_encoder=parts["encoders"].EncodecEncoder,
            target_encoder=functools.partial(parts["targets"].EncodecQuantizer, n=8),
            visible_encoder=stack(layers), decoder=stack(2),
            positional_encoder=functools.partial(transformers.SinusoidalPositionalEmbeddings, dim),
            masker=parts["masking"].TimeGapMask,
            head=functools.partial(parts["heads"].FrameLevelClassificationHead, dim, 1024),
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05),
            quantizer_weights=[0.22407463, 0.1759858, 0.14499009, 0.12150037, 0.10315603, 0.08831368, 0.07608274,
                               0.06589669])
    finally:
        encodec.EncodecModel.encodec_model_24khz = original
    return model


ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_description() -> str:
    """The CPU's flags, and the instruction-set cap when one is set (a stand-in for an older CPU)."""
    caps = {os.environ[name].lower() for name in ISA_CAPS if os.environ.get(name)}
    if not caps:
        return cpu_flags()
    return f"{cpu_flags()},capped-to-{'/'.join(sorted(caps))}"


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":  # kernels run asynchronously: time them, not their launch
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True, type=Path, help="checkout of habla-liaa/encodecmae v.1.0.0")
    parser.add_argument("--size", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--extract-seconds", type=float, default=30.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not (args.reference / "encodecmae" / "tasks" / "models" / "encodecmae" / "mae.py").is_file():
        raise SystemExit(f"error: {args.reference} is not a checkout of habla-liaa/encodecmae (no "
                         f"encodecmae/tasks/models/encodecmae/mae.py); see the usage at the top of this file")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    from encodecmae_s3prl.demo_data import fit_codec_to_synthetic_audio, harmonic_tone
    from encodecmae_s3prl.upstream.loading import model_config_from_yaml
    from encodecmae_s3prl.upstream.model import build_model
    from encodecmae_s3prl.upstream.precision import autocast, autocast_dtype

    device = torch.device(args.device)
    ours = build_model(model_config_from_yaml({"model": args.size, **RANDOM_CODEC}), seed=0)
    fit_codec_to_synthetic_audio(ours)
    config = ours.config
    theirs = reference_model(args.reference, ours.codec, config.dim, config.encoder_layers, config.heads)
    ours, theirs = ours.to(device).train(), theirs.to(device).train()
    their_optimizer = theirs.optimizer(theirs.parameters())
    our_optimizer = torch.optim.AdamW(ours.trainable_parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                      fused=device.type in ("cpu", "cuda"))
    best = autocast_dtype(device, "auto")

    import numpy as np

    rng = np.random.default_rng(0)
    wavs = torch.stack([torch.from_numpy(harmonic_tone(110 * 2 ** (i / 5), 4.0, 24000, rng))
                        for i in range(args.batch)]).to(device)
    lengths = torch.full((args.batch,), wavs.shape[1], device=device)
    with torch.no_grad():  # what the codec cache holds for these crops (fp16 features, int16 codes)
        features = ours.codec.features(wavs)
        codes = ours.codec.codes(features, config.num_codebooks).transpose(1, 2)
        features, codes = features.half(), codes.short()
    frame_lengths = torch.full((args.batch,), features.shape[1], device=device)

    def their_step():
        x = theirs({"wav": wavs, "wav_lens": lengths})
        theirs.calculate_loss(x)["loss"].backward()
        their_optimizer.step()
        their_optimizer.zero_grad(set_to_none=True)

    step = [0]

    def our_step():
        step[0] += 1
        with autocast(device, "auto"):
            output = ours(features=features, frame_lengths=frame_lengths, codes=codes,
                          generator=torch.Generator().manual_seed(step[0]))
        output.loss.backward()
        our_optimizer.step()
        our_optimizer.zero_grad(set_to_none=True)

    their_step(), our_step()  # warm-up: allocations, kernels
    times = {"theirs": [], "ours": []}
    for _ in range(args.repeats):
        times["theirs"].append(_timed(their_step, device))
        times["ours"].append(_timed(our_step, device))
    audio = args.batch * 4.0
    train = {k: audio / statistics.median(v) for k, v in times.items()}

    clip = torch.from_numpy(harmonic_tone(220.0, args.extract_seconds, 24000, rng)).to(device)
    theirs.eval(), ours.eval()

    def their_extract():
        theirs.extract_features_from_array(clip, layer="all")

    def our_extract(precision):
        with torch.no_grad(), autocast(device, precision):
            ours.encode(clip[None])

    their_extract(), our_extract("fp32")
    extract = {"theirs": [], "fp32": [], "best": []}
    for _ in range(max(3, args.repeats // 2)):
        extract["theirs"].append(_timed(their_extract, device))
        extract["fp32"].append(_timed(lambda: our_extract("fp32"), device))
        extract["best"].append(_timed(lambda: our_extract("auto"), device))
    rtf = {k: statistics.median(v) / args.extract_seconds for k, v in extract.items()}

    precision = {None: "fp32", torch.bfloat16: "bf16 autocast"}.get(best, str(best))
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, cpu flags {cpu_description()}{gpu}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print(f"| work ({args.size}) | authors' code (fp32) | ours fp32 | ours best ({precision}) |")
    print("|---|---|---|---|")
    print(f"| training step, batch {args.batch} x 4 s, audio-s/s | {train['theirs']:.2f} (x1.00) | - | "
          f"{train['ours']:.2f} (x{train['ours'] / train['theirs']:.2f}), from the codec cache |")
    print(f"| extraction, one {args.extract_seconds:g} s clip, all layers, RTF | {rtf['theirs']:.4f} (x1.00) | "
          f"{rtf['fp32']:.4f} (x{rtf['theirs'] / rtf['fp32']:.2f}) | {rtf['best']:.4f} "
          f"(x{rtf['theirs'] / rtf['best']:.2f}) |")
    print(f"train_x={train['ours'] / train['theirs']:.2f} extract_fp32_x={rtf['theirs'] / rtf['fp32']:.2f} "
          f"extract_best_x={rtf['theirs'] / rtf['best']:.2f} cpu={cpu_description()}"
          + (f" device={device}" if gpu else ""))


if __name__ == "__main__":
    main()
