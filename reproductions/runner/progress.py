"""The training progress bar, in the reproduction's own unit where it has one.

Lightning's bar counts the batches of each epoch. A module whose unit is not the batch has a
``progress`` property (``reproductions.experiment.Progress``): the WGAN counts generator iterations
toward ``max_generator_iterations``, the paper's unit, while each batch is one critic iteration.
``ReproductionProgressBar`` then counts that unit across epochs, and shows the values the module
adds (the Frechet distance) beside the metrics logged with ``prog_bar=True`` (W). A module without
one gets Lightning's bar as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from ..experiment import Progress
from .tracking import import_class


def own_progress(pl_module: LightningModule) -> Progress | None:
    progress = getattr(pl_module, "progress", None)
    return progress if isinstance(progress, Progress) else None


class ReproductionProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, counting the module's own unit when it has one."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        progress = own_progress(pl_module)
        if progress is not None:
            bar = self.train_progress_bar
            bar.reset(total=progress.total)
            bar.n = bar.initial = progress.done  # a resumed run counts on, at its own rate
            bar.set_description(progress.unit)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if own_progress(pl_module) is None:  # the module's own unit runs on across epochs
            super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        progress = own_progress(pl_module)
        if progress is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif progress.done != self.train_progress_bar.n:
            self.train_progress_bar.n = progress.done
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        progress = own_progress(pl_module)
        return {**super().get_metrics(trainer, pl_module), **(progress.values if progress else {})}


def progress_bars(trainer_config: Mapping[str, Any]) -> list[Callback]:
    """``[ReproductionProgressBar()]``, or nothing when the trainer config turns the bar off or
    brings a progress bar of its own."""
    if trainer_config.get("enable_progress_bar") is False:
        return []
    configured = trainer_config.get("callbacks") or []
    for callback in configured if isinstance(configured, list) else [configured]:
        path = callback.get("class_path") if isinstance(callback, Mapping) else None
        if path and issubclass(import_class(path), ProgressBar):
            return []
    return [ReproductionProgressBar()]
