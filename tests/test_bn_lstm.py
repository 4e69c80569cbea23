"""BN-LSTM (Cooijmans et al. 2016): the cell against the paper's equations, the per-step
statistics in training and evaluation, T_max reuse, the initialisation, the configs, a tiny fit.

The cell's three implementations, each against the same hand-written float64 equations:
``unroll`` (the reference, autograd over F.batch_norm), and the fused sequence with the C++
kernels (``cpu``) and with the Triton kernels (``triton``, in Triton's interpreter here)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import paper_facts
import pytest
import torch
from helpers import (CountOps, count_kernel_launches, counted_forward_and_backward,
                     cuda_kernels, per_time_step)

from optimizers import presets
from reproductions import bn_lstm, bn_lstm_cpu, bn_lstm_triton
from reproductions.bn_lstm import BNLSTM, SequentialClassifier
from reproductions.runner import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "bn_lstm"
EPS = 1e-5
FUSED = {"cpu": bn_lstm_cpu, "triton": bn_lstm_triton}
IMPLEMENTATIONS = ["unroll", *FUSED]


def run(cell: BNLSTM, x, state, implementation: str, monkeypatch) -> tuple[list, torch.Tensor]:
    """Every h_t and the last c of ``cell`` over x by one implementation."""
    if implementation == "unroll":
        return cell.unroll(x, state)
    monkeypatch.setattr(bn_lstm, "backend_for", lambda x: FUSED[implementation])
    outputs, (_, c) = cell(x, state)
    return list(outputs.unbind(1)), c


def randomized_bnlstm(input_size=3, hidden=5, t_max=4, seed=0, **kwargs) -> BNLSTM:
    """A BN-LSTM whose every parameter and population statistic is random (not its init)."""
    torch.manual_seed(seed)
    cell = BNLSTM(input_size, hidden, t_max, **kwargs).double()
    with torch.no_grad():
        for parameter in cell.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
        for bn in (cell.bn_ih, cell.bn_hh, cell.bn_c):
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return cell


def hand_bn(x, mean, var, gamma, beta=0.0):
    """BN(x; gamma, beta) = beta + gamma * (x - mean) / sqrt(var + eps), written out."""
    return beta + gamma * (x - mean) / torch.sqrt(var + EPS)


def hand_step(cell, x_t, h, c, stats=None):
    """Eq. (6)-(8) for one step, from the parameters; gate order (f, i, o, g).

    stats None: the batch's own mean and biased variance; else (m_x, v_x, m_h, v_h, m_c, v_c)."""
    wx, wh = x_t @ cell.weight_ih.T, h @ cell.weight_hh.T
    def moments(z):
        return z.mean(0), ((z - z.mean(0)) ** 2).mean(0)
    m_x, v_x = moments(wx) if stats is None else stats[0:2]
    m_h, v_h = moments(wh) if stats is None else stats[2:4]
    pre = hand_bn(wh, m_h, v_h, cell.bn_hh.weight) + hand_bn(wx, m_x, v_x, cell.bn_ih.weight) \
        + cell.bias
    H = h.shape[1]
    f, i, o, g = pre[:, :H], pre[:, H:2 * H], pre[:, 2 * H:3 * H], pre[:, 3 * H:]
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    m_c, v_c = moments(c_new) if stats is None else stats[4:6]
    h_new = torch.sigmoid(o) * torch.tanh(hand_bn(c_new, m_c, v_c, cell.bn_c.weight, cell.bn_c.bias))
    return h_new, c_new


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_one_training_step_matches_the_papers_equations_with_batch_statistics(implementation,
                                                                             monkeypatch):
    cell = randomized_bnlstm().train()
    x, h0, c0 = torch.randn(6, 1, 3).double(), torch.randn(6, 5).double(), torch.randn(6, 5).double()
    hs, c = run(cell, x, (h0, c0), implementation, monkeypatch)
    h_ref, c_ref = hand_step(cell, x[:, 0], h0, c0)
    torch.testing.assert_close(hs[0], h_ref)
    torch.testing.assert_close(c, c_ref)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_evaluation_uses_each_steps_population_statistics(implementation, monkeypatch):
    cell = randomized_bnlstm(t_max=4).eval()
    population = [buffer.clone() for buffer in cell.buffers()]
    x, h, c = torch.randn(6, 4, 3).double(), torch.randn(6, 5).double(), torch.randn(6, 5).double()
    with torch.no_grad():
        hs, _ = run(cell, x, (h, c), implementation, monkeypatch)
    for t in range(4):
        stats = [bn.running_mean[t] if k == 0 else bn.running_var[t]
                 for bn in (cell.bn_ih, cell.bn_hh, cell.bn_c) for k in (0, 1)]
        h, c = hand_step(cell, x[:, t], h, c, stats)
        torch.testing.assert_close(hs[t], h)
    for before, after in zip(population, cell.buffers()):  # evaluation leaves them as they are
        assert torch.equal(before, after)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_steps_beyond_t_max_reuse_step_t_max_statistics(implementation, monkeypatch):
    short = randomized_bnlstm(t_max=3, seed=1).eval()
    long = BNLSTM(3, 5, 7).double().eval()
    state = {k: v.clone() for k, v in short.state_dict().items()}
    for name, value in state.items():
        if name.endswith(("running_mean", "running_var")):  # rows 3..6 are copies of row 2
            state[name] = torch.cat([value, value[-1:].expand(4, -1)])
    long.load_state_dict(state)
    x, h0, c0 = torch.randn(4, 7, 3).double(), torch.zeros(4, 5).double(), torch.zeros(4, 5).double()
    hs_short, _ = run(short, x, (h0, c0), implementation, monkeypatch)
    hs_long, _ = long.unroll(x, (h0, c0))
    torch.testing.assert_close(torch.stack(hs_short), torch.stack(hs_long))


