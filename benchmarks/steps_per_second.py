"""A Lightning callback that prints a run's training speed, for ``benchmarks/gpu_check.sh``:

    repro fit -c CONFIG --trainer.callbacks+=benchmarks.steps_per_second.StepsPerSecond

prints one line at the end of training, ``STEPS_PER_SECOND <optimizer steps/s> ...``: the
optimizer steps (``trainer.global_step``) and batches over the wall time after the first
``skip`` batches (compilation, cuDNN's autotuning, the data loader's start), with the device
synchronised at both ends of that window.
"""

from __future__ import annotations

import time

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_info


class StepsPerSecond(Callback):
    def __init__(self, skip: int = 10) -> None:
        self.skip = skip
        self.batches = 0
        self.start: tuple[float, int, int] | None = None  # time, global step, batches

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self.batches += 1
        if self.batches == self.skip:
            _synchronize(pl_module)
            self.start = (time.perf_counter(), trainer.global_step, self.batches)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.start is None:
            rank_zero_info(f"STEPS_PER_SECOND unmeasured: {self.batches} batches, not more than "
                           f"the {self.skip} skipped")
            return
        _synchronize(pl_module)
        seconds = time.perf_counter() - self.start[0]
        steps, batches = trainer.global_step - self.start[1], self.batches - self.start[2]
        rank_zero_info(f"STEPS_PER_SECOND {steps / seconds:.2f} optimizer steps/s, "
                       f"{batches / seconds:.2f} batches/s ({steps} steps, {batches} batches in "
                       f"{seconds:.2f} s after the first {self.skip} batches)")


def _synchronize(pl_module: LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
