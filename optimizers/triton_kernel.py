"""The fused path: one Triton launch updates every tensor of a (device, dtype) bucket.

The launch is driven by two tables that live on the device:

* ``tensor_table`` (int64, one row per tensor): the addresses of param, grad, square_avg,
  grad_avg, momentum_buffer and step, and the tensor's numel;
* ``block_table`` (int64, one row per program): which tensor the program updates and where its
  block starts.

Both are cached on the optimizer and rebuilt only when a tensor's storage or size changes, so a
step costs one host-to-device copy at most and no synchronisation; with stable storage (the case
under CUDA graph capture) it costs none. Every variant of the update rule is a ``tl.constexpr``
specialisation of the one kernel, and each element of params, grads and state is read once and
written once. The math is fp32 whatever the storage dtype.

This module imports Triton at load time; the optimizer imports it only when the kernel is used,
so the CPU paths work where Triton is absent. ``TRITON_INTERPRET=1`` runs the same kernel on CPU
tensors, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .group import GroupTensors
from .reference import Hyperparameters

BLOCK_SIZE = 2048
NUM_WARPS = 4
# tensor_table columns
PARAM, GRAD, SQUARE_AVG, GRAD_AVG, MOMENTUM_BUFFER, STEP, NUMEL = range(7)
COLUMNS = 7
KERNEL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _pointer(base, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    pointer = tl.load(base + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:  # every address is a multiple of 16 bytes: lets loads and stores be vectorised
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _load(base, column, offsets, numel, DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
          MASKED: tl.constexpr):
    pointer = _pointer(base, column, DTYPE, ALIGNED)
    if MASKED:
        return tl.load(pointer + offsets, mask=offsets < numel, other=0.0).to(tl.float32)
    return tl.load(pointer + offsets).to(tl.float32)


@triton.jit
def _store(base, column, offsets, numel, value, DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
           MASKED: tl.constexpr):
    pointer = _pointer(base, column, DTYPE, ALIGNED)
    if MASKED:
        tl.store(pointer + offsets, value.to(DTYPE), mask=offsets < numel)
    else:
        tl.store(pointer + offsets, value.to(DTYPE))


@triton.jit
def _update_block(
    row, offsets, numel, lr, alpha, log2_alpha, eps, weight_decay, momentum,
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, CENTERED: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, LR_IN_MOMENTUM: tl.constexpr,
    EPS_IN_SQRT: tl.constexpr, WEIGHT_DECAY: tl.constexpr, BIAS_CORRECTION: tl.constexpr,
    MAXIMIZE: tl.constexpr, ALIGNED: tl.constexpr, MASKED: tl.constexpr,
):
    # The equations are those of reference.py, in the same order.
    param = _load(row, 0, offsets, numel, PARAM_DTYPE, ALIGNED, MASKED)
    grad = _load(row, 1, offsets, numel, PARAM_DTYPE, ALIGNED, MASKED)
    if MAXIMIZE:
        grad = -grad
    if WEIGHT_DECAY == 1:  # L2: g + wd theta
        grad = grad + weight_decay * param
    if WEIGHT_DECAY == 2:  # decoupled: theta (1 - lr wd)
        param = param * (1.0 - lr * weight_decay)

    square_avg = _load(row, 2, offsets, numel, STATE_DTYPE, ALIGNED, MASKED)
    square_avg = alpha * square_avg + (1.0 - alpha) * grad * grad
    _store(row, 2, offsets, numel, square_avg, STATE_DTYPE, ALIGNED, MASKED)
    variance = square_avg
    if CENTERED:
        grad_avg = _load(row, 3, offsets, numel, STATE_DTYPE, ALIGNED, MASKED)
        grad_avg = alpha * grad_avg + (1.0 - alpha) * grad
        _store(row, 3, offsets, numel, grad_avg, STATE_DTYPE, ALIGNED, MASKED)
    if BIAS_CORRECTION:
        step = tl.load(tl.load(row + 5).to(tl.pointer_type(tl.float32)))
        correction = 1.0 - tl.exp2(step * log2_alpha)  # 1 - alpha^t
        variance = variance / correction
        if CENTERED:
            grad_avg = grad_avg / correction
    if CENTERED:
        variance = variance - grad_avg * grad_avg
    if EPS_IN_SQRT:
        denom = tl.sqrt_rn(variance + eps)
    else:
        denom = tl.sqrt_rn(variance) + eps
    u = tl.div_rn(grad, denom)

    if HAS_MOMENTUM:
        buffer = _load(row, 4, offsets, numel, STATE_DTYPE, ALIGNED, MASKED)
        if LR_IN_MOMENTUM:
            u = lr * u
        buffer = momentum * buffer + u
        _store(row, 4, offsets, numel, buffer, STATE_DTYPE, ALIGNED, MASKED)
        direction = buffer
        if NESTEROV:
            direction = u + momentum * buffer
        if LR_IN_MOMENTUM:
            param = param - direction
        else:
            param = param - lr * direction
    else:
        param = param - lr * u
    _store(row, 0, offsets, numel, param, PARAM_DTYPE, ALIGNED, MASKED)


@triton.jit
def rmsprop_kernel(
    tensor_table, block_table, lr_pointer, lr_value, alpha, log2_alpha, eps, weight_decay,
    momentum,
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, LR_IS_TENSOR: tl.constexpr,
    CENTERED: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
    LR_IN_MOMENTUM: tl.constexpr, EPS_IN_SQRT: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr, MAXIMIZE: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program updates BLOCK elements of one tensor (block_table row = program id)."""
    program = tl.program_id(0)
    tensor = tl.load(block_table + 2 * program)
    # Blocks start at multiples of BLOCK: with aligned addresses, whole blocks vectorise.
    start = tl.multiple_of(tl.load(block_table + 2 * program + 1), BLOCK)
    row = tensor_table + tensor * 7
    numel = tl.load(row + 6)
    offsets = start + tl.arange(0, BLOCK)
    if LR_IS_TENSOR:
        lr = tl.load(lr_pointer).to(tl.float32)
    else:
        lr = lr_value
    # Only a tensor's last block needs a mask; full blocks keep their loads vectorised.
    if start + BLOCK <= numel:
        _update_block(
            row, offsets, numel, lr, alpha, log2_alpha, eps, weight_decay, momentum,
            PARAM_DTYPE, STATE_DTYPE, CENTERED, HAS_MOMENTUM, NESTEROV, LR_IN_MOMENTUM,
            EPS_IN_SQRT, WEIGHT_DECAY, BIAS_CORRECTION, MAXIMIZE, ALIGNED, False,
        )
    else:
        _update_block(
            row, offsets, numel, lr, alpha, log2_alpha, eps, weight_decay, momentum,
            PARAM_DTYPE, STATE_DTYPE, CENTERED, HAS_MOMENTUM, NESTEROV, LR_IN_MOMENTUM,
            EPS_IN_SQRT, WEIGHT_DECAY, BIAS_CORRECTION, MAXIMIZE, ALIGNED, True,
        )


