"""Graves' (2013) LSTM exactly as published: peephole connections (eq. 7-11) and derivative
clipping inside the cell; the recurrent layer of the char RNN and of both handwriting networks.

    i_t = sigma(W_xi x_t + W_hi h_{t-1} + w_ci * c_{t-1} + b_i)        (7)
    f_t = sigma(W_xf x_t + W_hf h_{t-1} + w_cf * c_{t-1} + b_f)        (8)
    c_t = f_t * c_{t-1} + i_t * tanh(W_xc x_t + W_hc h_{t-1} + b_c)   (9)
    o_t = sigma(W_xo x_t + W_ho h_{t-1} + w_co * c_t + b_o)            (10)
    h_t = o_t * tanh(c_t)                                              (11)

Derivative clipping (Sec. 2.1 and 4): during backpropagation through time, the derivatives of the
loss with respect to the four pre-activations (the arguments of the sigmas in eq. 7, 8, 10 and of
the tanh in eq. 9) are clipped to [-bound, bound] where they arise, and the clipped values are
what flows on, into the weights, the peepholes, the input, h_{t-1} and c_{t-1}. Graves clips to
[-10, 10] in the handwriting networks and to [-1, 1] for text. ``grad_clip=None`` clips nothing.

Two implementations of the one layer, with the same parameters:

* ``PeepholeLSTM``, the reference: the equations stepped in Python and differentiated by
  autograd, the clip a tensor hook on each pre-activation. Slow (about a dozen operations and
  their backward per time step).
* ``GravesLSTM``, the fused layer. The input's share of the pre-activations, W_x x_t + b, is one
  matrix product for the whole sequence. Then each time step is one product for the recurrent
  term h_{t-1} W_h^T and one elementwise kernel for the gates, peepholes, cell and h; backward
  mirrors it, one elementwise kernel (eq. 7-11 differentiated, the clip inside) and one product
  d W_h. The weight and peephole gradients of the whole sequence follow the loop as a few
  products and sums. This is a ``torch.autograd.Function`` per sequence (``forward``), or per
  step (``step``) for a layer whose input depends on its own last output, as the synthesis
  network's first layer does through its window. The kernels are Triton on CUDA
  (``graves_lstm_triton.py``) and C++ with oneDNN products on the CPU (``graves_lstm_cpu.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LSTMStateTuple = tuple[Tensor, Tensor]  # (h, c), each (1, batch, hidden) as nn.LSTM's


def clip_gradient(tensor: Tensor, bound: float | None) -> Tensor:
    """Clamp d loss / d tensor to [-bound, bound] on the way back (None: no clip); identity
    forwards."""
    if bound is not None and tensor.requires_grad:
        tensor.register_hook(lambda grad: grad.clamp(-bound, bound))
    return tensor


class PeepholeLSTM(nn.Module):
    """One layer of eq. 7-11, stepped through time in Python: the reference.

    The peephole matrices W_c* are diagonal, so each is a vector here (``peephole_weight``, rows
    w_ci, w_cf, w_co). Called like a one-layer ``nn.LSTM(batch_first=True)``: ``(x, (h, c))`` ->
    ``(output, (h, c))`` with states of shape (1, batch, hidden). The gate rows of ``weight_ih``,
    ``weight_hh`` and ``bias`` follow nn.LSTM's order (i, f, g, o; g is the cell input of eq. 9),
    so its weights copy across (with ``bias = bias_ih + bias_hh``: the paper has one bias per
    gate).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.peephole_weight = nn.Parameter(torch.empty(3, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden), 1/sqrt(hidden)) for every weight, as nn.LSTM initialises."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def initial_state(self, x: Tensor, state: LSTMStateTuple | None) -> LSTMStateTuple:
        """(h_0, c_0), each (batch, hidden): zeros, or the given (1, batch, hidden) state."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            return zeros, zeros
        return state[0][0], state[1][0]

    def forward(self, x: Tensor, state: LSTMStateTuple | None = None,
                grad_clip: float | None = None) -> tuple[Tensor, LSTMStateTuple]:
        """x: (batch, time, input_size) -> h of every step (batch, time, hidden), final (h, c)."""
        h, c = self.initial_state(x, state)
        from_input = F.linear(x, self.weight_ih, self.bias)
        w_ci, w_cf, w_co = self.peephole_weight
        outputs = []
        for t in range(x.shape[1]):
            z_i, z_f, z_g, z_o = (from_input[:, t] + F.linear(h, self.weight_hh)).chunk(4, dim=-1)
            i = torch.sigmoid(clip_gradient(z_i + w_ci * c, grad_clip))    # eq. 7
            f = torch.sigmoid(clip_gradient(z_f + w_cf * c, grad_clip))    # eq. 8
            g = torch.tanh(clip_gradient(z_g, grad_clip))
            c = f * c + i * g                                               # eq. 9
            o = torch.sigmoid(clip_gradient(z_o + w_co * c, grad_clip))    # eq. 10
            h = o * torch.tanh(c)                                           # eq. 11
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h[None], c[None])


class Backend(Protocol):
    """What a device's module provides (``graves_lstm_cpu``, ``graves_lstm_triton``): the
    elementwise kernels of one time step and the matrix products. Tensors are contiguous; a row
    per sequence; gate rows hold (i, f, g, o) x hidden, as nn.LSTM orders them."""

    def cell_forward(self, from_input: Tensor, recurrent: Tensor | None, c_prev: Tensor,
                     peephole: Tensor, gates: Tensor, c: Tensor, h: Tensor) -> None:
        """One step forward (eq. 7-11) into ``gates`` (i, f, g, o after their nonlinearities),
        ``c`` and ``h``; ``recurrent`` (h_{t-1} W_h^T) is added to ``from_input`` unless None."""

    def cell_backward(self, d_h: Tensor, d_h_recurrent: Tensor | None, d_c: Tensor,
                      gates: Tensor, c: Tensor, c_prev: Tensor, peephole: Tensor, bound: float,
                      d_pre: Tensor, d_c_prev: Tensor, d_peephole: Tensor) -> None:
        """One step backward into ``d_pre`` (the four pre-activation derivatives, each clipped to
        [-bound, bound]) and ``d_c_prev``, adding the step's peephole derivatives to each row's
        sums ``d_peephole`` (batch, 3, hidden); dL/dh_t is ``d_h`` plus ``d_h_recurrent`` unless
        None, dL/dc_t is ``d_c``."""

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ weight^T + bias, once."""

    def product_with(self, weight: Tensor, rows: int, uses: int) -> Callable[[Tensor], Tensor]:
        """x -> x @ weight^T for ``uses`` products of one sequence, x of ``rows`` rows."""

    def weight_gradient(self, d: Tensor, x: Tensor) -> Tensor:
        """d^T x: a weight's derivative summed over the rows (every step and sequence)."""


