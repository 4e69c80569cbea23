"""Every run's own checkpoint folder, and how a resume finds it again.

A run is keyed by what it reproduces, the config it was launched with and a run id:

    <root>/checkpoints/<config>/<run id>/{last.ckpt, step=N.ckpt, epochE-end.ckpt, best-*.ckpt}

``reproduction`` is the module of the LightningModule (the W&B group), ``config`` the first
``-c`` file's folder and the stems of all of them joined by ``+`` (``bn_lstm-seq_mnist+lstm``),
and the run id is the W&B run id, so one experiment is one W&B run however often it is resumed. ``root`` is the logger's ``save_dir`` when
one is given, else ``trainer.default_root_dir``.

``--ckpt_path last`` resumes the newest run of the same reproduction and config; an explicit
checkpoint resumes the run that wrote it. Every checkpoint records its key (``RunKeyCallback``),
and a checkpoint of another reproduction or config is refused with a message before anything
starts.
"""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

CHECKPOINT_KEY = "repro_run"
# Under DDP, Lightning starts ranks 1..N-1 as copies of this command; they read rank 0's new id.
RUN_ID_VARIABLE = "REPRO_RUN_ID"


@dataclass(frozen=True)
class RunKey:
    reproduction: str
    config: str
    run_id: str

    def directory(self, root: Path) -> Path:
        return Path(root) / "checkpoints" / self.config / self.run_id

    def describe(self) -> str:
        return f"{self.reproduction} with config {self.config} (run {self.run_id})"


class CheckpointMismatchError(ValueError):
    """A checkpoint that another reproduction or config wrote."""


def config_label(config_files: list[Any]) -> str:
    """``configs/bn_lstm/seq_mnist.yaml`` + ``configs/bn_lstm/lstm.yaml`` ->
    ``bn_lstm-seq_mnist+lstm``; ``cli`` when no config file was given."""
    paths = [Path(str(path)) for path in config_files if path]
    if not paths:
        return "cli"
    return f"{paths[0].resolve().parent.name}-" + "+".join(path.stem for path in paths)


def new_run_id() -> str:
    """Eight lowercase letters and digits, as W&B's own run ids; on a DDP worker rank, rank 0's."""
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and os.environ.get(RUN_ID_VARIABLE):
        return os.environ[RUN_ID_VARIABLE]
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    os.environ[RUN_ID_VARIABLE] = run_id
    return run_id


def newest_checkpoint(root: Path, config: str) -> Path | None:
    """The most recently written ``last.ckpt`` of any run of this config."""
    found = list((Path(root) / "checkpoints" / config).glob("*/last.ckpt"))
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def recorded_key(checkpoint: Path) -> RunKey | None:
    """The run key a checkpoint was written under; None for one written without it."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    key = saved.get(CHECKPOINT_KEY)
    return RunKey(**key) if key else None


def resumed_run(checkpoint: Path, reproduction: str, config: str) -> RunKey:
    """The key of the run that ``checkpoint`` continues: its own, checked against this launch's
    reproduction and config. A checkpoint without a key starts a new run id."""
    key = recorded_key(checkpoint)
    if key is None:
        return RunKey(reproduction, config, new_run_id())
    if (key.reproduction, key.config) != (reproduction, config):
        raise CheckpointMismatchError(
            f"--ckpt_path {checkpoint}: that checkpoint belongs to {key.describe()}, but this "
            f"launch is {reproduction} with config {config}; resume it with the configs it was "
            f"launched with, or drop --ckpt_path to start a new run")
    return key


class RunKeyCallback(Callback):
    """Writes the run's key into every checkpoint (``checkpoint["repro_run"]``)."""

    def __init__(self, key: RunKey) -> None:
        self.key = key

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = asdict(self.key)
