"""The fused path: one Triton launch updates every tensor of a (device, dtype) bucket.

The launch is driven by tables that live on the device:

* ``tensor_table`` (int64, one row per tensor, columns ``PARAM`` to ``NUMEL``): the addresses of param,
  square_avg, grad_avg, momentum_buffer and step, and the tensor's numel;
* ``grad_table`` (int64, one per tensor): the gradient's address, apart because gradients are
  the one thing that may move from step to step (``zero_grad`` frees them);
* ``block_table`` (int64, one row per program): which tensor the program updates and where its
  block starts.

They are cached per param group (``launch_plan.GroupLaunches``). Gradients in new storage cost
one small host-to-device copy of ``grad_table``; the other tables are rebuilt only when a
param's or a state tensor's storage changes. There is no synchronisation, and with stable
storage no copy at all; ``launch_plan.py`` then skips the Python walk over the params as well.

CUDA graphs. A captured step reads the tables at replay time, so whatever a graph has read is
never written again and lives as long as the optimizer: a graph captured on gradients that
backward allocated in the graph's pool gets its own gradient table, copied at every replay from
a pinned host buffer kept for it (one per set of gradient addresses, however often it is
captured); the eager ``grad_table`` that a graph read is replaced, not overwritten, when later
eager steps see gradients elsewhere; and a launch that a graph captured is kept when the group's
tables are rebuilt (``launch_plan.GroupLaunches``). The optimizer itself, its state and the
params must outlive the graph, as for torch's capturable optimizers.

The step counters advance inside the same launch, so a step is exactly one kernel launch. With
bias correction every program reads its tensor's step and the last one to finish advances it;
without, no program reads it and the tensor's first program does. Every variant of the update
rule is a ``tl.constexpr`` specialisation of the one kernel, and each element of params, grads
and state is read once and written once. The math is fp32 for fp32 and half-precision params
and fp64 for fp64 params; the hyperparameters reach the kernel as fp64 in both cases.

This module imports Triton at load time; the optimizer imports it only when the kernel is used,
so the CPU paths work where Triton is absent. ``TRITON_INTERPRET=1`` runs the same kernel on CPU
tensors, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch import Tensor

from .group import GroupTensors
from .reference import Hyperparameters

BLOCK_SIZE = 2048
NUM_WARPS = 4
KERNEL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16,
                 torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


# The columns of tensor_table, by which the host writes it and the kernel reads it.
PARAM, SQUARE_AVG, GRAD_AVG, MOMENTUM_BUFFER, STEP, NUMEL = map(tl.constexpr, range(6))
COLUMNS = tl.constexpr(6)


# VECTOR: a full block of a tensor whose arrays all start at multiples of 16 bytes, so that its
# loads and stores may be 128 bits wide and need no mask; otherwise masked, element by element.
@triton.jit
def _pointer(base, column, DTYPE: tl.constexpr, VECTOR: tl.constexpr):
    pointer = tl.load(base + column).to(tl.pointer_type(DTYPE))
    if VECTOR:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _load(base, column, offsets, numel, DTYPE: tl.constexpr, MATH: tl.constexpr,
          VECTOR: tl.constexpr):
    pointer = _pointer(base, column, DTYPE, VECTOR)
    if VECTOR:
        return tl.load(pointer + offsets).to(MATH)
    return tl.load(pointer + offsets, mask=offsets < numel, other=0.0).to(MATH)


@triton.jit
def _store(base, column, offsets, numel, value, DTYPE: tl.constexpr, VECTOR: tl.constexpr):
    pointer = _pointer(base, column, DTYPE, VECTOR)
    if VECTOR:
        tl.store(pointer + offsets, value.to(DTYPE))
    else:
        tl.store(pointer + offsets, value.to(DTYPE), mask=offsets < numel)


# Correctly rounded square root and quotient: Triton's fp32 sqrt and division are approximate,
# so fp32 takes the _rn forms (fp32 only); fp64's plain ones are IEEE-exact already.
@triton.jit
def _sqrt(x):
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _div(x, y):
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def _update_block(
    row, grad_row, offsets, numel, lr, alpha, one_minus_alpha, log2_alpha, eps, weight_decay,
    momentum, PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, MATH: tl.constexpr,
    CENTERED: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
    LR_IN_MOMENTUM: tl.constexpr, EPS_IN_SQRT: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr, MAXIMIZE: tl.constexpr, VECTOR: tl.constexpr,
):
    # The equations are those of reference.py, in the same order.
    param = _load(row, PARAM, offsets, numel, PARAM_DTYPE, MATH, VECTOR)
    grad = _load(grad_row, 0, offsets, numel, PARAM_DTYPE, MATH, VECTOR)
    if MAXIMIZE:
        grad = -grad
    if WEIGHT_DECAY == 1:  # L2: g + wd theta
        grad = grad + weight_decay * param
    if WEIGHT_DECAY == 2:  # decoupled: theta (1 - lr wd)
        param = param * (1.0 - lr * weight_decay)

    square_avg = _load(row, SQUARE_AVG, offsets, numel, STATE_DTYPE, MATH, VECTOR)
    square_avg = alpha * square_avg + one_minus_alpha * grad * grad
    _store(row, SQUARE_AVG, offsets, numel, square_avg, STATE_DTYPE, VECTOR)
    variance = square_avg
    if CENTERED:
        grad_avg = _load(row, GRAD_AVG, offsets, numel, STATE_DTYPE, MATH, VECTOR)
        grad_avg = alpha * grad_avg + one_minus_alpha * grad
        _store(row, GRAD_AVG, offsets, numel, grad_avg, STATE_DTYPE, VECTOR)
    if BIAS_CORRECTION:
        # t counts this step; the counter itself advances when the tensor's last block is done
        t = tl.load(tl.load(row + STEP).to(tl.pointer_type(tl.float32))).to(MATH) + 1.0
        correction = 1.0 - tl.exp2(t * log2_alpha)  # 1 - alpha^t
        variance = variance / correction
        if CENTERED:
            grad_avg = grad_avg / correction
    if CENTERED:
        variance = variance - grad_avg * grad_avg
    if EPS_IN_SQRT:
        denom = _sqrt(variance + eps)
    else:
        denom = _sqrt(variance) + eps
    u = _div(grad, denom)

    if HAS_MOMENTUM:
        buffer = _load(row, MOMENTUM_BUFFER, offsets, numel, STATE_DTYPE, MATH, VECTOR)
        if LR_IN_MOMENTUM:
            u = lr * u
        buffer = momentum * buffer + u
        _store(row, MOMENTUM_BUFFER, offsets, numel, buffer, STATE_DTYPE, VECTOR)
        direction = buffer
        if NESTEROV:
            direction = u + momentum * buffer
        if LR_IN_MOMENTUM:
            param = param - direction
        else:
            param = param - lr * direction
    else:
        param = param - lr * u
    _store(row, PARAM, offsets, numel, param, PARAM_DTYPE, VECTOR)


# The tables and the lr tensor are read one scalar at a time, so their alignment is of no use
# to the compiler: without that specialisation a compiled kernel holds for any argument values,
# which lets kernel_update reuse it (see _COMPILED).
@triton.jit(do_not_specialize_on_alignment=["tensor_table", "grad_table", "block_table",
                                            "arrivals", "lr_pointer"])
def rmsprop_kernel(
    tensor_table, grad_table, block_table, arrivals, lr_pointer, lr_value: tl.float64,
    alpha: tl.float64, one_minus_alpha: tl.float64, log2_alpha: tl.float64, eps: tl.float64,
    weight_decay: tl.float64, momentum: tl.float64,
    PARAM_DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, MATH: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr, CENTERED: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr, LR_IN_MOMENTUM: tl.constexpr, EPS_IN_SQRT: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr, BIAS_CORRECTION: tl.constexpr, MAXIMIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program updates BLOCK elements of one tensor (block_table row = program id); the
    last of a tensor's programs to finish advances its step counter."""
    program = tl.program_id(0)
    tensor = tl.load(block_table + 2 * program)
    # Blocks start at multiples of BLOCK, so a full block of an aligned tensor is aligned too.
    start = tl.multiple_of(tl.load(block_table + 2 * program + 1), BLOCK)
    row = tensor_table + tensor * COLUMNS
    grad_row = grad_table + tensor
    numel = tl.load(row + NUMEL)
    offsets = start + tl.arange(0, BLOCK)
    if LR_IS_TENSOR:
        lr = tl.load(lr_pointer).to(MATH)
    else:
        lr = tl.full((), lr_value, MATH)
    # tl.full: an fp64 argument in MATH's precision (the interpreter passes Python floats,
    # which tl.full takes exactly; a bare float in an expression would be rounded to fp32)
    alpha = tl.full((), alpha, MATH)
    one_minus_alpha = tl.full((), one_minus_alpha, MATH)
    log2_alpha = tl.full((), log2_alpha, MATH)
    eps = tl.full((), eps, MATH)
    weight_decay = tl.full((), weight_decay, MATH)
    momentum = tl.full((), momentum, MATH)
    # Absent state columns hold 0, which leaves the test unchanged. Views into a flat buffer
    # (flat-parameter wrappers, DDP's gradient buckets) may start anywhere: only they, and each
    # tensor's last block, take the masked path.
    addresses = (tl.load(row + PARAM) | tl.load(row + SQUARE_AVG)
                 | tl.load(row + GRAD_AVG) | tl.load(row + MOMENTUM_BUFFER)
                 | tl.load(grad_row))
    if (start + BLOCK <= numel) & (addresses % 16 == 0):
        _update_block(
            row, grad_row, offsets, numel, lr, alpha, one_minus_alpha, log2_alpha, eps,
            weight_decay, momentum, PARAM_DTYPE, STATE_DTYPE, MATH, CENTERED, HAS_MOMENTUM,
            NESTEROV, LR_IN_MOMENTUM, EPS_IN_SQRT, WEIGHT_DECAY, BIAS_CORRECTION, MAXIMIZE, True,
        )
    else:
        _update_block(
            row, grad_row, offsets, numel, lr, alpha, one_minus_alpha, log2_alpha, eps,
            weight_decay, momentum, PARAM_DTYPE, STATE_DTYPE, MATH, CENTERED, HAS_MOMENTUM,
            NESTEROV, LR_IN_MOMENTUM, EPS_IN_SQRT, WEIGHT_DECAY, BIAS_CORRECTION, MAXIMIZE, False,
        )
    step = tl.load(row + STEP).to(tl.pointer_type(tl.float32))
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


