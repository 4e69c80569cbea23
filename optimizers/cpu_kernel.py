"""The fused CPU update (``fused=True`` on CPU): ``cpu_kernel.cpp`` built once per machine.

One call updates a whole float32/float64 bucket: a single pass over every element of every
tensor, split across threads, with the step counters advanced in the same call. Against the
foreach path it saves the intermediate tensors (about ten passes over memory become one) and
against a torch.compile'd step it saves the compiled wrapper's per-tensor guards and checks.

The build (``torch.utils.cpp_extension.load``, g++ with OpenMP, under a minute) happens on first
use and is cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); the
build's name carries a hash of the source and of this CPU's instruction sets, since it is
compiled with ``-march=native``. Processes that start at once on a cold cache (the ranks of a
DDP or FSDP run) take turns under a file lock: the first builds, the others wait and load it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .group import GroupTensors
from .reference import Hyperparameters

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
GRAIN = 32768  # elements per thread chunk: below it a thread's start-up outweighs its work


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _quiet_cpp_extension() -> ModuleType:
    # Importing cpp_extension warns that a CPU-only machine has no CUDA runtime: true, and beside
    # the point for a CPU build.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)
    return cpp_extension


def build_name() -> str:
    """The build's name: it changes with the source, this CPU's instruction sets and torch."""
    digest = hashlib.sha256((SOURCE.read_text() + _cpu_flags() + torch.__version__).encode())
    return f"rmsprop_cpu_{digest.hexdigest()[:12]}"


@contextlib.contextmanager
def _build_lock(build: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``build``'s lock file. The kernel releases it when its process
    dies, so a killed build never leaves the others waiting."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file alone
        yield
        return
    with open(build / "rmsprop_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@functools.cache
def extension() -> ModuleType:
    """The built extension (built now if this machine has no cached build)."""
    cpp_extension = _quiet_cpp_extension()
    name = build_name()
    build = Path(cpp_extension._get_build_directory(name, verbose=False))
    with _build_lock(build):
        # Before torch 2.14, cpp_extension.load locked by the mere existence of a file, which a
        # killed build leaves behind to keep every later load waiting; under our lock no other
        # build runs, so one that is there is such a leftover.
        (build / "lock").unlink(missing_ok=True)
        if not (build / f"{name}.so").exists():
            print(f"RMSprop(fused=True): building the fused CPU loop into {build} "
                  "(once per machine, under a minute)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )


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