def test_training_updates_each_steps_population_with_that_steps_batch_statistics():
    torch.manual_seed(0)
    cell = BNLSTM(2, 4, t_max=6, bn_momentum=1.0).double().train()  # momentum 1: population = batch
    batch, steps = 8, 4
    x, h0 = torch.randn(batch, steps, 2).double(), torch.randn(batch, 4).double()
    hs, c_last = cell.unroll(x, (h0, torch.zeros(batch, 4).double()))
    previous = [h0] + hs[:-1]
    for t in range(steps):
        wx, wh = x[:, t] @ cell.weight_ih.T, previous[t] @ cell.weight_hh.T
        for bn, term in ((cell.bn_ih, wx), (cell.bn_hh, wh)):
            torch.testing.assert_close(bn.running_mean[t], term.mean(0))
            torch.testing.assert_close(bn.running_var[t], term.var(0, unbiased=True))  # as nn.BatchNorm
    torch.testing.assert_close(cell.bn_c.running_mean[steps - 1], c_last.mean(0))
    torch.testing.assert_close(cell.bn_c.running_var[steps - 1], c_last.var(0, unbiased=True))
    for bn in (cell.bn_ih, cell.bn_hh, cell.bn_c):  # steps the sequence never reached: untouched
        assert torch.all(bn.running_mean[steps:] == 0) and torch.all(bn.running_var[steps:] == 1)


def test_training_longer_than_t_max_uses_batch_statistics_and_keeps_t_max_rows():
    torch.manual_seed(0)
    cell = BNLSTM(2, 4, t_max=2, bn_momentum=1.0).double().train()
    x, h0, c0 = torch.randn(8, 5, 2).double(), torch.randn(8, 4).double(), torch.zeros(8, 4).double()
    hs, c = cell.unroll(x, (h0, c0))
    assert len(hs) == 5 and cell.bn_ih.running_mean.shape == (2, 16)
    torch.testing.assert_close(cell.bn_ih.running_mean[1], (x[:, 1] @ cell.weight_ih.T).mean(0))
    # Step 4, beyond t_max, normalises with its batch's own statistics: eq. (6)-(8) by hand.
    _, c_3 = cell.unroll(x[:, :4], (h0, c0))
    h_4, c_4 = hand_step(cell, x[:, 4], hs[3], c_3)
    torch.testing.assert_close(hs[4], h_4)
    torch.testing.assert_close(c, c_4)