def capturing(device: torch.device) -> bool:
    """Whether the current stream of ``device`` is being captured into a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _host_table(count: int, device: torch.device) -> Tensor:
    """A host int64 buffer for a table of ``device``: pinned when that is a CUDA device, so
    that a copy from it is truly asynchronous, and may be captured in a CUDA graph."""
    return torch.empty(count, dtype=torch.int64, pin_memory=device.type == "cuda")


def _int64_table(values: tuple[int, ...], device: torch.device) -> Tensor:
    """A device copy of host integers, through a pinned buffer on CUDA (torch's host allocator
    keeps it until the copy is done)."""
    host = torch.tensor(values, dtype=torch.int64, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


# Triton's compiled kernels by (device index, constexpr arguments). Triton's own launch
# (``rmsprop_kernel[grid](...)``) binds and specialises every argument and looks the kernel up
# on every call; once a variant is compiled, its launcher is called directly. The kernel does
# not specialise on argument values (see rmsprop_kernel), so this key is the whole of Triton's.
_COMPILED: dict[tuple, triton.compiler.CompiledKernel] = {}
CONSTEXPRS = ("PARAM_DTYPE", "STATE_DTYPE", "MATH", "LR_IS_TENSOR", "CENTERED", "HAS_MOMENTUM",
              "NESTEROV", "LR_IN_MOMENTUM", "EPS_IN_SQRT", "WEIGHT_DECAY", "BIAS_CORRECTION",
              "MAXIMIZE", "BLOCK")


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
    device: torch.device = field(init=False)
    blocks: int = field(init=False)  # programs per launch: rows of block_table
    in_graph: bool = False  # a CUDA graph captured this launch
    grad_table_in_graph: bool = False  # ... and reads grad_table itself
    # What graphs read besides the tables above: host buffers that their replays copy gradient
    # addresses from, one per set of addresses; eager gradient tables that they read, replaced.
    graph_grad_sources: dict[tuple[int, ...], Tensor] = field(default_factory=dict)
    graph_grad_tables: list[Tensor] = field(default_factory=list)
    # A host buffer for the next capture on new gradient storage, made outside capture:
    # allocating pinned memory during capture is not safe on every torch version.
    spare_source: Tensor | None = None

    def __post_init__(self) -> None:
        self.device = self.tensor_table.device
        self.blocks = self.block_table.shape[0]
        self.spare_source = _host_table(len(self.grad_addresses), self.device)

    def grad_table_for(self, grad_addresses: tuple[int, ...]) -> Tensor:
        """A device table of these gradient addresses: ``grad_table``, after one small copy when
        the gradients moved; during CUDA graph capture, see the module docstring."""
        if capturing(self.device):
            return self._captured_grad_table(grad_addresses)
        if grad_addresses != self.grad_addresses:
            if self.grad_table_in_graph:  # a graph reads it: the eager steps get another
                self.graph_grad_tables.append(self.grad_table)
                self.grad_table = torch.empty_like(self.grad_table)
                self.grad_table_in_graph = False
            self.grad_table.copy_(_int64_table(grad_addresses, self.device), non_blocking=True)
            self.grad_addresses = grad_addresses
        if self.spare_source is None:  # a capture used it
            self.spare_source = _host_table(len(grad_addresses), self.device)
        return self.grad_table

    def update(self, grad_table: Tensor, hp: Hyperparameters) -> None:
        """Launch the kernel once for the whole bucket (step counters included), reading the
        gradients' addresses from ``grad_table`` (``grad_table_for``)."""
        lr = hp.lr
        lr_is_tensor = isinstance(lr, Tensor)
        alpha = float(hp.alpha)
        args = (self.tensor_table, grad_table, self.block_table, self.arrivals,
                lr if lr_is_tensor else self.tensor_table, 0.0 if lr_is_tensor else float(lr),
                alpha, 1.0 - alpha, math.log2(alpha) if alpha > 0 else -math.inf,
                float(hp.eps), float(hp.weight_decay), float(hp.momentum))
        math_dtype = tl.float64 if self.param_dtype == torch.float64 else tl.float32
        constexprs = (
            KERNEL_DTYPES[self.param_dtype], KERNEL_DTYPES[self.state_dtype], math_dtype,
            lr_is_tensor, hp.centered, hp.momentum > 0, hp.nesterov, hp.lr_in_momentum,
            hp.eps_in_sqrt, 0 if not hp.weight_decay else (2 if hp.decoupled_weight_decay else 1),
            hp.bias_correction, hp.maximize, BLOCK_SIZE)
        device = self.device
        # Triton launches on the current device (and its current stream): make that the tensors'
        # device, as torch's own ops do, for a model spread over several GPUs.
        elsewhere = device.type == "cuda" and device.index != torch.cuda.current_device()
        with torch.cuda.device(device) if elsewhere else contextlib.nullcontext():
            compiled = _COMPILED.get((device.index, constexprs))
            if compiled is not None:
                compiled[(self.blocks, 1, 1)](
                    *args, *constexprs, stream=torch._C._cuda_getCurrentRawStream(device.index))
                return
            compiled = rmsprop_kernel[(self.blocks,)](
                *args, **dict(zip(CONSTEXPRS, constexprs)), num_warps=NUM_WARPS)
            if isinstance(compiled, triton.compiler.CompiledKernel):  # not the interpreter's
                _COMPILED[(device.index, constexprs)] = compiled

    def _captured_grad_table(self, grad_addresses: tuple[int, ...]) -> Tensor:
        self.in_graph = True
        if grad_addresses == self.grad_addresses:
            self.grad_table_in_graph = True
            return self.grad_table
        source = self.graph_grad_sources.get(grad_addresses)
        if source is None:
            source = self.spare_source  # None after a capture without an eager step since
            if source is None:
                source = _host_table(len(grad_addresses), self.device)
            source.copy_(torch.tensor(grad_addresses, dtype=torch.int64))
            self.graph_grad_sources[grad_addresses] = source
            self.spare_source = None
        table = torch.empty_like(self.grad_table)  # in the graph's pool: its lifetime
        table.copy_(source, non_blocking=True)  # captured: every replay copies again
        return table


