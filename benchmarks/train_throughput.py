"""Pretraining throughput: audio-seconds/s and step time, split into data loading, EnCodec, transformer.

    .venv/bin/python benchmarks/train_throughput.py [--sizes small,base] [--batch 2] [--steps 3] [--device cpu]
        [--from-cache [--loader-workers 8]] [--compile] [--peak-tflops 989] [--sync-check]

Also times the span masking against a per-sample Python loop baseline (the EnCodecMAE reference style).
Random-init weights; the EnCodec is random-init offline (same cost as the real one). The optimizer is the
runner config's: AdamW, fused where torch has the kernel (CPU and CUDA).

``--from-cache``: the step as it runs from a codec cache (EnCodec features in fp16 and codes in int16 as the
cache stores them, computed outside the timing; the codec never runs in the step); the rate is then the step's
alone, the cache reader being timed by loader_rate.py. ``--compile``: the model's
forward through ``torch.compile`` (the first steps compile; timed steps come after ``--warmup``).
``--peak-tflops``: the device's dense peak in the run's precision (e.g. 989 for an H200 in bf16), to print the
model FLOPs utilisation against it beside the share of a plain matmul measured here.
Each step's span mask is drawn on the host from the batch's host lengths, as the training loader draws it, and
given to the model with its shapes (``HostMask``). ``--sync-check``: one more forward and backward of each size
inside ``forbid_host_syncs`` (on CUDA torch's sync debug mode "error"), which prints whether the step made the host
wait on the device (from the cache it must not; on the fly EnCodec's per-clip slicing reads the lengths).

``--loader-workers N`` (with ``--from-cache``): each size is also timed fed as training feeds it, through the
pretraining task itself: its codec cache of the synthetic corpus (built on the device first), its
``get_train_dataloader`` (CropLoader with N worker processes drawing the span masks, batches pinned on CUDA,
``WaitTimedLoader`` timing each wait for a batch) and its forward (non-blocking copies to the device); eager, as
training runs. That row prints the data wait per step, in ms and as a share of the step.
Every size timed from the cache also prints the paper's run (the shipped runner config: 500,000 steps x 128 x
4 s = 256 M audio-seconds) at the measured rate, in hours of the device it was measured on; a rate measured at
another batch is named as such, not scaled.
"""
import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from limits import count_gflop, device_name, matmul_gflops
from loader_rate import expert_with_cache
from plan import runner_run

from encodecmae_s3prl.demo_data import harmonic_tone, write_wav  # noqa: E402
from encodecmae_s3prl.pretrain_task.corpus import (  # noqa: E402
    CROP_SECONDS,
    BatchMasks,
    CropLoader,
    CropSampler,
    load_corpus,
)
from encodecmae_s3prl.upstream.codec import HOP, SAMPLE_RATE  # noqa: E402
from encodecmae_s3prl.upstream.host_sync import HostSyncError, forbid_host_syncs  # noqa: E402
from encodecmae_s3prl.upstream.loading import model_config_from_yaml  # noqa: E402
from encodecmae_s3prl.upstream.masking import span_mask  # noqa: E402
from encodecmae_s3prl.upstream.model import build_model  # noqa: E402
from encodecmae_s3prl.upstream.precision import autocast, autocast_dtype  # noqa: E402

# benchmarks run offline: the seeded random-init EnCodec (same cost as the real one), standardised
RANDOM_CODEC = {"encodec_source": "random", "standardise_features": True}


