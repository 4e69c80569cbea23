"""The kernel path's steady state: a param group's launches, reused from one step to the next.

Preparing a launch walks every parameter in Python: gather gradients and state into (device,
dtype) buckets, check that the kernel can take them, compare every address with the cached
tables. For 200 LSTM-shaped tensors that took 410-530 us per step on our CPU
(``benchmarks/kernel_host_overhead.py``), more than the kernel's memory traffic would take on a
current GPU. Once every param of a group that has a gradient has gone through the kernel, a
``LaunchPlan`` records what its launches were built from, and the next step only reads the
gradients, compares addresses and launches (125-135 us there).

A plan is reused while

* the same params have a gradient (those without are skipped, as on every path), the params
  are at the addresses the tables hold, and all of them and their gradients are contiguous
  (gradients may move: ``KernelLaunch.grad_table_for`` follows them);
* each param's state is the same dict (``load_state_dict`` or a reset of ``optimizer.state``
  gives new ones). The tensors inside are the optimizer's own and are updated in place; a tensor
  put into a state dict by hand is not noticed (load a state dict instead);
* the settings that choose the path and the state's layout are unchanged.

Anything else sends the step through the general path, which builds a new plan.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .group import local_shards

if TYPE_CHECKING:
    from .triton_kernel import KernelLaunch

# Group settings that choose the update path or which state tensors exist.
PATH_SETTINGS = ("fused", "foreach", "compiled", "differentiable", "centered")


def path_settings(group: dict[str, Any]) -> tuple:
    return (*(group[name] for name in PATH_SETTINGS), group["momentum"] > 0)


class Trained(NamedTuple):
    """The params of a group that have a gradient (as the group holds them, the keys of the
    optimizer's state), and the addresses of their storage and of their gradients'."""

    params: list[Tensor]
    param_addresses: tuple[int, ...]
    grad_addresses: tuple[int, ...]


def trained(params: list[Tensor]) -> Trained | None:
    """The params that have a gradient, with the addresses of their storage and their
    gradients'; None when there is none, or a param or gradient is not contiguous (a sparse
    gradient included), or is a tensor subclass that ``group.local_shards`` does not unwrap."""
    grads = [p.grad for p in params]
    if params and is_traceable_wrapper_subclass(params[0]):
        # DTensors: their local tensors have the storage (and plain methods, where a
        # wrapper's go through __torch_function__)
        with_grad = [(p, g) for p, g in zip(params, grads) if g is not None]
        if not with_grad:
            return None
        params, grads = map(list, zip(*with_grad))
        local = local_shards(params, grads)
        if local is None:
            return None
        storage, grads = local
        grad_addresses = None
    else:
        try:
            grad_addresses = tuple(map(Tensor.data_ptr, grads))
        except (TypeError, RuntimeError):  # a param without a gradient (or a sparse one)
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
            grad_addresses = None
        storage = params
    if not params:
        return None
    # (a sparse gradient is not contiguous, so this also keeps it from data_ptr())
    if not all(map(Tensor.is_contiguous, grads)) or not all(map(Tensor.is_contiguous, storage)):
        return None
    return Trained(params, tuple(map(Tensor.data_ptr, storage)),
                   grad_addresses or tuple(map(Tensor.data_ptr, grads)))


@dataclass(eq=False)
class LaunchPlan:
    """The launches of one param group, and what they were built from."""

    param_addresses: tuple[int, ...]  # of the params that had a gradient
    states: tuple[dict, ...]  # their state dicts, compared by identity
    settings: tuple
    launches: list[KernelLaunch]  # one per (device, dtype) bucket
    positions: list[list[int] | None]  # each launch's params among them; None: all, in order

    def launches_for(self, group: dict[str, Any],
                     state: dict) -> list[tuple[KernelLaunch, Tensor]] | None:
        """Each launch with the gradient table for the current gradients, or None when the plan
        is stale."""
        if self.settings != path_settings(group):
            return None
        found = trained(group["params"])
        if found is None or found.param_addresses != self.param_addresses:
            return None
        if not all(map(operator.is_, map(state.get, found.params), self.states)):
            return None
        grads = found.grad_addresses
        return [(launch, launch.grad_table_for(
                    grads if positions is None else tuple(grads[i] for i in positions)))
                for launch, positions in zip(self.launches, self.positions)]


def build(group: dict[str, Any], state: dict, launches: list[KernelLaunch],
          bucket_params: list[list[Tensor]]) -> LaunchPlan | None:
    """A plan for a group whose params with a gradient all went through ``launches`` (bucket by
    bucket), or None when that is not the case."""
    found = trained(group["params"])
    if found is None or sum(map(len, bucket_params)) != len(found.params):
        return None
    index = {id(p): i for i, p in enumerate(found.params)}
    positions = [[index[id(p)] for p in bucket] for bucket in bucket_params]
    in_order = list(range(len(found.params)))
    return LaunchPlan(found.param_addresses, tuple(map(state.get, found.params)),
                      path_settings(group), launches,
                      [None if p == in_order else p for p in positions])