@dataclass
class LaunchTables:
    """Device tables for one bucket, valid while ``key`` (addresses and sizes) is unchanged."""

    key: tuple[int, ...]
    tensor_table: Tensor
    block_table: Tensor
    aligned: bool  # every address a multiple of 16 bytes (views into a flat buffer may not be)


def _addresses(tensors: GroupTensors) -> tuple[int, ...]:
    columns = (tensors.params, tensors.grads, tensors.square_avgs, tensors.grad_avgs,
               tensors.momentum_buffers, tensors.steps)
    return tuple(t.data_ptr() for column in columns for t in column) + tuple(
        p.numel() for p in tensors.params
    )


def _build_tables(tensors: GroupTensors, key: tuple[int, ...]) -> LaunchTables:
    n = len(tensors.params)
    device = tensors.params[0].device
    rows = torch.zeros(n, COLUMNS, dtype=torch.int64)
    for column, values in ((PARAM, tensors.params), (GRAD, tensors.grads),
                           (SQUARE_AVG, tensors.square_avgs), (GRAD_AVG, tensors.grad_avgs),
                           (MOMENTUM_BUFFER, tensors.momentum_buffers), (STEP, tensors.steps)):
        if values:
            rows[:, column] = torch.tensor([t.data_ptr() for t in values], dtype=torch.int64)
    numels = torch.tensor([p.numel() for p in tensors.params], dtype=torch.int64)
    rows[:, NUMEL] = numels
    blocks_per_tensor = (numels + BLOCK_SIZE - 1) // BLOCK_SIZE
    tensor_index = torch.repeat_interleave(torch.arange(n), blocks_per_tensor)
    first_block = torch.cumsum(blocks_per_tensor, 0) - blocks_per_tensor
    block_in_tensor = torch.arange(len(tensor_index)) - first_block[tensor_index]
    blocks = torch.stack([tensor_index, block_in_tensor * BLOCK_SIZE], dim=1)
    aligned = bool((rows[:, :STEP] % 16 == 0).all())
    return LaunchTables(key, rows.to(device, non_blocking=True),
                        blocks.to(device, non_blocking=True), aligned)


