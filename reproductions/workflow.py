"""``repro compare``, ``repro bench`` and ``repro dashboard``: comparing runs, with or without W&B.

    repro compare RUN [RUN ...] [--out DIR] [--metrics val/nll_nats train/nll_nats]
        RUN is a W&B run directory (runs/wandb/offline-run-... or run-...) or a Lightning CSV log
        (metrics.csv or its folder). Writes one PNG per metric (all runs on one axis, x =
        trainer/global_step) and ``final_metrics.md``, a markdown table of each run's last values.
    repro bench -c CFG [-c CFG2 ...] --seeds 3 [--out DIR] [-- extra repro fit arguments]
        One ``repro fit`` process per (config, seed), seeds 0..N-1, each logging into its own
        folder under DIR; then a markdown table of mean +- std (over seeds) of each final metric.
    repro dashboard [--entity E] [--project P]
        A W&B workspace per reproduction (group), with the headline metrics' panels, through
        ``wandb-workspaces``; offline or without the package it says so and exits cleanly.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .wandb_records import read_run  # noqa: E402

STEP = "trainer/global_step"
STAGES = ("train/", "val/", "test/")


class Series(dict):
    """metric -> list of (step, value) of one run; ``label`` names the run."""

    label: str = ""


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_series(path: Path) -> Series:
    """A run's scalar metrics from a W&B run directory or a CSV log."""
    path = Path(path)
    csv_file = path if path.suffix == ".csv" else path / "metrics.csv"
    series = Series()
    if csv_file.is_file():
        with csv_file.open() as file:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(file)]
        series.label = path.parent.name if path.suffix == ".csv" else path.name
        step_key = "step"
    else:
        run = read_run(path)
        rows, series.label, step_key = run.history, run.label, STEP
    for index, row in enumerate(rows):
        step = row.get(step_key, index)
        for key, value in row.items():
            if key.startswith(STAGES) and is_number(value):
                series.setdefault(key, []).append((step, value))
    return series


def headline(metrics: set[str]) -> list[str]:
    """The metrics worth a plot by default: train/val/test ones that are not optimizer internals."""
    return sorted(m for m in metrics if "/optimizer" not in m)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def compare(runs: list[Path], out: Path, metrics: list[str] | None = None) -> Path:
    """Plots and a final-metrics table of ``runs`` into ``out``; returns the table's path."""
    series = [read_series(run) for run in runs]
    names = metrics or headline(set().union(*series))
    out.mkdir(parents=True, exist_ok=True)
    for metric in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in series:
            if metric in run:
                steps, values = zip(*run[metric])
                ax.plot(steps, values, label=run.label, marker="." if len(steps) < 30 else None)
        ax.set_xlabel(STEP)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / (metric.replace("/", "_") + ".png"), dpi=100)
        plt.close(fig)
    rows = [[run.label] + [f"{run[m][-1][1]:.4g}" if m in run else "" for m in names]
            for run in series]
    table = out / "final_metrics.md"
    table.write_text(markdown_table(["run"] + names, rows))
    return table


def bench(configs: list[str], seeds: int, out: Path, extra: list[str]) -> Path:
    """Run every config under seeds 0..seeds-1, one process each; tabulate mean +- std."""
    finals: dict[str, dict[str, list[float]]] = {}
    for config in configs:
        stem = Path(config).stem
        for seed in range(seeds):
            save_dir = out / f"{stem}-seed{seed}"
            command = [sys.executable, "-m", "reproductions", "fit", "-c", config,
                       "--seed_everything", str(seed),
                       "--trainer.logger.init_args.name", f"{stem}-seed{seed}",
                       "--trainer.logger.init_args.save_dir", str(save_dir), *extra]
            print("repro bench:", " ".join(command[2:]), flush=True)
            subprocess.run(command, check=True)
            run_dir = next(save_dir.glob("wandb/*run-*"))
            for metric, points in read_series(run_dir).items():
                finals.setdefault(stem, {}).setdefault(metric, []).append(points[-1][1])
    names = headline(set().union(*(set(m) for m in finals.values())))
    rows = []
    for stem, metrics in finals.items():
        cells = []
        for name in names:
            values = metrics.get(name, [])
            if not values:
                cells.append("")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4g} ± {spread:.2g}")
        rows.append([f"{stem} (n={seeds})"] + cells)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "bench.md"
    table.write_text(markdown_table(["config"] + names, rows))
    return table


def dashboard(entity: str | None, project: str) -> int:
    """Create a W&B workspace per reproduction when online and wandb-workspaces is installed."""
    from .cli import wandb_offline

    if wandb_offline():
        print("repro dashboard: W&B is offline (not logged in, or WANDB_MODE=offline); run "
              "`wandb login`, sync offline runs with `wandb sync runs/wandb/offline-run-*`, and "
              "retry. Offline, `repro compare RUN_DIR ...` draws the comparison locally.")
        return 0
    try:
        import wandb
        import wandb_workspaces.workspaces as ws
    except ImportError:
        print("repro dashboard: needs the wandb-workspaces package (`pip install "
              "wandb-workspaces`). Offline, `repro compare RUN_DIR ...` draws the comparison.")
        return 0
    entity = entity or wandb.Api().default_entity
    groups = sorted({run.group for run in wandb.Api().runs(f"{entity}/{project}") if run.group})
    for group in groups:
        panels = [ws.wr.LinePlot(x=STEP, y=[metric]) for metric in
                  ("train/loss", "val/loss", "val/acc", "train/nll_nats", "val/nll_nats",
                   "train/bpc", "val/bpc", "train/wasserstein_estimate")]
        workspace = ws.Workspace(
            name=f"{group}: RMSProp reproductions", entity=entity, project=project,
            sections=[ws.Section(name=group, panels=panels, is_open=True)],
            runset_settings=ws.RunsetSettings(filters=[ws.expr.Metric("Group") == group],
                                              groupby=[ws.expr.Config("tags")]))
        workspace.save()
        print(f"repro dashboard: {group}: {workspace.url}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="repro")
    commands = parser.add_subparsers(dest="command", required=True)
    p_compare = commands.add_parser("compare", help="plots and a table comparing runs, offline")
    p_compare.add_argument("runs", nargs="+", type=Path)
    p_compare.add_argument("--out", type=Path, default=Path("comparison"))
    p_compare.add_argument("--metrics", nargs="*")
    p_bench = commands.add_parser("bench", help="a config over several seeds: mean +- std")
    p_bench.add_argument("-c", "--config", action="append", required=True)
    p_bench.add_argument("--seeds", type=int, default=3)
    p_bench.add_argument("--out", type=Path, default=Path("runs/bench"))
    p_dash = commands.add_parser("dashboard", help="W&B workspaces per reproduction (online)")
    p_dash.add_argument("--entity")
    p_dash.add_argument("--project", default="rmsprop-repro")
    own, extra = (argv, []) if "--" not in argv else (argv[:argv.index("--")],
                                                      argv[argv.index("--") + 1:])
    args = parser.parse_args(own)
    if args.command == "compare":
        missing = [str(r) for r in args.runs if not r.exists()]
        if missing:
            parser.error(f"compare: no such run directory or CSV: {', '.join(missing)}")
        table = compare(args.runs, args.out, args.metrics)
    elif args.command == "bench":
        if args.seeds < 1:
            parser.error(f"bench: --seeds must be >= 1, got {args.seeds}")
        table = bench(args.config, args.seeds, args.out, extra)
    else:
        return dashboard(args.entity, args.project)
    print(table.read_text())
    print(f"written to {table.parent}")
    return 0
