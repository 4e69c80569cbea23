"""Shared pieces of the tests: the optimizer variants and a trajectory runner, image folders, and
the arguments of tiny runs."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from optimizers import reference
from optimizers.reference import Hyperparameters
from optimizers.rmsprop import triton_available

# The Triton kernel on CPU tensors: Triton installed, its interpreter on (tests/conftest.py)
needs_triton = pytest.mark.skipif(
    not triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs Triton and TRITON_INTERPRET=1")


def triton_on_cpu():
    """Within it, fused=True on CPU tensors runs the Triton kernel (in Triton's interpreter)
    instead of the fused C++ loop."""
    return mock.patch("optimizers.rmsprop.TRITON_ON_CPU", True)

# Every published form and every extra flag, each at least once.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "hinton": {"alpha": 0.9, "lr": 1e-3},
    "centered": {"centered": True},
    "momentum": {"momentum": 0.9},
    "centered_momentum": {"centered": True, "momentum": 0.9},
    "eps_in_sqrt": {"eps_in_sqrt": True, "eps": 1e-3},
    "tensorflow1": {"initial_square_avg": 1.0, "eps_in_sqrt": True, "lr_in_momentum": True,
                    "momentum": 0.9, "alpha": 0.9, "eps": 1e-10},
    "graves": {"centered": True, "eps_in_sqrt": True, "lr_in_momentum": True, "momentum": 0.9,
               "alpha": 0.95, "eps": 1e-4, "lr": 1e-4},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "nesterov_lr_inside": {"momentum": 0.8, "nesterov": True, "lr_in_momentum": True},
    "l2_weight_decay": {"weight_decay": 0.1, "momentum": 0.5},
    "decoupled_weight_decay": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "bias_correction": {"bias_correction": True, "alpha": 0.9},
    # centered + bias correction: v^ - m^^2 is exactly 0 at step 1, so eps goes inside the root
    "bias_correction_centered": {"bias_correction": True, "centered": True, "alpha": 0.9,
                                 "eps_in_sqrt": True, "eps": 1e-2},
    "maximize": {"maximize": True, "momentum": 0.5, "centered": True},
}

# (rtol, atol) against the float64 reference for a well-conditioned element; where an element's
# update is ill-conditioned, rounding_spread widens it (assert_matches_reference).
TOLERANCES = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-12, 1e-14)}
SPREADS_ALLOWED = 4  # times the spread of RANDOM_ROUNDINGS Monte Carlo runs
RANDOM_ROUNDINGS = 3


def gradient(shape, step: int, index: int, dtype: torch.dtype) -> torch.Tensor:
    """A deterministic gradient with varied signs and scales, in ``dtype``."""
    n = torch.Size(shape).numel()
    x = torch.arange(n, dtype=torch.float64).reshape(shape)
    g = torch.sin(x * (0.7 + index) + 1.3 * step) * (1 + torch.cos(x * 0.11 + step) ** 2)
    return g.to(dtype)


def initial_params(shapes, dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for shape in shapes]


def reference_trajectory(params, settings: dict, steps: int,
                         rounding: TorchDispatchMode | None = None) -> tuple[list, list]:
    """Final params and states of reference.update in float64 from the same start (its
    arithmetic randomly rounded by ``rounding``, when given)."""
    hp = Hyperparameters(**{k: v for k, v in settings.items() if k in Hyperparameters._fields})
    finals, states = [], []
    for index, p in enumerate(params):
        dtype, p = p.dtype, p.double()
        state = reference.init(p, hp)
        for step in range(steps):
            g = gradient(p.shape, step, index, dtype).to(p.device, torch.float64)
            with rounding or contextlib.nullcontext():
                p, state = reference.update(p, g, state, hp)
        finals.append(p)
        states.append(state)
    return finals, states


_ARITHMETIC = {torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor, torch.ops.aten.mul.Tensor,
               torch.ops.aten.div.Tensor, torch.ops.aten.sqrt.default,
               torch.ops.aten.pow.Tensor_Scalar}


class RandomRounding(TorchDispatchMode):
    """Monte Carlo arithmetic (Parker, Pierce & Eggert 2000): every float64 arithmetic result
    is multiplied by 1 + d, d uniform in [-unit, unit], as if rounded at that unit roundoff."""

    def __init__(self, unit: float, seed: int, device: torch.device) -> None:
        super().__init__()
        self.unit = unit
        self.generator = torch.Generator(device).manual_seed(seed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _ARITHMETIC and out.dtype == torch.float64:
            d = torch.empty_like(out).uniform_(-self.unit, self.unit, generator=self.generator)
            out.addcmul_(out, d)  # out (1 + d)
        return out


def rounding_spread(params, settings: dict, steps: int) -> tuple[list, list]:
    """How far from the float64 reference an implementation that rounds at the params' dtype
    may land, element by element: the largest deviation of RANDOM_ROUNDINGS reference runs with
    random rounding (``RandomRounding``), for the final params and each state tensor,
    computed on the params' device.

    Where the update is well conditioned this is a few units in the last place, far below the
    fixed tolerance. Where it is not, it is what a fixed tolerance ignores: an L2 term that
    cancels the gradient leaves g = grad + wd theta with few correct digits, and with eps near
    sqrt(v) at the first step the step u = g / (sqrt(v) + eps) inherits that error; the centered
    and bias-corrected variance is a difference of nearly equal numbers in its first steps.
    """
    exact, exact_states = reference_trajectory(params, settings, steps)
    unit = torch.finfo(params[0].dtype).eps / 2
    spreads = [torch.zeros_like(p) for p in exact]
    state_spreads = [{key: torch.zeros_like(value) for key, value in state._asdict().items()
                      if isinstance(value, torch.Tensor)} for state in exact_states]
    for seed in range(RANDOM_ROUNDINGS):
        finals, states = reference_trajectory(params, settings, steps,
                                              RandomRounding(unit, seed, params[0].device))
        for spread, final, e in zip(spreads, finals, exact):
            torch.maximum(spread, (final - e).abs(), out=spread)
        for spread, state, e in zip(state_spreads, states, exact_states):
            for key, value in spread.items():
                torch.maximum(value, (getattr(state, key) - getattr(e, key)).abs(), out=value)
    return spreads, state_spreads


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, spread: torch.Tensor,
                             dtype: torch.dtype = torch.float32) -> None:
    """actual within the fixed tolerance of ``dtype``, widened element by element by
    SPREADS_ALLOWED times the rounding spread (``rounding_spread``)."""
    rtol, atol = TOLERANCES[dtype]
    error = (actual.double() - expected).abs()
    allowed = atol + rtol * expected.abs() + SPREADS_ALLOWED * spread
    worst = int((error - allowed).argmax()) if error.numel() else 0
    assert bool((error <= allowed).all()), (
        f"{int((error > allowed).sum())} of {error.numel()} elements off; the worst, at flat "
        f"index {worst}: {actual.reshape(-1)[worst].item()!r} against "
        f"{expected.reshape(-1)[worst].item()!r}, allowed {allowed.reshape(-1)[worst].item():.3g} "
        f"(rounding spread {spread.reshape(-1)[worst].item():.3g})")


def optimizer_trajectory(make_optimizer, params, steps: int):
    """Final params and the optimizer after ``steps`` steps on the same gradients."""
    params = [p.clone().requires_grad_() for p in params]
    optimizer = make_optimizer(params)
    for step in range(steps):
        for index, p in enumerate(params):
            p.grad = gradient(p.shape, step, index, p.dtype)
        optimizer.step()
    return [p.detach() for p in params], optimizer


def gradients_in_one_buffer(params, step: int, buffer: torch.Tensor, offset: int) -> None:
    """Each param's gradient is the next view of ``buffer`` from ``offset`` on (as DDP's gradient
    buckets are; an odd offset leaves them unaligned), holding ``gradient(shape, step, index)``."""
    for index, p in enumerate(params):
        p.grad = buffer[offset:offset + p.numel()].view(p.shape)
        p.grad.copy_(gradient(p.shape, step, index, p.dtype))
        offset += p.numel()


def write_png_folder(root: Path, count: int, size: int) -> None:
    """An ImageFolder on disk: ``count`` random RGB PNGs of ``size`` pixels in classes a and b."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(count // 2):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / label / f"{i}.png")


