"""The per-tensor path: the reference update applied to each tensor in turn.

It serves ``foreach=False`` and ``differentiable=True``: every op of the reference is out of
place, so autograd can follow the step.
"""

from __future__ import annotations

from . import reference
from .group import GroupTensors, compute_dtype
from .reference import Hyperparameters, RMSpropState


def for_loop_update(tensors: GroupTensors, hp: Hyperparameters) -> None:
    """Update every tensor of ``tensors`` in place by one step of ``reference.update``."""
    for i, param in enumerate(tensors.params):
        dtype = compute_dtype(param.dtype)
        state = RMSpropState(
            step=tensors.steps[i].to(dtype),  # the counter is float32: 1 - a^t in dtype
            square_avg=tensors.square_avgs[i].to(dtype),
            grad_avg=tensors.grad_avgs[i].to(dtype) if hp.centered else None,
            momentum_buffer=tensors.momentum_buffers[i].to(dtype) if hp.momentum > 0 else None,
        )
        new_param, new_state = reference.update(
            param.to(dtype), tensors.grads[i].to(dtype), state, hp
        )
        param.copy_(new_param)
        tensors.square_avgs[i].copy_(new_state.square_avg)
        if hp.centered:
            tensors.grad_avgs[i].copy_(new_state.grad_avg)
        if hp.momentum > 0:
            tensors.momentum_buffers[i].copy_(new_state.momentum_buffer)
        tensors.steps[i].add_(1)
