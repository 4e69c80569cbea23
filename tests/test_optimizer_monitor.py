"""RMSpropMonitor's numbers against hand computations of one RMSProp step, and its W&B histograms
against torch.histogram of the optimizer's state."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_HANDWRITING
from optimizers import RMSprop, presets
from reproductions.runner.cli import main
from reproductions.runner.optimizer_monitor import RMSpropMonitor
from reproductions.runner.wandb_records import read_finished_run

REPO = Path(__file__).resolve().parents[1]

G = np.array([1.0, 1e-3, 2.0, 0.0])  # gradients: one tiny, one zero


def one_step(make_optimizer, **monitor_args):
    p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 1.0]))
    optimizer = make_optimizer([p])
    monitor = RMSpropMonitor(every_n_steps=1, histograms=False, **monitor_args)
    monitor.attach(optimizer, 0)
    p.grad = torch.tensor(G, dtype=torch.float32)
    optimizer.step()
    return monitor.last_logged


@pytest.mark.parametrize("make", [
    lambda ps: RMSprop(ps, lr=0.1, alpha=0.5, eps=1e-2),
    lambda ps: torch.optim.RMSprop(ps, lr=0.1, alpha=0.5, eps=1e-2),
])
def test_eps_outside_the_root(make):
    logged = one_step(make)
    v = 0.5 * G**2  # v_1 = (1 - alpha) g^2
    d = np.sqrt(v) + 1e-2
    step = 0.1 / d
    key = "train/optimizer0/group0/"
    for q in (10, 50, 90):
        assert logged[key + f"step_size_p{q}"] == pytest.approx(np.quantile(step, q / 100), rel=1e-5)
    assert logged[key + "eps_dominated"] == pytest.approx(2 / 4)  # sqrt(v) = 7e-4 and 0 < 1e-2
    assert logged[key + "square_avg_min"] == 0 and logged[key + "square_avg_max"] == pytest.approx(2.0)
    before = np.array([0.5, -1.0, 2.0, 1.0])
    update = 0.1 * G / d
    assert logged[key + "update_to_weight"] == pytest.approx(
        np.linalg.norm(update) / np.linalg.norm(before), rel=1e-5)
    assert "variance_min" not in "".join(logged)


def test_eps_inside_the_root_and_centered():
    logged = one_step(lambda ps: RMSprop(ps, lr=0.1, alpha=0.5, eps=1e-2, eps_in_sqrt=True,
                                         centered=True))
    v, m = 0.5 * G**2, 0.5 * G
    s = v - m**2  # = 0.25 g^2 after one step; exactly 0 for the zero gradient
    key = "train/optimizer0/group0/"
    assert logged[key + "step_size_p50"] == pytest.approx(np.quantile(0.1 / np.sqrt(s + 1e-2), .5),
                                                          rel=1e-5)
    # eps inside the root dominates where s < eps: the tiny and the zero gradient
    assert logged[key + "eps_dominated"] == pytest.approx(2 / 4)
    assert logged[key + "variance_min"] == pytest.approx(0.0, abs=1e-12)
    assert logged[key + "variance_nonpositive"] == pytest.approx(1 / 4)


def test_large_tensors_are_sampled_and_per_layer_stats_use_the_sample():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    optimizer = RMSprop([p], lr=0.01)
    monitor = RMSpropMonitor(every_n_steps=2, max_samples=100, histograms=False)
    monitor.attach(optimizer, 0)
    logs = []
    for step in range(4):
        p.grad = torch.randn(1000)
        optimizer.step()
        logs.append(dict(monitor.last_logged))
        monitor.last_logged = {}
        if step == 2:
            v = optimizer.state[p]["square_avg"].clone()
    assert logs[1] == {} and logs[3] == {}  # every 2 steps: after steps 1 and 3 only
    index = monitor._samples[p]
    assert index.numel() == 100 and index.unique().numel() == 100
    assert logs[2]["train/optimizer0/layer/group0.param0/square_avg_max"] == pytest.approx(
        v[index].max().item())
    assert v[index].max() < v.max()  # the sample, not the whole tensor


def test_step_size_histograms_reach_wandb_and_match_torch_histogram(tmp_path, monkeypatch):
    """A tiny handwriting fit (Graves preset) logging to an offline W&B run: the histograms read
    back from the run file equal torch.histogram of lr / sqrt(n - g^2 + k) (Graves 2013 eq. 40)
    computed here from the optimizer's final state, the state of the last monitored step."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    settings = presets.PRESETS["graves"].settings
    assert settings["centered"] and settings["eps_in_sqrt"] and not settings.get("bias_correction")
    cli = main(args=["fit", "-c", str(REPO / "configs/handwriting/prediction_smoke.yaml"),
                     "--data.init_args.root", str(tmp_path / "hershey"), *TINY_HANDWRITING,
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                     "--optimizer_monitor.every_n_steps", "2",  # after steps 1 and 3
                     "--optimizer_monitor.max_samples", "100000", "--optimizer_monitor.seed", "0"])
    cli.trainer.logger.experiment.finish()
    run_dir = next((tmp_path / "runs/wandb").glob("offline-run-*"))
    key = "train/optimizer0/layer/output.weight/step_size_hist"
    group_key = "train/optimizer0/group0/step_size_hist"
    rows = wait_for_rows(run_dir, f"{key}/values", 2)
    assert len(rows) == 2  # optimizer steps 1 and 3
    # W&B stores a histogram as nested keys: <name>/_type, <name>/values (counts), <name>/bins
    logged, logged_group = ({part: rows[-1][f"{name}/{part}"] for part in ("_type", "values", "bins")}
                            for name in (key, group_key))
    assert logged["_type"] == logged_group["_type"] == "histogram"

    optimizer = cli.trainer.optimizers[0]
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and group["eps"] == settings["eps"]

    def step_size(p: torch.nn.Parameter) -> torch.Tensor:
        state = optimizer.state[p]
        n, g = state["square_avg"].double(), state["grad_avg"].double()
        return (group["lr"] / torch.sqrt(n - g**2 + group["eps"])).reshape(-1)

    def check(logged: dict, values: torch.Tensor) -> None:
        counts, edges = torch.histogram(values, bins=64)
        assert torch.tensor(logged["bins"], dtype=torch.float64) == pytest.approx(edges, rel=1e-5)
        logged_counts = torch.tensor(logged["values"])
        assert logged_counts.sum() == values.numel()
        # fp32 on the monitor's side: an element on a bin edge may fall on either side of it
        assert (logged_counts - counts.long()).abs().sum() <= 2
        assert edges[0] < edges[-1]  # a real spread of step sizes, not one value

    check(logged, step_size(cli.model.output.weight))
    check(logged_group, torch.cat([step_size(p) for p in group["params"]]))


def wait_for_rows(run_dir, key: str, count: int) -> list[dict]:
    """History rows holding ``key``, once the run has finished."""
    rows = [row for row in read_finished_run(run_dir).history if key in row]
    assert len(rows) >= count, (key, len(rows))
    return rows


def test_every_n_steps_0_turns_the_monitor_off():
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = RMSprop([p], lr=0.1)
    monitor = RMSpropMonitor(every_n_steps=0, histograms=False)
    monitor.attach(optimizer, 0)
    for _ in range(2):
        p.grad = torch.ones(3)
        optimizer.step()
    assert monitor.last_logged == {}