def loop_span_mask(lengths, max_len, mask_prop=0.5, span=15, rng=None):
    """Baseline: one clip at a time in Python, as the reference code does."""
    rng = rng or np.random.default_rng(0)
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for row, length in enumerate(lengths.tolist()):
        target = round(mask_prop * length)
        starts = rng.permutation(max(1, length - span + 1))
        for start in starts:
            if int(mask[row].sum()) >= target:
                break
            mask[row, start:start + span] = True
        excess = int(mask[row].sum()) - target
        if excess > 0:
            mask[row, torch.nonzero(mask[row])[-excess:, 0]] = False
    return mask


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    from encodecmae_s3prl.settings import default_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--from-cache", action="store_true", help="the step from codec-cache inputs (no EnCodec)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation happens there)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak in this precision, for MFU")
    parser.add_argument("--sync-check", action="store_true",
                        help="one more step of each size that must not make the host wait on the device")
    parser.add_argument("--loader-workers", type=int,
                        help="with --from-cache: also time each size fed by the training loader with this many worker "
                             "processes, and print its data wait per step")
    args = parser.parse_args()
    if args.loader_workers is not None and not args.from_cache:
        parser.error("--loader-workers feeds the step from a codec cache: add --from-cache")
    device = torch.device(args.device)
    # the ceiling in the precision the model runs at (a bf16 step against an fp32 matmul would read > 100 %)
    dtype = autocast_dtype(device, args.precision) or torch.float32
    ceiling = matmul_gflops(device, dtype)
    print(f"plain 2048^2 {str(dtype).split('.')[-1]} matmul: {ceiling:.0f} GFLOP/s")

    lengths = torch.full((128,), 300)
    start = time.perf_counter()
    for _ in range(10):
        span_mask(lengths, 300)
    ours = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    loop_span_mask(lengths, 300)
    loop = time.perf_counter() - start
    print(f"| span masking, batch 128 x 300 frames | {ours * 1e3:.2f} ms | per-sample loop {loop * 1e3:.1f} ms | "
          f"{loop / ours:.0f}x |")

    work = Path(tempfile.mkdtemp())  # the corpus, and with --loader-workers each size's codec cache beside it
    rng = np.random.default_rng(0)
    for i in range(8):
        write_wav(work / "corpus" / f"f{i}.wav", harmonic_tone(110 + 20 * i, 20.0, 44100, rng), 44100)
    sampler = CropSampler(load_corpus([str(work / "corpus")], progress=False), args.batch, seed=0)
    batches = iter(CropLoader(sampler, num_workers=1))

    for size in args.sizes.split(","):
        model = build_model(model_config_from_yaml({"model": size, **RANDOM_CODEC}), seed=0).to(device).train()
        optimizer = runner_optimizer(model, device)
        step_model = torch.compile(model) if args.compile else model
        masks = BatchMasks.of_model(model.config)
        totals = {"data": 0.0, "encodec": 0.0, "step": 0.0}
        for step in range(args.steps + args.warmup):
            t0 = time.perf_counter()
            batch = next(batches)
            wav, lens = batch.wavs.to(device), batch.lengths.to(device)
            mask = masks.for_batch(batch)  # on the host, from host lengths, as the loader's workers draw it
            sync(device)
            t1 = time.perf_counter()
            with torch.no_grad():  # from the cache: computed here once, as the cache build did
                features = model.codec.features(wav)  # measured apart: on the fly the step runs it again
                inputs = cache_inputs(model, features, lens) if args.from_cache else dict(wav=wav, wav_lengths=lens)
            sync(device)
            t2 = time.perf_counter()
            with autocast(device, args.precision):
                loss = forward(step_model, inputs, mask).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            sync(device)
            t3 = time.perf_counter()
            if step >= args.warmup:
                totals["data"] += t1 - t0
                totals["encodec"] += t2 - t1
                totals["step"] += t3 - t2
        n = args.steps

        def one_step(model=model, inputs=inputs, mask=mask):
            with autocast(device, args.precision):
                forward(model, inputs, mask).loss.backward()
        gflop = count_gflop(one_step)
        optimizer.zero_grad()
        if args.sync_check:
            found = host_syncs(functools.partial(one_step, step_model, inputs, mask), device)
            print(f"| sync check {size} ({'from cache' if args.from_cache else 'on the fly'}) | {found} |")
            optimizer.zero_grad()
        # on the fly the step holds EnCodec (its time is inside totals["step"]) and waits for the audio loader; from
        # the cache it holds neither (the cache reader alone: loader_rate.py), so its rate is the step's own
        step_time = totals["step"] / n + (0.0 if args.from_cache else totals["data"] / n)
        audio = float(lens.sum()) / 24000
        model_time = totals["step"] / n - (0.0 if args.from_cache else totals["encodec"] / n)
        achieved = gflop / (totals["step"] / n)
        mfu = f", MFU {achieved / 1e3 / args.peak_tflops:.1%} of {args.peak_tflops:g} TFLOP/s" \
            if args.peak_tflops else ""
        mode = ("from cache" if args.from_cache else "on the fly") + (", compiled" if args.compile else "")
        encodec = "0 (cached)" if args.from_cache else f"{totals['encodec'] / n:.3f}"
        data_time = "(loader_rate.py)" if args.from_cache else f"{totals['data'] / n:.3f} s"
        print(f"| train {size} ({args.precision}, {mode}) | {audio / step_time:.2f} audio-s/s | "
              f"step {step_time:.3f} s | "
              f"data {data_time}, EnCodec {encodec} s, "
              f"transformer+loss+optimizer {model_time:.3f} s | {gflop / audio:.1f} GFLOP per audio-s, "
              f"{achieved:.0f} GFLOP/s = {achieved / ceiling:.0%} of matmul{mfu} | "
              f"batch {args.batch} x 4 s | {device} | torch {torch.__version__} |")
        if args.from_cache:
            print(paper_run(size, audio / step_time, args.batch, device, "of the step above (batches in memory)"))
        if args.loader_workers is not None:
            fed_step, fed_wait, fed_audio = loader_fed_step(size, args, device, work)
            pinned = ", pinned" if device.type == "cuda" else ""
            print(f"| train {size} ({args.precision}, from cache, fed by the training loader: {args.loader_workers} "
                  f"worker(s){pinned}, eager) | {fed_audio / fed_step:.2f} audio-s/s | step {fed_step:.3f} s | "
                  f"data wait {fed_wait * 1e3:.1f} ms per step = {fed_wait / fed_step:.1%} of the step | "
                  f"batch {args.batch} x {CROP_SECONDS:g} s | {device_name(device)} | torch {torch.__version__} |")
            print(paper_run(size, fed_audio / fed_step, args.batch, device, "of the loader-fed step above"))


