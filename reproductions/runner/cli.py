"""The ``repro`` command: LightningCLI over every reproduction and datamodule.

    repro fit -c configs/wgan/smoke.yaml
    repro fit -c configs/wgan/smoke.yaml --model.critic_optimizer.init_args.lr 1e-4
    repro fit -c configs/wgan/smoke.yaml --ckpt_path last         (resume the latest run)
    repro compare runs/wandb/offline-run-A runs/wandb/offline-run-B --out comparison/
    repro bench -c configs/wgan/smoke.yaml --seeds 3
    repro dashboard
    python -m reproductions fit -c ...          (the same)

Model and data are chosen in subclass mode (``class_path``), configs are parsed with omegaconf
interpolation, and runs log to Weights & Biases: online when the user is logged in, offline
otherwise (``wandb sync`` uploads an offline run later). A command that cannot run as given ends
in one line naming the option (``user_errors``); the progress bar counts in the reproduction's own
unit where it has one (``progress``).

Every ``fit`` also gets (see ``tracking``, ``optimizer_monitor``, ``fault_tolerance``):
W&B group/job_type/tags and the resolved config in the run's config; ``RMSpropMonitor``
(``--optimizer_monitor.every_n_steps``); ``SkipNonFiniteSteps``
(``--nonfinite.max_consecutive``); checkpoints under ``<save_dir>/checkpoints/<run name>/``:
``epochE-end.ckpt`` at every epoch's end and ``step=N.ckpt`` every ``--checkpoint_every_n_steps``
steps (the latest of each kept), and ``last.ckpt``, a copy of whichever is newest (what
``--ckpt_path last`` resumes, exactly, see ``fault_tolerance``), all written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from . import user_errors
from .fault_tolerance import (AtomicCheckpointIO, ConfiguredHyperparameters, SkipNonFiniteSteps,
                              StepSeeding, intact_checkpoint)
from .optimizer_monitor import RMSpropMonitor
from .progress import progress_bars
from .run_folder import RunKey, RunKeyCallback, config_label, new_run_id, newest_checkpoint, resumed_run
from .tracking import (RUN_DIR, WANDB_PROJECT, DiscardFailedStarts, ReproWandbLogger,
                       RunConfigCallback, default_logger, offline_hint, optimizer_settings_check,
                       reproduction_of, run_identity, wandb_offline)

WANDB_LOGGERS = ("pytorch_lightning.loggers.WandbLogger",
                 "pytorch_lightning.loggers.wandb.WandbLogger", "lightning.pytorch.loggers.WandbLogger")
REPRO_LOGGER = f"{ReproWandbLogger.__module__}.{ReproWandbLogger.__qualname__}"
WORKFLOW_COMMANDS = {
    "compare": "plots and a table comparing runs, offline (W&B run folders or CSV logs)",
    "bench": "one or more configs over several seeds: mean ± std of the final metrics",
    "dashboard": "W&B workspaces and reports per reproduction, with the papers' figures (online)",
}


# Lightning warns that a step checkpoint under manual optimization holds the state after the
# optimizer step and prints a code sample; that state is exactly what resuming needs.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

class ReproCLI(LightningCLI):
    """LightningCLI plus the experiment workflow of every ``repro fit`` (module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RMSpropMonitor, "optimizer_monitor")
        parser.add_lightning_class_args(SkipNonFiniteSteps, "nonfinite")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=1000,
                            help="write step=N.ckpt every N optimizer steps (0: never)")

    def active_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _parse_ckpt_path(self) -> None:
        """Lightning's LightningCLI replaces the model's config by the hyperparameters saved in
        ``--ckpt_path``. That stays for validate and test (a checkpoint evaluated as it was
        trained); for fit the config decides (``resolve_run`` refuses a checkpoint of another
        config, ``ConfiguredHyperparameters`` applies changed optimizer settings)."""
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.active_config()
        plain = config.as_dict()
        if plain.get("checkpoint_every_n_steps", 0) < 0:
            raise ValueError("checkpoint_every_n_steps must be >= 0, got "
                             f"{plain['checkpoint_every_n_steps']}")
        optimizer_settings_check((plain.get("model") or {}).get("init_args") or {})
        logger = config.get("trainer.logger")
        wandb_logger = logger is not None and not isinstance(logger, (bool, list)) and \
            logger.get("class_path") in WANDB_LOGGERS + (REPRO_LOGGER,)
        # "." is WandbLogger's own default (a YAML naming that class): no folder was given.
        given_save_dir = logger.init_args.get("save_dir") if wandb_logger else None
        given_save_dir = None if given_save_dir == "." else given_save_dir
        self.checkpoint_root = Path(given_save_dir or plain["trainer"].get("default_root_dir")
                                    or RUN_DIR)
        self.run_key = self.resolve_run(plain)
        if wandb_logger:
            logger.class_path = REPRO_LOGGER
            for key, value in run_identity(plain).items():
                if not logger.init_args.get(key):
                    logger.init_args[key] = value
            # W&B's conventions: an explicit save_dir, else WANDB_DIR, else the trainer's root;
            # WANDB_MODE, when set, decides the mode (an explicit offline=True would override it).
            logger.init_args.save_dir = given_save_dir or os.environ.get("WANDB_DIR") or \
                str(self.checkpoint_root)
            logger.init_args.offline = wandb_offline() and not os.environ.get("WANDB_MODE")
            logger.init_args.id = self.run_key.run_id
            logger.init_args.resume = "allow"  # a resumed run continues the same W&B run
            if not logger.init_args.get("name"):
                logger.init_args.name = self.run_key.config
            if logger.init_args.offline:
                print(offline_hint(logger.init_args.save_dir), file=sys.stderr)

    def resolve_run(self, plain: dict[str, Any]) -> RunKey:
        """This launch's run key. ``fit --ckpt_path last`` continues the newest run of the same
        reproduction and config, ``fit --ckpt_path FILE`` the run that wrote FILE (refused when
        another reproduction or config wrote it); anything else is a new run. The resolved
        checkpoint replaces ``ckpt_path`` in the config."""
        reproduction, config = reproduction_of(plain), config_label(plain.get("config") or [])
        ckpt_path = plain.get("ckpt_path") if self.subcommand == "fit" else None
        if ckpt_path == "last":
            ckpt_path = newest_checkpoint(self.checkpoint_root, config)
            if ckpt_path is None:
                print(f"--ckpt_path last: no run of {reproduction} with config {config} under "
                      f"{self.checkpoint_root / 'checkpoints'}; starting a new run",
                      file=sys.stderr)
            self.active_config()["ckpt_path"] = str(ckpt_path) if ckpt_path else None
        if not ckpt_path:
            return RunKey(reproduction, config, new_run_id())
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        ckpt_path = intact_checkpoint(ckpt_path)  # a damaged one: the newest intact beside it
        self.active_config()["ckpt_path"] = str(ckpt_path)
        return resumed_run(ckpt_path, reproduction, config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plain = self.active_config().as_dict()
        directory = self.run_key.directory(self.checkpoint_root)
        callbacks = [
            # An epoch-end checkpoint, and last.ckpt beside every save of either callback (no
            # version counter: both write the one last.ckpt, which is then always the newest
            # resume point; every one resumes exactly). Lightning writes last.ckpt only along
            # with a top-k save, hence save_top_k=1.
            ModelCheckpoint(dirpath=directory, filename="epoch{epoch}-end", every_n_epochs=1,
                            save_top_k=1, save_last=True, auto_insert_metric_name=False,
                            enable_version_counter=False),
            StepSeeding(plain.get("seed_everything") if isinstance(
                plain.get("seed_everything"), int) else None),
            RunKeyCallback(self.run_key),
            ConfiguredHyperparameters(),
            DiscardFailedStarts(),
            *progress_bars(plain.get("trainer") or {}),
        ]
        if plain.get("checkpoint_every_n_steps"):
            callbacks.append(ModelCheckpoint(
                dirpath=directory, filename="{step}", save_top_k=1, save_last=True,
                every_n_train_steps=plain["checkpoint_every_n_steps"],
                enable_version_counter=False))
        for callback in self._get(self.config_init, "trainer", default={}).get("callbacks") or []:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(directory)  # a config's best-model checkpoints: same folder
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """The data is read before the logger starts a W&B run: a missing or corrupt dataset
        leaves no empty run behind (datamodules' setup is idempotent; fit's own call is free)."""
        if self.datamodule is not None:
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")


def workflow_parser() -> argparse.ArgumentParser:
    """``repro compare | bench | dashboard``: the commands beside LightningCLI's."""
    parser = argparse.ArgumentParser(prog="repro")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help=WORKFLOW_COMMANDS["compare"],
                                  description=WORKFLOW_COMMANDS["compare"])
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                         help="a W&B run directory (runs/wandb/offline-run-*), a Lightning CSV "
                              "log (metrics.csv or its folder), or a folder of runs (runs/wandb)")
    compare.add_argument("--out", type=Path, default=Path("comparison"),
                         help="folder for the PNGs and final_metrics.md (default: %(default)s)")
    compare.add_argument("--metrics", nargs="*", metavar="METRIC",
                         help="metrics to plot, e.g. val/bpc (default: every train/val/test "
                              "metric that is not an optimizer internal)")
    bench = commands.add_parser("bench", help=WORKFLOW_COMMANDS["bench"],
                                description=WORKFLOW_COMMANDS["bench"] + "; arguments after `--` "
                                "go to every repro fit")
    bench.add_argument("-c", "--config", action="append", required=True,
                       help="a repro fit config, or a base and overlays joined by commas "
                            "(a.yaml,b.yaml); repeat -c for several")
    bench.add_argument("--seeds", type=int, default=3,
                       help="runs per config, seeds 0..N-1 (default: %(default)s)")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"),
                       help="folder of the runs and bench.md (default: %(default)s)")
    dashboard = commands.add_parser("dashboard", help=WORKFLOW_COMMANDS["dashboard"],
                                    description=WORKFLOW_COMMANDS["dashboard"])
    dashboard.add_argument("--entity", help="W&B entity (default: your default entity)")
    dashboard.add_argument("--project", default=WANDB_PROJECT,
                           help="W&B project (default: %(default)s)")
    return parser


