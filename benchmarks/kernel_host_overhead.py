"""The CUDA path's host time per step, measured without a GPU.

With many small tensors a GPU step is bound by the host: the Python that prepares the launch,
not the kernel. That work does not depend on the device, so it can be measured here: the Triton
kernel path runs on CPU tensors (``TRITON_INTERPRET=1`` lets it take them) with the launch itself
replaced by a no-op, and the time of ``optimizer.step()`` is what the host spends per step,
without the launch. On a GPU, the steps after the first call Triton's compiled launcher
directly (``KernelLaunch.update``), which adds that call's own time; ``optimizer_step.py``
measures the whole step there.

    python benchmarks/kernel_host_overhead.py

Cases, timed side by side in a rotating order on 200 LSTM-shaped tensors:

* plan, gradients in place: the steady state (gradients written into the same storage, as with
  ``zero_grad(set_to_none=False)`` or when the allocator hands back the same blocks);
* plan, gradients moved: new gradient storage every step, as ``zero_grad()`` may give;
* general path: the launch plan disabled, so every step walks the params, checks every tensor
  and compares the cached tables' addresses (what each step cost before the plan existed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before Triton defines the kernel: it may take CPU tensors

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from optimizers import RMSprop, rmsprop, triton_kernel  # noqa: E402
from optimizers.launch_plan import GroupLaunches  # noqa: E402
from benchmarks.optimizer_step import VARIANTS, lstm_like_shapes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class NoLaunch:
    """Stands in for ``rmsprop_kernel``: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def make_case(settings: dict, shapes, moved_gradients: bool) -> Callable[[], float]:
    """A timed step on a fresh optimizer; returns seconds."""
    params = [torch.zeros(shape, requires_grad=True) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = RMSprop(params, fused=True, **settings)
    optimizer.step()

    def timed_step() -> float:
        if moved_gradients:
            for p in params:
                p.grad = p.grad.clone()
        start = time.perf_counter()
        optimizer.step()
        return time.perf_counter() - start

    return timed_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=500)
    # The host's work does not depend on the tensors' sizes; small ones keep the gradient copies
    # of the "moved" case from flushing the caches that the other cases then start cold from.
    parser.add_argument("--hidden", type=int, default=32, help="LSTM size of the 200 tensors")
    args = parser.parse_args()
    triton_kernel.rmsprop_kernel = NoLaunch()
    rmsprop.TRITON_ON_CPU = True  # fused=True on CPU tensors: the Triton kernel's path
    shapes = lstm_like_shapes(200, args.hidden)
    rows = []
    for variant, settings in VARIANTS.items():
        cases = {
            "plan, gradients in place": make_case(settings, shapes, moved_gradients=False),
            "plan, gradients moved": make_case(settings, shapes, moved_gradients=True),
        }
        make_plan = GroupLaunches.make_plan
        GroupLaunches.make_plan = lambda *args: None  # no plan: every step takes the general path
        cases["general path (no plan)"] = make_case(settings, shapes, moved_gradients=False)
        times: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for repeat in range(args.repeats):
            for name in names[repeat % 3:] + names[:repeat % 3]:
                times[name].append(cases[name]())
        GroupLaunches.make_plan = make_plan
        general = statistics.median(times["general path (no plan)"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append([variant, name, f"{median * 1e6:.0f}", f"{general / median:.1f}x"])
            print(f"{variant:18} {name:26} {median * 1e6:7.0f} us", flush=True)

    header = ["variant", "case", "host us per step", "vs general path"]
    lines = [
        f"# Host time of the CUDA kernel path, without the launch ({datetime.date.today()})",
        "",
        f"Host: CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at the "
        f"end (shared with other jobs); torch {torch.__version__}; Python "
        f"{platform.python_version()}. 200 LSTM-shaped tensors (hidden {args.hidden}), median of "
        f"{args.repeats} steps per case, cases interleaved in a rotating order. The kernel path "
        "ran on CPU tensors under TRITON_INTERPRET=1 with the launch replaced by a no-op, so the "
        "numbers are the host's own work per step, torch's step wrapper (profiling hooks) "
        "included; a GPU adds the call of Triton's compiled launcher.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    out = RESULTS / "kernel_host_overhead_cpu.md"
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
