"""``RMSprop``: a drop-in ``torch.optim.RMSprop`` that covers every published form of RMSProp.

Same positional arguments, defaults and state keys as torch; the extras are keyword-only and off
by default, so ``RMSprop(params, ...)`` is ``torch.optim.RMSprop(params, ...)`` step for step. The
update rule is written out in ``optimizers/reference.py``; these implementations apply it:

* the fused kernels (``fused=True``, torch's switch): on CUDA the Triton kernel, one launch per
  (device, dtype), which is also the default there (``fused=None``); on the CPU a fused C++ loop
  (``cpu_kernel.cpp``: one pass over memory for all float32/float64 tensors of a bucket, built
  once per machine);
* the foreach path (the default elsewhere): a few ``torch._foreach`` calls per bucket;
* the per-tensor path (``foreach=False``, ``differentiable=True``).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import cpu_kernel
from .for_loop import for_loop_update
from .foreach import foreach_update
from .group import GroupTensors, hyperparameters, local_tensors
from .launch_plan import GroupLaunches, VersionedState
from .reference import Hyperparameters

if TYPE_CHECKING:
    from .triton_kernel import KernelLaunch

OFF = Hyperparameters()  # the update rule's defaults: torch's, with every extra off
STATE_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                "float16": torch.float16, "bfloat16": torch.bfloat16}
# With this set (and TRITON_INTERPRET=1 before Triton is imported), fused=True on CPU tensors
# runs the Triton kernel in Triton's interpreter instead of the fused C++ loop: how the tests
# check the kernel without a GPU.
TRITON_ON_CPU = False


def triton_available() -> bool:
    """Whether Triton is installed (the CPU paths never need it)."""
    return importlib.util.find_spec("triton") is not None


def fused_kernel(device: torch.device) -> str | None:
    """Which fused kernel takes tensors on ``device``: "triton" on CUDA, "cpu" (the C++ loop)
    on the CPU, None elsewhere."""
    if device.type == "cuda" or (device.type == "cpu" and TRITON_ON_CPU):
        return "triton"
    return "cpu" if device.type == "cpu" else None


def update_path(group: dict[str, Any], device: torch.device) -> str:
    """How a group's bucket on ``device`` is updated: "triton", "cpu" (the fused C++ loop),
    "for_loop" or "foreach", by torch's switches (``fused``, ``foreach``, ``differentiable``),
    except that with none of them set the Triton kernel is the default on CUDA."""
    if group["fused"]:
        return fused_kernel(device)
    if (group["fused"] is None and group["foreach"] is None and not group["differentiable"]
            and device.type == "cuda" and triton_available()):
        return "triton"
    return "for_loop" if group["foreach"] is False or group["differentiable"] else "foreach"


def _resolve_state_dtype(state_dtype: torch.dtype | str | None) -> torch.dtype | None:
    if state_dtype is None or isinstance(state_dtype, torch.dtype):
        return state_dtype
    if state_dtype in STATE_DTYPES:
        return STATE_DTYPES[state_dtype]
    raise ValueError(
        f"RMSprop: state_dtype must be None or one of {sorted(STATE_DTYPES)}, got {state_dtype!r}"
    )


def _check_range(name: str, value: float, accepted: str, ok: bool, torch_message: str) -> None:
    """Ours, then torch.optim.RMSprop's own words, which code written against torch may match."""
    if not ok:
        raise ValueError(f"RMSprop: {name} must be {accepted}, got {value!r} ({torch_message})")


