"""``repro compare``, ``repro bench`` and ``repro dashboard``: comparing runs, with or without W&B.

    repro compare RUN [RUN ...] [--out DIR] [--metrics val/nll_nats train/nll_nats]
        RUN is a W&B run directory (runs/wandb/offline-run-... or run-...) or a Lightning CSV log
        (metrics.csv or its folder). Writes one PNG per metric (all runs on one axis, x =
        trainer/global_step) and ``final_metrics.md``, a markdown table of each run's last values.
    repro bench -c CFG [-c CFG2 ...] --seeds 3 [--out DIR] [-- extra repro fit arguments]
        One ``repro fit`` process per (config, seed), seeds 0..N-1, each logging into its own
        folder DIR/<config folder>-<config stem>-seed<k> (the run's name too); then
        DIR/bench.md, a markdown table of mean ± sample std (over seeds) of each metric's final
        value. Configs are checked (they exist, they keep a logger) before the first run starts.
    repro dashboard [--entity E] [--project P]
        Per reproduction (W&B group) in the project, a workspace and a report (wandb-workspaces)
        with the panels of the paper's figures (``PAPER_FIGURES``) and RMSpropMonitor's panels,
        runs grouped by tags (optimizer preset and variant flags). ``build_workspace`` and
        ``build_report`` build them without a network; only saving needs one. Offline or without
        the package it says what to do instead and exits with 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import yaml

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
    package_root = str(Path(__file__).resolve().parents[1])
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


@dataclass(frozen=True)
class Panel:
    """One line plot: ``y`` metrics against ``x``, names exactly as the reproduction logs them."""

    title: str
    y: tuple[str, ...]
    x: str = STEP
    log_y: bool = False


GENERATOR_ITERATIONS = "train/generator_iterations"
# What each paper's figures plot, per W&B group (= the reproduction's module, tracking.run_identity).
PAPER_FIGURES: dict[str, tuple[str, tuple[Panel, ...]]] = {
    "wgan": (("Arjovsky et al. 2017 (WGAN): Fig. 3, the critic's W estimate falls as samples "
              "improve; Sec. 4.2, the critic optimizer's step against its gradient"), (
        Panel("W estimate vs generator iterations (Fig. 3)", ("train/wasserstein_estimate",),
              GENERATOR_ITERATIONS),
        Panel("Frechet distance vs generator iterations", ("train/frechet_distance",),
              GENERATOR_ITERATIONS),
        Panel("critic and generator losses", ("train/critic_loss", "train/generator_loss"),
              GENERATOR_ITERATIONS),
        Panel("cos(critic step, gradient) (Sec. 4.2)", ("train/critic_step_grad_cosine",),
              GENERATOR_ITERATIONS),
    )),
    "char_rnn": ("Graves 2013 Sec. 3: bits per character, training and validation", (
        Panel("bits per character", ("train/bpc", "val/bpc")),
    )),
    "handwriting": ("Graves 2013 Sec. 4-5: handwriting negative log-likelihood in nats", (
        Panel("negative log-likelihood (nats)", ("train/nll_nats", "val/nll_nats")),
    )),
    "bn_lstm": ("Cooijmans et al. 2016 Fig. 1/2: LSTM vs BN-LSTM on sequential MNIST", (
        Panel("validation accuracy (Fig. 1/2)", ("val/acc",)),
        Panel("loss", ("train/loss", "val/loss")),
    )),
}
# The model arguments that build each optimizer, in configure_optimizers' order: RMSpropMonitor
# numbers optimizers by that order, tracking.run_identity prefixes tags with these names.
OPTIMIZER_ARGUMENTS: dict[str, tuple[str, ...]] = {"wgan": ("critic_optimizer",
                                                            "generator_optimizer")}


def optimizer_panels(group: str, tags: set[str]) -> list[Panel]:
    """RMSpropMonitor's panels for each optimizer of ``group`` (parameter group 0); the variance
    panels where a run's tags say that optimizer is centered."""
    arguments = OPTIMIZER_ARGUMENTS.get(group, ("optimizer",))
    panels = []
    for index, argument in enumerate(arguments):
        prefix = f"train/optimizer{index}/group0/"
        name = f"{argument} (optimizer{index})"
        panels += [
            Panel(f"{name}: step size lr/d, p10/p50/p90",
                  tuple(prefix + f"step_size_p{q}" for q in (10, 50, 90)), log_y=True),
            Panel(f"{name}: update-to-weight ratio", (prefix + "update_to_weight",), log_y=True),
            Panel(f"{name}: fraction where eps dominates d", (prefix + "eps_dominated",)),
            Panel(f"{name}: square_avg range", (prefix + "square_avg_min",
                                                 prefix + "square_avg_max"), log_y=True),
        ]
        centered = "centered" if len(arguments) == 1 else f"{argument}:centered"
        if centered in tags:
            panels += [Panel(f"{name}: min(v - m^2), centered", (prefix + "variance_min",)),
                       Panel(f"{name}: fraction with v - m^2 <= 0",
                             (prefix + "variance_nonpositive",))]
    return panels


