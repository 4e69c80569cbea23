"""How a ``repro`` run shows up in Weights & Biases: grouped, tagged, fully configured.

* ``run_identity``: W&B ``group`` = the reproduction (module of the LightningModule), ``job_type``
  = the dataset, ``tags`` = each optimizer's class and its variant flags (centered, eps_in_sqrt,
  momentum, ...), so one dashboard filters like with like.
* ``ReproWandbLogger``: Lightning's WandbLogger plus ``group``/``job_type``/``tags`` arguments and a
  summary declaration (``define_metric``) for every headline metric the first time it is logged:
  names ending in ``loss``, ``nll_nats`` or ``bpc`` keep their minimum, ``acc`` its maximum.
  W&B accepts only suffix globs (``train/*``), not ``*loss``, hence per name. Lightning itself
  declares ``trainer/global_step`` as every metric's x-axis.
* ``RunConfigCallback``: writes the resolved config into the run's own directory (not the shared
  ``runs/config.yaml``) and puts it, with each optimizer's effective hyperparameters read from the
  built optimizer, into the run's config (``wandb.config``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import netrc
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from ..experiment import run_directory

WANDB_PROJECT = "rmsprop-repro"
RUN_DIR = "runs"
MIN_SUFFIXES = ("loss", "nll_nats", "bpc")
MAX_SUFFIXES = ("acc",)
# Optimizer settings that name an RMSProp variant; a tag each when on (momentum: when > 0).
VARIANT_FLAGS = ("centered", "eps_in_sqrt", "lr_in_momentum", "nesterov", "bias_correction",
                 "decoupled_weight_decay", "maximize")


def summary_for(metric: str) -> str | None:
    """'min' or 'max' for a headline metric (by the end of its name), None for the others."""
    if metric.endswith(MIN_SUFFIXES):
        return "min"
    if metric.endswith(MAX_SUFFIXES):
        return "max"
    return None


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def effective_settings(class_path: str, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's defaults overridden by ``init_args``: what the object will use."""
    signature = inspect.signature(import_class(class_path))
    settings = {name: p.default for name, p in signature.parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings.update(init_args)
    return settings


def optimizer_entries(model_init_args: Mapping[str, Any]) -> dict[str, tuple[str, dict]]:
    """``{argument: (class_path, init_args)}`` for each model argument that configures an
    optimizer (a ``class_path`` naming a ``torch.optim.Optimizer`` subclass)."""
    entries = {}
    for name, value in model_init_args.items():
        if isinstance(value, Mapping) and isinstance(value.get("class_path"), str):
            try:
                cls = import_class(value["class_path"])
            except (ImportError, AttributeError, ValueError):
                continue
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
                entries[name] = (value["class_path"], dict(value.get("init_args") or {}))
    return entries


def optimizer_tags(class_path: str, settings: Mapping[str, Any]) -> list[str]:
    tags = [class_path.rsplit(".", 1)[1]]
    tags += [flag for flag in VARIANT_FLAGS if settings.get(flag)]
    if settings.get("momentum", 0) > 0:
        tags.append("momentum")
    return tags


def reproduction_of(config: Mapping[str, Any]) -> str:
    """The reproduction a parsed config runs: the module of its LightningModule (``wgan``)."""
    class_path = (config.get("model") or {}).get("class_path") or "model"
    return class_path.rsplit(".", 2)[-2] if "." in class_path else class_path


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """W&B ``group``, ``job_type`` and ``tags`` of a parsed ``repro fit`` config (a plain dict)."""
    model = config.get("model") or {}
    data = config.get("data") or {}
    group = reproduction_of(config)
    data_args = data.get("init_args") or {}
    job_type = str(data_args.get("dataset") or data.get("class_path", "").rsplit(".", 1)[-1])
    entries = optimizer_entries(model.get("init_args") or {})
    tags: list[str] = []
    for argument, (class_path, init_args) in entries.items():
        prefix = f"{argument}:" if len(entries) > 1 else ""
        tags += [prefix + tag for tag in
                 optimizer_tags(class_path, effective_settings(class_path, init_args))]
    return {"group": group, "job_type": job_type, "tags": tags}


class ReproWandbLogger(WandbLogger):
    """WandbLogger with W&B's ``group``, ``job_type`` and ``tags``, and min/max summaries declared
    for headline metrics. Every other argument is WandbLogger's; ``save_dir`` defaults to None
    (WandbLogger's is "."), so that ``repro`` can tell a folder the user gave from none."""

    def __init__(self, *, save_dir: str | None = None, group: str | None = None,
                 job_type: str | None = None, tags: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir or ".", **kwargs)
        for key, value in (("group", group), ("job_type", job_type), ("tags", tags)):
            if value:
                self._wandb_init[key] = value
        # A resumed repro run passes its W&B id again: continue that run, do not start another.
        self._wandb_init["resume"] = "allow"
        self._declared: set[str] = set()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for name in metrics:
            if name not in self._declared:
                self._declared.add(name)
                summary = summary_for(name)
                if summary:
                    self.experiment.define_metric(name, step_metric="trainer/global_step",
                                                  summary=summary)
        super().log_metrics(metrics, step)


def optimizer_hyperparameters(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The settings of the optimizer's first parameter group, as the optimizer holds them."""
    settings: dict[str, Any] = {"class": type(optimizer).__qualname__,
                                "param_groups": len(optimizer.param_groups)}
    for key, value in optimizer.param_groups[0].items():
        if key == "params":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, int, float, str, type(None))):
            settings[key] = value
        else:
            settings[key] = str(value)
    return settings


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc, found without prompting or a network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Offline unless logged in; an explicit WANDB_MODE always wins."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    return not wandb_logged_in()


