"""RMSpropMonitor's numbers against hand computations of one RMSProp step."""

import numpy as np
import pytest
import torch

from optimizers import RMSprop
from reproductions.optimizer_monitor import RMSpropMonitor

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