def reference_unroll(cell, x, h0, c0, momentum):
    """Eq. (6)-(8) in training over a whole sequence, written out step by step from the cell's
    parameters: batch statistics (biased variance) normalise; step t's population statistics
    (t < t_max) move towards the batch's (unbiased variance, as nn.BatchNorm1d) by ``momentum``.
    Returns every h_t, the last c, and the new population statistics (the cell's are left as
    they are)."""
    stats = {name: buffer.clone() for name, buffer in cell.named_buffers()}
    t_max = stats["bn_c.running_mean"].shape[0]

    def normalize(z, bn, name, t):
        mean, var = z.mean(0), z.var(0, unbiased=False)
        if t < t_max:
            for key, batch_value in (("running_mean", mean), ("running_var", z.var(0))):
                row = stats[f"{name}.{key}"][t]
                row.copy_((1 - momentum) * row + momentum * batch_value.detach())
        return hand_bn(z, mean, var, bn.weight, 0.0 if bn.bias is None else bn.bias)

    hs, h, c = [], h0, c0
    H = h0.shape[1]
    for t in range(x.shape[1]):
        pre = normalize(h @ cell.weight_hh.T, cell.bn_hh, "bn_hh", t) \
            + normalize(x[:, t] @ cell.weight_ih.T, cell.bn_ih, "bn_ih", t) + cell.bias   # (6)
        f, i, o, g = pre[:, :H], pre[:, H:2 * H], pre[:, 2 * H:3 * H], pre[:, 3 * H:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)                     # (7)
        h = torch.sigmoid(o) * torch.tanh(normalize(c, cell.bn_c, "bn_c", t))           # (8)
        hs.append(h)
    return hs, c, stats


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype, steps, t_max, tolerance", [
    (torch.float64, 6, 6, 1e-10), (torch.float64, 7, 4, 1e-10), (torch.float32, 100, 100, 1e-4)])
def test_training_matches_a_reference_of_eq_6_to_8_values_gradients_and_statistics(
        implementation, dtype, steps, t_max, tolerance, monkeypatch):
    """Forward, every gradient (inputs, initial state, parameters) and the updated population
    statistics, against ``reference_unroll`` in float64 on the same parameters: random ones in
    float64, the paper's initialisation over 100 steps in float32 (random weights make a chaotic
    recurrence whose float32 gradients drift from float64's by more than the formulation)."""
    if dtype == torch.float64:
        cell = randomized_bnlstm(input_size=3, hidden=5, t_max=t_max, seed=2, bn_momentum=0.3)
    else:
        torch.manual_seed(2)
        cell = BNLSTM(3, 5, t_max, bn_momentum=0.3).double()
    torch.manual_seed(3)
    x, h0, c0 = (torch.randn(9, steps, 3).double(), torch.randn(9, 5).double(),
                 torch.randn(9, 5).double())
    weights = torch.randn(steps + 1, 9, 5).double()  # a loss that reads every h_t and the last c

    def loss(hs, c):
        return sum((h * w).sum() for h, w in zip([*hs, c], weights))

    leaves = [x, h0, c0]
    for leaf in leaves:
        leaf.requires_grad_(True)
    expected_hs, expected_c, expected_stats = reference_unroll(cell, x, h0, c0, momentum=0.3)
    expected_grads = torch.autograd.grad(loss(expected_hs, expected_c),
                                         leaves + list(cell.parameters()))
    tested = cell.to(dtype).train()
    inputs = [leaf.detach().to(dtype).requires_grad_(True) for leaf in leaves]
    hs, c = run(tested, inputs[0], (inputs[1], inputs[2]), implementation, monkeypatch)
    grads = torch.autograd.grad(loss(hs, c), inputs + list(tested.parameters()))
    close = {"rtol": tolerance, "atol": tolerance}
    torch.testing.assert_close(torch.stack(hs).double(), torch.stack(expected_hs).detach(), **close)
    torch.testing.assert_close(c.double(), expected_c.detach(), **close)
    names = ["x", "h0", "c0"] + [name for name, _ in tested.named_parameters()]
    for name, grad, expected in zip(names, grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected, msg=name, **close)
    for name, buffer in tested.named_buffers():
        torch.testing.assert_close(buffer.double(), expected_stats[name], msg=name, **close)


