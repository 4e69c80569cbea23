"""``repro bench``: one config over several seeds, mean and spread of the final metrics.

    repro bench -c CFG [-c CFG2 ...] --seeds 3 [--out DIR] [-- extra repro fit arguments]

One ``repro fit`` process per (config, seed), seeds 0..N-1, each logging into its own folder
DIR/<config folder>-<config stem>-seed<k> (the run's name too); then DIR/bench.md, a markdown table
of mean ± sample std (over seeds) of each metric's final value. Configs are checked (they exist,
they keep a logger) before the first run starts.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from .compare import headline, markdown_table, read_series


def bench_command(config: str, seed: int, save_dir: Path, extra: list[str]) -> list[str]:
    """The ``repro fit`` command line of one (config, seed): its own logger folder and run name.
    The logger arguments go through ``trainer.logger.init_args``, which the default W&B logger
    and a YAML's own WandbLogger or CSVLogger all take."""
    return [sys.executable, "-m", "reproductions", "fit", "-c", config,
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
    """Every config exists and keeps a logger, before the first run starts."""
    for config in configs:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"repro bench: config {config} does not exist")
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        if trainer.get("logger") is False or trainer.get("logger") == []:
            raise ValueError(f"repro bench: {config} sets trainer.logger: false; bench reads "
                             "each run's logged metrics, so it needs a logger")


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
        stem = f"{Path(config).parent.name}-{Path(config).stem}"  # configs/bn_lstm/smoke.yaml:
        for seed in range(seeds):                                 # bn_lstm-smoke
            save_dir = out / f"{stem}-seed{seed}"
            command = bench_command(config, seed, save_dir, extra)
            print("repro bench:", " ".join(command[2:]), flush=True)
            if subprocess.run(command, env=env, check=False).returncode:
                raise RuntimeError(f"repro bench: {config} with seed {seed} failed (its output is "
                                   f"above); command: {' '.join(command[2:])}")
            for metric, points in read_series(logged_run(save_dir)).items():
                finals.setdefault(stem, {}).setdefault(metric, []).append(points[-1][1])
    names = headline(set().union(*(set(m) for m in finals.values())))
    rows = [[f"{stem} (n={seeds})"] + [mean_std_cell(metrics[name]) if name in metrics else ""
                                       for name in names]
            for stem, metrics in finals.items()]
    out.mkdir(parents=True, exist_ok=True)
    table = out / "bench.md"
    table.write_text(markdown_table(["config"] + names, rows))
    return table
