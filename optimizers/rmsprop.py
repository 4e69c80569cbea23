"""``RMSprop``: a drop-in ``torch.optim.RMSprop`` that covers every published form of RMSProp.

Same positional arguments, defaults and state keys as torch; the extras are keyword-only and off
by default, so ``RMSprop(params, ...)`` is ``torch.optim.RMSprop(params, ...)`` step for step. The
update rule is written out in ``optimizers/reference.py``; these implementations apply it:

* the Triton kernel (``fused=None`` on CUDA, or ``fused=True``): one launch per (device, dtype);
* the foreach path (the default elsewhere): a few ``torch._foreach`` calls per bucket;
* the per-tensor path (``foreach=False``, ``differentiable=True``);
* ``compiled=True``, the opt-in fast CPU path with a one-time build: a fused C++ loop
  (``cpu_kernel.cpp``, one pass over memory for all float32/float64 tensors of a bucket), and the
  foreach path compiled by Inductor for what that loop does not take (half-precision params,
  non-contiguous tensors, devices other than the CPU).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import cpu_kernel, launch_plan
from .for_loop import for_loop_update
from .foreach import compiled_update, foreach_update
from .group import GroupTensors, hyperparameters, local_tensors
from .reference import Hyperparameters

if TYPE_CHECKING:
    from .triton_kernel import KernelLaunch

# Keyword-only extras beyond torch's arguments, with their "off" values. Loading a state dict
# that lacks them (one saved by torch.optim.RMSprop) fills them from the optimizer's own defaults.
EXTRA_DEFAULTS: dict[str, Any] = {
    "eps_in_sqrt": False,
    "initial_square_avg": 0.0,
    "lr_in_momentum": False,
    "decoupled_weight_decay": False,
    "nesterov": False,
    "bias_correction": False,
    "fused": None,
    "compiled": False,
    "state_dtype": None,
}
STATE_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                "float16": torch.float16, "bfloat16": torch.bfloat16}


def triton_available() -> bool:
    """Whether Triton is installed (the CPU paths never need it)."""
    return importlib.util.find_spec("triton") is not None


def kernel_can_run(device: torch.device) -> bool:
    """The kernel runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (for tests)."""
    if not triton_available():
        return False
    return device.type == "cuda" or (
        device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    )


def _resolve_state_dtype(state_dtype: torch.dtype | str | None) -> torch.dtype | None:
    if state_dtype is None or isinstance(state_dtype, torch.dtype):
        return state_dtype
    if state_dtype in STATE_DTYPES:
        return STATE_DTYPES[state_dtype]
    raise ValueError(
        f"RMSprop: state_dtype must be None or one of {sorted(STATE_DTYPES)}, got {state_dtype!r}"
    )


def _check_range(name: str, value: float, accepted: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"RMSprop: {name} must be {accepted}, got {value!r}")


def validate(settings: dict[str, Any]) -> None:
    """Raise a ValueError naming the argument and its accepted range for any bad setting."""
    lr = settings["lr"]
    if isinstance(lr, Tensor):
        _check_range("lr", lr, "a one-element tensor", lr.numel() == 1)
        _check_range("lr", lr, ">= 0", bool(lr.item() >= 0) if lr.device.type == "cpu" else True)
    else:
        _check_range("lr", lr, ">= 0", lr >= 0)
    _check_range("alpha", settings["alpha"], "in [0, 1)", 0 <= settings["alpha"] < 1)
    _check_range("eps", settings["eps"], ">= 0", settings["eps"] >= 0)
    _check_range("momentum", settings["momentum"], ">= 0", settings["momentum"] >= 0)
    _check_range("weight_decay", settings["weight_decay"], ">= 0", settings["weight_decay"] >= 0)
    _check_range("initial_square_avg", settings["initial_square_avg"], ">= 0",
                 settings["initial_square_avg"] >= 0)
    if settings["nesterov"] and settings["momentum"] <= 0:
        raise ValueError("RMSprop: nesterov=True needs momentum > 0, got momentum="
                         f"{settings['momentum']!r}")
    if settings["bias_correction"] and settings["initial_square_avg"] != 0:
        raise ValueError("RMSprop: bias_correction=True assumes v starts at 0; it cannot be "
                         f"combined with initial_square_avg={settings['initial_square_avg']!r}")
    if settings["fused"] and settings["foreach"]:
        raise ValueError("RMSprop: fused=True and foreach=True cannot both be set")
    if settings["fused"] and settings["differentiable"]:
        raise ValueError("RMSprop: fused=True does not support differentiable=True")
    if settings["fused"] and settings["compiled"]:
        raise ValueError("RMSprop: fused=True and compiled=True cannot both be set")
    if settings["compiled"] and settings["differentiable"]:
        raise ValueError("RMSprop: compiled=True does not support differentiable=True (use the "
                         "default path)")


class RMSprop(Optimizer):
    """RMSProp in every published form; a drop-in for ``torch.optim.RMSprop``.

    Args (torch's, same order and defaults):
        params: parameters or parameter groups.
        lr: learning rate (a float or a one-element tensor), >= 0. Default 1e-2.
        alpha: decay of the square average, in [0, 1). Default 0.99.
        eps: added to the denominator, >= 0. Default 1e-8.
        weight_decay: L2 penalty added to the gradient (decoupled: see below), >= 0.
        momentum: momentum factor mu, >= 0.
        centered: divide by the square root of v - m^2, an estimate of the variance (Graves 2013).
        capturable, foreach, maximize, differentiable: as in torch.

    Keyword-only extras (all off by default):
        eps_in_sqrt: denominator sqrt(v + eps) (TF, Keras, Graves, DQN) instead of sqrt(v) + eps.
        initial_square_avg: starting value of v (TF1 uses 1.0).
        lr_in_momentum: b = mu b + lr u; theta -= b (TF, Graves) instead of b = mu b + u;
            theta -= lr b.
        decoupled_weight_decay: theta *= 1 - lr wd before the step (as AdamW) instead of L2.
        nesterov: the step uses u + mu b (lr placed as by lr_in_momentum).
        bias_correction: divide v and m by 1 - alpha^t (needs initial_square_avg 0).
        fused: None: the Triton kernel on CUDA, the foreach path elsewhere; True: the kernel or an
            error; False: never the kernel.
        compiled: the fast CPU path: a fused C++ loop over the whole bucket, built once per machine
            (under a minute; cached); Inductor (torch.compile) where the loop does not apply.
        state_dtype: dtype of square_avg, grad_avg and momentum_buffer (e.g. float32 for bf16
            params); None keeps the param's dtype as torch does. The math is always fp32 or wider.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        eps_in_sqrt: bool = False,
        initial_square_avg: float = 0.0,
        lr_in_momentum: bool = False,
        decoupled_weight_decay: bool = False,
        nesterov: bool = False,
        bias_correction: bool = False,
        fused: bool | None = None,
        compiled: bool = False,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
            differentiable=differentiable, eps_in_sqrt=eps_in_sqrt,
            initial_square_avg=initial_square_avg, lr_in_momentum=lr_in_momentum,
            decoupled_weight_decay=decoupled_weight_decay, nesterov=nesterov,
            bias_correction=bias_correction, fused=fused, compiled=compiled,
            state_dtype=_resolve_state_dtype(state_dtype),
        )
        validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus the checks of ``validate`` on the group's own settings."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["state_dtype"] = _resolve_state_dtype(group["state_dtype"])
        validate(group)
        if group["fused"]:
            self._check_kernel_can_run(group)

    @staticmethod
    def _check_kernel_can_run(group: dict[str, Any]) -> None:
        for p in group["params"]:
            if not kernel_can_run(p.device):
                why = "Triton is not installed" if not triton_available() else (
                    f"a parameter is on {p.device}; the kernel needs CUDA "
                    "(or TRITON_INTERPRET=1 for CPU tensors)")
                raise RuntimeError(f"RMSprop: fused=True but no kernel can run: {why}. "
                                   "Use fused=None to fall back to the foreach path.")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.pop("_launch_plans", None)  # they hold the state being replaced
        for group in self.param_groups:
            for name, torch_default in (("momentum", 0), ("centered", False), ("foreach", None),
                                        ("maximize", False), ("differentiable", False),
                                        ("capturable", False)):
                group.setdefault(name, torch_default)
            for name, default in EXTRA_DEFAULTS.items():
                group.setdefault(name, self.defaults.get(name, default))
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader casts state to each param's dtype; ``state_dtype`` is restored from
        the saved values themselves, so that no precision is lost on the way."""
        super().load_state_dict(state_dict)
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            dtype = group["state_dtype"]
            if dtype is None:
                continue
            for p, saved_id in zip(group["params"], saved_group["params"]):
                for key, value in state_dict["state"].get(saved_id, {}).items():
                    if key != "step" and torch.is_tensor(value):
                        self.state[p][key] = value.to(device=p.device, dtype=dtype)

    def _uses_kernel(self, group: dict[str, Any], device: torch.device) -> bool:
        if group["fused"] is False or group["foreach"] or group["compiled"]:
            return False
        if group["differentiable"]:
            return False
        if group["fused"]:
            return True
        return device.type == "cuda" and triton_available()

    def _init_state(self, p: Tensor, group: dict[str, Any], step_on_device: bool) -> dict:
        if p.is_complex():
            raise RuntimeError("RMSprop: complex parameters are not supported; "
                               "optimise torch.view_as_real(param) instead")
        dtype = group["state_dtype"] or p.dtype
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32,
                                    device=p.device if step_on_device else "cpu")
        state["square_avg"] = torch.full_like(p, group["initial_square_avg"], dtype=dtype,
                                              memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=dtype,
                                                        memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        return state

    def _init_group(self, group: dict[str, Any]) -> dict[tuple[torch.device, torch.dtype],
                                                          GroupTensors]:
        """The group's params that have a gradient, with their state (created on first use),
        in buckets of one (device, dtype) each: what one foreach call or kernel launch takes.

        The kernel and capturable steps keep ``step`` on the param's device (as torch's fused
        optimizers do); the other paths keep it on the host.
        """
        buckets: dict[tuple[torch.device, torch.dtype], GroupTensors] = {}
        step_on_device: dict[tuple[torch.device, torch.dtype], bool] = {}
        centered, has_momentum = group["centered"], group["momentum"] > 0
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            key = (p.device, p.dtype)
            tensors = buckets.get(key)
            if tensors is None:
                tensors = buckets[key] = GroupTensors()
                step_on_device[key] = group["capturable"] or self._uses_kernel(group, p.device)
            state = self.state.get(p)
            if not state:
                state = self._init_state(p, group, step_on_device[key])
            elif step_on_device[key] and state["step"].device != p.device:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
            tensors.params.append(p)
            tensors.grads.append(grad)
            tensors.square_avgs.append(state["square_avg"])
            tensors.steps.append(state["step"])
            if has_momentum:
                tensors.momentum_buffers.append(state["momentum_buffer"])
            if centered:
                tensors.grad_avgs.append(state["grad_avg"])
        return buckets

    @staticmethod
    def _hyperparameters(group: dict[str, Any]) -> Hyperparameters:
        hp = hyperparameters(group)
        if isinstance(hp.lr, Tensor) and hp.lr.device.type == "cpu" and not group["compiled"]:
            hp = hp._replace(lr=hp.lr.item())  # a host value: no device synchronisation
        return hp

    def _update_bucket(self, group: dict[str, Any], index: int, key: tuple,
                       tensors: GroupTensors) -> KernelLaunch | None:
        """Update one bucket; returns the kernel launch that did it, or None on another path."""
        hp = self._hyperparameters(group)
        device = tensors.params[0].device
        if self._uses_kernel(group, device):
            from . import triton_kernel  # imports Triton: only where the kernel runs

            local = local_tensors(tensors)  # a DTensor's own shard: what the kernel addresses
            reason = ("a tensor subclass, or a DTensor gradient or state laid out unlike its "
                      "param" if local is None else triton_kernel.check_kernel_tensors(local))
            if reason is None:
                caches = self.__dict__.setdefault("_kernel_launches", {})
                launch = caches[(index, key)] = triton_kernel.cached_launch(
                    local, caches.get((index, key)))
                grad_table = launch.grad_table_for(tuple(map(Tensor.data_ptr, local.grads)))
                triton_kernel.kernel_update(launch, grad_table, hp)
                return launch
            if group["fused"]:
                raise RuntimeError(f"RMSprop: fused=True but the kernel cannot take {reason}")
        if group["compiled"]:
            local = local_tensors(tensors)
            if (device.type != "cpu" or local is None
                    or not cpu_kernel.fused_cpu_update(local, hp)):
                compiled_update(tensors, hp)  # Inductor: other devices, dtypes and subclasses
        elif group["foreach"] is False or group["differentiable"]:
            for_loop_update(tensors, hp)
        else:
            foreach_update(tensors, hp)
        return None

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        """One step of one group. When the kernel took all of it, the group keeps a plan of its
        launches, and the next step reuses it if nothing it was built from has changed."""
        plans = self.__dict__.setdefault("_launch_plans", {})
        plan = plans.get(index)
        launches = plan.launches_for(group, self.state) if plan is not None else None
        if launches is not None:
            from .triton_kernel import kernel_update

            hp = self._hyperparameters(group)
            for launch, grad_table in launches:
                kernel_update(launch, grad_table, hp)
            return
        plans.pop(index, None)  # stale: let go of the state it holds before new state is made
        buckets = self._init_group(group)
        launches = [self._update_bucket(group, index, key, bucket)
                    for key, bucket in buckets.items()]
        if launches and all(launch is not None for launch in launches):
            plan = launch_plan.build(group, self.state, launches,
                                     [bucket.params for bucket in buckets.values()])
            if plan is not None:
                plans[index] = plan

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            with torch.set_grad_enabled(group["differentiable"]):
                self._step_group(index, group)
        return loss
