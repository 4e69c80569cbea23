"""The tensors of one parameter group that a step updates, and the hyperparameters it reads.

Every update path (for-loop, foreach, compiled, Triton) receives a :class:`GroupTensors` for one
(device, dtype) bucket and the group's settings as :class:`~optimizers.reference.Hyperparameters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

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


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def local_shards(params: list[Tensor], *columns: list[Tensor]) -> list[list[Tensor]] | None:
    """This rank's local tensors of DTensor ``params`` and of each column of tensors beside
    them (gradients, state); None unless the params are DTensors and every tensor is laid out
    like its param (same mesh and placements), so that it holds the same elements."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(params[0], dtensor):
        return None
    for column in columns:
        for tensor, param in zip(column, params):
            if not (isinstance(tensor, dtensor) and tensor.device_mesh == param.device_mesh
                    and tensor.placements == param.placements):
                return None
    # _local_tensor rather than to_local(): the same tensor, without an autograd op per call
    return [[t._local_tensor for t in column] for column in (params, *columns)]


def local_tensors(tensors: GroupTensors) -> GroupTensors | None:
    """The bucket with DTensors (FSDP2 shards, tensor-parallel pieces) replaced by this rank's
    local tensors, which an element-wise update may take on their own; None when that would not
    be the same update (a gradient or state tensor laid out unlike its param) or for another
    tensor subclass. A bucket of plain tensors comes back as is.

    The kernel and the fused CPU loop address memory directly: a wrapper such as a DTensor has
    no storage of its own (its ``data_ptr()`` is 0); its local tensor does.
    """
    if not (is_traceable_wrapper_subclass(tensors.params[0])
            or is_traceable_wrapper_subclass(tensors.grads[0])):
        return tensors
    names = [f.name for f in fields(GroupTensors) if f.name not in ("params", "steps")]
    local = local_shards(tensors.params, *(getattr(tensors, name) for name in names))
    if local is None:
        return None
    return GroupTensors(params=local[0], steps=tensors.steps, **dict(zip(names, local[1:])))