def validate(settings: dict[str, Any]) -> None:
    """Raise a ValueError naming the argument and its accepted range for any bad setting."""
    lr = settings["lr"]
    if isinstance(lr, Tensor):
        _check_range("lr", lr, "a one-element tensor", lr.numel() == 1,
                     "Tensor lr must be 1-element")
        _check_range("lr", lr, ">= 0", bool(lr.item() >= 0) if lr.device.type == "cpu" else True,
                     f"Invalid learning rate: {lr}")
    else:
        _check_range("lr", lr, ">= 0", lr >= 0, f"Invalid learning rate: {lr}")
    alpha, eps, momentum = settings["alpha"], settings["eps"], settings["momentum"]
    weight_decay, initial = settings["weight_decay"], settings["initial_square_avg"]
    _check_range("alpha", alpha, "in [0, 1)", 0 <= alpha < 1, f"Invalid alpha value: {alpha}")
    _check_range("eps", eps, ">= 0", eps >= 0, f"Invalid epsilon value: {eps}")
    _check_range("momentum", momentum, ">= 0", momentum >= 0,
                 f"Invalid momentum value: {momentum}")
    _check_range("weight_decay", weight_decay, ">= 0", weight_decay >= 0,
                 f"Invalid weight_decay value: {weight_decay}")
    _check_range("initial_square_avg", initial, ">= 0", initial >= 0,
                 f"Invalid initial_square_avg value: {initial}")
    if settings["nesterov"] and momentum <= 0:
        raise ValueError(f"RMSprop: nesterov=True needs momentum > 0, got momentum={momentum!r}")
    if settings["bias_correction"] and initial != 0:
        raise ValueError("RMSprop: bias_correction=True assumes v starts at 0; it cannot be "
                         f"combined with initial_square_avg={initial!r}")
    if settings["fused"] and settings["foreach"]:
        raise ValueError("RMSprop: fused=True and foreach=True cannot both be set")
    if settings["fused"] and settings["differentiable"]:
        raise ValueError("RMSprop: fused=True does not support differentiable=True")