def runner_optimizer(model, device):
    """The runner config's optimizer: AdamW, fused where torch has the kernel (CPU and CUDA)."""
    return torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95),
                             fused=device.type in ("cpu", "cuda"))


def loader_fed_step(size: str, args, device, work: Path) -> tuple[float, float, float]:
    """(seconds per step, seconds of it waiting for the batch, audio-seconds per step) of ``size``'s step fed as
    training feeds it: the pretraining task over ``work``/corpus with its codec cache, its loader and its forward.
    Each step ends with a device sync, as the runner's ``loss.item()`` ends it, so the wait is the step's own."""
    expert = expert_with_cache(work / "corpus", work / f"cache-{size}", args.batch, CROP_SECONDS, size,
                               args.loader_workers, str(device), args.precision).to(device).train()
    optimizer = runner_optimizer(expert.model, device)
    loader = expert.get_train_dataloader()
    batches = iter(loader)
    step_time = wait = audio = 0.0
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(batches)
        # global_step off the runner's logging steps (log_step 100), where the forward adds an accuracy pass
        loss, _ = expert(batch, global_step=step + 1, log_step=100)
        loss.backward()
        optimizer.step()
        expert.on_before_zero_grad()  # as the runner calls it after each step (reads the loss's finiteness flag)
        optimizer.zero_grad()
        sync(device)
        if step >= args.warmup:
            step_time += time.perf_counter() - start
            wait += loader.last_wait
            audio += float(batch.lengths.sum()) / SAMPLE_RATE
    batches.close()  # ends the loader's worker processes
    return step_time / args.steps, wait / args.steps, audio / args.steps


def paper_run(size: str, rate: float, batch: int, device, which: str) -> str:
    """The paper's run (the shipped runner config's steps x batch x crop) at ``rate`` audio-s/s, in device-hours."""
    steps, paper_batch, crop = runner_run()
    audio = steps * paper_batch * crop
    scale = "" if batch == paper_batch else f" (not the paper's {paper_batch}: the rate is not scaled to it)"
    return (f"| paper's run with {size} ({steps:,} steps x {paper_batch} x {crop:g} s = {audio / 1e6:g} M audio-s) "
            f"at the rate {which} | {audio / rate / 3600:,.1f} hours on {device_name(device)} | "
            f"rate measured at batch {batch}{scale} |")


def host_syncs(step, device) -> str:
    """Runs ``step`` inside ``forbid_host_syncs``: what the first operation that waited on the device was, if any."""
    try:
        with forbid_host_syncs(device):
            step()
    except (HostSyncError, RuntimeError) as error:
        return "host sync: " + str(error).strip().splitlines()[0]
    sync(device)
    return "forward + backward: no host sync"


def forward(model, inputs: dict, mask):
    """The training step's forward: on the fly (``wav`` in ``inputs``) it includes the frozen codec's pass
    (``training_inputs``), as ``pretrain_expert`` runs it; from the cache it does not."""
    if "wav" in inputs:
        inputs = getattr(model, "_orig_mod", model).training_inputs(inputs["wav"], inputs["wav_lengths"])._asdict()
    return model(**inputs, mask=mask)


def cache_inputs(model, features, lengths) -> dict:
    """What a codec-cache batch feeds the model: features fp16, codes int16, valid frames (as the cache stores)."""
    frames = torch.div(lengths + HOP - 1, HOP, rounding_mode="floor")
    codes = model.codec.codes(features, model.config.num_codebooks).transpose(1, 2)
    return dict(features=features.half(), codes=codes.to(torch.int16), frame_lengths=frames)


if __name__ == "__main__":
    main()
