"""``repro compare``: plots and a table of several runs' metrics, offline.

    repro compare RUN [RUN ...] [--out DIR] [--metrics val/nll_nats train/nll_nats]

RUN is a W&B run directory (runs/wandb/offline-run-... or run-...) or a Lightning CSV log
(metrics.csv or its folder). Writes one PNG per metric (all runs on one axis, x =
trainer/global_step) and ``final_metrics.md``, a markdown table of each run's last values.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..experiment import STEP
from .wandb_records import read_run

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
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for run in series:
            if metric in run:
                steps, values = zip(*run[metric])
                ax.plot(steps, values, label=run.label, marker="." if len(steps) < 30 else None)
        ax.set_xlabel(STEP)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / (metric.replace("/", "_") + ".png"), dpi=100)
    rows = [[run.label] + [f"{run[m][-1][1]:.4g}" if m in run else "" for m in names]
            for run in series]
    table = out / "final_metrics.md"
    table.write_text(markdown_table(["run"] + names, rows))
    return table