def line_plots(panels: list[Panel]) -> list[Any]:
    import wandb_workspaces.reports.v2 as wr

    return [wr.LinePlot(title=p.title, x=p.x, y=list(p.y), log_y=p.log_y or None)
            for p in panels]


def build_workspace(group: str, tags: set[str], entity: str, project: str) -> Any:
    """The W&B workspace of one reproduction: its runs only (filter on the W&B group), grouped by
    tags (optimizer preset and variant flags), the paper's figures and the optimizer's state.
    Building it needs no network; ``.save()`` does."""
    import wandb_workspaces.workspaces as ws

    _, figures = PAPER_FIGURES.get(group, (group, ()))
    return ws.Workspace(
        name=f"{group}: RMSProp reproduction", entity=entity, project=project,
        sections=[ws.Section(name=f"{group}: paper figures", panels=line_plots(list(figures)),
                             is_open=True),
                  ws.Section(name=f"{group}: RMSProp state (RMSpropMonitor)",
                             panels=line_plots(optimizer_panels(group, tags)), is_open=True)],
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == group],
                                          groupby=[ws.Tags()]))


def build_report(group: str, tags: set[str], entity: str, project: str) -> Any:
    """A W&B report of one reproduction: the same panels over the same runs, with the paper's
    caption. Building it needs no network; ``.save()`` does."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    caption, figures = PAPER_FIGURES.get(group, (group, ()))
    runset = wr.Runset(entity=entity, project=project, name=group,
                       filters=[expr.Metric("Group") == group], groupby=["tags"])
    return wr.Report(
        entity=entity, project=project, title=f"RMSProp reproductions: {group}",
        description=caption,
        blocks=[wr.H1(text=caption),
                wr.PanelGrid(runsets=[runset], panels=line_plots(list(figures))),
                wr.H2(text="RMSProp's state (RMSpropMonitor)"),
                wr.PanelGrid(runsets=[runset], panels=line_plots(optimizer_panels(group, tags)))])


def dashboard(entity: str | None, project: str) -> int:
    """Save a W&B workspace and a report per reproduction (W&B group) found in ``project``;
    offline or without wandb-workspaces it says what to do instead and returns 0."""
    from .cli import wandb_offline

    if wandb_offline():
        print("repro dashboard: W&B is offline (not logged in, or WANDB_MODE=offline); run "
              "`wandb login`, sync offline runs with `wandb sync runs/wandb/offline-run-*`, and "
              "retry. Offline, `repro compare RUN_DIR ...` draws the comparison locally.")
        return 0
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        print("repro dashboard: needs the wandb-workspaces package (`pip install "
              "rmsprop-repro[dashboard]` or `pip install wandb-workspaces`). Offline, "
              "`repro compare RUN_DIR ...` draws the comparison.")
        return 0
    import wandb

    api = wandb.Api()
    entity = entity or api.default_entity
    tags_by_group: dict[str, set[str]] = {}
    for run in api.runs(f"{entity}/{project}"):
        if run.group:
            tags_by_group.setdefault(run.group, set()).update(run.tags)
    if not tags_by_group:
        print(f"repro dashboard: no grouped runs in {entity}/{project}; run `repro fit` first")
    for group, tags in sorted(tags_by_group.items()):
        workspace = build_workspace(group, tags, entity, project).save()
        report = build_report(group, tags, entity, project).save()
        print(f"repro dashboard: {group}: workspace {workspace.url}, report {report.url}")
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
        try:
            check_bench_configs(args.config)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error).removeprefix("repro "))
        try:
            table = bench(args.config, args.seeds, args.out, extra)
        except (RuntimeError, FileNotFoundError) as error:
            sys.exit(str(error))  # exit status 1, the message on stderr
    else:
        return dashboard(args.entity, args.project)
    print(table.read_text())
    print(f"written to {table.parent}")
    return 0
