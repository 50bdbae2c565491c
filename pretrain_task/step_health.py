"""What the pretraining loop watches at every step: losses that are not finite, and time spent waiting for data.

s3prl's runner owns the loop; ``UpstreamPretrainExpert`` calls these from the hooks the runner gives it
(``forward``, ``on_before_zero_grad``, ``get_train_dataloader``).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import torch

from encodecmae_s3prl.errors import UserError


class TrainingDiverged(UserError):
    """The loss was NaN or infinite for ``max_nonfinite_steps`` optimizer steps in a row."""


class WaitTimedLoader:
    """A CropLoader as s3prl's runner iterates it (``len()`` and ``dataset`` as it reads them), timing how long each
    batch kept the training step waiting: ``last_wait`` seconds, the time spent in ``next()``."""

    def __init__(self, loader):
        self.loader, self.dataset, self.last_wait = loader, loader.dataset, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.last_wait = time.perf_counter() - start
            yield batch


class NonFiniteSteps:
    """Counts optimizer steps whose loss was NaN or infinite; :meth:`guard` makes such a step's gradients NaN.

    Why NaN gradients: s3prl's runner already skips ``optimizer.step()`` when the clipped gradient norm is NaN,
    but an infinite loss can give an infinite norm, which it applies (weights become NaN for good). Scaling
    the loss by NaN when it is not finite (by exactly 1 otherwise: same value, same gradients) makes every such
    step one the runner skips. Each guarded forward also leaves a finiteness flag, copied to the host without
    waiting; it is read in :meth:`step_done`, after the runner's ``loss.item()`` has synchronised anyway.
    """

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total, self.first_of_run = limit, 0, 0, None
        self._flags: list[torch.Tensor] = []

    def guard(self, loss: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(loss.detach())
        self._flags.append(finite.to("cpu", non_blocking=True))
        return loss * torch.where(finite, 1.0, float("nan")).to(loss.dtype)

    def step_done(self, global_step: int, last_checkpoint_step: Optional[int]) -> None:
        """After an optimizer step (skipped or not): count it; stop the run after ``limit`` bad ones in a row."""
        if not self._flags:
            return
        bad = not all(bool(flag) for flag in self._flags)
        self._flags.clear()
        if not bad:
            self.in_a_row, self.first_of_run = 0, None
            return
        self.in_a_row += 1
        self.total += 1
        self.first_of_run = self.first_of_run or global_step
        print(f"[encodecmae] step {global_step}: the loss is not finite (NaN or inf): step skipped, weights kept "
              f"({self.in_a_row} in a row, {self.total} in this run; the run stops at {self.limit} in a row)",
              file=sys.stderr, flush=True)
        if self.in_a_row >= self.limit:
            kept = (f"the last checkpoint, states-{last_checkpoint_step}.ckpt in the experiment folder, holds the "
                    f"weights before them" if last_checkpoint_step else "no checkpoint was written before them")
            raise TrainingDiverged(
                f"training stopped at step {global_step}: the loss was NaN or infinite for {self.in_a_row} steps in "
                f"a row (steps {self.first_of_run}-{global_step}, each skipped); {kept}. Resume from that checkpoint "
                f"with a lower config.optimizer.lr, or check the corpus or codec cache these batches came from "
                f"(pretrain_expert.datarc.max_nonfinite_steps = {self.limit} sets how many in a row stop a run)")
