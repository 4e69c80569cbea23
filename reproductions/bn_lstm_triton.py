"""The BN-LSTM on CUDA: each time step after its matrix products as one Triton kernel, forward and
backward (the equations are in ``bn_lstm.py``; ``bn_lstm_cpu.cpp`` is the CPU twin).

A time step forward is three launches: the products W_h h_{t-1} and W_x x_t (``torch.mm``) and
``_forward_kernel`` (both gate batch norms, the gates, the cell, its batch norm and h, with the
batch's statistics and the population's update). Backward is six: the two products again (the
step is recomputed from them and the statistics, rather than kept for the whole sequence),
``_backward_kernel``, the product d W_h and the two weight derivatives, each added in place.

Batch normalisation reduces over the rows (the sequences of the batch), so each program holds
every row of BLOCK_U hidden units and their four gate columns: a program needs nothing from
another. The math is fp32 (fp64 for fp64 tensors). This module imports Triton; ``bn_lstm.py``
imports it only for CUDA tensors. ``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors,
which is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from reproductions import graves_lstm_triton
from reproductions.graves_lstm_triton import _accumulate, _load, _sigmoid, _store, _tanh

ELEMENTS = 2048   # rows x units a program holds per tile; BLOCK_U follows from the batch
MAX_BATCH = ELEMENTS  # one program holds every row of its units


@triton.jit
def _statistics(x, rows_mask, columns, column_mask, batch, running_mean, running_var, mean, inv,
                momentum, eps, BATCH_STATISTICS: tl.constexpr, UPDATE: tl.constexpr,
                COMPUTE: tl.constexpr):
    """Mean and inverse standard deviation of the tile's columns over its rows (biased
    variance), or the population's; stored to ``mean`` and ``inv`` at ``columns``; the
    population's moved towards the batch's with UPDATE."""
    if BATCH_STATISTICS:
        mu = tl.sum(x, axis=0) / batch
        deviation = tl.where(rows_mask[:, None], x - mu[None, :], 0.0)
        squares = tl.sum(deviation * deviation, axis=0)
        variance = squares / batch
        if UPDATE:
            old_mean = _load(running_mean, columns, column_mask, COMPUTE)
            old_var = _load(running_var, columns, column_mask, COMPUTE)
            _store(running_mean, columns, column_mask, (1.0 - momentum) * old_mean + momentum * mu)
            _store(running_var, columns, column_mask,
                   (1.0 - momentum) * old_var + momentum * squares / (batch - 1))
    else:
        mu = _load(running_mean, columns, column_mask, COMPUTE)
        variance = _load(running_var, columns, column_mask, COMPUTE)
    inverse = 1.0 / tl.sqrt(variance + eps)
    _store(mean, columns, column_mask, mu)
    _store(inv, columns, column_mask, inverse)
    return mu, inverse


@triton.jit
def _normalised(x, mean, inv, columns, column_mask, COMPUTE: tl.constexpr):
    mu = _load(mean, columns, column_mask, COMPUTE)
    return (x - mu[None, :]) * _load(inv, columns, column_mask, COMPUTE)[None, :]


@triton.jit
def _gate(a, u, mean_h, inv_h, mean_x, inv_x, gamma_h, gamma_x, bias, offsets, columns, mask,
          column_mask, COMPUTE: tl.constexpr):
    """One gate's columns: the normalised terms and the pre-activation of eq. (6)."""
    x_hat_h = _normalised(_load(a, offsets, mask, COMPUTE), mean_h, inv_h, columns, column_mask,
                          COMPUTE)
    x_hat_x = _normalised(_load(u, offsets, mask, COMPUTE), mean_x, inv_x, columns, column_mask,
                          COMPUTE)
    pre = (_load(gamma_h, columns, column_mask, COMPUTE)[None, :] * x_hat_h
           + _load(gamma_x, columns, column_mask, COMPUTE)[None, :] * x_hat_x
           + _load(bias, columns, column_mask, COMPUTE)[None, :])
    return x_hat_h, x_hat_x, pre


