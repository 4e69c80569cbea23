"""What a paper module tells the runner about itself, and where its run's files go.

Each paper module (``wgan``, ``char_rnn``, ``handwriting``, ``bn_lstm``) exports ``DASHBOARD``, a
:class:`Dashboard`: the panels of the paper's figures, the x-axis its curves are drawn against,
and the model arguments that build its optimizers. ``repro dashboard`` and ``repro compare`` read
it (``reproductions.runner``), so the runner names no paper. A module whose unit of progress is
not the batch has a ``progress`` property, a :class:`Progress`, that the runner's progress bar
counts in.

``run_directory`` is the one place a module asks where to write pictures and samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.loggers import WandbLogger

STEP = "trainer/global_step"


@dataclass(frozen=True)
class Panel:
    """One line plot: ``y`` metrics against ``x``, names exactly as the reproduction logs them."""

    title: str
    y: tuple[str, ...]
    x: str = STEP
    log_y: bool = False


@dataclass(frozen=True)
class Dashboard:
    """A reproduction's figures. ``caption`` says what the paper shows; ``x`` is the axis its
    curves use (``repro compare`` draws every metric against it where a run logged it);
    ``optimizer_arguments`` are the model arguments that build its optimizers, in
    ``configure_optimizers``' order (RMSpropMonitor numbers optimizers by that order)."""

    caption: str
    panels: tuple[Panel, ...]
    x: str = STEP
    optimizer_arguments: tuple[str, ...] = ("optimizer",)


@dataclass(frozen=True)
class Progress:
    """How far training is in the paper's own unit: ``done`` of ``total`` ``unit`` (None: no
    limit), and ``values`` to show beside the count (those not already logged to the bar)."""

    unit: str
    done: int
    total: int | None = None
    values: Mapping[str, float] = field(default_factory=dict)


def run_directory(trainer: Trainer) -> Path:
    """The run's own folder: the W&B run's files folder (synced with the run; not when W&B is
    disabled), else the first logger's log_dir, else the trainer's default_root_dir.

    Never ``trainer.log_dir``: that property is a collective broadcast, and callers that write
    files on rank 0 only would wait on the other ranks forever under DDP."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and not getattr(logger.experiment, "disabled", False):
            return Path(logger.experiment.dir)
    log_dir = trainer.loggers[0].log_dir if trainer.loggers else None
    return Path(log_dir or trainer.default_root_dir)
