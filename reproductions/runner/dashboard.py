"""``repro dashboard``: a W&B workspace and a report per reproduction, with the paper's figures.

    repro dashboard [--entity E] [--project P]

Per reproduction (W&B group) in the project, a workspace and a report (wandb-workspaces) with the
panels of the paper's figures (each paper module's ``DASHBOARD``, ``reproductions.experiment``)
and RMSpropMonitor's panels, runs grouped by tags (optimizer preset and variant flags).
``build_workspace`` and ``build_report`` build them without a network; only saving needs one.
Offline or without the package it says what to do instead and exits with 0.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

import reproductions
from ..experiment import Dashboard, Panel
from .tracking import wandb_offline


@functools.cache
def paper_dashboards() -> dict[str, Dashboard]:
    """Every paper module's ``DASHBOARD``, by module name (= the W&B group, see
    ``tracking.run_identity``)."""
    found = {}
    for module in pkgutil.iter_modules(reproductions.__path__):
        if not module.ispkg and not module.name.startswith("_"):
            dashboard = getattr(importlib.import_module(f"reproductions.{module.name}"),
                                "DASHBOARD", None)
            if isinstance(dashboard, Dashboard):
                found[module.name] = dashboard
    return found


def dashboard_of(group: str) -> Dashboard:
    """The reproduction's dashboard; a group no paper module declares gets only the optimizer's
    panels."""
    return paper_dashboards().get(group, Dashboard(caption=group, panels=()))


def optimizer_panels(dashboard: Dashboard, tags: set[str]) -> list[Panel]:
    """RMSpropMonitor's panels for each optimizer of a reproduction (parameter group 0); the
    variance panels where a run's tags say that optimizer is centered."""
    arguments = dashboard.optimizer_arguments
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

    paper = dashboard_of(group)
    return ws.Workspace(
        name=f"{group}: RMSProp reproduction", entity=entity, project=project,
        sections=[ws.Section(name=f"{group}: paper figures", panels=line_plots(list(paper.panels)),
                             is_open=True),
                  ws.Section(name=f"{group}: RMSProp state (RMSpropMonitor)",
                             panels=line_plots(optimizer_panels(paper, tags)), is_open=True)],
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == group],
                                          groupby=[ws.Tags()]))


def build_report(group: str, tags: set[str], entity: str, project: str) -> Any:
    """A W&B report of one reproduction: the same panels over the same runs, with the paper's
    caption. Building it needs no network; ``.save()`` does."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    paper = dashboard_of(group)
    runset = wr.Runset(entity=entity, project=project, name=group,
                       filters=[expr.Metric("Group") == group], groupby=["tags"])
    return wr.Report(
        entity=entity, project=project, title=f"RMSProp reproductions: {group}",
        description=paper.caption,
        blocks=[wr.H1(text=paper.caption),
                wr.PanelGrid(runsets=[runset], panels=line_plots(list(paper.panels))),
                wr.H2(text="RMSProp's state (RMSpropMonitor)"),
                wr.PanelGrid(runsets=[runset], panels=line_plots(optimizer_panels(paper, tags)))])


def dashboard(entity: str | None, project: str) -> int:
    """Save a W&B workspace and a report per reproduction (W&B group) found in ``project``;
    offline or without wandb-workspaces it says what to do instead and returns 0."""
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