@triton.jit
def _positions(B, H, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """The rows, this program's units, their masks, and where a unit's element sits in a gate
    row (gate k at ``gate + k * H``) and in a cell row."""
    rows = tl.arange(0, BLOCK_B)
    units = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    rows_mask, units_mask = rows < B, units < H
    mask = rows_mask[:, None] & units_mask[None, :]
    return (rows_mask, units, units_mask, mask, rows[:, None] * 4 * H + units[None, :],
            rows[:, None] * H + units[None, :])


@triton.jit
def _gate_forward(a, u, offsets, rows_mask, columns, column_mask, mask, B, running_mean_h,
                  running_var_h, running_mean_x, running_var_x, mean_h, inv_h, mean_x, inv_x,
                  gamma_h, gamma_x, bias, momentum, eps, BATCH_STATISTICS: tl.constexpr,
                  UPDATE: tl.constexpr, COMPUTE: tl.constexpr):
    """One gate's columns: the statistics of a and u, and the pre-activation of eq. (6)."""
    a_k, u_k = _load(a, offsets, mask, COMPUTE), _load(u, offsets, mask, COMPUTE)
    mu_h, in_h = _statistics(a_k, rows_mask, columns, column_mask, B, running_mean_h,
                             running_var_h, mean_h, inv_h, momentum, eps, BATCH_STATISTICS,
                             UPDATE, COMPUTE)
    mu_x, in_x = _statistics(u_k, rows_mask, columns, column_mask, B, running_mean_x,
                             running_var_x, mean_x, inv_x, momentum, eps, BATCH_STATISTICS,
                             UPDATE, COMPUTE)
    return (_load(gamma_h, columns, column_mask, COMPUTE)[None, :] * (a_k - mu_h[None, :])
            * in_h[None, :]
            + _load(gamma_x, columns, column_mask, COMPUTE)[None, :] * (u_k - mu_x[None, :])
            * in_x[None, :]
            + _load(bias, columns, column_mask, COMPUTE)[None, :])


@triton.jit
def _forward_kernel(a, u, c_prev, gamma_h, gamma_x, bias, gamma_c, beta_c, running_mean_h,
                    running_var_h, running_mean_x, running_var_x, running_mean_c, running_var_c,
                    momentum: tl.float64, eps: tl.float64, mean_h, inv_h, mean_x, inv_x, mean_c,
                    inv_c, c, h, B, H, BATCH_STATISTICS: tl.constexpr, UPDATE: tl.constexpr,
                    COMPUTE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    # fp64 arguments taken in COMPUTE's precision: a bare Python float would enter the fp64
    # kernel's arithmetic rounded to fp32 (as in the optimizer's kernel)
    momentum, eps = tl.full((), momentum, COMPUTE), tl.full((), eps, COMPUTE)
    rows_mask, units, units_mask, mask, gate, cell = _positions(B, H, BLOCK_B, BLOCK_U)
    pre_f = _gate_forward(a, u, gate, rows_mask, units, units_mask, mask, B, running_mean_h,
                          running_var_h, running_mean_x, running_var_x, mean_h, inv_h, mean_x,
                          inv_x, gamma_h, gamma_x, bias, momentum, eps, BATCH_STATISTICS, UPDATE,
                          COMPUTE)
    pre_i = _gate_forward(a, u, gate + H, rows_mask, units + H, units_mask, mask, B,
                          running_mean_h, running_var_h, running_mean_x, running_var_x, mean_h,
                          inv_h, mean_x, inv_x, gamma_h, gamma_x, bias, momentum, eps,
                          BATCH_STATISTICS, UPDATE, COMPUTE)
    pre_o = _gate_forward(a, u, gate + 2 * H, rows_mask, units + 2 * H, units_mask, mask, B,
                          running_mean_h, running_var_h, running_mean_x, running_var_x, mean_h,
                          inv_h, mean_x, inv_x, gamma_h, gamma_x, bias, momentum, eps,
                          BATCH_STATISTICS, UPDATE, COMPUTE)
    pre_g = _gate_forward(a, u, gate + 3 * H, rows_mask, units + 3 * H, units_mask, mask, B,
                          running_mean_h, running_var_h, running_mean_x, running_var_x, mean_h,
                          inv_h, mean_x, inv_x, gamma_h, gamma_x, bias, momentum, eps,
                          BATCH_STATISTICS, UPDATE, COMPUTE)
    f, i, o, g = _sigmoid(pre_f), _sigmoid(pre_i), _sigmoid(pre_o), _tanh(pre_g)   # (6)
    ct = tl.where(mask, f * _load(c_prev, cell, mask, COMPUTE) + i * g, 0.0)       # (7)
    mu_c, inv = _statistics(ct, rows_mask, units, units_mask, B, running_mean_c, running_var_c,
                            mean_c, inv_c, momentum, eps, BATCH_STATISTICS, UPDATE, COMPUTE)
    tc = _tanh(_load(gamma_c, units, units_mask, COMPUTE)[None, :] * (ct - mu_c[None, :])
               * inv[None, :] + _load(beta_c, units, units_mask, COMPUTE)[None, :])
    _store(c, cell, mask, ct)
    _store(h, cell, mask, o * tc)                                                   # (8)


@triton.jit
def _gate_backward(d_pre, x_hat_h, x_hat_x, rows_mask, columns, column_mask, offsets, mask, B,
                   gamma_h, gamma_x, inv_h, inv_x, a, u, d_gamma_h, d_gamma_x, d_bias,
                   BATCH_STATISTICS: tl.constexpr, COMPUTE: tl.constexpr):
    """One gate's columns: its share of the parameter derivatives, and dL/da, dL/du (over a,
    u) through the two batch norms."""
    d_pre = tl.where(rows_mask[:, None], d_pre, 0.0)
    sum_dp = tl.sum(d_pre, axis=0)
    sum_dp_h = tl.sum(d_pre * x_hat_h, axis=0)
    sum_dp_x = tl.sum(d_pre * x_hat_x, axis=0)
    _accumulate(d_bias, columns, column_mask, sum_dp, COMPUTE)
    _accumulate(d_gamma_h, columns, column_mask, sum_dp_h, COMPUTE)
    _accumulate(d_gamma_x, columns, column_mask, sum_dp_x, COMPUTE)
    scale_h = (_load(gamma_h, columns, column_mask, COMPUTE)
               * _load(inv_h, columns, column_mask, COMPUTE))[None, :]
    scale_x = (_load(gamma_x, columns, column_mask, COMPUTE)
               * _load(inv_x, columns, column_mask, COMPUTE))[None, :]
    if BATCH_STATISTICS:
        d_centred = d_pre - (sum_dp / B)[None, :]
        d_a = scale_h * (d_centred - x_hat_h * (sum_dp_h / B)[None, :])
        d_u = scale_x * (d_centred - x_hat_x * (sum_dp_x / B)[None, :])
    else:
        d_a, d_u = scale_h * d_pre, scale_x * d_pre
    _store(a, offsets, mask, d_a)
    _store(u, offsets, mask, d_u)


@triton.jit
def _backward_kernel(d_h, d_h_recurrent, d_c, a, u, c_prev, c, mean_h, inv_h, mean_x, inv_x,
                     mean_c, inv_c, gamma_h, gamma_x, bias, gamma_c, beta_c, d_c_prev, d_gamma_h,
                     d_gamma_x, d_bias, d_gamma_c, d_beta_c, B, H,
                     BATCH_STATISTICS: tl.constexpr, COMPUTE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    rows_mask, units, units_mask, mask, gate, cell = _positions(B, H, BLOCK_B, BLOCK_U)
    # The step again, from a, u, c_{t-1}, c_t and the statistics.
    xh_f, xx_f, pre_f = _gate(a, u, mean_h, inv_h, mean_x, inv_x, gamma_h, gamma_x, bias, gate,
                              units, mask, units_mask, COMPUTE)
    xh_i, xx_i, pre_i = _gate(a, u, mean_h, inv_h, mean_x, inv_x, gamma_h, gamma_x, bias,
                              gate + H, units + H, mask, units_mask, COMPUTE)
    xh_o, xx_o, pre_o = _gate(a, u, mean_h, inv_h, mean_x, inv_x, gamma_h, gamma_x, bias,
                              gate + 2 * H, units + 2 * H, mask, units_mask, COMPUTE)
    xh_g, xx_g, pre_g = _gate(a, u, mean_h, inv_h, mean_x, inv_x, gamma_h, gamma_x, bias,
                              gate + 3 * H, units + 3 * H, mask, units_mask, COMPUTE)
    f, i, o, g = _sigmoid(pre_f), _sigmoid(pre_i), _sigmoid(pre_o), _tanh(pre_g)
    c_hat = _normalised(_load(c, cell, mask, COMPUTE), mean_c, inv_c, units, units_mask, COMPUTE)
    gamma = _load(gamma_c, units, units_mask, COMPUTE)[None, :]
    tc = _tanh(gamma * c_hat + _load(beta_c, units, units_mask, COMPUTE)[None, :])
    dh = _load(d_h, cell, mask, COMPUTE) + _load(d_h_recurrent, cell, mask, COMPUTE)
    # Through h = o tanh(n), n = gamma_c c_hat + beta_c, and the cell's batch norm.
    dn = tl.where(mask, dh * o * (1.0 - tc * tc), 0.0)
    sum_dn = tl.sum(dn, axis=0)
    sum_dn_ch = tl.sum(dn * c_hat, axis=0)
    _accumulate(d_gamma_c, units, units_mask, sum_dn_ch, COMPUTE)
    _accumulate(d_beta_c, units, units_mask, sum_dn, COMPUTE)
    scale_c = gamma * _load(inv_c, units, units_mask, COMPUTE)[None, :]
    if BATCH_STATISTICS:
        dn = dn - (sum_dn / B)[None, :] - c_hat * (sum_dn_ch / B)[None, :]
    dc = _load(d_c, cell, mask, COMPUTE) + scale_c * dn
    cp = _load(c_prev, cell, mask, COMPUTE)
    _store(d_c_prev, cell, mask, dc * f)
    _gate_backward(dc * cp * f * (1.0 - f), xh_f, xx_f, rows_mask, units, units_mask, gate, mask,
                   B, gamma_h, gamma_x, inv_h, inv_x, a, u, d_gamma_h, d_gamma_x, d_bias,
                   BATCH_STATISTICS, COMPUTE)
    _gate_backward(dc * g * i * (1.0 - i), xh_i, xx_i, rows_mask, units + H, units_mask,
                   gate + H, mask, B, gamma_h, gamma_x, inv_h, inv_x, a, u, d_gamma_h, d_gamma_x,
                   d_bias, BATCH_STATISTICS, COMPUTE)
    _gate_backward(dh * tc * o * (1.0 - o), xh_o, xx_o, rows_mask, units + 2 * H, units_mask,
                   gate + 2 * H, mask, B, gamma_h, gamma_x, inv_h, inv_x, a, u, d_gamma_h,
                   d_gamma_x, d_bias, BATCH_STATISTICS, COMPUTE)
    _gate_backward(dc * i * (1.0 - g * g), xh_g, xx_g, rows_mask, units + 3 * H, units_mask,
                   gate + 3 * H, mask, B, gamma_h, gamma_x, inv_h, inv_x, a, u, d_gamma_h,
                   d_gamma_x, d_bias, BATCH_STATISTICS, COMPUTE)


def _launch_shape(c: Tensor) -> tuple[tuple[int], dict]:
    batch, hidden = c.shape
    if batch > MAX_BATCH:
        raise ValueError(f"BNLSTM (CUDA): the fused step holds a batch of at most {MAX_BATCH} "
                         f"sequences in one program, got {batch}")
    block_b = triton.next_power_of_2(batch)
    block_u = min(triton.next_power_of_2(hidden), max(1, ELEMENTS // block_b))
    compute = tl.float64 if c.dtype == torch.float64 else tl.float32
    meta = {"COMPUTE": compute, "BLOCK_B": block_b, "BLOCK_U": block_u,
            "num_warps": 8 if block_b * block_u >= 2048 else 4}
    return (triton.cdiv(hidden, block_u),), meta


def step_forward(a: Tensor, u: Tensor, c_prev: Tensor, gamma_h: Tensor, gamma_x: Tensor,
                 bias: Tensor, gamma_c: Tensor, beta_c: Tensor, running_mean_h: Tensor | None,
                 running_var_h: Tensor | None, running_mean_x: Tensor | None,
                 running_var_x: Tensor | None, running_mean_c: Tensor | None,
                 running_var_c: Tensor | None, batch_statistics: bool, momentum: float,
                 eps: float, mean_h: Tensor, inv_h: Tensor, mean_x: Tensor, inv_x: Tensor,
                 mean_c: Tensor, inv_c: Tensor, gates: Tensor, c: Tensor, h: Tensor) -> None:
    """``bn_lstm.Backend.step_forward``: one launch; the gates stay in the program, so the
    scratch ``gates`` goes unused."""
    if not batch_statistics and running_mean_h is None:
        raise ValueError("BNLSTM (CUDA): population statistics are needed without batch "
                         "statistics")
    grid, meta = _launch_shape(c)
    update = batch_statistics and running_mean_h is not None
    running = [mean_h, inv_h, mean_x, inv_x, mean_c, inv_c]  # stand-ins the kernel never reads
    if running_mean_h is not None:
        running = [running_mean_h, running_var_h, running_mean_x, running_var_x, running_mean_c,
                   running_var_c]
    _forward_kernel[grid](a, u, c_prev, gamma_h, gamma_x, bias, gamma_c, beta_c, *running,
                          momentum, eps, mean_h, inv_h, mean_x, inv_x, mean_c, inv_c, c, h,
                          c.shape[0], c.shape[1], BATCH_STATISTICS=batch_statistics,
                          UPDATE=update, **meta)


def step_backward(d_h: Tensor, d_h_recurrent: Tensor | None, d_c: Tensor, a: Tensor, u: Tensor,
                  c_prev: Tensor, c: Tensor, mean_h: Tensor, inv_h: Tensor, mean_x: Tensor,
                  inv_x: Tensor, mean_c: Tensor, inv_c: Tensor, gamma_h: Tensor, gamma_x: Tensor,
                  bias: Tensor, gamma_c: Tensor, beta_c: Tensor, batch_statistics: bool,
                  gates: Tensor, d_pre: Tensor, c_hat: Tensor, tanh_c: Tensor, d_c_prev: Tensor,
                  d_gamma_h: Tensor, d_gamma_x: Tensor, d_bias: Tensor, d_gamma_c: Tensor,
                  d_beta_c: Tensor) -> None:
    """``bn_lstm.Backend.step_backward``: one launch; everything stays in the program, so the
    scratch tensors (``gates``, ``d_pre``, ``c_hat``, ``tanh_c``) go unused. The last step has no
    recurrent derivative: zeros then, rather than a second compiled kernel."""
    grid, meta = _launch_shape(c)
    if d_h_recurrent is None:
        d_h_recurrent = torch.zeros_like(d_h)
    _backward_kernel[grid](d_h, d_h_recurrent, d_c, a, u,
                           c_prev, c, mean_h, inv_h, mean_x, inv_x, mean_c, inv_c, gamma_h,
                           gamma_x, bias, gamma_c, beta_c, d_c_prev, d_gamma_h, d_gamma_x, d_bias,
                           d_gamma_c, d_beta_c, c.shape[0], c.shape[1],
                           BATCH_STATISTICS=batch_statistics, **meta)


# The products are the Graves step's: one cuBLAS call each.
linear, product_with = graves_lstm_triton.linear, graves_lstm_triton.product_with


def add_weight_gradient(total: Tensor, d: Tensor, x: Tensor) -> None:
    """``bn_lstm.Backend.add_weight_gradient``: one cuBLAS call."""
    total.addmm_(d.t(), x)
