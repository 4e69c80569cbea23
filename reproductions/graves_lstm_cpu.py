"""Graves' LSTM on the CPU: the elementwise half of each time step in C++
(``graves_lstm_cpu.cpp``, built once per machine, loaded as the torch ops
``torch.ops.graves_lstm.cell_forward`` and ``cell_backward``), the matrix products in oneDNN.

A time step is one recurrent product and one call of the cell op, forward and backward alike
(the equations are in ``graves_lstm.py``; ``graves_lstm_triton.py`` is the CUDA twin). The cell op
is vectorised with ATen's ``Vectorized`` (Sleef's exp) where the CPU has AVX2 and FMA, and
splits the batch across threads.

The products go to oneDNN, as ``nn.LSTM``'s own CPU path does, through the op that Inductor
calls for linear layers on the CPU (``torch.ops.mkldnn._linear_pointwise``), with the recurrent
weight packed once per sequence. At the paper's sizes oneDNN ran these products about 2x faster
than the GEMM behind ``torch.mm`` on our x86 test machine. float64, and a torch whose oneDNN op is
missing or disagrees with ``torch.mm`` (checked once), use ``torch.mm``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from optimizers import cpp_build

SOURCE = Path(__file__).with_name("graves_lstm_cpu.cpp")


@functools.cache
def ops():
    """``torch.ops.graves_lstm``, with the library built (now, if this machine has no build)."""
    cpp_build.load("graves_lstm_cpu", SOURCE, "the CPU cell of GravesLSTM", cpp_build.vector_flags(),
                   is_python_module=False)
    return torch.ops.graves_lstm


def cell_forward(from_input: Tensor, recurrent: Tensor | None, c_prev: Tensor, peephole: Tensor,
                 gates: Tensor, c: Tensor, h: Tensor) -> None:
    """``graves_lstm.Backend.cell_forward``: one call of the C++ op."""
    ops().cell_forward(from_input, recurrent, c_prev, peephole, gates, c, h)


def cell_backward(d_h: Tensor, d_h_recurrent: Tensor | None, d_c: Tensor, gates: Tensor,
                  c: Tensor, c_prev: Tensor, peephole: Tensor, bound: float, d_pre: Tensor,
                  d_c_prev: Tensor, d_peephole: Tensor) -> None:
    """``graves_lstm.Backend.cell_backward``: one call of the C++ op."""
    ops().cell_backward(d_h, d_h_recurrent, d_c, gates, c, c_prev, peephole, bound, d_pre,
                        d_c_prev, d_peephole)


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight^T + bias in oneDNN; ``weight`` plain (any strides) or packed."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def _onednn_works() -> bool:
    """Whether oneDNN's linear op runs here and agrees with torch.mm (checked once)."""
    x = torch.arange(12.0).reshape(3, 4) / 8
    weight = torch.arange(20.0).reshape(4, 5).t() / 16   # strided, as weight_gradient passes
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 3)
        return all(torch.allclose(y, x @ weight.t())
                   for y in (_onednn_linear(x, weight), _onednn_linear(x, packed)))
    except (AttributeError, RuntimeError):   # no such op, or none for this build
        return False


def _use_onednn(t: Tensor) -> bool:
    return t.dtype == torch.float32 and _onednn_works()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``graves_lstm.Backend.linear``."""
    return _onednn_linear(x, weight, bias) if _use_onednn(x) else F.linear(x, weight, bias)


def product_with(weight: Tensor, rows: int, uses: int) -> Callable[[Tensor], Tensor]:
    """``graves_lstm.Backend.product_with``: oneDNN with the weight packed once, unless it is
    used once."""
    if not _use_onednn(weight):
        weight_t = weight.t()
        return lambda x: torch.mm(x, weight_t)
    if uses > 1:
        weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
    return lambda x: _onednn_linear(x, weight)


def weight_gradient(d: Tensor, x: Tensor) -> Tensor:
    """``graves_lstm.Backend.weight_gradient``."""
    if not _use_onednn(d):
        return d.t() @ x
    return _onednn_linear(x.t().contiguous(), d.t()).t()