def run_workflow_command(argv: list[str]) -> int:
    """``repro compare``, ``repro bench`` or ``repro dashboard``; returns the exit status."""
    parser = workflow_parser()
    own, extra = (argv, []) if "--" not in argv else (argv[:argv.index("--")],
                                                      argv[argv.index("--") + 1:])
    args = parser.parse_args(own)
    if args.command == "dashboard":
        from .dashboard import dashboard

        return dashboard(args.entity, args.project)
    if args.command == "compare":
        from .compare import compare

        missing = [str(r) for r in args.runs if not r.exists()]
        if missing:
            parser.error(f"compare: no such run directory or CSV: {', '.join(missing)}")
        table = compare(args.runs, args.out, args.metrics)
    else:
        from .bench import BenchConfigError, bench

        if args.seeds < 1:
            parser.error(f"bench: --seeds must be >= 1, got {args.seeds}")
        try:
            table = bench(args.config, args.seeds, args.out, extra)
        except BenchConfigError as error:
            parser.error(str(error).removeprefix("repro "))
        except (RuntimeError, FileNotFoundError) as error:
            sys.exit(str(error))  # exit status 1, the message on stderr
    print(table.read_text())
    print(f"written to {table.parent}")
    return 0


def console_main() -> None:
    """The ``repro`` console script: runs ``main`` and returns nothing, so that the process exits
    with 0 (a console script passes its function's return value to ``sys.exit``). A user error
    ends as one line on stderr (``user_errors``); ``--debug`` or ``REPRO_DEBUG=1`` shows the
    traceback."""
    if user_errors.take_debug_flag(sys.argv):
        os.environ[user_errors.DEBUG_VARIABLE] = "1"
    with user_errors.reported():
        main()


@user_errors.usage_errors_reported()
def main(args: list[str] | None = None, run: bool = True) -> LightningCLI | None:
    """Entry point of ``repro`` and ``python -m reproductions``. An error in the command line or a
    config ends as one line and exit status 2; other errors are raised."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in WORKFLOW_COMMANDS:
        raise SystemExit(run_workflow_command(argv))
    user_errors.check_config_files(argv)
    epilog = "other commands:\n" + "\n".join(f"  {name:<10} {text}" for name, text in
                                              WORKFLOW_COMMANDS.items())
    return ReproCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_kwargs={"parser_mode": "omegaconf", "epilog": epilog, "exit_on_error": False,
                       "formatter_class": argparse.RawDescriptionHelpFormatter},
        trainer_defaults={"logger": default_logger(), "default_root_dir": RUN_DIR,
                          # as a class_path, not an instance: the saved config stays serialisable
                          "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}."
                                                     f"{AtomicCheckpointIO.__qualname__}"}]},
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
