"""Surviving what clusters do to a run: non-finite steps, kills, half-written checkpoints.

* ``SkipNonFiniteSteps``: when the loss or a gradient is NaN/inf, the optimizer step is skipped
  (every gradient of that optimizer is set to None, so torch optimizers leave both the weights and
  their state untouched; under DDP and FSDP on every rank if on any), counted in
  ``train/skipped_steps``; after ``max_consecutive`` skips in a row the run stops with
  ``NonFiniteTrainingError`` naming the last checkpoint, which predates the fault (skipped steps
  change nothing). It works on Lightning's hooks that both optimization styles call:
  ``on_before_backward`` (the loss: automatic, and ``manual_backward``) and
  ``on_before_optimizer_step`` (the gradients: automatic, and ``LightningOptimizer.step`` in manual
  optimization). A manual ``training_step`` that steps a raw ``torch.optim`` optimizer bypasses
  both and is not guarded.
* Exact resume (``repro fit -c CFG --ckpt_path last``): the resumed run ends with the weights,
  optimizer state and global step of the uninterrupted run, whether the checkpoint was written at
  an epoch's end or inside an epoch (a step checkpoint, validation end). Two things make a step
  depend on where it sits in the run only, not on how the process got there:

  - the data order: every datamodule's training sampler is a
    ``datamodules.resumable_sampler.ResumableSampler``, whose epoch e order is drawn from
    ``seed + e`` and which starts after the batches the restored loops have already trained
    (Lightning's own progress counters, saved in every checkpoint). A plain
    ``DataLoader(shuffle=True)`` cannot resume: Lightning starts the resumed run's first iterator
    before any hook, so it trains the interrupted epoch on another order, from its start;
  - the random numbers: ``StepSeeding`` reseeds torch (the CPU and the module's device), numpy
    and random before each training batch from (seed, epoch, batch index, rank), so noise,
    dropout and penalties continue the same streams without any generator state in the
    checkpoint, and whatever draws random numbers between steps (validation, DataLoader
    iterators, sample pictures) changes nothing in training.

  Other state that a step reads must be in the checkpoint too: the module's (WGAN's counters and
  the char-RNN's carried truncated-BPTT state are, via ``on_save_checkpoint``), the callbacks'
  (``SkipNonFiniteSteps`` saves its counts). Limit: randomness inside a Dataset's
  ``__getitem__`` in DataLoader workers follows the workers' seeds, which are not reseeded (no
  dataset here draws any).
* ``intact_checkpoint``: a checkpoint to resume from that a disk, a copy or a quota damaged after
  it was written (torch's "PytorchStreamReader failed reading zip archive") is named, and the run
  resumes from the newest intact checkpoint in the same folder instead (``step=N.ckpt``,
  ``epochE-end.ckpt``), saying so. A torch checkpoint is a zip archive whose records carry CRC-32s:
  a truncated file has no central directory, a corrupted record fails its CRC (torch.load would
  read it without complaint).
* ``AtomicCheckpointIO``: Lightning's local save writes to ``tempfile.mkstemp()`` (the system temp
  folder) and then ``shutil.move``s it (fsspec transaction, lightning_fabric ``_atomic_save``);
  when that folder is on another filesystem the move is a copy into the final path, which a kill
  can leave half-written. This plugin writes next to the target, fsyncs, and ``os.replace``s.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only


class NonFiniteTrainingError(RuntimeError):
    """Raised after too many consecutive steps with a non-finite loss or gradient."""


class SkipNonFiniteSteps(Callback):
    """Skip and count optimizer steps whose loss or gradients are not finite.

    Args:
        max_consecutive: stop the run after this many skipped steps in a row (>= 1).
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"SkipNonFiniteSteps: max_consecutive must be >= 1, "
                             f"got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._loss_finite: torch.Tensor | None = None
        self._logged = (-1, -1)  # (global step, count) the loggers last saw

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule,
                           loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        finite = all_finite([p.grad for group in optimizer.param_groups for p in group["params"]
                             if p.grad is not None])
        if self._loss_finite is not None:
            finite = finite & self._loss_finite.to(finite.device)
        self._loss_finite = None
        # One host sync per step; under DDP and FSDP one all-reduce too: every rank skips if any
        # must (a loss non-finite on one rank only, a shard's gradient), else replicas diverge.
        if trainer.strategy.reduce_boolean_decision(bool(finite), all=True):
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # torch optimizers skip parameters without a gradient
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
            raise NonFiniteTrainingError(
                f"{self.consecutive} consecutive optimizer steps had a non-finite loss or gradient "
                f"(up to global step {trainer.global_step}; {self.skipped} skipped in all). The "
                f"weights and optimizer state are those before the fault; last checkpoint: "
                f"{checkpoint}. Lower the learning rate, raise eps, or clip gradients "
                f"(trainer.gradient_clip_val) and resume with --ckpt_path.")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, trainer.global_step, self.skipped)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.skipped == self._logged[1]:
            return
        before = trainer.global_step - 1
        if before > self._logged[0]:  # the old count up to the step before: a step, not a ramp
            self._log(trainer, before, self._logged[1])
        self._log(trainer, trainer.global_step, self.skipped)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, trainer.global_step, self.skipped)

    def _log(self, trainer: Trainer, step: int, count: int) -> None:
        """``train/skipped_steps`` at the start, around each change and at the end: the count is
        a step function, which these points draw exactly (``self.log`` at every batch cost about
        1 ms)."""
        self._logged = (step, count)
        for logger in trainer.loggers:
            logger.log_metrics({"train/skipped_steps": float(count)}, step=step)

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]
        self.consecutive = state_dict.get("consecutive", 0)  # older checkpoints lack it


