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
def _load_gates(pointer, gate, mask, H, COMPUTE: tl.constexpr):
    return (_load(pointer, gate, mask, COMPUTE), _load(pointer, gate + H, mask, COMPUTE),
            _load(pointer, gate + 2 * H, mask, COMPUTE),
            _load(pointer, gate + 3 * H, mask, COMPUTE))


@triton.jit
def _store_gates(pointer, gate, mask, H, i, f, g, o):
    _store(pointer, gate, mask, i)
    _store(pointer, gate + H, mask, f)
    _store(pointer, gate + 2 * H, mask, g)
    _store(pointer, gate + 3 * H, mask, o)


@triton.jit
def _positions(H, BLOCK: tl.constexpr):
    """This program's row, units, mask, and where they sit in a gate row (unit j of gate k at
    ``gate + k * H``) and in a cell row."""
    row = tl.program_id(0)
    units = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return row, units, units < H, row * 4 * H + units, row * H + units


@triton.jit
def _forward_kernel(from_input, recurrent, c_prev, peephole, gates, c, h, H,
                    HAS_RECURRENT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    _, units, mask, gate, cell = _positions(H, BLOCK)
    z_i, z_f, z_g, z_o = _load_gates(from_input, gate, mask, H, COMPUTE)
    if HAS_RECURRENT:
        r_i, r_f, r_g, r_o = _load_gates(recurrent, gate, mask, H, COMPUTE)
        z_i, z_f, z_g, z_o = z_i + r_i, z_f + r_f, z_g + r_g, z_o + r_o
    cp = _load(c_prev, cell, mask, COMPUTE)
    i = _sigmoid(z_i + _load(peephole, units, mask, COMPUTE) * cp)            # eq. 7
    f = _sigmoid(z_f + _load(peephole, units + H, mask, COMPUTE) * cp)        # eq. 8
    g = _tanh(z_g)
    ct = f * cp + i * g                                                       # eq. 9
    o = _sigmoid(z_o + _load(peephole, units + 2 * H, mask, COMPUTE) * ct)    # eq. 10
    _store_gates(gates, gate, mask, H, i, f, g, o)
    _store(c, cell, mask, ct)
    _store(h, cell, mask, o * _tanh(ct))                                      # eq. 11


@triton.jit
def _backward_kernel(d_h, d_h_recurrent, d_c, gates, c, c_prev, peephole, bound, d_pre, d_c_prev,
                     d_peephole, H, HAS_RECURRENT: tl.constexpr, COMPUTE: tl.constexpr,
                     BLOCK: tl.constexpr):
    row, units, mask, gate, cell = _positions(H, BLOCK)
    i, f, g, o = _load_gates(gates, gate, mask, H, COMPUTE)
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
    _store_gates(d_pre, gate, mask, H, d_i, d_f, d_g, d_o)
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
    """``graves_lstm.Backend.cell_forward``: one launch."""
    grid, meta = _launch_shape(c)
    _forward_kernel[grid](from_input, from_input if recurrent is None else recurrent, c_prev,
                          peephole, gates, c, h, c.shape[1],
                          HAS_RECURRENT=recurrent is not None, **meta)


def cell_backward(d_h: Tensor, d_h_recurrent: Tensor | None, d_c: Tensor, gates: Tensor,
                  c: Tensor, c_prev: Tensor, peephole: Tensor, bound: float, d_pre: Tensor,
                  d_c_prev: Tensor, d_peephole: Tensor) -> None:
    """``graves_lstm.Backend.cell_backward``: one launch."""
    grid, meta = _launch_shape(c)
    _backward_kernel[grid](d_h, d_h if d_h_recurrent is None else d_h_recurrent, d_c, gates, c,
                           c_prev, peephole, bound, d_pre, d_c_prev, d_peephole, c.shape[1],
                           HAS_RECURRENT=d_h_recurrent is not None, **meta)


linear = F.linear


def product_with(weight: Tensor, rows: int, uses: int) -> Callable[[Tensor], Tensor]:
    """``graves_lstm.Backend.product_with``: one cuBLAS call per product."""
    weight_t = weight.t()
    return lambda x: torch.mm(x, weight_t)


def weight_gradient(d: Tensor, x: Tensor) -> Tensor:
    """``graves_lstm.Backend.weight_gradient``."""
    return d.t() @ x
