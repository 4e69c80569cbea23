"""The fused path: one Triton launch updates every tensor of a (device, dtype) bucket.

The launch is driven by tables that live on the device:

* ``tensor_table`` (int64, one row per tensor): the addresses of param, square_avg, grad_avg,
  momentum_buffer and step, and the tensor's numel;
* ``grad_table`` (int64, one per tensor): the gradient's address, apart because gradients are
  the one thing that may move from step to step (``zero_grad`` frees them);
* ``block_table`` (int64, one row per program): which tensor the program updates and where its
  block starts.

They are cached on the optimizer. Gradients in new storage cost one small host-to-device copy
of ``grad_table`` (into a table of its own under CUDA graph capture); the other tables are
rebuilt only when a param's or a state tensor's storage changes. There is no synchronisation,
and with stable storage no copy at all; ``launch_plan.py`` then skips the Python walk over the
params as well.

The step counters advance inside the same launch, so a step is exactly one kernel launch. With
bias correction every program reads its tensor's step and the last one to finish advances it;
without, no program reads it and the tensor's first program does. Every variant of the update
rule is a ``tl.constexpr`` specialisation of the one kernel, and each element of params, grads
and state is read once and written once. The math is fp32 whatever the storage dtype.

This module imports Triton at load time; the optimizer imports it only when the kernel is used,
so the CPU paths work where Triton is absent. ``TRITON_INTERPRET=1`` runs the same kernel on CPU
tensors, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import contextlib
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
# tensor_table columns (the kernel reads them by these numbers)
PARAM, SQUARE_AVG, GRAD_AVG, MOMENTUM_BUFFER, STEP, NUMEL = range(6)
COLUMNS = 6
KERNEL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# VECTOR: a full block of a tensor whose arrays all start at multiples of 16 bytes, so that its
# loads and stores may be 128 bits wide and need no mask; otherwise masked, element by element.
@triton.jit
def _pointer(base, column, DTYPE: tl.constexpr, VECTOR: tl.constexpr):
    pointer = tl.load(base + column).to(tl.pointer_type(DTYPE))
    if VECTOR:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _load(base, column, offsets, numel, DTYPE: tl.constexpr, VECTOR: tl.constexpr):
    pointer = _pointer(base, column, DTYPE, VECTOR)
    if VECTOR:
        return tl.load(pointer + offsets).to(tl.float32)
    return tl.load(pointer + offsets, mask=offsets < numel, other=0.0).to(tl.float32)


@triton.jit
def _store(base, column, offsets, numel, value, DTYPE: tl.constexpr, VECTOR: tl.constexpr):
    pointer = _pointer(base, column, DTYPE, VECTOR)
    if VECTOR:
        tl.store(pointer + offsets, value.to(DTYPE))
    else:
        tl.store(pointer + offsets, value.to(DTYPE), mask=offsets < numel)


@triton.jit
def _update_block(
    row, grad_row, offsets, numel, lr, alpha, log2_alpha, eps, weight_decay, momentum,
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, CENTERED: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, LR_IN_MOMENTUM: tl.constexpr,
    EPS_IN_SQRT: tl.constexpr, WEIGHT_DECAY: tl.constexpr, BIAS_CORRECTION: tl.constexpr,
    MAXIMIZE: tl.constexpr, VECTOR: tl.constexpr,
):
    # The equations are those of reference.py, in the same order.
    param = _load(row, 0, offsets, numel, PARAM_DTYPE, VECTOR)
    grad = _load(grad_row, 0, offsets, numel, PARAM_DTYPE, VECTOR)
    if MAXIMIZE:
        grad = -grad
    if WEIGHT_DECAY == 1:  # L2: g + wd theta
        grad = grad + weight_decay * param
    if WEIGHT_DECAY == 2:  # decoupled: theta (1 - lr wd)
        param = param * (1.0 - lr * weight_decay)

    square_avg = _load(row, 1, offsets, numel, STATE_DTYPE, VECTOR)
    square_avg = alpha * square_avg + (1.0 - alpha) * grad * grad
    _store(row, 1, offsets, numel, square_avg, STATE_DTYPE, VECTOR)
    variance = square_avg
    if CENTERED:
        grad_avg = _load(row, 2, offsets, numel, STATE_DTYPE, VECTOR)
        grad_avg = alpha * grad_avg + (1.0 - alpha) * grad
        _store(row, 2, offsets, numel, grad_avg, STATE_DTYPE, VECTOR)
    if BIAS_CORRECTION:
        # t counts this step; the counter itself advances when the tensor's last block is done
        t = tl.load(tl.load(row + 4).to(tl.pointer_type(tl.float32))) + 1.0
        correction = 1.0 - tl.exp2(t * log2_alpha)  # 1 - alpha^t
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
        buffer = _load(row, 3, offsets, numel, STATE_DTYPE, VECTOR)
        if LR_IN_MOMENTUM:
            u = lr * u
        buffer = momentum * buffer + u
        _store(row, 3, offsets, numel, buffer, STATE_DTYPE, VECTOR)
        direction = buffer
        if NESTEROV:
            direction = u + momentum * buffer
        if LR_IN_MOMENTUM:
            param = param - direction
        else:
            param = param - lr * direction
    else:
        param = param - lr * u
    _store(row, 0, offsets, numel, param, PARAM_DTYPE, VECTOR)


@triton.jit
def rmsprop_kernel(
    tensor_table, grad_table, block_table, arrivals, lr_pointer, lr_value, alpha, log2_alpha, eps,
    weight_decay, momentum,
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, LR_IS_TENSOR: tl.constexpr,
    CENTERED: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
    LR_IN_MOMENTUM: tl.constexpr, EPS_IN_SQRT: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr, MAXIMIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program updates BLOCK elements of one tensor (block_table row = program id); the
    last of a tensor's programs to finish advances its step counter."""
    program = tl.program_id(0)
    tensor = tl.load(block_table + 2 * program)
    # Blocks start at multiples of BLOCK, so a full block of an aligned tensor is aligned too.
    start = tl.multiple_of(tl.load(block_table + 2 * program + 1), BLOCK)
    row = tensor_table + tensor * 6
    grad_row = grad_table + tensor
    numel = tl.load(row + 5)
    offsets = start + tl.arange(0, BLOCK)
    if LR_IS_TENSOR:
        lr = tl.load(lr_pointer).to(tl.float32)
    else:
        lr = lr_value
    # Absent state columns hold 0, which leaves the test unchanged. Views into a flat buffer
    # (flat-parameter wrappers, DDP's gradient buckets) may start anywhere: only they, and each
    # tensor's last block, take the masked path.
    addresses = (tl.load(row + 0) | tl.load(row + 1) | tl.load(row + 2) | tl.load(row + 3)
                 | tl.load(grad_row))
    if (start + BLOCK <= numel) & (addresses % 16 == 0):
        _update_block(
            row, grad_row, offsets, numel, lr, alpha, log2_alpha, eps, weight_decay, momentum,
            PARAM_DTYPE, STATE_DTYPE, CENTERED, HAS_MOMENTUM, NESTEROV, LR_IN_MOMENTUM,
            EPS_IN_SQRT, WEIGHT_DECAY, BIAS_CORRECTION, MAXIMIZE, True,
        )
    else:
        _update_block(
            row, grad_row, offsets, numel, lr, alpha, log2_alpha, eps, weight_decay, momentum,
            PARAM_DTYPE, STATE_DTYPE, CENTERED, HAS_MOMENTUM, NESTEROV, LR_IN_MOMENTUM,
            EPS_IN_SQRT, WEIGHT_DECAY, BIAS_CORRECTION, MAXIMIZE, False,
        )
    step = tl.load(row + 4).to(tl.pointer_type(tl.float32))
    if BIAS_CORRECTION:
        # Every program of the tensor reads the step, so only the last to finish may advance
        # it. The barrier orders all of this program's threads' reads before the one thread
        # that issues the (acquire-release) atomic, as in a grid-wide sync. The last program
        # resets the count for the next launch, which keeps a replayed CUDA graph correct too.
        tl.debug_barrier()
        arrived = tl.atomic_add(arrivals + tensor, 1)
        if arrived == tl.maximum((numel + BLOCK - 1) // BLOCK, 1) - 1:  # an empty tensor: one
            tl.store(step, tl.load(step) + 1.0)
            tl.store(arrivals + tensor, 0)
    elif start == 0:  # no program reads the step: the tensor's first one advances it
        tl.store(step, tl.load(step) + 1.0)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


# Host copies of the gradient tables of captured CUDA graphs: every replay copies from them
# again, so they must outlive graphs whose lifetime this module cannot see. A few bytes each.
_CAPTURED_GRAD_ADDRESSES: list[Tensor] = []


def _int64_table(values: list[int] | tuple[int, ...], device: torch.device) -> Tensor:
    """A device copy of host integers; pinned on CUDA, so that the copy is truly asynchronous
    (torch's host allocator keeps the pinned block until the copy is done)."""
    pin = device.type == "cuda"
    return torch.tensor(values, dtype=torch.int64, pin_memory=pin).to(device, non_blocking=True)


@dataclass(eq=False)
class KernelLaunch:
    """Everything one launch for one bucket needs. The tables hold ``key`` (the addresses of
    params, state and steps, and the sizes) and ``grad_addresses``."""

    key: tuple[int, ...]
    tensor_table: Tensor
    block_table: Tensor
    arrivals: Tensor  # int32 per tensor: its programs finished so far (bias correction only)
    grad_table: Tensor
    grad_addresses: tuple[int, ...]
    param_dtype: torch.dtype
    state_dtype: torch.dtype

    def grad_table_for(self, grad_addresses: tuple[int, ...]) -> Tensor:
        """A device table of these gradient addresses: ``grad_table``, after one small copy when
        the gradients moved.

        During CUDA graph capture (where ``zero_grad()`` lets backward allocate the gradients
        from the graph's pool) the copy goes to a new table instead, from a host buffer that
        is kept for every replay to copy again: the graph keeps the addresses it was captured
        with, and ``grad_table`` stays the eager steps' own. (A graph captured without that copy
        reads ``grad_table``: eager steps on gradients elsewhere in between would move it.)
        """
        if grad_addresses == self.grad_addresses:
            return self.grad_table
        if _capturing():
            source = torch.tensor(grad_addresses, dtype=torch.int64)
            _CAPTURED_GRAD_ADDRESSES.append(source)
            table = torch.empty_like(self.grad_table)
            table.copy_(source, non_blocking=True)
            return table
        self.grad_table.copy_(_int64_table(grad_addresses, self.grad_table.device),
                              non_blocking=True)
        self.grad_addresses = grad_addresses
        return self.grad_table


def _addresses(tensors: GroupTensors) -> tuple[int, ...]:
    """Addresses of params, state and steps, and the sizes: what ``tensor_table`` holds."""
    columns = (tensors.params, tensors.square_avgs, tensors.grad_avgs, tensors.momentum_buffers,
               tensors.steps)
    return (*(t.data_ptr() for column in columns for t in column),
            *map(Tensor.numel, tensors.params))


def _build_launch(tensors: GroupTensors, key: tuple[int, ...]) -> KernelLaunch:
    if _capturing():
        raise RuntimeError(
            "RMSprop: the parameters or their state are new or have moved since the last step "
            "outside CUDA graph capture, and the kernel's tables cannot be built during capture. "
            "Run one step outside the capture first (as torch's capturable optimizers need too).")
    n = len(tensors.params)
    device = tensors.params[0].device
    rows = torch.zeros(n, COLUMNS, dtype=torch.int64)
    for column, values in ((PARAM, tensors.params), (SQUARE_AVG, tensors.square_avgs),
                           (GRAD_AVG, tensors.grad_avgs),
                           (MOMENTUM_BUFFER, tensors.momentum_buffers), (STEP, tensors.steps)):
        if values:
            rows[:, column] = torch.tensor([t.data_ptr() for t in values], dtype=torch.int64)
    numels = torch.tensor([p.numel() for p in tensors.params], dtype=torch.int64)
    rows[:, NUMEL] = numels
    # Every tensor gets at least one program: an empty one still advances its step.
    blocks_per_tensor = ((numels + BLOCK_SIZE - 1) // BLOCK_SIZE).clamp(min=1)
    tensor_index = torch.repeat_interleave(torch.arange(n), blocks_per_tensor)
    first_block = torch.cumsum(blocks_per_tensor, 0) - blocks_per_tensor
    block_in_tensor = torch.arange(len(tensor_index)) - first_block[tensor_index]
    blocks = torch.stack([tensor_index, block_in_tensor * BLOCK_SIZE], dim=1)
    grad_addresses = tuple(map(Tensor.data_ptr, tensors.grads))
    return KernelLaunch(
        key, rows.to(device, non_blocking=True), blocks.to(device, non_blocking=True),
        torch.zeros(n, dtype=torch.int32, device=device), _int64_table(grad_addresses, device),
        grad_addresses, tensors.params[0].dtype, tensors.square_avgs[0].dtype)


def cached_launch(tensors: GroupTensors, cached: KernelLaunch | None) -> KernelLaunch:
    """The cached launch when the params and state are where it holds them, else a freshly
    built one."""
    key = _addresses(tensors)
    if cached is None or cached.key != key:
        return _build_launch(tensors, key)
    return cached


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


def kernel_update(launch: KernelLaunch, grad_table: Tensor, hp: Hyperparameters) -> None:
    """Launch the kernel once for the whole bucket (step counters included)."""
    lr = hp.lr
    lr_is_tensor = isinstance(lr, Tensor)
    weight_decay_mode = 0 if not hp.weight_decay else (2 if hp.decoupled_weight_decay else 1)
    n_blocks = launch.block_table.shape[0]
    device = launch.tensor_table.device
    # Triton launches on the current device (and its current stream): make that the tensors'
    # device, as torch's own ops do, for a model spread over several GPUs.
    elsewhere = device.type == "cuda" and device.index != torch.cuda.current_device()
    with torch.cuda.device(device) if elsewhere else contextlib.nullcontext():
        rmsprop_kernel[(n_blocks,)](
            launch.tensor_table, grad_table, launch.block_table, launch.arrivals,
            lr if lr_is_tensor else launch.tensor_table, 0.0 if lr_is_tensor else float(lr),
            float(hp.alpha), math.log2(hp.alpha) if hp.alpha > 0 else -math.inf,
            float(hp.eps), float(hp.weight_decay), float(hp.momentum),
            PARAM_DTYPE=KERNEL_DTYPES[launch.param_dtype],
            STATE_DTYPE=KERNEL_DTYPES[launch.state_dtype],
            LR_IS_TENSOR=lr_is_tensor, CENTERED=hp.centered, HAS_MOMENTUM=hp.momentum > 0,
            NESTEROV=hp.nesterov, LR_IN_MOMENTUM=hp.lr_in_momentum, EPS_IN_SQRT=hp.eps_in_sqrt,
            WEIGHT_DECAY=weight_decay_mode, BIAS_CORRECTION=hp.bias_correction,
            MAXIMIZE=hp.maximize, BLOCK=BLOCK_SIZE, num_warps=NUM_WARPS,
        )