def cached_tables(tensors: GroupTensors, cached: LaunchTables | None) -> LaunchTables:
    """The cached tables when every address and size is unchanged, else freshly built ones."""
    key = _addresses(tensors)
    if cached is not None and cached.key == key:
        return cached
    return _build_tables(tensors, key)


def check_kernel_tensors(tensors: GroupTensors) -> str | None:
    """Why the kernel cannot take this bucket, or None when it can."""
    dtype = tensors.params[0].dtype
    if dtype not in KERNEL_DTYPES:
        return f"parameter dtype {dtype} (the kernel takes float32, float16 and bfloat16)"
    state_dtypes = {t.dtype for t in tensors.square_avgs + tensors.grad_avgs + tensors.momentum_buffers}
    if len(state_dtypes) != 1 or next(iter(state_dtypes)) not in KERNEL_DTYPES:
        return f"state dtypes {sorted(map(str, state_dtypes))} (one of float32, float16, bfloat16)"
    for p, g in zip(tensors.params, tensors.grads):
        if g.dtype != p.dtype:
            return f"gradient dtype {g.dtype} differs from its parameter's {p.dtype}"
    everything = (tensors.params + tensors.grads + tensors.square_avgs + tensors.grad_avgs
                  + tensors.momentum_buffers)
    if not all(t.is_contiguous() for t in everything):
        return "a non-contiguous parameter, gradient or state tensor"
    return None


def kernel_update(tensors: GroupTensors, hp: Hyperparameters, tables: LaunchTables) -> None:
    """Advance the step counters and launch the kernel once for the whole bucket."""
    torch._foreach_add_(tensors.steps, 1)
    lr = hp.lr
    lr_is_tensor = isinstance(lr, Tensor)
    weight_decay_mode = 0 if not hp.weight_decay else (2 if hp.decoupled_weight_decay else 1)
    n_blocks = tables.block_table.shape[0]
    rmsprop_kernel[(n_blocks,)](
        tables.tensor_table, tables.block_table,
        lr if lr_is_tensor else tables.tensor_table, 0.0 if lr_is_tensor else float(lr),
        float(hp.alpha), math.log2(hp.alpha) if hp.alpha > 0 else -math.inf, float(hp.eps),
        float(hp.weight_decay), float(hp.momentum),
        PARAM_DTYPE=KERNEL_DTYPES[tensors.params[0].dtype],
        STATE_DTYPE=KERNEL_DTYPES[tensors.square_avgs[0].dtype],
        LR_IS_TENSOR=lr_is_tensor, CENTERED=hp.centered, HAS_MOMENTUM=hp.momentum > 0,
        NESTEROV=hp.nesterov, LR_IN_MOMENTUM=hp.lr_in_momentum, EPS_IN_SQRT=hp.eps_in_sqrt,
        WEIGHT_DECAY=weight_decay_mode, BIAS_CORRECTION=hp.bias_correction,
        MAXIMIZE=hp.maximize, ALIGNED=tables.aligned, BLOCK=BLOCK_SIZE, num_warps=NUM_WARPS,
    )
