"""Graves' LSTM on CUDA: the elementwise half of each time step as one Triton kernel, forward and
backward (the equations are in ``graves_lstm.py``; ``graves_lstm_cpu.cpp`` is the CPU twin).

A time step forward is two launches: the recurrent product h_{t-1} W_hh^T (``torch.mm``) and
``_forward_kernel`` (gates, peepholes, cell, h). Backward is two as well: ``_backward_kernel``
(eq. 7-11 differentiated, the pre-activation clip inside) and the product d W_hh.

Each program handles one row (sequence) of the batch and BLOCK units of the hidden layer; the math
is fp32 (fp64 for fp64 tensors). This module imports Triton; ``graves_lstm.py`` imports it only
for CUDA tensors. ``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors, which is how the
tests check them without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

NUM_WARPS = 4


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _clip(x, bound):
    return tl.minimum(tl.maximum(x, -bound), bound)


@triton.jit
def _load(pointer, offsets, mask, COMPUTE: tl.constexpr):
    return tl.load(pointer + offsets, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def _store(pointer, offsets, mask, value):
    tl.store(pointer + offsets, value.to(pointer.dtype.element_ty), mask=mask)


@triton.jit
def _accumulate(pointer, offsets, mask, value, COMPUTE: tl.constexpr):
    _store(pointer, offsets, mask, _load(pointer, offsets, mask, COMPUTE) + value)


@triton.jit
def _forward_kernel(from_input, recurrent, c_prev, peephole, gates, c, h, H,
                    HAS_RECURRENT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    units = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = units < H
    gate = row * 4 * H + units   # unit j of gate k of this row: gate + k * H
    cell = row * H + units
    z_i = _load(from_input, gate, mask, COMPUTE)
    z_f = _load(from_input, gate + H, mask, COMPUTE)
    z_g = _load(from_input, gate + 2 * H, mask, COMPUTE)
    z_o = _load(from_input, gate + 3 * H, mask, COMPUTE)
    if HAS_RECURRENT:
        z_i += _load(recurrent, gate, mask, COMPUTE)
        z_f += _load(recurrent, gate + H, mask, COMPUTE)
        z_g += _load(recurrent, gate + 2 * H, mask, COMPUTE)
        z_o += _load(recurrent, gate + 3 * H, mask, COMPUTE)
    cp = _load(c_prev, cell, mask, COMPUTE)
    i = _sigmoid(z_i + _load(peephole, units, mask, COMPUTE) * cp)            # eq. 7
    f = _sigmoid(z_f + _load(peephole, units + H, mask, COMPUTE) * cp)        # eq. 8
    g = _tanh(z_g)
    ct = f * cp + i * g                                                       # eq. 9
    o = _sigmoid(z_o + _load(peephole, units + 2 * H, mask, COMPUTE) * ct)    # eq. 10
    _store(gates, gate, mask, i)
    _store(gates, gate + H, mask, f)
    _store(gates, gate + 2 * H, mask, g)
    _store(gates, gate + 3 * H, mask, o)
    _store(c, cell, mask, ct)
    _store(h, cell, mask, o * _tanh(ct))                                      # eq. 11


@triton.jit
def _backward_kernel(d_h, d_h_recurrent, d_c, gates, c, c_prev, peephole, bound, d_pre, d_c_prev,
                     d_peephole, H, HAS_RECURRENT: tl.constexpr, COMPUTE: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0)
    units = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = units < H
    gate = row * 4 * H + units
    cell = row * H + units
    i = _load(gates, gate, mask, COMPUTE)
    f = _load(gates, gate + H, mask, COMPUTE)
    g = _load(gates, gate + 2 * H, mask, COMPUTE)
    o = _load(gates, gate + 3 * H, mask, COMPUTE)
    cp = _load(c_prev, cell, mask, COMPUTE)
    ct = _load(c, cell, mask, COMPUTE)
    tc = _tanh(ct)
    dh = _load(d_h, cell, mask, COMPUTE)
    if HAS_RECURRENT:
        dh += _load(d_h_recurrent, cell, mask, COMPUTE)
    d_o = _clip(dh * tc * o * (1.0 - o), bound)
    dc = (_load(d_c, cell, mask, COMPUTE) + dh * o * (1.0 - tc * tc)
          + d_o * _load(peephole, units + 2 * H, mask, COMPUTE))
    d_i = _clip(dc * g * i * (1.0 - i), bound)
    d_f = _clip(dc * cp * f * (1.0 - f), bound)
    d_g = _clip(dc * i * (1.0 - g * g), bound)
    _store(d_pre, gate, mask, d_i)
    _store(d_pre, gate + H, mask, d_f)
    _store(d_pre, gate + 2 * H, mask, d_g)
    _store(d_pre, gate + 3 * H, mask, d_o)
    _store(d_c_prev, cell, mask, dc * f + d_i * _load(peephole, units, mask, COMPUTE)
           + d_f * _load(peephole, units + H, mask, COMPUTE))
    # This row's sums of the peephole derivatives over the steps so far (rows w_ci, w_cf, w_co).
    peep = row * 3 * H + units
    _accumulate(d_peephole, peep, mask, d_i * cp, COMPUTE)
    _accumulate(d_peephole, peep + H, mask, d_f * cp, COMPUTE)
    _accumulate(d_peephole, peep + 2 * H, mask, d_o * ct, COMPUTE)


def _launch_shape(c: Tensor) -> tuple[tuple[int, int], dict]:
    batch, hidden = c.shape
    block = min(1024, triton.next_power_of_2(hidden))
    compute = tl.float64 if c.dtype == torch.float64 else tl.float32
    meta = {"COMPUTE": compute, "BLOCK": block, "num_warps": NUM_WARPS}
    return (batch, triton.cdiv(hidden, block)), meta


def cell_forward(from_input: Tensor, recurrent: Tensor | None, c_prev: Tensor, peephole: Tensor,
                 gates: Tensor, c: Tensor, h: Tensor) -> None:
    """One step forward into ``gates`` (i, f, g, o after their nonlinearities), ``c`` and ``h``;
    ``recurrent`` (h_{t-1} W_hh^T) is added to ``from_input`` unless None."""
    grid, meta = _launch_shape(c)
    _forward_kernel[grid](from_input, from_input if recurrent is None else recurrent, c_prev,
                          peephole, gates, c, h, c.shape[1],
                          HAS_RECURRENT=recurrent is not None, **meta)


def cell_backward(d_h: Tensor, d_h_recurrent: Tensor | None, d_c: Tensor, gates: Tensor,
                  c: Tensor, c_prev: Tensor, peephole: Tensor, bound: float, d_pre: Tensor,
                  d_c_prev: Tensor, d_peephole: Tensor) -> None:
    """One step backward into ``d_pre`` (the four clipped pre-activation derivatives) and
    ``d_c_prev``, adding the step's peephole derivatives to each row's sums ``d_peephole``
    (batch, 3, hidden); dL/dh_t is ``d_h`` plus ``d_h_recurrent`` unless None."""
    grid, meta = _launch_shape(c)
    _backward_kernel[grid](d_h, d_h if d_h_recurrent is None else d_h_recurrent, d_c, gates, c,
                           c_prev, peephole, bound, d_pre, d_c_prev, d_peephole, c.shape[1],
                           HAS_RECURRENT=d_h_recurrent is not None, **meta)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight^T + bias, once."""
    return F.linear(x, weight, bias)


def product_with(weight: Tensor, rows: int, uses: int) -> Callable[[Tensor], Tensor]:
    """x -> x @ weight^T for the ``uses`` steps of one sequence: one cuBLAS call each."""
    weight_t = weight.t()
    return lambda x: torch.mm(x, weight_t)


def weight_gradient(d: Tensor, x: Tensor) -> Tensor:
    """d^T x: a weight's derivative summed over the rows (every step and sequence)."""
    return d.t() @ x