@pytest.mark.parametrize("implementation", FUSED)
def test_gradients_in_evaluation_match_the_reference(implementation, monkeypatch):
    """With population statistics the batch norms are affine maps: the fused backward's other
    branch, against autograd through ``unroll`` (steps beyond t_max included)."""
    cell = randomized_bnlstm(t_max=3, seed=4).eval()
    torch.manual_seed(5)
    x, h0, c0 = (torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True),
                 torch.randn(6, 5, dtype=torch.float64, requires_grad=True),
                 torch.randn(6, 5, dtype=torch.float64, requires_grad=True))
    weights = torch.randn(6, 6, 5, dtype=torch.float64)
    results = []
    for name in ("unroll", implementation):
        hs, c = run(cell, x, (h0, c0), name, monkeypatch)
        loss = sum((h * w).sum() for h, w in zip([*hs, c], weights))
        results.append((torch.stack(hs), c, *torch.autograd.grad(loss, [x, h0, c0,
                                                                      *cell.parameters()])))
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def launches(steps: int, monkeypatch) -> tuple[Counter, Counter]:
    """(forward, backward) launches of one training sequence on the Triton path: aten ops plus
    Triton kernels, counted without a GPU (``helpers.count_kernel_launches``)."""
    mode = CountOps()
    count_kernel_launches(bn_lstm_triton, mode, monkeypatch)
    monkeypatch.setattr(bn_lstm, "backend_for", lambda x: bn_lstm_triton)
    cell = BNLSTM(3, 5, t_max=steps).train()
    x, state = torch.randn(4, steps, 3), (torch.zeros(4, 5), torch.zeros(4, 5))

    def run():
        outputs, (_, c) = cell(x, state)
        return outputs, c

    return counted_forward_and_backward(mode, run)


def test_cuda_path_launches_three_kernels_per_step_forward_and_six_backward(monkeypatch):
    """The CUDA path's launches per time step over sequences of 4 and 12 steps (the difference
    over 8). Forward: the two products and the step kernel. Backward: the two products again (the
    step is recomputed), the step kernel, the product d W_h and the two weight derivatives added
    in place. The reference ``unroll`` issues about 40."""
    forward, backward = per_time_step(lambda steps: launches(steps, monkeypatch))
    assert forward == {"mm": 2, "_forward_kernel": 1}
    assert backward == {"mm": 3, "addmm_": 2, "_backward_kernel": 1}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_training_matches_the_reference(dtype):
    """The Triton kernels compiled for the GPU, against ``unroll`` in float64 on the CPU:
    outputs, every gradient and the population statistics."""
    reference = randomized_bnlstm(t_max=5, seed=6, bn_momentum=0.3).train()
    fused = randomized_bnlstm(t_max=5, seed=6, bn_momentum=0.3).to("cuda", dtype).train()
    torch.manual_seed(7)
    x = torch.randn(9, 7, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(9, 5, dtype=torch.float64, requires_grad=True) for _ in "hc")
    weights = torch.randn(8, 9, 5, dtype=torch.float64)
    x_cuda = x.detach().to("cuda", dtype).requires_grad_()
    state_cuda = tuple(s.detach().to("cuda", dtype).requires_grad_() for s in state)

    def result(cell, outputs, c, x, state):
        loss = (outputs.transpose(0, 1) * weights[:-1].to(outputs)).sum() \
            + (c * weights[-1].to(c)).sum()
        grads = torch.autograd.grad(loss, [x, *state, *cell.parameters()])
        return [outputs, c, *grads, *cell.buffers()]

    hs, c = reference.unroll(x, state)
    expected = result(reference, torch.stack(hs, 1), c, x, state)
    outputs, (_, c) = fused(x_cuda, state_cuda)
    actual = result(fused, outputs, c, x_cuda, state_cuda)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else \
        {"rtol": 2e-5, "atol": 2e-5}
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double().cpu(), e.detach(), **tolerance)


