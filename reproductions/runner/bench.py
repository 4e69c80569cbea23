"""``repro bench``: one config over several seeds, mean and spread of the final metrics.

    repro bench -c CFG [-c CFG2,OVERLAY ...] --seeds 3 [--out DIR] [-- extra repro fit arguments]

One ``repro fit`` process per (config, seed), seeds 0..N-1, each logging into its own folder
DIR/<config folder>-<config stems joined by +>-seed<k> (the run's name too); then DIR/bench.md, a
markdown table of mean ± sample std (over seeds) of each metric's final value. A config is one
YAML file or several separated by commas, layered in that order as ``repro fit -c A -c B`` does.
Configs are checked (they exist, they keep a logger) before the first run starts. SIGTERM, SIGINT
or SIGHUP sent to bench goes on to the running ``repro fit`` (started in a session of its own, so
that a terminal's Ctrl-C reaches it once), bench waits for it to stop and exits with 128 + the
signal's number.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from .compare import headline, markdown_table, read_series
from .wandb_records import read_finished_run
from .run_folder import config_label


class BenchConfigError(ValueError):
    """A config that bench cannot run: missing, or without a logger."""


def config_files(config: str) -> list[Path]:
    """The YAML files of one bench config: ``a.yaml`` or ``base.yaml,overlay.yaml``."""
    return [Path(part) for part in config.split(",")]


def bench_command(config: str, seed: int, save_dir: Path, extra: list[str]) -> list[str]:
    """The ``repro fit`` command line of one (config, seed): its own logger folder and run name.
    The logger arguments go through ``trainer.logger.init_args``, which the default W&B logger
    and a YAML's own WandbLogger or CSVLogger all take."""
    layered = [arg for path in config_files(config) for arg in ("-c", str(path))]
    return [sys.executable, "-m", "reproductions", "fit", *layered,
            "--seed_everything", str(seed),
            "--trainer.logger.init_args.name", save_dir.name,
            "--trainer.logger.init_args.save_dir", str(save_dir), *extra]


def logged_run(save_dir: Path) -> Path:
    """The run a ``repro fit`` wrote under ``save_dir``: its W&B run directory, else its CSV log."""
    found = sorted(save_dir.glob("wandb/*run-*/run-*.wandb")) or sorted(
        save_dir.glob("**/metrics.csv"))
    if not found:
        raise FileNotFoundError(f"repro bench: {save_dir} holds no W&B run (wandb/*run-*/) and no "
                                "metrics.csv; bench needs a logger (trainer.logger)")
    return found[-1].parent if found[-1].suffix == ".wandb" else found[-1]


def check_bench_configs(configs: list[str]) -> None:
    """Every config file exists and the layered result keeps a logger, before any run starts."""
    for config in configs:
        logger = None
        for path in config_files(config):
            if not path.is_file():
                raise BenchConfigError(f"repro bench: config {path} does not exist")
            logger = ((yaml.safe_load(path.read_text()) or {}).get("trainer") or {}).get(
                "logger", logger)
        if logger is False or logger == []:
            raise BenchConfigError(f"repro bench: {config} sets trainer.logger: false; bench "
                                   "reads each run's logged metrics, so it needs a logger")


# SIGHUP too: the child is out of bench's process group, so a closed terminal would not reach it.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_to_the_end(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` and return its exit status; a signal of ``FORWARDED_SIGNALS`` that bench
    receives meanwhile is passed on to it, and bench waits for it to stop, then exits with 128 + the
    signal's number."""
    child = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {number: signal.signal(number, forward) for number in FORWARDED_SIGNALS}
    try:
        status = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        print(f"repro bench: stopped by {signal.Signals(received[0]).name}; the running "
              f"repro fit (pid {child.pid}) was passed the signal and ended with status {status}",
              file=sys.stderr)
        raise SystemExit(128 + received[0])
    return status


def mean_std_cell(values: list[float]) -> str:
    """``mean ± sample std`` (n - 1 in the denominator); the std is 0 for a single run."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} ± {spread:.2g}"


def bench(configs: list[str], seeds: int, out: Path, extra: list[str]) -> Path:
    """Run every config under seeds 0..seeds-1, one ``repro fit`` process each, and write
    ``out/bench.md``: per config, mean ± std over seeds of each metric's final value."""
    check_bench_configs(configs)
    # The child processes import this very checkout, whatever the environment's install points to.
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    finals: dict[str, dict[str, list[float]]] = {}
    for config in configs:
        stem = config_label(config_files(config))
        for seed in range(seeds):
            save_dir = out / f"{stem}-seed{seed}"
            command = bench_command(config, seed, save_dir, extra)
            print("repro bench:", " ".join(command[2:]), flush=True)
            if run_to_the_end(command, env):
                raise RuntimeError(f"repro bench: {config} with seed {seed} failed (its output is "
                                   f"above); command: {' '.join(command[2:])}")
            logged = logged_run(save_dir)
            if logged.suffix != ".csv":
                logged = read_finished_run(logged)
            for metric, points in read_series(logged).items():
                finals.setdefault(stem, {}).setdefault(metric, []).append(points[-1][1])
    names = headline(set().union(*(set(m) for m in finals.values())))
    rows = [[f"{stem} (n={seeds})"] + [mean_std_cell(metrics[name]) if name in metrics else ""
                                       for name in names]
            for stem, metrics in finals.items()]
    out.mkdir(parents=True, exist_ok=True)
    table = out / "bench.md"
    table.write_text(markdown_table(["config"] + names, rows))
    return table