def backend_for(device: torch.device) -> Backend:
    """The kernels and products for a device."""
    if device.type == "cuda":
        from reproductions import graves_lstm_triton  # imports Triton: only where it runs

        return graves_lstm_triton
    if device.type == "cpu":
        from reproductions import graves_lstm_cpu

        return graves_lstm_cpu
    raise ValueError(f"GravesLSTM: runs on CPU or CUDA tensors, got device {device}")


def _bound(grad_clip: float | None) -> float:
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"GravesLSTM: grad_clip must be > 0 or None, got {grad_clip!r}")
    return math.inf if grad_clip is None else float(grad_clip)


class GravesLSTMSequence(torch.autograd.Function):
    """The layer over one sequence: x (B, T, I), h_0 and c_0 (B, H) -> every h_t, time-major
    (T, B, H), and c_T (B, H)."""

    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, bias: Tensor,
                weight_hh: Tensor, peephole: Tensor, bound: float,
                backend: Backend) -> tuple[Tensor, Tensor]:
        batch, steps = x.shape[:2]
        inputs = x.transpose(0, 1).reshape(steps * batch, -1)   # rows in time order
        # The input's share of all four gates, for every time step in one matrix product.
        from_input = backend.linear(inputs, weight_ih, bias).view(steps, batch, -1)
        hidden = x.new_empty(steps + 1, batch, h0.shape[-1])    # h_0 .. h_T
        cells = torch.empty_like(hidden)                        # c_0 .. c_T
        gates = torch.empty_like(from_input)   # i, f, g, o of every step, after the nonlinearity
        hidden[0], cells[0] = h0, c0
        peephole = peephole.contiguous()
        recurrent = backend.product_with(weight_hh, batch, steps)
        for t in range(steps):
            backend.cell_forward(from_input[t], recurrent(hidden[t]), cells[t], peephole,
                                 gates[t], cells[t + 1], hidden[t + 1])
        ctx.save_for_backward(inputs, gates, hidden, cells, weight_ih, weight_hh, peephole)
        ctx.bound, ctx.backend = bound, backend
        return hidden[1:], cells[-1]

    @staticmethod
    def backward(ctx, d_outputs: Tensor, d_c_last: Tensor):
        inputs, gates, hidden, cells, weight_ih, weight_hh, peephole = ctx.saved_tensors
        backend, needs = ctx.backend, ctx.needs_input_grad
        steps, batch = gates.shape[:2]
        d_outputs = d_outputs.contiguous()
        d_pre = torch.empty_like(gates)       # the clipped pre-activation derivatives
        d_peephole = hidden.new_zeros(batch, 3, hidden.shape[-1])   # sums per sequence
        recurrent = backend.product_with(weight_hh.t(), batch, steps)   # d -> d W_h
        d_h = None                            # dL/dh_t through step t+1; none after the last
        d_c = d_c_last.contiguous()
        buffers = torch.empty_like(cells[:2])  # dL/dc_{t-1} and dL/dc_t, by turns
        for t in reversed(range(steps)):
            backend.cell_backward(d_outputs[t], d_h, d_c, gates[t], cells[t + 1], cells[t],
                                  peephole, ctx.bound, d_pre[t], buffers[t % 2], d_peephole)
            d_h = recurrent(d_pre[t]) if t > 0 or needs[1] else None
            d_c = buffers[t % 2]
        # Sums over the sequence: W_x meets x_t, W_h meets h_{t-1}.
        rows = d_pre.flatten(0, 1)
        d_x = backend.linear(rows, weight_ih.t()).view(steps, batch, -1).transpose(0, 1) \
            if needs[0] else None
        d_weight_ih = backend.weight_gradient(rows, inputs) if needs[3] else None
        d_bias = rows.sum(0) if needs[4] else None
        d_weight_hh = backend.weight_gradient(rows, hidden[:-1].flatten(0, 1)) if needs[5] \
            else None
        return (d_x, d_h, d_c, d_weight_ih, d_bias, d_weight_hh, d_peephole.sum(0), None, None)


