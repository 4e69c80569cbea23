"""The fused CPU update (``fused=True`` on CPU): ``cpu_kernel.cpp`` built once per machine.

One call updates a whole float32/float64 bucket: a single pass over every element of every
tensor, split across threads, with the step counters advanced in the same call. Against the
foreach path it saves the intermediate tensors (about ten passes over memory become one) and
against a torch.compile'd step it saves the compiled wrapper's per-tensor guards and checks.

The build (under a minute, ``cpp_build.py``) happens on first use and is cached per machine;
processes that start at once on a cold cache (the ranks of a DDP or FSDP run) take turns under a
file lock: the first builds, the others wait and load it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

from torch import Tensor

from . import cpp_build
from .group import GroupTensors
from .reference import Hyperparameters

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
GRAIN = 32768  # elements per thread chunk: below it a thread's start-up outweighs its work


NAME = "rmsprop_cpu"


def build_name() -> str:
    return cpp_build.build_name(NAME, SOURCE)


@functools.cache
def extension() -> ModuleType:
    """The built extension (built now if this machine has no cached build)."""
    return cpp_build.load(NAME, SOURCE, "the fused CPU loop of RMSprop(fused=True)")


def fused_cpu_update(tensors: GroupTensors, hp: Hyperparameters) -> bool:
    """Update one CPU bucket in place (same rule as ``reference.update``) and return True; or
    return False, touching nothing, for a bucket the loop does not take: params other than
    float32/float64, non-contiguous tensors, or state in another dtype than the params. Tensor
    subclasses must have been unwrapped (``group.local_tensors``)."""
    lr = hp.lr.item() if isinstance(hp.lr, Tensor) else hp.lr
    return extension().update(
        tensors.params, tensors.grads, tensors.square_avgs, tensors.grad_avgs,
        tensors.momentum_buffers, tensors.steps, lr, hp.alpha, hp.eps, hp.weight_decay,
        hp.momentum, hp.eps_in_sqrt, hp.lr_in_momentum, hp.decoupled_weight_decay, hp.nesterov,
        hp.bias_correction, hp.maximize, GRAIN,
    )
