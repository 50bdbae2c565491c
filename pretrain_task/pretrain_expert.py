"""s3prl's UpstreamPretrainExpert for EnCodecMAE (``run_pretrain.py -u encodecmae``).

s3prl's pretrain runner owns the loop (optimizer, accumulation, clipping, logging, saving,
resume); this class owns the model, the data and what a checkpoint must hold so that a
resumed run continues exactly: model weights, and the position in the data stream.

The step path never waits on the GPU: its span mask and the shapes that follow from it are drawn on the host
where the batch is made (``BatchMasks``), the losses it logs stay on the device until a logging step, and a step
whose loss is not finite is found from a flag read after the runner's own sync.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn
import yaml

from encodecmae_s3prl.errors import ConfigError
from encodecmae_s3prl.pretrain_task.corpus import (
    CROP_SECONDS,
    BatchMasks,
    CropBatch,
    CropLoader,
    CropSampler,
    load_corpus,
)
from encodecmae_s3prl.pretrain_task.step_health import NonFiniteSteps, WaitTimedLoader
from encodecmae_s3prl.settings import distributed_environment
from encodecmae_s3prl.upstream.codec import SAMPLE_RATE
from encodecmae_s3prl.upstream.loading import CHECKPOINT_KEY, load_checkpoint, model_config_from_yaml
from encodecmae_s3prl.upstream.model import TrainingInputs, build_model
from encodecmae_s3prl.upstream.precision import PRECISIONS, autocast
from encodecmae_s3prl.upstream.strict_config import check_rules, from_dict_strict

DATARC_KEY = "pretrain_expert.datarc"  # where the runner config holds PretrainDataConfig (errors name it)


@dataclass(frozen=True)
class PretrainDataConfig:
    """``pretrain_expert.datarc`` of the runner config; defaults are those of the shipped config_runner.yaml."""

    corpus: Tuple[str, ...] = ()          # folders and/or manifest .tsv files
    train_batch_size: int = 128
    crop_seconds: float = CROP_SECONDS
    num_workers: int = 8                  # crops decoded in parallel (loader processes / threads)
    loader: str = "torch"                 # torch DataLoader | fairseq2 pipeline
    prefetch_batches: int = 2
    precision: str = "auto"               # autocast: auto | bf16 | fp16 | fp32
    seed: int = 0
    target_store: Optional[str] = None    # self-training (stage 2): folder written by self_training.py
    codec_cache: Optional[str] = None     # codec_cache.py folder; built at start if missing; None: codec on the fly
    codec_init_clips: int = 64            # crops that fit a random-init codec to the corpus
    init_from: Optional[str] = None       # checkpoint whose weights start this run (self-training stage 2)
    max_nonfinite_steps: int = 10         # a run stops after this many steps in a row with a NaN/inf loss

    def __post_init__(self):
        corpus = [self.corpus] if isinstance(self.corpus, str) else list(self.corpus or [])
        object.__setattr__(self, "corpus", tuple(str(c) for c in corpus))
        rules = [
            (self.train_batch_size >= 1, "train_batch_size", self.train_batch_size, ">= 1"),
            (self.crop_seconds > 0, "crop_seconds", self.crop_seconds, "> 0"),
            (self.num_workers >= 0, "num_workers", self.num_workers, ">= 0"),
            (self.loader in ("torch", "fairseq2"), "loader", self.loader, "'torch' or 'fairseq2'"),
            (self.prefetch_batches >= 1, "prefetch_batches", self.prefetch_batches, ">= 1"),
            (self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}"),
            (self.codec_init_clips >= 1, "codec_init_clips", self.codec_init_clips, ">= 1"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps", self.max_nonfinite_steps, ">= 1"),
        ]
        check_rules(rules, DATARC_KEY, ConfigError)

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainDataConfig":
        """From the YAML's dict; unknown keys are an error that lists the valid ones."""
        return from_dict_strict(cls, values, DATARC_KEY, ConfigError)


