"""The W&B sweep files in ``configs/sweeps/``: each is a complete sweep, every run the agent would
launch parses, each swept value reaches the optimizer it names, and the metric the sweep ranks
by is one its reproduction logs.

The agent's argv is built by W&B's own code (``create_sweep_command_args``, the function the
agent calls) and expanded as the agent expands ``command``, so the test sees the runs' real
command lines.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from reproductions.runner.cli import main
from reproductions.runner.tracking import import_class

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
PROGRAM = ["/usr/bin/env", "repro", "fit"]  # ${env} expands to /usr/bin/env off Windows


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def runs(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter sets the sweep launches: the whole grid, or each distribution's ends."""
    choices = {}
    for name, spec in sweep["parameters"].items():
        if "values" in spec:
            choices[name] = spec["values"]
        elif "value" in spec:
            choices[name] = [spec["value"]]
        else:  # a continuous distribution: its min and max
            choices[name] = [spec["min"], spec["max"]]
    return [dict(zip(choices, values)) for values in itertools.product(*choices.values())]


def agent_argv(sweep: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """The command line the W&B agent runs for one parameter set (wandb_agent.py's expansion)."""
    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in parameters.items()}})
    variables["env"] = ["/usr/bin/env"]
    argv = []
    for part in map(str, sweep["command"]):
        if part.startswith("${") and part.endswith("}"):
            argv += variables[part[2:-1]]
        else:
            argv.append(part)
    return argv


def config_value(config: Any, key: str) -> Any:
    """The parsed config's value at a dotted sweep key, stepping into ``init_args`` where the
    key leaves it out (as LightningCLI's command line allows); a class is its class_path."""
    node = config
    for part in key.split("."):
        if "class_path" in node and part not in ("class_path", "init_args"):
            node = node["init_args"]
        node = node[part]
    return node["class_path"] if hasattr(node, "get") and "class_path" in node else node


def built_optimizer(model: torch.nn.Module, key: str) -> torch.optim.Optimizer | None:
    """The optimizer the model would build from the swept factory (``model.<name>...``)."""
    parts = key.split(".")
    if parts[0] != "model" or not parts[1].endswith("optimizer"):
        return None
    return getattr(model, parts[1])([torch.nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_a_complete_wandb_sweep(path):
    sweep = load(path)
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("minimize", "maximize")
    assert sweep["parameters"]
    command = sweep["command"]
    assert command[:3] == ["${env}", "repro", "fit"] and command[-1] == "${args}", command
    assert command[3] == "-c" and (ROOT / command[4]).is_file(), command
    # the file says what it ablates and how to launch it
    assert f"wandb sweep --project rmsprop-repro configs/sweeps/{path.name}" in path.read_text()


def test_lr_sweep_spans_four_orders_of_magnitude():
    (lrs,) = [spec["values"] for spec in load(ROOT / "configs/sweeps/lr.yaml")["parameters"].values()]
    assert math.log10(max(lrs) / min(lrs)) == pytest.approx(4)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_run_of_the_sweep_parses_and_carries_its_values(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the agent runs from the repository root
    sweep = load(path)
    for parameters in runs(sweep):
        argv = agent_argv(sweep, parameters)
        assert argv[:3] == PROGRAM and all(a.startswith("--") and "=" in a
                                           for a in argv[5:]), argv
        cli = main(args=argv[3:], run=False)
        config = cli.config.as_dict()
        for key, value in parameters.items():
            assert config_value(config, key) == value, (key, argv)
            optimizer = built_optimizer(cli.model, key)
            if optimizer is None:
                continue
            if key.endswith("init_args." + key.rsplit(".", 1)[-1]):
                assert optimizer.defaults[key.rsplit(".", 1)[-1]] == value, (key, argv)
            else:  # a class switch
                assert type(optimizer) is import_class(value), (key, argv)


# Tiny overrides per reproduction: a few steps that reach the sweep's metric.
TINY = {
    "configs/char_rnn/smoke.yaml": [
        "--model.hidden_size=8", "--data.max_bytes=20000", "--data.batch_size=4",
        "--data.seq_len=10", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1"],
    "configs/wgan/smoke.yaml": [
        "--data.image_size=16", "--data.batch_size=8", "--model.image_size=16", "--model.ngf=4",
        "--model.ndf=4", "--model.n_critic=1", "--model.burst_below=0",
        "--model.max_generator_iterations=2", "--model.sample_every=0",
        "--model.frechet_every=2", "--model.frechet_samples=8"],
}


@pytest.mark.parametrize("config", sorted(TINY))
def test_sweep_metric_is_logged_by_its_reproduction(config, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    metrics = {load(p)["metric"]["name"] for p in SWEEPS if load(p)["command"][4] == config}
    assert metrics
    main(args=["fit", "-c", config, *TINY[config],
               "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
               f"--trainer.logger.init_args.save_dir={tmp_path}",
               f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
               "--checkpoint_every_n_steps=0"])
    (metrics_csv,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    for metric in metrics:
        logged = [float(row[metric]) for row in rows if row.get(metric)]
        assert logged and all(math.isfinite(v) for v in logged), (metric, rows[:2])
