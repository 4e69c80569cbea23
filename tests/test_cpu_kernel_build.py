"""The fused CPU loop's one-time build, from a cold cache, in processes that start at once (the
ranks of a DDP or FSDP run on a fresh machine): one builds, the others wait and load it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from optimizers import RMSprop, cpp_build, cpu_kernel

ROOT = Path(__file__).resolve().parents[1]
STEP = """
import json, torch
from optimizers import RMSprop
param = torch.nn.Parameter(torch.linspace(-1, 1, 7))
param.grad = torch.linspace(0.5, -0.25, 7)
RMSprop([param], fused=True, centered=True, momentum=0.9).step()
print(json.dumps(param.detach().tolist()))
"""


def test_cold_cache_processes_build_once_then_all_step(tmp_path):
    extensions = tmp_path / "torch_extensions"
    # A build killed midway leaves torch's lock file behind, which would keep every later load
    # waiting for it: the build must not wait on one that no process holds.
    build = extensions / cpu_kernel.build_name()
    build.mkdir(parents=True)
    (build / "lock").touch()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", STEP], env=env, cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=420) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert sum("building the fused CPU loop" in stderr for _, stderr in outputs) == 1

    param = torch.nn.Parameter(torch.linspace(-1, 1, 7))
    param.grad = torch.linspace(0.5, -0.25, 7)
    RMSprop([param], fused=False, centered=True, momentum=0.9).step()
    for stdout, _ in outputs:
        torch.testing.assert_close(torch.tensor(json.loads(stdout)), param.detach())


def test_a_changed_header_changes_the_build_name(tmp_path):
    source, header = tmp_path / "step.cpp", tmp_path / "step.h"
    source.write_text('#include <vector>\n#include "step.h"\nint main() {}\n')
    header.write_text("inline int one() { return 1; }\n")
    before = cpp_build.build_name("step", source)
    header.write_text("inline int one() { return 2 - 1; }\n")
    assert cpp_build.build_name("step", source) != before
    assert cpp_build.build_name("step", source) == cpp_build.build_name("step", source)


def test_one_source_in_two_checkouts_builds_under_two_names(tmp_path):
    # torch's build files name the source's path: one build shared by two checkouts would be
    # compiled again each time the other checkout had loaded it.
    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        (tmp_path / checkout / "step.cpp").write_text("int main() {}\n")
    assert cpp_build.build_name("step", tmp_path / "a" / "step.cpp") != \
        cpp_build.build_name("step", tmp_path / "b" / "step.cpp")