def _addresses(tensors: GroupTensors) -> tuple[int, ...]:
    """Addresses of params, state and steps, and the sizes: what ``tensor_table`` holds."""
    columns = (tensors.params, tensors.square_avgs, tensors.grad_avgs, tensors.momentum_buffers,
               tensors.steps)
    return (*(t.data_ptr() for column in columns for t in column),
            *map(Tensor.numel, tensors.params))


def _build_launch(tensors: GroupTensors, key: tuple[int, ...]) -> KernelLaunch:
    device = tensors.params[0].device
    if capturing(device):
        raise RuntimeError(
            "RMSprop: the parameters or their state are new or have moved since the last step "
            "outside CUDA graph capture, and the kernel's tables cannot be built during capture. "
            "Run one step outside the capture first (as torch's capturable optimizers need too).")
    n = len(tensors.params)
    rows = torch.zeros(n, COLUMNS.value, dtype=torch.int64)
    for column, values in ((PARAM, tensors.params), (SQUARE_AVG, tensors.square_avgs),
                           (GRAD_AVG, tensors.grad_avgs),
                           (MOMENTUM_BUFFER, tensors.momentum_buffers), (STEP, tensors.steps)):
        if values:
            rows[:, column.value] = torch.tensor([t.data_ptr() for t in values], dtype=torch.int64)
    numels = torch.tensor([p.numel() for p in tensors.params], dtype=torch.int64)
    rows[:, NUMEL.value] = numels
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
    names = "float32, float64, float16 and bfloat16"
    if dtype not in KERNEL_DTYPES:
        return f"parameter dtype {dtype} (the kernel takes {names})"
    state_dtypes = {t.dtype for t in tensors.square_avgs + tensors.grad_avgs + tensors.momentum_buffers}
    if len(state_dtypes) != 1 or next(iter(state_dtypes)) not in KERNEL_DTYPES:
        return f"state dtypes {sorted(map(str, state_dtypes))} (one of {names})"
    for p, g in zip(tensors.params, tensors.grads):
        if g.dtype != p.dtype:
            return f"gradient dtype {g.dtype} differs from its parameter's {p.dtype}"
    everything = (tensors.params + tensors.grads + tensors.square_avgs + tensors.grad_avgs
                  + tensors.momentum_buffers)
    if not all(t.is_contiguous() for t in everything):
        return "a non-contiguous parameter, gradient or state tensor"
    return None
