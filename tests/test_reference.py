"""The reference update against independent references: hand computations, the literal
equations of Graves 2013, and torch.optim.RMSprop."""

import math

import pytest
import torch

from optimizers import reference
from optimizers.reference import Hyperparameters



@pytest.fixture(autouse=True)
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def run_reference(hp: Hyperparameters, param, grads):
    state = reference.init(param, hp)
    for grad in grads:
        param, state = reference.update(param, grad, state, hp)
    return param, state


def gradient_sequence(shape, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(steps)]


def test_first_step_by_hand():
    # v = (1 - a) g^2 = 0.01 * 4 = 0.04, sqrt = 0.2; theta = 1 - 0.1 * 2 / (0.2 + 1e-8)
    hp = Hyperparameters(lr=0.1, alpha=0.99, eps=1e-8)
    param, state = run_reference(hp, torch.tensor([1.0]), [torch.tensor([2.0])])
    assert state.square_avg.item() == pytest.approx(0.04)
    assert param.item() == pytest.approx(1 - 0.1 * 2 / (0.2 + 1e-8))


def test_tf1_first_step_by_hand():
    # TF1: v0 = 1, eps inside the root, lr inside momentum.
    hp = Hyperparameters(lr=0.1, alpha=0.9, eps=1e-10, momentum=0.5, initial_square_avg=1.0,
                         eps_in_sqrt=True, lr_in_momentum=True)
    g = 3.0
    v = 0.9 * 1.0 + 0.1 * g * g
    b = 0.1 * g / math.sqrt(v + 1e-10)
    param, state = run_reference(hp, torch.tensor([0.0]), [torch.tensor([g])])
    assert state.square_avg.item() == pytest.approx(v)
    assert state.momentum_buffer.item() == pytest.approx(b)
    assert param.item() == pytest.approx(-b)


def test_bias_correction_first_step_is_sign_descent():
    # With bias correction v^_1 = g^2, so the first step is lr * g / (|g| + eps).
    hp = Hyperparameters(lr=0.1, alpha=0.9, eps=0.0, bias_correction=True)
    param, _ = run_reference(hp, torch.tensor([0.0, 0.0]), [torch.tensor([-5.0, 0.25])])
    torch.testing.assert_close(param, torch.tensor([0.1, -0.1]))


def test_decoupled_weight_decay_by_hand():
    hp = Hyperparameters(lr=0.1, alpha=0.5, eps=0.0, weight_decay=0.2, decoupled_weight_decay=True)
    # theta (1 - lr wd) - lr g / sqrt((1-a) g^2)
    param, _ = run_reference(hp, torch.tensor([2.0]), [torch.tensor([1.0])])
    assert param.item() == pytest.approx(2.0 * (1 - 0.02) - 0.1 / math.sqrt(0.5))


def test_nesterov_by_hand():
    hp = Hyperparameters(lr=0.1, alpha=0.5, eps=0.0, momentum=0.9, nesterov=True)
    u = 1.0 / math.sqrt(0.5)  # g / sqrt((1-a) g^2) with g = 1
    b = u  # mu * 0 + u
    param, _ = run_reference(hp, torch.tensor([0.0]), [torch.tensor([1.0])])
    assert param.item() == pytest.approx(-0.1 * (u + 0.9 * b))


def test_graves_equations_38_to_41():
    hp = Hyperparameters(lr=1e-4, alpha=0.95, eps=1e-4, momentum=0.9, centered=True,
                         eps_in_sqrt=True, lr_in_momentum=True)
    grads = gradient_sequence((17,), 50)
    w0 = torch.randn(17)
    param, _ = run_reference(hp, w0, grads)
    w, n, g_avg, delta = w0, torch.zeros(17), torch.zeros(17), torch.zeros(17)
    for grad in grads:
        w, n, g_avg, delta = reference.graves_update(w, grad, n, g_avg, delta)
    torch.testing.assert_close(param, w, rtol=1e-12, atol=1e-12)


TORCH_FORMS = [
    {},
    {"alpha": 0.9, "lr": 1e-3},  # Hinton lecture 6e
    {"centered": True},
    {"momentum": 0.9},
    {"centered": True, "momentum": 0.9, "weight_decay": 0.01},
    {"maximize": True, "momentum": 0.5},
]


@pytest.mark.parametrize("settings", TORCH_FORMS, ids=str)
def test_matches_torch_rmsprop(settings):
    grads = gradient_sequence((4, 5), 30, seed=1)
    w0 = torch.randn(4, 5)
    param, _ = run_reference(Hyperparameters(**settings), w0, grads)
    w = w0.clone().requires_grad_()
    torch_optimizer = torch.optim.RMSprop([w], **settings)
    for grad in grads:
        w.grad = grad.clone()
        torch_optimizer.step()
    torch.testing.assert_close(param, w.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("centered", [False, True])
def test_denominator_is_the_one_torch_divides_by(centered):
    # torch.optim.RMSprop (no momentum) moves theta by -lr g / d: d recovered from its step,
    # after five steps, against reference.denominator of torch's own state.
    param = torch.nn.Parameter(torch.linspace(-1, 1, 6))
    optimizer = torch.optim.RMSprop([param], lr=1e-2, alpha=0.9, eps=1e-3, centered=centered)
    for grad in gradient_sequence((6,), 5):
        before = param.detach().clone()
        param.grad = grad
        optimizer.step()
    state = optimizer.state[param]
    hp = Hyperparameters(lr=1e-2, alpha=0.9, eps=1e-3, centered=centered)
    d, s = reference.denominator(state["square_avg"], state.get("grad_avg"), 5, hp)
    torch.testing.assert_close(d, -1e-2 * grad / (param.detach() - before))
    expected_s = state["square_avg"] - state["grad_avg"] ** 2 if centered else state["square_avg"]
    torch.testing.assert_close(s, expected_s)


def test_denominator_with_eps_in_the_root_and_bias_correction_by_hand():
    # v = 0.36, m = 0.4 after step t = 2 of alpha 0.5: corrections 1 - 0.25 = 0.75
    hp = Hyperparameters(alpha=0.5, eps=0.01, centered=True, eps_in_sqrt=True,
                         bias_correction=True)
    d, s = reference.denominator(torch.tensor([0.36]), torch.tensor([0.4]), 2, hp)
    assert s.item() == pytest.approx(0.36 / 0.75 - (0.4 / 0.75) ** 2)
    assert d.item() == pytest.approx(math.sqrt(0.36 / 0.75 - (0.4 / 0.75) ** 2 + 0.01))