@pytest.mark.gpu
def test_cuda_kernels_per_step_with_the_profiler():
    """On a GPU, the kernels the profiler sees per time step: the interpreter count above says 3
    forward and 6 backward; cuBLAS may split a product in two."""
    def kernels(steps: int) -> tuple[int, int]:
        cell = BNLSTM(1, 100, t_max=steps).cuda().train()
        x, state = torch.rand(100, steps, 1, device="cuda"), (
            torch.zeros(100, 100, device="cuda"), torch.zeros(100, 100, device="cuda"))
        return cuda_kernels(lambda: cell(x, state)[0])

    (forward_4, backward_4), (forward_12, backward_12) = kernels(4), kernels(12)
    assert (forward_12 - forward_4) / 8 <= 5
    assert (backward_12 - backward_4) / 8 <= 10


def test_evaluation_is_independent_of_batch_composition():
    torch.manual_seed(0)
    model = SequentialClassifier(input_size=4, hidden_size=8, t_max=5)
    model.train()
    for _ in range(3):  # population statistics away from their initial values
        model(torch.rand(16, 5, 4))
    model.eval()
    x = torch.rand(10, 5, 4)
    with torch.no_grad():
        together = model(x)
        shuffled = model(torch.cat([torch.rand(7, 5, 4), x[[3, 1]], torch.rand(2, 5, 4) * 9]))
        alone = model(x[3:4])
    torch.testing.assert_close(shuffled[7:9], together[[3, 1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone[0], together[3], rtol=1e-5, atol=1e-6)
    model.train()  # whereas training normalises with the batch, so the company matters
    assert not torch.allclose(model(x)[:2], model(x[:2]), atol=1e-4)


def test_initialisation_follows_the_paper():
    model = SequentialClassifier(input_size=1, hidden_size=6, t_max=10)
    cell = model.rnn
    for bn in (cell.bn_ih, cell.bn_hh, cell.bn_c):
        assert torch.all(bn.weight == 0.1)
    assert cell.bn_ih.bias is None and cell.bn_hh.bias is None  # BN(.; gamma, 0): no shift
    assert torch.all(cell.bn_c.bias == 0)
    for block_ih, block_hh in zip(cell.weight_ih.chunk(4), cell.weight_hh.chunk(4)):
        torch.testing.assert_close(block_hh, torch.eye(6))
        torch.testing.assert_close(block_ih.T @ block_ih, torch.eye(1))  # orthonormal columns
    assert torch.all(cell.bias[:6] == 1.0) and torch.all(cell.bias[6:] == 0)
    assert all(torch.all(bn.weight == 1.0) for bn in (
        SequentialClassifier(hidden_size=6, t_max=3, gamma_init=1.0).rnn.bn_c,))
    lstm = SequentialClassifier(cell="lstm", input_size=1, hidden_size=6).rnn
    for block_hh in lstm.weight_hh_l0.chunk(4):
        torch.testing.assert_close(block_hh, torch.eye(6))
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0  # nn.LSTM gate order (i, f, g, o)
    assert torch.all(bias[6:12] == 1.0) and bias.abs().sum() == 6.0


def test_initial_hidden_state_noise_in_training_only():
    torch.manual_seed(0)
    model = SequentialClassifier(hidden_size=100, t_max=3)
    x = torch.zeros(500, 3, 1)
    h0, c0 = model.initial_state(x)
    assert abs(h0.std().item() - 0.1) < 0.003 and abs(h0.mean().item()) < 0.003
    assert torch.all(c0 == 0)
    model.eval()
    assert torch.all(model.initial_state(x)[0] == 0)


def test_lstm_baseline_is_nn_lstm_on_the_same_input():
    torch.manual_seed(0)
    model = SequentialClassifier(cell="lstm", input_size=2, hidden_size=5).eval()
    x = torch.randn(3, 6, 2)
    reference = torch.nn.LSTM(2, 5, batch_first=True)
    reference.load_state_dict(model.rnn.state_dict())
    _, (h_n, _) = reference(x)
    torch.testing.assert_close(model(x), model.classifier(h_n[0]))


@pytest.mark.parametrize("make, message", [
    (lambda: SequentialClassifier(cell="gru"), "cell must be 'lstm' or 'bn_lstm'"),
    (lambda: SequentialClassifier(hidden_size=0), "hidden_size must be >= 1"),
    (lambda: SequentialClassifier(initial_state_noise=-0.1), "initial_state_noise must be >= 0"),
    (lambda: SequentialClassifier(bn_momentum=0.0), "momentum must be in"),
    (lambda: SequentialClassifier(input_size=2)(torch.zeros(4, 3, 1)), r"expected input \(batch, time, 2\)"),
    (lambda: SequentialClassifier(cell="lstm", input_size=2)(torch.zeros(4, 3, 1)), r"expected input"),
    (lambda: SequentialClassifier()(torch.zeros(1, 3, 1)), "batch of at least 2"),
    (lambda: SequentialClassifier()(torch.zeros(4, 0, 1)), "at least one time step"),
])
def test_bad_input_is_refused_with_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_default_optimizer_is_the_bn_lstm_preset():
    optimizer = SequentialClassifier(hidden_size=4, t_max=2).configure_optimizers()
    assert isinstance(optimizer, presets.BnLstm)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"]) == (1e-3, 0.9, 0)


# ---- configs against the papers (tests/paper_facts.py) ---------------------------------------------------------------

def parse(tmp_path, monkeypatch, *configs: str, extra: tuple[str, ...] = ()):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = [arg for config in configs for arg in ("-c", str(CONFIGS / config))]
    return cli.main(args=[*args, "--trainer.logger", "false", *extra], run=False)


@pytest.mark.parametrize("overlays, cell, permuted", [
    ((), "bn_lstm", False), (("lstm.yaml",), "lstm", False),
    (("permuted.yaml",), "bn_lstm", True), (("permuted.yaml", "lstm.yaml"), "lstm", True)])
def test_paper_configs_carry_the_papers_settings(tmp_path, monkeypatch, overlays, cell, permuted):
    paper = paper_facts.BN_LSTM
    parsed = parse(tmp_path, monkeypatch, "seq_mnist.yaml", *overlays)
    model, data, trainer = parsed.model, parsed.datamodule, parsed.trainer
    assert model.hparams.cell == cell and (data.permutation is not None) == permuted
    assert model.hparams.hidden_size == paper["hidden_size"]
    assert model.hparams.initial_state_noise == paper["initial_state_noise"]
    assert model.hparams.gamma_init == paper["gamma_init"]
    assert model.hparams.t_max == paper["steps"] == data.steps and data.pixels_per_step == 1
    assert data.batch_size == paper["batch_size"] and data.val_size == paper["val_size"]
    assert data.dataset == "mnist" and 60_000 - data.val_size == paper["train_size"]
    assert trainer.gradient_clip_val == paper["gradient_clip"]
    assert trainer.gradient_clip_algorithm == "norm"
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, presets.BnLstm)
    group = optimizer.param_groups[0]
    assert group["lr"] == paper["lr"] and group["alpha"] == 0.9 and group["momentum"] == 0
    if cell == "bn_lstm":
        assert all(torch.all(bn.weight == paper["gamma_init"]) for bn in (model.rnn.bn_ih, model.rnn.bn_c))


def test_momentum_reading_is_selected_by_a_layered_config(tmp_path, monkeypatch):
    parsed = parse(tmp_path, monkeypatch, "seq_mnist.yaml", "permuted.yaml", "momentum_0.9.yaml")
    group = parsed.model.configure_optimizers().param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"]) == (1e-3, 0.9, 0.9)


def test_unknown_config_key_and_negative_lr_are_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse(tmp_path, monkeypatch, "smoke.yaml", extra=("--model.init_args.hiden_size", "3"))
    assert "hiden_size" in capsys.readouterr().err
    # the CLI builds each configured optimizer once before training: the key is named
    with pytest.raises(ValueError, match=r"model.init_args.optimizer .*lr must be >= 0"):
        parse(tmp_path, monkeypatch, "smoke.yaml",
              extra=("--model.init_args.optimizer.init_args.lr=-1e-3",))


def test_input_size_must_match_the_data_before_training(tmp_path, monkeypatch):
    parsed = parse(tmp_path, monkeypatch, "smoke.yaml", extra=("--data.init_args.pixels_per_step", "28"))
    with pytest.raises(ValueError, match=r"input_size \(16\) must equal the data's pixels_per_step \(28\)"):
        parsed.trainer.fit(parsed.model, parsed.datamodule)


def test_repro_fit_smoke_end_to_end_logs_and_checkpoints_the_permutation(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    launched = cli.main(args=["fit", "-c", str(CONFIGS / "smoke.yaml"),
                   "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
                   "--trainer.limit_val_batches", "1",
                   "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", str(tmp_path),
                   "--trainer.logger.init_args.save_dir", str(tmp_path),
                   "--model.init_args.input_size", "112", "--model.init_args.t_max", "7",
                   "--model.init_args.hidden_size", "16",
                   "--data.init_args.pixels_per_step", "112", "--data.init_args.permuted", "true",
                   "--data.init_args.permutation_seed", "5"])
    run = launched.trainer.logger.experiment
    assert {"train/loss", "val/acc"} <= set(run.summary.keys())
    import wandb

    wandb.finish()
    wandb.teardown()  # stops W&B's service, which flushes the offline run file to disk
    checkpoint_path, = tmp_path.rglob("last.ckpt")
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    permutation = checkpoint["SequentialMNISTDataModule"]["permutation"]
    assert sorted(permutation.tolist()) == list(range(784))
    assert torch.equal(permutation, torch.randperm(784, generator=torch.Generator().manual_seed(5)))
    assert checkpoint["global_step"] == 4
    assert checkpoint["state_dict"]["rnn.bn_hh.running_mean"].shape == (7, 64)
    run_log, = tmp_path.rglob("offline-run-*/run-*.wandb")
    logged = run_log.read_bytes()
    assert b"train/loss" in logged and b"val/acc" in logged


def step_arguments(batch: int, hidden: int) -> dict[str, torch.Tensor | bool | float | None]:
    """Valid arguments of the CPU step's forward, by name, for a batch and hidden size."""
    gates, rows = 4 * hidden, torch.zeros
    return {"a": rows(batch, gates), "u": rows(batch, gates), "c_prev": rows(batch, hidden),
            **{name: torch.ones(gates) for name in ("gamma_h", "gamma_x", "bias")},
            "gamma_c": torch.ones(hidden), "beta_c": torch.zeros(hidden),
            **{name: None for name in ("running_mean_h", "running_var_h", "running_mean_x",
                                       "running_var_x", "running_mean_c", "running_var_c")},
            "batch_statistics": True, "momentum": 0.1, "eps": 1e-5,
            **{name: torch.empty(gates) for name in ("mean_h", "inv_h", "mean_x", "inv_x")},
            "mean_c": torch.empty(hidden), "inv_c": torch.empty(hidden),
            "gates": rows(batch, gates), "c": rows(batch, hidden), "h": rows(batch, hidden)}


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"u": torch.zeros(3, 19)}, r"a, u and gates must be \(B, 4H\)"),
    ({"gamma_c": torch.ones(4)}, "the cell's parameters and statistics must have H values"),
    ({"running_mean_h": torch.zeros(7), "running_var_h": torch.ones(20),
      "running_mean_x": torch.zeros(20), "running_var_x": torch.ones(20),
      "running_mean_c": torch.zeros(5), "running_var_c": torch.ones(5)},
     "the gates' population statistics must have 4H values"),
    ({"a": torch.zeros(1, 20), "u": torch.zeros(1, 20), "c_prev": torch.zeros(1, 5),
      "gates": torch.zeros(1, 20), "c": torch.zeros(1, 5), "h": torch.zeros(1, 5)},
     "batch statistics need a batch of at least 2")])
def test_the_cpu_step_refuses_tensors_of_the_wrong_size(change, message):
    # The op reads and writes raw memory by the layout's sizes: a wrong size must be refused,
    # never read out of bounds.
    arguments = {**step_arguments(3, 5), **change}
    if message is None:
        bn_lstm_cpu.step_forward(*arguments.values())
        return
    with pytest.raises(RuntimeError, match=message):
        bn_lstm_cpu.step_forward(*arguments.values())
