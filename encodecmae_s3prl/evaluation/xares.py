"""Our upstreams as X-ARES encoders (xares 0.1.3: ``python -m xares.run ENCODER_FILE TASK_FILES...``).

X-ARES builds the encoder with no arguments from the one name ending in ``Encoder`` that a ``.py`` file defines, and
keys its embeddings, MLP checkpoints and scores by that class name. So each upstream spec and layer gets a file of
its own, with a class name of its own, subclassing ``XaresEncoder`` (imported under another name):

    python -m encodecmae_s3prl.evaluation.xares --upstream result/pretrain/run/states-N.ckpt --out my_encoder.py
    python -m xares.run --max-jobs 1 my_encoder.py src/tasks/esc50_task.py

``XaresEncoder(spec, layer=-1)`` takes ``spec`` as ``hear_api.load_model`` does (a checkpoint file, a hub entry,
``ENTRY:CKPT``) and runs the model at its own rate (``sampling_rate``: 24000 for ours, 16000 for s3prl's own
upstreams; X-ARES resamples its clips to it), one hidden state (``layer``; default the last), our chunked inference
for long clips (X-ARES feeds clips of up to 10 minutes) and our ``precision`` setting. X-ARES decodes its tars with
``torchaudio.load``, which in torchaudio 2.9 needs TorchCodec: importing this module gives it the soundfile reader
our s3prl shims use (``compat``), or X-ARES would skip every clip with a warning.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from encodecmae_s3prl import compat
from encodecmae_s3prl.errors import UserError, user_errors

compat.apply()  # X-ARES's decoding: torchaudio.load without TorchCodec


class XaresEncoder(nn.Module):
    """An X-ARES encoder: ``forward(audio (B, T) at sampling_rate) -> (B, T', output_dim)`` frames of one hidden
    state, ``hop_size_in_ms`` apart. X-ARES's batches come zero-padded to their longest clip with no lengths, so a
    padded clip's last frames are frames of its padding, as for every X-ARES encoder."""

    def __init__(self, spec: str, layer: int = -1, precision: str = "auto", device: str = "cpu"):
        super().__init__()
        from encodecmae_s3prl.evaluation import hear_api

        self.spec, self.layer = spec, layer
        hear = hear_api.load_model(spec, device=device, layer=layer, precision=precision)
        self.hear = hear
        self.hear.sample_rate = hear.native_rate  # X-ARES resamples to the encoder's own rate: no detour
        self.sampling_rate = hear.native_rate
        self.output_dim = hear.scene_embedding_size
        self.hop_size_in_ms = (hear.hop_seconds or 0.02) * 1000.0
        self.precision = hear.precision

    @torch.no_grad()
    def forward(self, audio: Tensor) -> Tensor:
        if audio.dim() == 1:
            audio = audio[None]
        device = next(self.hear.upstream.parameters(), torch.empty(0)).device
        from encodecmae_s3prl.upstream.expert import UpstreamExpert

        upstream = self.hear.upstream
        if isinstance(upstream, UpstreamExpert):  # ours: the one layer asked for, chunk by chunk
            hidden = upstream.model.encode(audio.to(device, torch.float32), layers=[self.layer]).hidden_states[0]
        else:
            hidden = self.hear.frames(audio.to(device))
        return hidden.to(audio.device)


def class_name(spec: str, layer: int) -> str:
    """A class name of its own per (spec, layer), ending in ``Encoder`` as X-ARES requires: readable part from the
    spec's last path component, then a digest of the whole spec and layer."""
    stem = Path(spec.split(":", 1)[-1]).stem or spec
    readable = "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", stem) if part)[:40] or "Upstream"
    if readable[0].isdigit():
        readable = "U" + readable
    digest = hashlib.sha1(f"{spec}|{layer}".encode()).hexdigest()[:8]
    return f"{readable}L{layer if layer >= 0 else 'm' + str(-layer)}X{digest}Encoder"


def encoder_file(spec: str, layer: int = -1, precision: str = "auto") -> str:
    """The text of an X-ARES encoder file: one class, named for (spec, layer), built with no arguments."""
    name = class_name(spec, layer)
    return (f'"""X-ARES encoder: {spec}, hidden state {layer}, precision {precision} (written by '
            f'python -m encodecmae_s3prl.evaluation.xares)."""\n'
            f"from encodecmae_s3prl.evaluation import xares as _xares\n\n\n"
            f"class {name}(_xares.XaresEncoder):\n"
            f"    def __init__(self):\n"
            f"        super().__init__({spec!r}, layer={layer}, precision={precision!r})\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write an X-ARES encoder file for one of our upstream specs")
    parser.add_argument("--upstream", required=True,
                        help="a checkpoint file, a hub entry (encodecmae_base, fbank_no_cmvn...) or ENTRY:CKPT")
    parser.add_argument("--layer", type=int, default=-1, help="hidden_states index (default -1: the last)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--out", required=True, type=Path, help="the .py file to write (give it to xares.run)")
    parser.add_argument("--no-check", action="store_true", help="write without building the encoder first")
    args = parser.parse_args(argv)
    with user_errors():
        if not args.out.name.endswith(".py"):
            raise UserError(f"--out {args.out}: X-ARES imports the encoder as a module; name the file *.py")
        if not args.no_check:  # a spec that does not load is said now, not inside X-ARES's worker processes
            encoder = XaresEncoder(args.upstream, args.layer, args.precision)
            print(f"{class_name(args.upstream, args.layer)}: {encoder.sampling_rate} Hz, {encoder.output_dim} dims, "
                  f"a frame every {encoder.hop_size_in_ms:.3f} ms, {encoder.precision}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(encoder_file(args.upstream, args.layer, args.precision))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
