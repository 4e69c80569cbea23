"""The BN-LSTM on the CPU: each time step after its matrix products in C++ (``bn_lstm_cpu.cpp``,
built once per machine, loaded as the torch ops ``torch.ops.bn_lstm.step_forward`` and
``step_backward``), the products in oneDNN as for Graves' LSTM (``graves_lstm_cpu``).

A time step is one recurrent product and one call of the step op, forward and backward alike
(the equations are in ``bn_lstm.py``; ``bn_lstm_triton.py`` is the CUDA twin). The step op
normalises with the batch's statistics or the population's, updates the population's, and
differentiates through the batch's; it is vectorised with ATen's ``Vectorized`` where the CPU has
AVX-512 (else AVX2 and FMA), and splits the hidden units across threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from optimizers import cpp_build
from reproductions import graves_lstm_cpu

SOURCE = Path(__file__).with_name("bn_lstm_cpu.cpp")


@functools.cache
def ops():
    """``torch.ops.bn_lstm``, with the library built (now, if this machine has no build)."""
    # 512-bit vectors where the CPU has them: the step is bound by its exponentials (measured
    # 10% faster than 256-bit at the paper's sizes).
    cpp_build.load("bn_lstm_cpu", SOURCE, "the CPU step of the BN-LSTM",
                   cpp_build.vector_flags(avx512=True), is_python_module=False)
    return torch.ops.bn_lstm


linear = graves_lstm_cpu.linear

# oneDNN's call costs about 12 us whatever the product's size; below about 16 columns of input
# ATen's GEMM is faster (measured on the 2-core x86 machine, one thread).
THIN = 16


def product_with(weight: Tensor, rows: int, uses: int) -> Callable[[Tensor], Tensor]:
    """``bn_lstm.Backend.product_with``: oneDNN (``graves_lstm_cpu``), ATen's GEMM for a weight
    of few input columns."""
    if weight.shape[1] > THIN:
        return graves_lstm_cpu.product_with(weight, rows, uses)
    weight_t = weight.t()
    return lambda x: torch.mm(x, weight_t)


def add_weight_gradient(total: Tensor, d: Tensor, x: Tensor) -> None:
    """``bn_lstm.Backend.add_weight_gradient``: oneDNN's product added, or ATen's added in place
    for few columns of x, as ``product_with`` chooses."""
    if x.shape[1] > THIN:
        total += graves_lstm_cpu.weight_gradient(d, x)
    else:
        total.addmm_(d.t(), x)


def step_forward(*args) -> None:
    """``bn_lstm.Backend.step_forward``: one call of the C++ op."""
    ops().step_forward(*args)


def step_backward(*args) -> None:
    """``bn_lstm.Backend.step_backward``: one call of the C++ op."""
    ops().step_backward(*args)
