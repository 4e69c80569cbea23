"""Build a C++ source into a torch extension once per machine, one process at a time.

The build (``torch.utils.cpp_extension.load``, g++ with OpenMP) is cached under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). Its name carries a hash of the
source and the headers beside it that it includes, of this CPU's instruction sets (the code is
compiled with ``-march=native``) and of torch's version, so a changed source or header or another
machine builds anew; and of the source's path, which torch's build files name: two checkouts
sharing one build would compile it again each time the other had loaded it. An OS file lock
(released by the kernel if its holder dies) makes concurrent first uses, such as parallel test
processes, wait for one build instead of racing; older torch versions guard their builds with a
lock file that a killed build leaves behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import platform
import re
import sys
from pathlib import Path
from types import ModuleType

import torch


def cpu_flags() -> str:
    """This CPU's instruction-set flags (``/proc/cpuinfo``), or its name where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def vector_flags(avx512: bool = False) -> tuple[str, ...]:
    """Build ATen's 256-bit ``Vectorized`` where the CPU has AVX2 and FMA, as torch's own AVX2
    kernels are built; with ``avx512``, its 512-bit one where the CPU has the AVX-512 sets torch's
    AVX512 kernels need (F, BW, VL, DQ); elsewhere its portable scalar fallback."""
    flags = cpu_flags().split()
    if avx512 and {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= set(flags):
        return ("-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512")
    if "avx2" in flags and "fma" in flags:
        return ("-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2")
    return ()


LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"', re.MULTILINE)


def source_text(source: Path) -> str:
    """The source and the headers beside it that it includes with quotes: what a build reads
    that can change without torch changing."""
    text = source.read_text()
    return text + "".join((source.parent / header).read_text()
                          for header in LOCAL_INCLUDE.findall(text))


def build_name(prefix: str, source: Path, extra_cflags: tuple[str, ...] = ()) -> str:
    """``prefix`` and a hash of the source with its headers and its path, this CPU's instruction
    sets, torch and the flags."""
    digest = hashlib.sha256((source_text(source) + str(source.resolve()) + cpu_flags()
                             + torch.__version__ + " ".join(extra_cflags)).encode())
    return f"{prefix}_{digest.hexdigest()[:12]}"


def load(prefix: str, source: Path, what: str, extra_cflags: tuple[str, ...] = (),
         is_python_module: bool = True) -> ModuleType | str:
    """Build ``source`` (once per machine; ``what`` names it in the one line printed then) and
    load it: a Python module, or with ``is_python_module=False`` a library of torch ops (then
    ``torch.ops`` holds them)."""
    # Importing cpp_extension warns that a CPU-only machine has no CUDA runtime: true, and beside
    # the point for a CPU build.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    name = build_name(prefix, source, extra_cflags)
    build = Path(cpp_extension._get_build_directory(name, verbose=False))
    with open(build.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
        # Before torch 2.14, cpp_extension.load locked by the mere existence of a file, which a
        # killed build leaves behind to keep every later load waiting; under our lock no other
        # build runs, so one that is there is such a leftover.
        (build / "lock").unlink(missing_ok=True)
        if not (build / f"{name}.so").exists():
            print(f"building {what} from {source.name} into {build} (once per machine, under a "
                  "minute)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=name, sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fopenmp", *extra_cflags],
            extra_ldflags=["-fopenmp"], is_python_module=is_python_module, verbose=False)
