"""Time one LSTM layer forward and backward: nn.LSTM, the Python-stepped peephole layer and the
fused Graves LSTM, at the paper's sizes.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/graves_lstm_speed.py > table.md
    PYTHONPATH=. python benchmarks/graves_lstm_speed.py --steps 100 --sizes handwriting

Sizes (Graves 2013): handwriting, 400 units reading (dx, dy, end-of-stroke); text, 700 units
reading one-hot bytes (205 symbols, the Wikipedia model's); batch 32; 100 and 700 time steps.
The contenders:

* ``nn.LSTM``: cuDNN on CUDA, oneDNN on the CPU; no peepholes, no in-cell clipping;
* ``PeepholeLSTM``: eq. 7-11 stepped in Python, differentiated by autograd (the reference);
* ``GravesLSTM``: the fused exact layer, clipping at the paper's bound (10 handwriting, 1 text).

The loss weighs every h_t by a fixed random tensor. Repeats are interleaved and the fastest is
kept, so the load of a shared machine does not favour one contender; each pass is timed by the
wall clock and by the process's CPU time (the steadier of the two on a loaded machine, with one
thread). Operations per time step come from one profiled forward+backward (``torch.profiler``):
every operator event (``all``), and those that are neither views nor allocations (``compute``);
on CUDA also the kernels launched. Ratios are to nn.LSTM and to PeepholeLSTM, measured side by
side.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from reproductions.graves_lstm import GravesLSTM, PeepholeLSTM

SIZES = {"handwriting": (3, 400, 10.0), "text": (205, 700, 1.0)}   # inputs, units, clip bound
NOT_COMPUTE = ("aten::select", "aten::slice", "aten::as_strided", "aten::view", "aten::t",
               "aten::transpose", "aten::unbind", "aten::chunk", "aten::split", "aten::unsqueeze",
               "aten::squeeze", "aten::expand", "aten::reshape", "aten::alias", "aten::detach",
               "aten::unflatten", "aten::flatten", "aten::_unsafe_view", "aten::empty",
               "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::zeros",
               "aten::lift_fresh", "detach", "aten::resolve_conj", "aten::resolve_neg")


def training_pass(layer: nn.Module, x: Tensor, on_outputs: Tensor,
                  grad_clip: float | None) -> Callable[[], None]:
    """One forward and backward of ``layer`` on ``x``."""
    def run() -> None:
        layer.zero_grad(set_to_none=True)
        outputs = layer(x)[0] if grad_clip is None else layer(x, grad_clip=grad_clip)[0]
        (outputs * on_outputs).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
    return run


def seconds(run: Callable[[], None]) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def operations(run: Callable[[], None], device: torch.device) -> tuple[int, int, int | None]:
    """(operator events, of which compute, CUDA kernels) in one profiled call."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as profiler:
        run()
    events = [e for e in profiler.events() if e.device_type == torch.autograd.DeviceType.CPU
              and "::" in e.name and not e.name.startswith("autograd::")]
    compute = [e for e in events if e.name not in NOT_COMPUTE]
    kernels = None
    if device.type == "cuda":
        kernels = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in profiler.events())
    return len(events), len(compute), kernels


def processor() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def contenders(inputs: int, units: int, bound: float) -> dict[str, tuple[nn.Module, float | None]]:
    return {"nn.LSTM": (nn.LSTM(inputs, units, batch_first=True), None),
            "PeepholeLSTM (Python-stepped)": (PeepholeLSTM(inputs, units), None),
            "GravesLSTM (fused, exact)": (GravesLSTM(inputs, units), bound)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--steps", nargs="+", type=int, default=[100, 700])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    print(f"# One LSTM layer, forward + backward, batch {args.batch}, device {device} "
          f"({processor()}, {os.cpu_count()} cores{gpu}), torch {torch.__version__}, "
          f"threads: {torch.get_num_threads()}")
    print("\n| size | steps | layer | fastest s, wall / CPU | ms per step (wall) | x nn.LSTM, "
          "wall / CPU | x PeepholeLSTM, wall / CPU | ops per step (all / compute) "
          "| CUDA kernels per step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        inputs, units, bound = SIZES[size]
        for steps in args.steps:
            torch.manual_seed(0)
            if size == "text":
                symbols = torch.randint(inputs, (args.batch, steps), device=device)
                x = nn.functional.one_hot(symbols, inputs).float()
            else:
                x = torch.randn(args.batch, steps, inputs, device=device)
            on_outputs = torch.randn(args.batch, steps, units, device=device)
            runs, counts = {}, {}
            for name, (layer, grad_clip) in contenders(inputs, units, bound).items():
                runs[name] = training_pass(layer.to(device), x, on_outputs, grad_clip)
                runs[name]()  # warm-up: builds, packs, caches
                counts[name] = operations(runs[name], device)
            times = {name: [] for name in runs}
            for _ in range(args.repeats):  # interleaved, fastest kept
                for name, run in runs.items():
                    times[name].append(seconds(run))
            wall = {name: min(w for w, _ in t) for name, t in times.items()}
            cpu = {name: min(c for _, c in t) for name, t in times.items()}

            def ratios(name: str, to: str) -> str:
                return f"{wall[name] / wall[to]:.2f} / {cpu[name] / cpu[to]:.2f}"

            for name in runs:
                events, compute, kernels = counts[name]
                kernel_column = "-" if kernels is None else f"{kernels / steps:.1f}"
                print(f"| {size} ({inputs} in, {units} units) | {steps} | {name} | "
                      f"{wall[name]:.3f} / {cpu[name]:.3f} | {1e3 * wall[name] / steps:.2f} | "
                      f"{ratios(name, 'nn.LSTM')} | "
                      f"{ratios(name, 'PeepholeLSTM (Python-stepped)')} | "
                      f"{events / steps:.1f} / {compute / steps:.1f} | {kernel_column} |",
                      flush=True)


if __name__ == "__main__":
    main()