# A handwriting prediction run small enough for a test: 24 Hershey lines, 8 units, 2 mixtures.
TINY_HANDWRITING = [
    "--data.init_args.hershey_lines", "24", "--data.init_args.hershey_val_lines", "4",
    "--data.init_args.batch_size", "8", "--model.init_args.hidden_size", "8",
    "--model.init_args.num_mixtures", "2", "--model.init_args.picture_every_n_epochs", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]

# A BN-LSTM run on mnist5k small enough for a test: 3 batches of 16, 7 steps of 112 pixels.
TINY_BN_LSTM = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "16",
    "--data.init_args.pixels_per_step", "112", "--model.init_args.input_size", "112",
    "--model.init_args.t_max", "7", "--model.init_args.hidden_size", "8",
    "--optimizer_monitor.every_n_steps", "1"]


class CountOps(TorchDispatchMode):
    """Counts the aten ops that would launch a kernel on CUDA: not views, not allocations."""

    ALLOCATIONS = frozenset({"empty", "empty_like", "new_empty", "empty_strided",
                             "new_empty_strided"})

    def __init__(self):
        super().__init__()
        self.ops = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and not func.is_view and \
                func.overloadpacket.__name__ not in self.ALLOCATIONS:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_kernel_launches(module, mode: CountOps, monkeypatch) -> None:
    """Counts each launch of ``module``'s Triton kernels ``_forward_kernel`` and
    ``_backward_kernel`` in ``mode`` under the kernel's name, without the interpreter's own tensor
    traffic inside a launch."""
    for name in ("_forward_kernel", "_backward_kernel"):
        kernel = getattr(module, name)

        def run(*args, _run=kernel.run, _name=name, **kwargs):
            mode.ops[_name] += 1
            mode.paused = True
            try:
                return _run(*args, **kwargs)
            finally:
                mode.paused = False

        monkeypatch.setattr(kernel, "run", run)




