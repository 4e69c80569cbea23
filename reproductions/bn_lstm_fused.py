"""The BN-LSTM fused: eq. 6-8 (``bn_lstm.py``) over a whole sequence as one autograd Function.
Each time step forward is the two products W_h h_{t-1} and W_x x_t and one kernel for everything
else (both gate batch norms, the gates, the cell, its batch norm, h, the population statistics'
update); backward is one kernel and five products. The kernels are C++ on the CPU
(``bn_lstm_cpu.py``) and Triton on CUDA (``bn_lstm_triton.py``).

The forward keeps, besides every h_t and c_t, only each step's normalisation: the means and
inverse standard deviations of a = W_h h_{t-1}, u = W_x x_t and c_t by column (a few values per
column). The backward recomputes a and u with the two products and the rest of the step from
them: at 784 time steps that saves keeping about 400 MB of (batch, 4 hidden) tensors, whose
page faults on fresh memory cost more on the CPU than the products (measured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class Backend(Protocol):
    """What a device's module provides (``bn_lstm_cpu``, ``bn_lstm_triton``): one time step after
    its matrix products, forward and backward, and the products. Tensors are contiguous, a row
    per sequence; gate rows hold (f, i, o, g) x hidden. A step's normalisation is ``mean_h,
    inv_h, mean_x, inv_x, mean_c, inv_c``, the means and inverse standard deviations
    1 / sqrt(Var + eps) of a = W_h h_{t-1}, u = W_x x_t and c_t by column, then the parameters
    ``gamma_h, gamma_x, b, gamma_c, beta_c``."""

    def step_forward(self, a: Tensor, u: Tensor, c_prev: Tensor, gamma_h: Tensor,
                     gamma_x: Tensor, bias: Tensor, gamma_c: Tensor, beta_c: Tensor,
                     running_mean_h: Tensor | None, running_var_h: Tensor | None,
                     running_mean_x: Tensor | None, running_var_x: Tensor | None,
                     running_mean_c: Tensor | None, running_var_c: Tensor | None,
                     batch_statistics: bool, momentum: float, eps: float, mean_h: Tensor,
                     inv_h: Tensor, mean_x: Tensor, inv_x: Tensor, mean_c: Tensor, inv_c: Tensor,
                     gates: Tensor, c: Tensor, h: Tensor) -> None:
        """Eq. (6)-(8) into c_t, h_t and the step's normalisation: with batch statistics the
        batch's, the population's given (the step's rows, or Nones) moved towards them; without,
        the population's. ``gates`` is scratch."""

    def step_backward(self, d_h: Tensor, d_h_recurrent: Tensor | None, d_c: Tensor, a: Tensor,
                      u: Tensor, c_prev: Tensor, c: Tensor, mean_h: Tensor, inv_h: Tensor,
                      mean_x: Tensor, inv_x: Tensor, mean_c: Tensor, inv_c: Tensor,
                      gamma_h: Tensor, gamma_x: Tensor, bias: Tensor, gamma_c: Tensor,
                      beta_c: Tensor, batch_statistics: bool, gates: Tensor, d_pre: Tensor,
                      c_hat: Tensor, tanh_c: Tensor, d_c_prev: Tensor, d_gamma_h: Tensor,
                      d_gamma_x: Tensor, d_bias: Tensor, d_gamma_c: Tensor,
                      d_beta_c: Tensor) -> None:
        """The step recomputed from a, u, c_{t-1}, c_t and its normalisation, then from dL/dh_t
        (``d_h`` plus ``d_h_recurrent`` unless None) and dL/dc_t (``d_c``) into dL/da and dL/du
        (over ``a`` and ``u``) and dL/dc_{t-1}, adding the step's parameter derivatives to the
        sums ``d_gamma_h`` ... ``d_beta_c``. ``gates``, ``d_pre``, ``c_hat``, ``tanh_c`` are
        scratch."""

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ weight^T + bias, once."""

    def product_with(self, weight: Tensor, rows: int, uses: int) -> Callable[[Tensor], Tensor]:
        """x -> x @ weight^T for ``uses`` products of one sequence, x of ``rows`` rows."""

    def add_weight_gradient(self, total: Tensor, d: Tensor, x: Tensor) -> None:
        """total += d^T x: a weight's derivative, summed over the rows, added."""


def backend_for(x: Tensor) -> Backend | None:
    """The kernels and products for x's device and dtype; None where there are none."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    if x.device.type == "cuda":
        from reproductions import bn_lstm_triton  # imports Triton: only where it runs

        return bn_lstm_triton if x.shape[0] <= bn_lstm_triton.MAX_BATCH else None
    if x.device.type == "cpu":
        from reproductions import bn_lstm_cpu

        return bn_lstm_cpu
    return None


Statistics = Sequence[tuple[Tensor | None, ...]]  # a step's 6 population rows (or Nones)


class Cell:
    """What the fused forward and backward share: the weights, the normalisation parameters
    (contiguous) and the statistics settings of one sequence."""

    def __init__(self, weight_ih: Tensor, weight_hh: Tensor, bias: Tensor, gamma_x: Tensor,
                 gamma_h: Tensor, gamma_c: Tensor, beta_c: Tensor, batch_statistics: bool,
                 momentum: float, eps: float, backend: Backend) -> None:
        self.weight_ih, self.weight_hh = weight_ih, weight_hh
        self.parameters = tuple(p.contiguous() for p in (gamma_h, gamma_x, bias, gamma_c, beta_c))
        self.batch_statistics, self.momentum, self.eps = batch_statistics, momentum, eps
        self.backend = backend

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor,
                statistics: Statistics) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every h_t and c_t, time-major (T + 1, B, H) from h_0 and c_0, the inputs time-major
        (T, B, I), and every step's normalisation (T, 4 x 4H + 2H), all that the backward
        reads: per step a few values per column instead of the (B, 4H) tensors it recomputes."""
        backend, (batch, steps), hidden_size = self.backend, x.shape[:2], h0.shape[1]
        gates_size = 4 * hidden_size
        inputs = x.transpose(0, 1).contiguous()
        hidden = x.new_empty(steps + 1, batch, hidden_size)
        cells = torch.empty_like(hidden)
        hidden[0], cells[0] = h0, c0
        norms = x.new_empty(steps, 4 * gates_size + 2 * hidden_size)
        gates = x.new_empty(batch, gates_size)
        recurrent = backend.product_with(self.weight_hh, batch, steps)
        from_input = backend.product_with(self.weight_ih, batch, steps)
        for t, step_statistics in enumerate(statistics):
            backend.step_forward(
                recurrent(hidden[t]), from_input(inputs[t]), cells[t], *self.parameters,
                *step_statistics, self.batch_statistics, self.momentum, self.eps,
                *self.normalisation(norms[t], gates_size), gates, cells[t + 1], hidden[t + 1])
        return hidden, cells, inputs, norms

    @staticmethod
    def normalisation(row: Tensor, gates_size: int) -> list[Tensor]:
        """mean_h, inv_h, mean_x, inv_x (4H each), mean_c, inv_c (H each): views of a step's
        row."""
        hidden_size = (row.shape[0] - 4 * gates_size) // 2
        return list(row.split([gates_size] * 4 + [hidden_size] * 2))

    def backward(self, d_outputs: Tensor, d_c_last: Tensor, hidden: Tensor, cells: Tensor,
                 inputs: Tensor, norms: Tensor, needs_h0: bool,
                 needs_x: bool) -> tuple[Tensor | None, ...]:
        """dL/dx, dL/dh_0, dL/dc_0, then the derivatives of W_x, W_h, b, gamma_x, gamma_h,
        gamma_c and beta_c; from dL/dh_t of every step and dL/dc_T."""
        backend = self.backend
        steps, batch, hidden_size = d_outputs.shape
        gates_size = 4 * hidden_size
        recurrent = backend.product_with(self.weight_hh, batch, steps)
        from_input = backend.product_with(self.weight_ih, batch, steps)
        back_through = backend.product_with(self.weight_hh.t(), batch, steps)  # d -> d W_h
        d_gamma_h, d_gamma_x, d_bias, d_gamma_c, d_beta_c = (
            torch.zeros_like(p) for p in self.parameters)
        d_weight_hh, d_weight_ih = (torch.zeros_like(w) for w in (self.weight_hh, self.weight_ih))
        d_x = torch.empty_like(inputs) if needs_x else None
        gates, d_pre = (d_outputs.new_empty(batch, gates_size) for _ in range(2))
        c_hat, tanh_c = (d_outputs.new_empty(batch, hidden_size) for _ in range(2))
        buffers = torch.empty_like(cells[:2])  # dL/dc_{t-1} and dL/dc_t, by turns
        d_h, d_c = None, d_c_last.contiguous()  # dL/dh_t through step t + 1: none after the last
        for t in reversed(range(steps)):
            # The step's a and u, recomputed; the kernel overwrites them with dL/da and dL/du.
            d_a, d_u = recurrent(hidden[t]), from_input(inputs[t])
            backend.step_backward(
                d_outputs[t], d_h, d_c, d_a, d_u, cells[t], cells[t + 1],
                *self.normalisation(norms[t], gates_size), *self.parameters,
                self.batch_statistics, gates, d_pre, c_hat, tanh_c, buffers[t % 2], d_gamma_h,
                d_gamma_x, d_bias, d_gamma_c, d_beta_c)
            backend.add_weight_gradient(d_weight_hh, d_a, hidden[t])
            backend.add_weight_gradient(d_weight_ih, d_u, inputs[t])
            if needs_x:
                d_x[t] = backend.linear(d_u, self.weight_ih.t())
            d_h = back_through(d_a) if t > 0 or needs_h0 else None
            d_c = buffers[t % 2]
        d_x = d_x.transpose(0, 1) if needs_x else None
        return (d_x, d_h, d_c, d_weight_ih, d_weight_hh, d_bias, d_gamma_x, d_gamma_h, d_gamma_c,
                d_beta_c)


class BNLSTMSequence(torch.autograd.Function):
    """Eq. (6)-(8) over one sequence: x (B, T, I), h_0 and c_0 (B, H) -> every h_t, time-major
    (T, B, H), and c_T (B, H). ``statistics`` holds each step's population rows (or Nones)."""

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                bias: Tensor, gamma_x: Tensor, gamma_h: Tensor, gamma_c: Tensor, beta_c: Tensor,
                statistics: Statistics, cell: Cell) -> tuple[Tensor, Tensor]:
        hidden, cells, inputs, norms = cell.forward(x, h0, c0, statistics)
        ctx.save_for_backward(hidden, cells, inputs, norms)
        ctx.cell = cell
        return hidden[1:], cells[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, d_outputs: Tensor, d_c_last: Tensor):
        hidden, cells, inputs, norms = ctx.saved_tensors
        needs = ctx.needs_input_grad
        derivatives = ctx.cell.backward(d_outputs.contiguous(), d_c_last, hidden, cells, inputs,
                                        norms, needs_h0=needs[1], needs_x=needs[0])
        return (*derivatives, None, None)