_STREAM_LOSSES = "_stream_losses"  # records key: per-stream losses, logged as masked_loss_q0, ...


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) — under torchrun, joins the process group (gloo on CPU, nccl on GPU)."""
    dist = torch.distributed
    world_size, local_rank = distributed_environment()
    if world_size > 1 and dist.is_available() and not dist.is_initialized():
        if torch.device(device).type == "cuda":
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


class UpstreamPretrainExpert(nn.Module):
    def __init__(self, datarc: dict, upstream_config, device: str = "cuda", multi_gpu: bool = False,
                 trust: bool = False, encodec_weights: Optional[str] = None, **kwargs):
        """
        Args:
            datarc: ``pretrain_expert.datarc`` of the runner config (corpus, batch size, precision...).
            upstream_config: path of a ``config_model*.yaml``, or on resume the dict saved in the checkpoint.
            trust, encodec_weights: the command's settings (``--trust-checkpoint``, ``ENCODEC_CKPT``): for the
                ``init_from`` checkpoint, and where a pretrained EnCodec comes from (``codec.build_encodec``).
        """
        super().__init__()
        self.trust = trust
        self.datarc = data = PretrainDataConfig.from_dict(dict(datarc))
        self.rank, self.world_size, self.device = _distributed(device)
        self.multi_gpu = multi_gpu
        if isinstance(upstream_config, (str, os.PathLike)):
            with open(upstream_config) as handle:
                upstream_config = yaml.safe_load(handle) or {}
        self.upstream_config = dict(upstream_config)
        self.model_config = model_config_from_yaml(self.upstream_config)

        files = load_corpus(list(data.corpus), progress=self.rank == 0, source=f"{DATARC_KEY}.corpus")
        self.seed = data.seed
        self.targets = None
        if data.target_store:
            from encodecmae_s3prl.pretrain_task.self_training import TargetStore

            self.targets = TargetStore.open(data.target_store)
            files = self.targets.check(files, self.model_config.extra_targets, data.crop_seconds)
        self.sampler = CropSampler(files, data.train_batch_size, data.crop_seconds,
                                   seed=self.seed, rank=self.rank, world_size=self.world_size)
        if self.targets is not None and self.targets.per_crop:  # v1: stage 2 trains on the crops it labelled
            self.sampler.use_items(self.targets.items())
        self.files = files
        self.masks = BatchMasks.of_model(self.model_config, self.seed, self.rank, self.world_size)

        self.model = build_model(self.model_config, seed=self.seed, encodec_weights=encodec_weights)
        if data.init_from:
            self._init_from(data.init_from)
        elif self.model.codec.needs_corpus_init():
            # a random-init EnCodec only means something once standardised and with codebooks fitted to the corpus
            clips = data.codec_init_clips
            wavs = [self.sampler.example(0, slot, CropSampler.CODEC_INIT).wav for slot in range(clips)]
            self.model.codec.init_from_audio(wavs, seed=self.seed)
        if data.codec_cache:
            self._open_codec_cache(data.codec_cache)
        if self.world_size > 1:  # torchrun: every rank draws its own crops, gradients are averaged
            self.model = nn.parallel.DistributedDataParallel(self.model.to(self.device))
        elif multi_gpu:
            raise ConfigError("multi_gpu (s3prl's single-process DataParallel) is not supported for encodecmae: "
                              "run one process per GPU with torchrun (DDP) instead")
        self.next_batch = 0
        self.precision = data.precision
        self._last_time = None
        self.nonfinite = NonFiniteSteps(data.max_nonfinite_steps)
        self._global_step = 0
        self._last_checkpoint_step: Optional[int] = None
        self._loader: Optional[WaitTimedLoader] = None

    def _open_codec_cache(self, folder: str) -> None:
        """The codec cache of this run's codec, built or finished first if needed (rank 0; the others wait)."""
        from encodecmae_s3prl.pretrain_task.codec_cache import CodecCache, build

        codec, q = self.model.codec, self.model_config.num_codebooks
        if self.rank == 0 and (not Path(folder, "meta.json").is_file() or CodecCache.open(folder).missing(self.files)):
            counts = build(self.files, codec, folder, q, device=self.device)
            print(f"[encodecmae] codec cache {folder}: {counts['built']} shard(s) built, {counts['present']} there")
        if self.world_size > 1:
            torch.distributed.barrier()
        cache = CodecCache.open(folder)
        self.sampler.use_cache(cache, cache.check(self.files, codec, q), mel=self.model_config.input == "mel256")

    def _init_from(self, path: str) -> None:
        """Start from another run's weights (the self-training stage 2 starts from stage 1): every tensor
        of the same name and shape is copied; the new target head keeps its fresh initialisation."""
        source = load_checkpoint(path, trust=self.trust)
        own = self.model.state_dict()
        copied = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(copied, strict=False)
        fresh = sorted(set(own) - set(copied))
        print(f"[encodecmae] initialised {len(copied)} tensors from {path}; fresh: {fresh}")

    # --- s3prl interface --------------------------------------------------------------
    def load_model(self, init_ckpt: dict) -> None:
        if CHECKPOINT_KEY not in init_ckpt:
            raise KeyError(f"the checkpoint has no {CHECKPOINT_KEY!r} entry: it was not written by "
                           f"run_pretrain.py -u encodecmae")
        self._unwrapped().load_state_dict(init_ckpt[CHECKPOINT_KEY]["state_dict"])
        self.next_batch = int(init_ckpt.get("DataPosition", 0))

    def add_state_to_save(self, all_states: dict) -> dict:
        model = self._unwrapped()
        all_states[CHECKPOINT_KEY] = {"config": asdict(model.config), "state_dict": model.state_dict()}
        all_states["Upstream_Config"] = self.upstream_config
        all_states["DataPosition"] = self.next_batch
        # s3prl's runner saves 'Step': pbar.n before counting the step it just took, so -e would redo that
        # step; the number of completed optimizer steps is one more.
        all_states["Step"] = all_states.get("Step", 0) + 1
        all_states["StepCounted"] = True  # 'Step' is the global step itself (the file is named after it)
        self._last_checkpoint_step = all_states["Step"]
        return all_states

    def get_train_dataloader(self) -> WaitTimedLoader:
        # pinned host batches copy to the GPU without blocking (forward's non_blocking .to())
        pin = torch.device(self.device).type == "cuda"
        self._loader = WaitTimedLoader(CropLoader(
            self.sampler, start_batch=self.next_batch, num_workers=self.datarc.num_workers,
            prefetch=self.datarc.prefetch_batches, targets=self.targets, backend=self.datarc.loader, pin_memory=pin,
            masks=self.masks))
        return self._loader

    def on_before_zero_grad(self) -> None:
        """Called by the runner after each optimizer step (taken or skipped)."""
        self.nonfinite.step_done(self._global_step, self._last_checkpoint_step)

    def forward(self, data: CropBatch, records=None, global_step: int = 0, log_step: int = 1000, **kwargs):
        records = defaultdict(list) if records is None else records
        self._global_step = global_step

        def to_device(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.device, non_blocking=True)

        extra = to_device(data.extra_targets) if data.extra_targets is not None else None
        if data.features is not None:  # from the codec cache: the frozen codec does not run
            inputs = TrainingInputs(to_device(data.features), to_device(data.frame_lengths), to_device(data.codes))
        else:
            inputs = self._unwrapped().training_inputs(to_device(data.wavs), to_device(data.lengths))
        # the masks are a function of (seed, batch): a resumed run draws the same ones; drawn by the loader, or here
        # for a batch made elsewhere, on the host either way. The extra targets' values were checked on the host
        # by TargetStore.slice as the loader read them.
        mask = data.mask if data.mask is not None else self.masks.for_batch(data)
        with autocast(self.device, self.precision):
            output = self.model(*inputs, extra_targets=extra, mask=mask, validate_targets=False)
        self.next_batch = data.batch_index + 1

        now = time.perf_counter()
        if self._last_time is not None:  # lengths on the host: no wait on the device
            audio_seconds = float(data.lengths.sum()) / SAMPLE_RATE
            records["audio_seconds_per_second"].append(audio_seconds / (now - self._last_time))
        self._last_time = now
        if self._loader is not None:
            records["data_wait_seconds"].append(self._loader.last_wait)
        # device tensors until a logging step (log_records): reading them now would wait for the forward
        records["masked_loss"].append(output.masked_loss.sum())
        records["unmasked_loss"].append(output.unmasked_loss.sum())
        records[_STREAM_LOSSES].append(torch.stack([output.masked_loss, output.unmasked_loss]))
        # an argmax over every logit: only on the steps s3prl logs, and for a model with a codebook head
        if global_step % max(1, log_step) == 0 and output.logits.shape[2]:
            records["masked_accuracy"].append(output.masked_accuracy())
        return self.nonfinite.guard(output.loss), records

    def log_records(self, records, logger, prefix, global_step, **kwargs) -> None:
        """Means over the steps since the last log (non-finite values, of skipped steps, left out), one scalar per
        codebook stream, and the count of skipped steps so far."""
        for key, values in records.items():
            if not values:
                continue
            # one copy from the device per key, not one per step
            stacked = torch.stack(values).float().cpu() if isinstance(values[0], torch.Tensor) \
                else torch.tensor(values, dtype=torch.float32)
            finite = stacked[torch.isfinite(stacked).flatten(1).all(dim=1)] if stacked.dim() > 1 \
                else stacked[torch.isfinite(stacked)]
            if not len(finite):
                continue
            mean = finite.mean(dim=0)
            if key == _STREAM_LOSSES:  # (2, S): masked / unmasked loss of each stream
                for q in range(mean.shape[1]):
                    name = f"q{q}" if q < self.model_config.num_codebooks else "st"
                    logger.add_scalar(f"{prefix}masked_loss_{name}", float(mean[0, q]), global_step=global_step)
                    logger.add_scalar(f"{prefix}unmasked_loss_{name}", float(mean[1, q]), global_step=global_step)
            else:
                logger.add_scalar(f"{prefix}{key}", float(mean), global_step=global_step)
        logger.add_scalar(f"{prefix}nonfinite_steps", self.nonfinite.total, global_step=global_step)

    def _unwrapped(self) -> nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model
