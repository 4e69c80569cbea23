"""The ``repro`` command: LightningCLI over every reproduction and datamodule.

    repro fit -c configs/wgan/smoke.yaml
    repro fit -c configs/wgan/smoke.yaml --model.critic_optimizer.init_args.lr 1e-4
    python -m reproductions fit -c ...          (the same)

Model and data are chosen in subclass mode (``class_path``), configs are parsed with omegaconf
interpolation, and runs log to Weights & Biases: online when the user is logged in, offline
otherwise (``wandb sync`` uploads an offline run later).
"""

from __future__ import annotations

import netrc
import os
import sys
from urllib.parse import urlparse

from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI

WANDB_PROJECT = "rmsprop-repro"
RUN_DIR = "runs"


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
    offline = wandb_offline()
    if offline and not os.environ.get("WANDB_MODE"):
        print(f"W&B: not logged in, logging offline under ./{RUN_DIR}/wandb; "
              f"upload later with `wandb sync {RUN_DIR}/wandb/offline-run-*`", file=sys.stderr)
    return {
        "class_path": "pytorch_lightning.loggers.WandbLogger",
        "init_args": {"project": WANDB_PROJECT, "save_dir": RUN_DIR, "offline": offline},
    }


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Entry point of ``repro`` and ``python -m reproductions``."""
    import datamodules  # noqa: F401 - registers the datamodules as subclasses for short names
    import reproductions  # noqa: F401 - likewise for the LightningModules

    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_kwargs={"parser_mode": "omegaconf"},
        trainer_defaults={"logger": default_logger(), "default_root_dir": RUN_DIR},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