def _compiled_is_fused(settings: dict[str, Any]) -> None:
    """``compiled=True``, deprecated, is ``fused=True``: turn the one into the other."""
    if not settings.pop("compiled", False):
        return
    warnings.warn("RMSprop: compiled=True is deprecated; it is fused=True, torch's name for the "
                  "fused kernel (the fused C++ loop on the CPU)", DeprecationWarning, stacklevel=3)
    if settings.get("fused") is False:
        raise ValueError("RMSprop: compiled=True (an alias of fused=True) and fused=False cannot "
                         "both be set")
    settings["fused"] = True


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
        fused: as torch's: True runs the fused kernel of the params' device, the Triton kernel
            on CUDA and a fused C++ loop on the CPU (built once per machine, under a minute;
            float32 and float64), or raises for what it cannot take; False never does. None: the
            Triton kernel on CUDA, the foreach path elsewhere.
        compiled: deprecated alias of fused=True.
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
        eps_in_sqrt: bool = OFF.eps_in_sqrt,
        initial_square_avg: float = OFF.initial_square_avg,
        lr_in_momentum: bool = OFF.lr_in_momentum,
        decoupled_weight_decay: bool = OFF.decoupled_weight_decay,
        nesterov: bool = OFF.nesterov,
        bias_correction: bool = OFF.bias_correction,
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
        _compiled_is_fused(defaults)
        validate(defaults)
        super().__init__(params, defaults)
        self.state = VersionedState(dict, self.state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus the checks of ``validate`` on the group's own settings."""
        _compiled_is_fused(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["state_dtype"] = _resolve_state_dtype(group["state_dtype"])
        validate(group)
        if group["fused"]:
            self._check_fused_kernel(group)

    @staticmethod
    def _check_fused_kernel(group: dict[str, Any]) -> None:
        for p in group["params"]:
            kernel = fused_kernel(p.device)
            if kernel is None:
                why = f"a parameter is on {p.device}; the fused kernels take CUDA and CPU tensors"
            elif kernel == "triton" and not triton_available():
                why = "Triton is not installed"
            elif kernel == "triton" and p.device.type == "cpu" and (
                    os.environ.get("TRITON_INTERPRET") != "1"):
                why = "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
            else:
                continue
            raise RuntimeError(f"RMSprop: fused=True but no fused kernel can run: {why}. "
                               "Use fused=None for the default path.")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = VersionedState(dict, self.state)
        for launches in self.__dict__.get("_group_launches", {}).values():
            launches.forget()  # they were built on the state being replaced
        for group in self.param_groups:
            for name, torch_default in (("momentum", 0), ("centered", False), ("foreach", None),
                                        ("maximize", False), ("differentiable", False),
                                        ("capturable", False)):
                group.setdefault(name, torch_default)
            _compiled_is_fused(group)  # a group saved with the deprecated compiled=True
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

        The Triton kernel and capturable steps keep ``step`` on the param's device (as torch's
        fused optimizers do); the other paths keep it on the host.
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
                step_on_device[key] = (group["capturable"]
                                       or update_path(group, p.device) == "triton")
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
        if isinstance(hp.lr, Tensor) and hp.lr.device.type == "cpu":
            hp = hp._replace(lr=hp.lr.item())  # a host value: no device synchronisation
        return hp

    def _update_bucket(self, group: dict[str, Any], launches: GroupLaunches, bucket: tuple,
                       tensors: GroupTensors) -> KernelLaunch | None:
        """Update one bucket; returns the Triton launch that did it, or None on another path."""
        hp = self._hyperparameters(group)
        path = update_path(group, tensors.params[0].device)
        # The fused kernels address memory: a DTensor's own shard is what they take.
        local = local_tensors(tensors) if path in ("triton", "cpu") else None
        layout = ("a tensor subclass, or a DTensor gradient or state laid out unlike its param"
                  if local is None else None)
        if path == "triton":
            from . import triton_kernel  # imports Triton: only where the kernel runs

            reason = layout or triton_kernel.check_kernel_tensors(local)
            if reason is None:
                launch = launches.launch(bucket, triton_kernel.cached_launch(
                    local, launches.launches.get(bucket)))
                launch.update(launch.grad_table_for(tuple(map(Tensor.data_ptr, local.grads))), hp)
                return launch
            if group["fused"]:
                raise RuntimeError(f"RMSprop: fused=True but the kernel cannot take {reason}")
        elif path == "cpu":
            if layout is None and cpu_kernel.fused_cpu_update(local, hp):
                return None
            raise RuntimeError(
                "RMSprop: fused=True but the fused CPU loop cannot take "
                f"{layout or 'this bucket'}: it takes contiguous float32 and float64 CPU "
                "tensors with state of the param's dtype (use fused=None for the foreach path)")
        if group["foreach"] is False or group["differentiable"]:
            for_loop_update(tensors, hp)
        else:
            foreach_update(tensors, hp)
        return None

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        """One step of one group. When the Triton kernel took all of it, the group's launches
        plan the next step, which reuses them if nothing they were built from has changed."""
        launches = self.__dict__.setdefault("_group_launches", {}).get(index)
        if launches is None:
            launches = self._group_launches[index] = GroupLaunches()
        planned = launches.planned(group, self.state)
        if planned is not None:
            hp = self._hyperparameters(group)
            for launch, grad_table in planned:
                launch.update(grad_table, hp)
            return
        launches.plan = None  # stale: let go of the state it holds before new state is made
        buckets = self._init_group(group)
        used = [self._update_bucket(group, launches, bucket, tensors)
                for bucket, tensors in buckets.items()]
        if used and all(launch is not None for launch in used):
            launches.make_plan(group, self.state, used,
                               [tensors.params for tensors in buckets.values()])

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not isinstance(self.state, VersionedState):  # replaced by hand
            self.state = VersionedState(dict, self.state)
        for index, group in enumerate(self.param_groups):
            with torch.set_grad_enabled(group["differentiable"]):
                self._step_group(index, group)
        return loss


# The keyword-only extras and their defaults, as the signature gives them. Loading a state dict
# that lacks them (one saved by torch.optim.RMSprop) fills them from the optimizer's own defaults.
EXTRA_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(RMSprop.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "compiled"
}
