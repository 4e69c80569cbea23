"""The kernel path's cache for one param group: its launches, and the plan that reuses them.

Preparing a launch walks every parameter in Python: gather gradients and state into (device,
dtype) buckets, check that the kernel can take them, compare every address with the cached
tables. For 200 LSTM-shaped tensors that takes 280-380 us per step on our CPU
(``benchmarks/kernel_host_overhead.py``), more than the kernel's memory traffic would take on a
current GPU. Once every param of a group that has a gradient has gone through the kernel, the
group's ``GroupLaunches`` records what its launches were built from, and the next step only
reads the gradients, compares addresses and launches (57-62 us there).

The plan is reused while

* the same params have a gradient (those without are skipped, as on every path) and the params
  are at the addresses the tables hold. Gradients may move (``KernelLaunch.grad_table_for``
  follows them); the layout of params and gradients is checked when they are built into a plan
  and when gradients move, so a tensor whose strides change in place (``t_()``, ``set_()``,
  ``as_strided_()``) at the same address is not noticed;
* the optimizer's state maps the same params to the same dicts (``VersionedState`` counts every
  change; ``load_state_dict`` or a reset gives new ones). The tensors inside are the optimizer's
  own and are updated in place; a tensor put into a state dict by hand is not noticed (load a
  state dict instead);
* the settings that choose the path and the state's layout are unchanged.

Anything else sends the step through the general path, which builds a new plan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .group import local_shards

if TYPE_CHECKING:
    from .triton_kernel import KernelLaunch

# Group settings that choose the update path or which state tensors exist.
PATH_SETTINGS = ("fused", "foreach", "differentiable", "centered")
_grad = attrgetter("grad")


def path_settings(group: dict[str, Any]) -> tuple:
    return (*(group[name] for name in PATH_SETTINGS), group["momentum"] > 0)


class VersionedState(defaultdict):
    """The optimizer's ``state`` (param -> dict, as torch's), counting every change of which
    dict a param maps to, so that a plan is checked against it in one comparison."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.version = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.version += 1
        super().__delitem__(key)

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def pop(self, *args: Any) -> Any:
        self.version += 1
        return super().pop(*args)

    def popitem(self) -> tuple:
        self.version += 1
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self.version += 1
        return super().setdefault(*args)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.version += 1
        super().update(*args, **kwargs)

    def __ior__(self, other: Any) -> VersionedState:
        self.update(other)
        return self


class Trained(NamedTuple):
    """The params of a group that have a gradient (as the group holds them, the keys of the
    optimizer's state), the tensors that hold their storage (a DTensor's local tensor, else the
    param), their gradients (local too), and the addresses of both."""

    params: list[Tensor]
    storage: list[Tensor]
    param_addresses: tuple[int, ...]
    grads: list[Tensor]
    grad_addresses: tuple[int, ...]


def trained(params: list[Tensor]) -> Trained | None:
    """The params that have a gradient, with their gradients and the addresses of both; None
    when there is none, for a sparse gradient, or for a tensor subclass that
    ``group.local_shards`` does not unwrap. A DTensor's addresses are its local tensor's."""
    if not params:
        return None
    grads = list(map(_grad, params))
    storage = params
    if is_traceable_wrapper_subclass(params[0]):
        # DTensors: their local tensors have the storage (and plain methods, where a
        # wrapper's go through __torch_function__)
        params = [p for p, g in zip(params, grads) if g is not None]
        grads = [g for g in grads if g is not None]
        local = local_shards(params, grads) if params else None
        if local is None:
            return None
        storage, grads = local
    try:
        grad_addresses = tuple(map(Tensor.data_ptr, grads))
    except TypeError:  # params without a gradient (None): the others
        return trained([p for p, g in zip(params, grads) if g is not None])
    except RuntimeError:  # a sparse gradient has no data_ptr
        return None
    return Trained(params, storage, tuple(map(Tensor.data_ptr, storage)), grads,
                   grad_addresses)


def _contiguous(tensors: list[Tensor]) -> bool:
    return all(map(Tensor.is_contiguous, tensors))


class Plan(NamedTuple):
    """What a group's launches were built from."""

    param_addresses: tuple[int, ...]  # of the params that had a gradient
    state: VersionedState  # the optimizer's state, and its version then
    state_version: int
    settings: tuple
    launches: tuple[KernelLaunch, ...]  # one per (device, dtype) bucket
    positions: tuple[list[int] | None, ...]  # each launch's params among them; None: all, in order


@dataclass(eq=False)
class GroupLaunches:
    """The kernel path's cache for one param group: one launch per (device, dtype) bucket, the
    plan that reuses them step after step, and the launches that CUDA graphs captured."""

    launches: dict[tuple, KernelLaunch] = field(default_factory=dict)
    plan: Plan | None = None
    grad_addresses: tuple[int, ...] = ()  # the plan's gradients, their layout checked
    # Launches that a CUDA graph captured, since replaced: kept for the graph's replays, which
    # read their tables (one per capture that a rebuild followed; a few kB each).
    in_graphs: list[KernelLaunch] = field(default_factory=list)

    def launch(self, bucket: tuple, launch: KernelLaunch) -> KernelLaunch:
        """Record ``launch`` as the bucket's (a launch it replaces is dropped, unless a graph
        captured it)."""
        previous = self.launches.get(bucket)
        if previous is not launch:
            self._retire(previous)
            self.launches[bucket] = launch
        return launch

    def _retire(self, launch: KernelLaunch | None) -> None:
        if launch is not None and launch.in_graph:
            self.in_graphs.append(launch)

    def forget(self) -> None:
        """Drop the plan and the launches (new state was loaded): the next step rebuilds them."""
        for launch in self.launches.values():
            self._retire(launch)
        self.launches.clear()
        self.plan = None

    def planned(self, group: dict[str, Any],
                state: VersionedState) -> list[tuple[KernelLaunch, Tensor]] | None:
        """Each launch with the gradient table for the current gradients, or None when there is
        no plan or it is stale."""
        plan = self.plan
        if (plan is None or state is not plan.state or state.version != plan.state_version
                or plan.settings != path_settings(group)):
            return None
        found = trained(group["params"])
        if found is None or found.param_addresses != plan.param_addresses:
            return None
        grads = found.grad_addresses
        if grads != self.grad_addresses:
            if not _contiguous(found.grads):
                return None
            self.grad_addresses = grads
        return [(launch, launch.grad_table_for(
                    grads if positions is None else tuple(grads[i] for i in positions)))
                for launch, positions in zip(plan.launches, plan.positions)]

    def make_plan(self, group: dict[str, Any], state: VersionedState,
                  launches: list[KernelLaunch], bucket_params: list[list[Tensor]]) -> None:
        """Plan the next steps on ``launches``, this step's, whose buckets held
        ``bucket_params``, when they covered every param of the group that has a gradient."""
        found = trained(group["params"])
        self.plan = None
        if (found is None or sum(map(len, bucket_params)) != len(found.params)
                or not _contiguous(found.grads) or not _contiguous(found.storage)):
            return
        index = {id(p): i for i, p in enumerate(found.params)}
        positions = [[index[id(p)] for p in bucket] for bucket in bucket_params]
        in_order = list(range(len(found.params)))
        self.grad_addresses = found.grad_addresses
        self.plan = Plan(found.param_addresses, state, state.version, path_settings(group),
                         tuple(launches), tuple(None if p == in_order else p for p in positions))