class GravesLSTMStep(torch.autograd.Function):
    """One time step from its whole pre-activation: pre (B, 4H) = W_x x_t + W_h h_{t-1} + b and
    c_{t-1} (B, H) -> h_t, c_t."""

    @staticmethod
    def forward(ctx, pre: Tensor, c_prev: Tensor, peephole: Tensor, bound: float,
                backend: Backend) -> tuple[Tensor, Tensor]:
        pre, c_prev, peephole = pre.contiguous(), c_prev.contiguous(), peephole.contiguous()
        gates, h, c = torch.empty_like(pre), torch.empty_like(c_prev), torch.empty_like(c_prev)
        backend.cell_forward(pre, None, c_prev, peephole, gates, c, h)
        ctx.save_for_backward(gates, c, c_prev, peephole)
        ctx.bound, ctx.backend = bound, backend
        return h, c

    @staticmethod
    def backward(ctx, d_h: Tensor, d_c: Tensor):
        gates, c, c_prev, peephole = ctx.saved_tensors
        d_pre, d_c_prev = torch.empty_like(gates), torch.empty_like(c)
        d_peephole = c.new_zeros(c.shape[0], 3, c.shape[1])
        ctx.backend.cell_backward(d_h.contiguous(), None, d_c.contiguous(), gates, c, c_prev,
                                  peephole, ctx.bound, d_pre, d_c_prev, d_peephole)
        return d_pre, d_c_prev, d_peephole.sum(0), None, None


def graves_lstm(x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                bias: Tensor, peephole: Tensor, grad_clip: float | None = None,
                backend: Backend | None = None) -> tuple[Tensor, Tensor]:
    """The fused layer over a sequence: x (batch, time, input) and h0, c0 (batch, hidden) -> every
    h_t (batch, time, hidden) and c_T (batch, hidden). ``backend`` defaults to x's device's."""
    outputs, c = GravesLSTMSequence.apply(x, h0, c0, weight_ih, bias, weight_hh, peephole,
                                          _bound(grad_clip), backend or backend_for(x.device))
    return outputs.transpose(0, 1), c


class GravesLSTM(PeepholeLSTM):
    """The paper's LSTM layer (eq. 7-11 with in-cell derivative clipping), fused: the same
    parameters and results as ``PeepholeLSTM``, at close to ``nn.LSTM``'s speed.

    ``forward(x, state, grad_clip)`` runs a whole sequence; ``step(x_t, (h, c), grad_clip)`` one
    time step, for inputs that depend on the layer's previous output.
    """

    def forward(self, x: Tensor, state: LSTMStateTuple | None = None,
                grad_clip: float | None = None) -> tuple[Tensor, LSTMStateTuple]:
        """x: (batch, time, input_size) -> h of every step (batch, time, hidden), final (h, c)."""
        h0, c0 = self.initial_state(x, state)
        outputs, c = graves_lstm(x, h0, c0, self.weight_ih, self.weight_hh, self.bias,
                                 self.peephole_weight, grad_clip)
        return outputs, (outputs[:, -1][None], c[None])

    def step(self, x: Tensor, state: tuple[Tensor, Tensor],
             grad_clip: float | None = None) -> tuple[Tensor, Tensor]:
        """One time step: x (batch, input_size), (h, c) each (batch, hidden) -> (h, c)."""
        h, c = state
        pre = torch.addmm(torch.addmm(self.bias, x, self.weight_ih.t()), h, self.weight_hh.t())
        return GravesLSTMStep.apply(pre, c, self.peephole_weight, _bound(grad_clip),
                                    backend_for(x.device))
