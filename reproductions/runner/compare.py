"""``repro compare``: plots and a table of several runs' metrics, offline.

    repro compare RUN [RUN ...] [--out DIR] [--metrics val/nll_nats train/nll_nats]

RUN is a W&B run directory (runs/wandb/offline-run-... or run-...), a Lightning CSV log
(metrics.csv or its folder), or a folder of runs (``runs/wandb``: every run inside). Writes one
PNG per metric, all runs on one axis, and ``final_metrics.md``, a markdown table of each run's last
values. The x-axis is the one the runs' reproduction declares (``Dashboard.x``: the WGAN's
generator iterations) where every run logged it beside the metric, else trainer/global_step. A
run is labelled by its name, else by its reproduction and config (or dataset) and its id. Media
(an image's width, height, count) are not metrics and are left out; a metric that no run logged
is named on stderr and gets no plot.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..experiment import STEP
from .dashboard import dashboard_of
from .wandb_records import WandbRun, read_run

STAGES = ("train/", "val/", "test/")


class Series(dict):
    """metric -> [(global step, value)] of one run. ``label`` names the run; ``axis`` is the x-axis
    its reproduction declares; ``along[metric]`` holds that axis's values at the metric's points,
    where the run logged the axis beside every one of them."""

    def __init__(self, label: str = "", axis: str = STEP) -> None:
        super().__init__()
        self.label, self.axis = label, axis
        self.along: dict[str, list[float]] = {}

    def points(self, metric: str, axis: str) -> tuple[list[float], list[float]]:
        """(x, value) of ``metric`` against ``axis`` (STEP, or ``self.axis`` where along has it)."""
        values = [value for _, value in self[metric]]
        return (self.along[metric] if axis != STEP else [step for step, _ in self[metric]]), values


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def media_keys(row: dict[str, Any]) -> set[str]:
    """The keys of W&B media in a history row: an image logged as ``K`` arrives as ``K/_type``,
    ``K/width``, ``K/height``, ``K/count``, ... metadata, not metrics."""
    prefixes = tuple(key.removesuffix("_type") for key in row if key.endswith("/_type"))
    return {key for key in row if key.startswith(prefixes)} if prefixes else set()


def run_label(run: WandbRun) -> str:
    """The run's name, else reproduction/config (or dataset) and its id."""
    if run.name:
        return run.name
    configs = ((run.config.get("config") or {}).get("config") or [])
    what = Path(str(configs[-1])).stem if configs else run.job_type
    return f"{run.group or 'run'}/{what} {run.id[:8]}".strip()


def resumed(parts: list[WandbRun]) -> WandbRun:
    """One W&B run from the folders its processes wrote (a resume writes a new folder under the
    same id), in the order they ran: each part's history up to the step the next one resumed
    from (steps logged after the checkpoint and before a kill are trained again)."""
    merged, history = parts[-1], parts[-1].history
    for earlier in reversed(parts[:-1]):
        first = min((row[STEP] for row in history if STEP in row), default=math.inf)
        history = [row for row in earlier.history if row.get(STEP, -math.inf) < first] + history
    merged.history = history
    return merged


def wandb_runs(folders: list[Path]) -> list[WandbRun]:
    """The W&B runs in ``folders``, the folders of a resumed run joined into one."""
    parts: dict[str, list[WandbRun]] = {}
    for folder in sorted(folders, key=lambda f: f.name):  # W&B's folder names start with the time
        run = read_run(folder)
        parts.setdefault(run.id or str(folder), []).append(run)
    return [resumed(runs) for runs in parts.values()]


def read_series(path: Path | WandbRun) -> Series:
    """A run's scalar metrics from a W&B run (or its directory) or a CSV log."""
    run = path if isinstance(path, WandbRun) else None
    path = Path(path.directory if run else path)
    csv_file = path if path.suffix == ".csv" else path / "metrics.csv"
    if run is None and csv_file.is_file():
        with csv_file.open() as file:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(file)]
        series = Series(path.parent.name if path.suffix == ".csv" else path.name)
        step_key = "step"
    else:
        run = run or read_run(path)
        series = Series(run_label(run), dashboard_of(run.group).x if run.group else STEP)
        rows, step_key = run.history, STEP
    along: dict[str, list[Any]] = {}
    for index, row in enumerate(rows):
        step, x, media = row.get(step_key, index), row.get(series.axis), media_keys(row)
        for key, value in row.items():
            if key.startswith(STAGES) and key not in media and key != series.axis \
                    and is_number(value):
                series.setdefault(key, []).append((step, value))
                along.setdefault(key, []).append(x)
    if series.axis != STEP:
        series.along = {key: xs for key, xs in along.items() if all(map(is_number, xs))}
    return series


def run_folders(paths: list[Path]) -> list[Path]:
    """Each path that is a run (a W&B run directory, a CSV log or its folder), or the runs inside a
    folder of runs (``runs/wandb``, ``runs/``), in name order (W&B's names start with the time)."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.suffix == ".csv" or (path / "metrics.csv").is_file() or \
                list(path.glob("run-*.wandb")):
            found[path] = None
            continue
        inside = sorted({p.parent.resolve(): None for pattern in ("run-*.wandb", "metrics.csv")
                         for p in path.rglob(pattern)})
        if not inside:
            raise FileNotFoundError(f"repro compare: {path} is not a run and holds none (no W&B "
                                    "run-*.wandb, no metrics.csv)")
        found.update(dict.fromkeys(inside))
    return list(found)


def headline(metrics: set[str]) -> list[str]:
    """The metrics worth a plot by default: train/val/test ones that are not optimizer internals."""
    return sorted(m for m in metrics if "/optimizer" not in m)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def figure(metric: str, runs: list[Series]) -> Figure:
    """``metric`` of each run on one plot, against the runs' own x-axis when they share one and
    logged it beside every point of the metric, else against the global step."""
    axes = {run.axis for run in runs}
    axis = axes.pop() if len(axes) == 1 and all(metric in run.along for run in runs) else STEP
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for run in runs:
        xs, values = run.points(metric, axis)
        ax.plot(xs, values, label=run.label, marker="." if len(xs) < 30 else None)
    ax.set_xlabel(axis)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def compare(runs: list[Path], out: Path, metrics: list[str] | None = None) -> Path:
    """Plots and a final-metrics table of ``runs`` into ``out``; returns the table's path."""
    folders = run_folders(runs)
    wandb = [folder for folder in folders if list(folder.glob("run-*.wandb"))]
    series = [read_series(folder) for folder in folders if folder not in wandb]
    logged = wandb_runs(wandb)
    labels = [run_label(run) for run in logged]
    for run, label in zip(logged, labels):
        series.append(read_series(run))
        if labels.count(label) > 1:  # runs of one config share its name: tell them apart
            series[-1].label = f"{label} ({run.id})"
    names = metrics or headline(set().union(*series))
    missing = [metric for metric in names if not any(metric in run for run in series)]
    if missing:
        print(f"repro compare: no run logged {', '.join(missing)}; no plot for "
              f"{'it' if len(missing) == 1 else 'them'}", file=sys.stderr)
    names = [metric for metric in names if metric not in missing]
    out.mkdir(parents=True, exist_ok=True)
    for metric in names:
        figure(metric, [run for run in series if metric in run]).savefig(
            out / (metric.replace("/", "_") + ".png"), dpi=100)
    rows = [[run.label] + [f"{run[m][-1][1]:.4g}" if m in run else "" for m in names]
            for run in series]
    table = out / "final_metrics.md"
    table.write_text(markdown_table(["run"] + names, rows))
    return table
