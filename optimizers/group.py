"""The tensors of one parameter group that a step updates, and the hyperparameters it reads.

Every update path (for-loop, foreach, compiled, Triton) receives a :class:`GroupTensors` for one
(device, dtype) bucket and the group's settings as :class:`~optimizers.reference.Hyperparameters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .reference import Hyperparameters


@dataclass
class GroupTensors:
    """Parallel lists: entry i of each list belongs to ``params[i]``."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    square_avgs: list[Tensor] = field(default_factory=list)
    grad_avgs: list[Tensor] = field(default_factory=list)  # empty unless centered
    momentum_buffers: list[Tensor] = field(default_factory=list)  # empty unless momentum > 0
    steps: list[Tensor] = field(default_factory=list)


def hyperparameters(group: dict) -> Hyperparameters:
    """The update rule's settings, read from a param group (lr may be a tensor)."""
    return Hyperparameters(**{name: group[name] for name in Hyperparameters._fields})


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The math is fp32 or wider: half-precision values are promoted to float32."""
    return torch.promote_types(dtype, torch.float32)