def counted_forward_and_backward(mode: CountOps, forward) -> tuple[Counter, Counter]:
    """What ``mode`` counts in ``forward()`` (which returns every h_t and the last c) and in the
    backward of their sum (the sum itself not counted)."""
    with mode:
        outputs, c = forward()
    forward_ops = mode.ops.copy()
    loss = outputs.sum() + c.sum()
    mode.ops.clear()
    with mode:
        loss.backward()
    return forward_ops, mode.ops.copy()


def per_time_step(count, short: int = 4, long: int = 12) -> tuple[Counter, Counter]:
    """The forward's and the backward's counts per time step: ``count(steps)`` (a forward and a
    backward Counter) at ``long`` steps less at ``short``, over the difference, zeros left out."""
    (forward_short, backward_short), (forward_long, backward_long) = count(short), count(long)
    return tuple(+Counter({k: (at_long[k] - at_short[k]) / (long - short) for k in at_long})
                 for at_short, at_long in ((forward_short, forward_long),
                                           (backward_short, backward_long)))

def cuda_kernels(forward) -> tuple[int, int]:
    """The CUDA kernels the profiler sees in ``forward()`` (which returns a tensor) and in the
    backward of its sum, after one warm-up call of both (Triton compiles, cuBLAS picks its
    kernels)."""
    from torch.profiler import ProfilerActivity, profile

    forward().sum().backward()
    counts = []
    with profile(activities=[ProfilerActivity.CUDA]) as forward_profile:
        outputs = forward()
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as backward_profile:
        outputs.sum().backward()
        torch.cuda.synchronize()
    for profiler in (forward_profile, backward_profile):
        counts.append(sum(e.device_type == torch.autograd.DeviceType.CUDA
                          for e in profiler.events()))
    return counts[0], counts[1]
