"""The multi-tensor path: the update of ``reference.py`` as a short sequence of ``torch._foreach``
calls over a whole (device, dtype) bucket. It is the default wherever the Triton kernel is not
used, the CPU in particular.

Half-precision buckets are promoted to fp32 copies, updated, and written back, so that the math
is fp32 as in the other paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .group import GroupTensors, compute_dtype
from .reference import Hyperparameters


def _add_scaled_(targets: list[Tensor], tensors: list[Tensor], scale: float | Tensor) -> None:
    """targets += scale * tensors, with scale a Python number or a one-element tensor."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(targets, tensors, alpha=scale)


class _Scalars:
    """Scalars as the foreach ops should receive them. On the CPU in eager mode every foreach op
    runs a per-tensor fallback that wraps a Python number into a new tensor for each tensor of
    the list (a copy each); one 0-d tensor, made once, serves them all. Elsewhere (CUDA, or
    traced by torch.compile) Python numbers are what the ops take best."""

    def __init__(self, like: Tensor) -> None:
        self.wrap = like.device.type == "cpu" and not torch.compiler.is_compiling()
        self.dtype = like.dtype

    def __call__(self, value: float | Tensor) -> float | Tensor:
        if not self.wrap or isinstance(value, Tensor):
            return value
        return torch.tensor(value, dtype=self.dtype)

    def add_(self, tensors: list[Tensor], value: float) -> None:
        """tensors += value (alpha=1.0 picks the overload that takes a 0-d tensor as is)."""
        if self.wrap:
            torch._foreach_add_(tensors, self(value), alpha=1.0)
        else:
            torch._foreach_add_(tensors, value)

    def add(self, tensors: list[Tensor], value: float) -> list[Tensor]:
        if self.wrap:
            return torch._foreach_add(tensors, self(value), alpha=1.0)
        return torch._foreach_add(tensors, value)


def _bias_corrections(steps: list[Tensor], alpha: float) -> list[float] | list[Tensor]:
    """1 - alpha^t for each tensor: Python numbers for host-side steps (eager), else tensors."""
    if steps[0].device.type == "cpu" and not torch.compiler.is_compiling():
        return [1 - alpha ** float(t) for t in steps]
    corrections = torch._foreach_pow(alpha, steps)
    torch._foreach_sub_(corrections, 1)
    torch._foreach_neg_(corrections)
    return corrections


def _promoted(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors themselves when already fp32 or wider, else fp32 copies."""
    dtype = compute_dtype(tensors[0].dtype)
    return tensors if tensors[0].dtype == dtype else [t.to(dtype) for t in tensors]


def foreach_update(tensors: GroupTensors, hp: Hyperparameters) -> None:
    """Update one (device, dtype) bucket in place; same rule as ``reference.update``."""
    _Scalars(tensors.steps[0]).add_(tensors.steps, 1.0)
    lr, a, mu = hp.lr, hp.alpha, hp.momentum
    params = _promoted(tensors.params)
    scalar = _Scalars(params[0])
    square_avgs = _promoted(tensors.square_avgs)
    grad_avgs = _promoted(tensors.grad_avgs) if hp.centered else []
    buffers = _promoted(tensors.momentum_buffers) if mu > 0 else []

    grads = _promoted(tensors.grads)
    if hp.maximize:
        grads = torch._foreach_neg(grads)
    if hp.weight_decay and hp.decoupled_weight_decay:
        torch._foreach_mul_(params, scalar(1 - lr * hp.weight_decay))
    elif hp.weight_decay:
        grads = torch._foreach_add(grads, params, alpha=hp.weight_decay)

    torch._foreach_mul_(square_avgs, scalar(a))
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - a)
    if hp.centered:
        torch._foreach_lerp_(grad_avgs, grads, 1 - a)

    if hp.bias_correction:
        corrections = _bias_corrections(tensors.steps, a)
        variance = torch._foreach_div(square_avgs, corrections)
        if hp.centered:
            means = torch._foreach_div(grad_avgs, corrections)
            torch._foreach_addcmul_(variance, means, means, value=-1)
    elif hp.centered:
        variance = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
    else:
        variance = square_avgs
    # The denominator is built in place whenever variance is already a scratch copy.
    denom = variance if variance is not square_avgs else None
    if hp.eps_in_sqrt:
        if denom is None:
            denom = scalar.add(variance, hp.eps)
        else:
            scalar.add_(denom, hp.eps)
        torch._foreach_sqrt_(denom)
    else:
        if denom is None:
            denom = torch._foreach_sqrt(variance)
        else:
            torch._foreach_sqrt_(denom)
        scalar.add_(denom, hp.eps)

    if mu == 0:
        if isinstance(lr, Tensor):
            _add_scaled_(params, torch._foreach_div(grads, denom), -lr)
        else:
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)
    elif hp.lr_in_momentum:
        scaled = torch._foreach_div(grads, denom)
        torch._foreach_mul_(scaled, scalar(lr))
        torch._foreach_mul_(buffers, scalar(mu))
        torch._foreach_add_(buffers, scaled)
        if hp.nesterov:
            torch._foreach_add_(scaled, buffers, alpha=mu)
            torch._foreach_sub_(params, scaled)
        else:
            torch._foreach_sub_(params, buffers)
    else:
        torch._foreach_mul_(buffers, scalar(mu))
        torch._foreach_addcdiv_(buffers, grads, denom)
        if hp.nesterov:
            direction = torch._foreach_div(grads, denom)
            torch._foreach_add_(direction, buffers, alpha=mu)
            _add_scaled_(params, direction, -lr)
        else:
            _add_scaled_(params, buffers, -lr)

    for promoted, original in (
        (params, tensors.params),
        (square_avgs, tensors.square_avgs),
        (grad_avgs, tensors.grad_avgs),
        (buffers, tensors.momentum_buffers),
    ):
        if promoted is not original and promoted:
            torch._foreach_copy_(original, promoted)