class ConfiguredHyperparameters(Callback):
    """A resumed run trains with the optimizer settings of its config, and says so where they
    differ from the checkpoint's.

    Loading an optimizer's state dict brings back the settings saved with it (lr, alpha, eps,
    momentum, ...), so ``--model.optimizer.init_args.lr 1e-2 --ckpt_path last`` would go on at
    the checkpoint's lr while the run's config (and W&B) show 1e-2. The settings each optimizer
    was built with are read before the checkpoint loads (``on_fit_start``) and put back after it.
    """

    def __init__(self) -> None:
        self.configured: list[list[dict[str, Any]]] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.configured = [[{key: value.clone() if isinstance(value, torch.Tensor) else value
                             for key, value in group.items() if key != "params"}
                            for group in optimizer.param_groups]
                           for optimizer in trainer.optimizers]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.ckpt_path:
            return
        for index, (optimizer, groups) in enumerate(zip(trainer.optimizers, self.configured)):
            for number, (group, configured) in enumerate(zip(optimizer.param_groups, groups)):
                for key, value in configured.items():
                    if key in group and not same_setting(group[key], value):
                        rank_zero_info(f"resume: optimizer {index} group {number}: {key} = "
                                       f"{plain(value)} from the config (the checkpoint had "
                                       f"{plain(group[key])})")
                        if isinstance(group[key], torch.Tensor):
                            group[key].copy_(value)
                        else:
                            group[key] = value


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether no element of ``tensors`` is NaN or infinite, as a 0-dim bool tensor (no host
    sync). A sum propagates NaN and inf; summed in float64, float32 and narrower values cannot
    overflow. It reads each tensor once, where ``isfinite(g).all()`` also writes a mask: about 5x
    faster on the CPU."""
    checks = [torch.isfinite(t).all() for t in tensors if t.dtype == torch.float64]
    sums = [t.sum(dtype=torch.float64) for t in tensors if t.dtype != torch.float64]
    if sums:
        checks.append(torch.stack(sums).isfinite().all())
    return torch.stack(checks).all() if checks else torch.tensor(True)


def same_setting(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a, dtype=torch.float64),
                           torch.as_tensor(b, dtype=torch.float64))
    return a == b


def plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 32-bit seed for one training batch; numpy's SeedSequence mixes the four numbers so that
    neighbouring positions get unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(1)[0])


class StepSeeding(Callback):
    """Reseed torch (the CPU's generator and the module's device's), numpy and random before each
    training batch from (seed, epoch, batch, rank).

    Args:
        seed: the run's seed; None reads ``seed_everything``'s (PL_GLOBAL_SEED, else 0).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = step_seed(base, trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.default_generator.manual_seed(seed)
        if pl_module.device.type != "cpu":  # torch.manual_seed visits every backend: ~0.1 ms
            torch.get_device_module(pl_module.device).manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file beside it, fsync, then rename it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO: storage_options is not supported")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)  # atomic on POSIX: readers see the old or the new file
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def checkpoint_damage(path: Path) -> str | None:
    """Why ``path`` is not a complete torch checkpoint, or None when every record of its zip
    archive is there and matches its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            corrupt = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        return f"not a complete zip archive: {error}"
    return f"record {corrupt} fails its CRC check" if corrupt else None


@rank_zero_only
def tell(message: str) -> None:
    print(message, file=sys.stderr)


def intact_checkpoint(path: str | Path) -> Path:
    """``path``, or when it is damaged the newest intact checkpoint beside it (by modification
    time), saying so in one line. A folder (a sharded checkpoint) is taken as it is.

    Raises FileNotFoundError for a missing path, RuntimeError when no checkpoint beside a damaged
    one is intact."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint")
    damage = None if path.is_dir() else checkpoint_damage(path)
    if damage is None:
        return path
    beside = sorted((p for p in path.parent.glob("*.ckpt") if p.is_file() and p != path),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in beside:
        if checkpoint_damage(candidate) is None:
            tell(f"repro: checkpoint {path} is damaged ({damage}); resuming from {candidate}, "
                 "the newest intact checkpoint beside it")
            return candidate
    raise RuntimeError(f"checkpoint {path} is damaged ({damage}) and no checkpoint beside it is "
                       "intact; start afresh without --ckpt_path")