def default_logger() -> dict:
    """W&B in project rmsprop-repro; the CLI fills in the run's id, folder and mode."""
    return {"class_path": f"{ReproWandbLogger.__module__}.{ReproWandbLogger.__qualname__}",
            "init_args": {"project": WANDB_PROJECT}}


def offline_hint(save_dir: str) -> str:
    """The one line a user who is not logged in sees before a run starts."""
    return (f"W&B: not logged in, logging offline under {save_dir}/wandb; upload later with "
            f"`wandb sync {save_dir}/wandb/offline-run-*`")


class RunConfigCallback(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's own directory and logs it, with
    the optimizers' effective hyperparameters, to the loggers' run config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = run_directory(trainer) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, path, skip_none=False, overwrite=True,
                         multifile=self.multifile)
        config = json.loads(self.parser.dump(self.config, format="json", skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        effective = {f"optimizers/{index}": optimizer_hyperparameters(optimizer)
                     for index, optimizer in enumerate(trainer.optimizers)}
        for logger in trainer.loggers:
            logger.log_hyperparams(effective)


def optimizer_settings_check(model_init_args: Mapping[str, Any]) -> None:
    """Build each configured optimizer on a dummy parameter, so that a bad setting (negative lr,
    alpha outside [0, 1), ...) fails before training; the error names the config key."""
    for argument, (class_path, init_args) in optimizer_entries(model_init_args).items():
        defaults = effective_settings(class_path, {})
        for name, value in init_args.items():
            default = defaults.get(name)
            if isinstance(value, str) and isinstance(default, (int, float)) and \
                    not isinstance(default, bool):  # lr: float | Tensor lets a string through
                raise ValueError(f"model.init_args.{argument}.init_args.{name}: {value!r} is not "
                                 f"a number; {class_path} takes a number (default {default})")
        try:
            import_class(class_path)([torch.nn.Parameter(torch.zeros(1))], **init_args)
        except (ValueError, TypeError) as error:
            raise ValueError(f"model.init_args.{argument} ({class_path}): {error}") from error


class DiscardFailedStarts(Callback):
    """A run that fails before its first training step (a model that does not fit the data, a
    checkpoint that does not load) leaves no W&B run behind to upload: its offline folder is
    deleted, an online run is finished as failed. A run that has trained keeps its W&B run."""

    def __init__(self) -> None:
        self.trained = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.trained = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        if self.trained or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger) or logger._experiment is None:
                continue
            run = logger.experiment
            folder = Path(run.dir).parent
            offline = run.settings.mode == "offline"
            run.finish(exit_code=1)
            if offline:
                shutil.rmtree(folder, ignore_errors=True)
                print(f"W&B: the run failed before training; removed its offline folder {folder}",
                      file=sys.stderr)
            else:
                print(f"W&B: the run failed before training; run {run.id} is marked failed",
                      file=sys.stderr)
