"""The kernel path's steady state: a param group's launches, reused from one step to the next.

Preparing a launch walks every parameter in Python: gather gradients and state into (device,
dtype) buckets, check that the kernel can take them, compare every address with the cached
tables. For 200 LSTM-shaped tensors that took 390-530 us per step on our CPU
(``benchmarks/kernel_host_overhead.py``), more than the kernel's memory traffic would take on a
current GPU. Once a group has gone through the kernel whole, a ``LaunchPlan`` records what its
launches were built from, and the next step only reads the gradients, compares addresses and
launches (125 us there).

A plan is reused while

* every param of the group has a contiguous (dense) gradient, and the params are at the
  addresses the tables hold (gradients may move: ``KernelLaunch.point_to_grads`` follows them);
* each param's state is the same dict (``load_state_dict`` or a reset of ``optimizer.state``
  gives new ones). The tensors inside are the optimizer's own and are updated in place; a tensor
  put into a state dict by hand is not noticed (load a state dict instead);
* the settings that choose the path and the state's layout are unchanged.

Anything else sends the step through the general path, which builds a new plan.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from .triton_kernel import KernelLaunch

# Group settings that choose the update path or which state tensors exist.
PATH_SETTINGS = ("fused", "foreach", "compiled", "differentiable", "centered")


def path_settings(group: dict[str, Any]) -> tuple:
    return (*(group[name] for name in PATH_SETTINGS), group["momentum"] > 0)


def addresses(params: Sequence[Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The addresses of the params and of their gradients; None when a param has no gradient
    or either is not contiguous (a sparse gradient included)."""
    grads = [p.grad for p in params]
    try:
        if not all(map(Tensor.is_contiguous, grads)) or not all(map(Tensor.is_contiguous, params)):
            return None
        return tuple(map(Tensor.data_ptr, params)), tuple(map(Tensor.data_ptr, grads))
    except TypeError:  # a gradient is None
        return None


@dataclass(eq=False)
class LaunchPlan:
    """The launches of one param group, and what they were built from."""

    param_addresses: tuple[int, ...]
    states: tuple[dict, ...]  # each param's state dict, compared by identity
    settings: tuple
    launches: list[KernelLaunch]  # one per (device, dtype) bucket
    positions: list[list[int] | None]  # each launch's params in the group; None: all, in order

    def launches_for(self, group: dict[str, Any], state: dict) -> list[KernelLaunch] | None:
        """The launches, pointed at the current gradients, or None when the plan is stale."""
        params = group["params"]
        if self.settings != path_settings(group):
            return None
        found = addresses(params)
        if found is None or found[0] != self.param_addresses:
            return None
        if not all(map(operator.is_, map(state.get, params), self.states)):
            return None
        grads = found[1]
        for launch, positions in zip(self.launches, self.positions):
            launch.point_to_grads(grads if positions is None else tuple(grads[i] for i in positions))
        return self.launches


def build(group: dict[str, Any], state: dict, launches: list[KernelLaunch],
          bucket_params: list[list[Tensor]]) -> LaunchPlan | None:
    """A plan for a group whose every param went through ``launches`` (bucket by bucket), or
    None when that is not the case."""
    params = group["params"]
    found = addresses(params)
    if found is None or sum(map(len, bucket_params)) != len(params):
        return None
    index = {id(p): i for i, p in enumerate(params)}
    positions = [[index[id(p)] for p in bucket] for bucket in bucket_params]
    in_order = list(range(len(params)))
    return LaunchPlan(found[0], tuple(map(state.get, params)), path_settings(group), launches,
                      [None if p == in_order else p for p in positions])
