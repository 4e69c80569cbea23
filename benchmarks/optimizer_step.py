"""Time one optimizer step: torch.optim.RMSprop (for-loop, foreach, torch.compile'd),
bitsandbytes' RMSprop when installed, and ours (default path, foreach path, fused=True: the
Triton kernel on CUDA, the fused C++ loop on the CPU); on CUDA also torch's capturable foreach
step and ours, each captured in a CUDA graph and replayed.

    python benchmarks/optimizer_step.py            # full run on the current device
    python benchmarks/optimizer_step.py --quick    # a short run, small workloads
    python benchmarks/optimizer_step.py --quick --repeats 3 --contenders "torch foreach,ours"
                                                   # a smoke run (under compute-sanitizer)

Each number is the median over many steps after warm-up; every ratio is against torch foreach
measured in the same run. On CUDA the table also gives the effective bandwidth (bytes that the
update must read and write, over the step time) and its share of the device's copy bandwidth,
measured in the same run. The table is written to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from optimizers import RMSprop  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "plain": {},
    "centered": {"centered": True},
    "centered+momentum": {"centered": True, "momentum": 0.9},
}


def lstm_like_shapes(n_tensors: int, hidden: int) -> list[tuple[int, ...]]:
    """The tensors of n_tensors/4 LSTM layers: weight_ih, weight_hh, bias_ih, bias_hh."""
    layer = [(4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    return (layer * (n_tensors // 4 + 1))[:n_tensors]


def workloads(device: torch.device, quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if device.type == "cuda":
        large = [(8192, 4096), (8192, 4096), (4096, 4096)]  # 84M parameters
        if quick:
            large = [(1024, 1024)] * 3
        return {"200 small (LSTM)": lstm_like_shapes(200, 128), "3 large": large}
    if quick:
        return {"200 small (LSTM)": lstm_like_shapes(200, 32), "3 large": [(512, 512)] * 3}
    return {"200 small (LSTM)": lstm_like_shapes(200, 64), "3 large": [(1024, 1024)] * 3}


def bytes_per_element(settings: dict, element_size: int = 4) -> int:
    """What the update must move: param and each state tensor read and written, grad read."""
    arrays_read_and_written = 2 + settings.get("centered", False) + (settings.get("momentum", 0) > 0)
    return element_size * (2 * arrays_read_and_written + 1)


def contenders(device: torch.device, settings: dict) -> dict[str, Callable]:
    """name -> a function params -> step callable (compiles lazily on the first call). A
    callable keeps alive whatever its step uses (the optimizer, a captured graph)."""
    def torch_step(foreach: bool):
        return lambda ps: torch.optim.RMSprop(ps, foreach=foreach, **settings).step

    def torch_compiled(ps):
        optimizer = torch.optim.RMSprop(ps, foreach=True, **settings)
        return torch.compile(optimizer.step, fullgraph=False)

    def ours(**extra):
        return lambda ps: RMSprop(ps, **settings, **extra).step

    found = {
        "torch for-loop": torch_step(False),
        "torch foreach": torch_step(True),
        "torch compiled": torch_compiled,
        "ours (default)": ours(),
    }
    if device.type == "cuda":
        found["ours (foreach)"] = ours(fused=False)
        # A captured step costs the host one graph launch: the floor for many small tensors.
        found["torch foreach (CUDA graph)"] = lambda ps: GraphedStep(
            torch.optim.RMSprop(ps, foreach=True, capturable=True, **settings))
        found["ours (CUDA graph)"] = lambda ps: GraphedStep(RMSprop(ps, **settings))
        if importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes

            found["bitsandbytes"] = lambda ps: bitsandbytes.optim.RMSprop(ps, **settings).step
    else:
        found["ours (fused)"] = ours(fused=True)
    return found


class GraphedStep:
    """An optimizer's step captured in a CUDA graph (after one step outside it, as capture
    needs); calling it replays the graph, which updates the same params from the same gradient
    storage. It holds the optimizer for as long as the graph may replay: the graph reads the
    optimizer's state (and, for ours, the kernel's tables) at their captured addresses, and an
    optimizer let go would hand that memory to the next allocations."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            optimizer.step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            optimizer.step()

    def __call__(self) -> None:
        self.graph.replay()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Contender:
    """One optimizer on its own copy of the workload, fed a rotating set of gradients."""

    GRADIENT_SETS = 4  # varied gradients keep v - m^2 away from 0, as in training

    def __init__(self, make_step: Callable, shapes, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.params = [torch.randn(s, generator=generator).to(device).requires_grad_()
                       for s in shapes]
        self.gradients = [[torch.randn(s, generator=generator).to(device) * 1e-2 for s in shapes]
                          for _ in range(self.GRADIENT_SETS)]
        for p, g in zip(self.params, self.gradients[0]):
            p.grad = g.clone()
        self.step = make_step(self.params)
        self.calls = 0

    def next_gradients(self) -> None:
        """Copied into the same grad storage (untimed), as a backward pass would accumulate."""
        self.calls += 1
        torch._foreach_copy_([p.grad for p in self.params],
                             self.gradients[self.calls % self.GRADIENT_SETS])

    def timed_step(self, device: torch.device) -> float:
        self.next_gradients()
        sync(device)
        start = time.perf_counter()
        self.step()
        sync(device)
        return time.perf_counter() - start


def time_side_by_side(makers: dict[str, Callable], shapes, device, warmup: int,
                      repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (median seconds per step, seconds of the first step, compilation included).

    The contenders take turns step by step, in a rotating order, so that a burst of load on the
    machine, and whatever a step leaves behind for the next one, falls on all of them alike.
    """
    torch._dynamo.reset()  # every compiled contender starts from scratch
    contenders = {name: Contender(make, shapes, device) for name, make in makers.items()}
    try:
        first = {name: c.timed_step(device) for name, c in contenders.items()}
        for _ in range(warmup):
            for c in contenders.values():
                c.timed_step(device)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for repeat in range(repeats):
            # Rotate the order: each contender follows each other one equally often (a step
            # leaves caches and, on the CPU, OpenMP threads spinning behind it, which slows its
            # successor).
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                times[name].append(contenders[name].timed_step(device))
    finally:
        sync(device)  # nothing in flight reads the contenders' memory once they are let go
    return {name: (statistics.median(times[name]), first[name]) for name in contenders}


def copy_bandwidth(device: torch.device, numel: int = 256 * 2**20) -> float:
    """Device copy bandwidth in bytes/s (read + write), median of 20 copies of 1 GiB fp32."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times[5:])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small workloads, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--contenders", default=None,
                        help="comma-separated names to time (default: all); torch foreach, the "
                             "baseline of every ratio, is always timed")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="reuse Inductor's and torch_extensions' on-disk caches (the first-"
                             "step column then shows a cached compile, not the one-time latency)")
    args = parser.parse_args()
    if not args.warm_compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
        os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="extensions-cold-")
    device = torch.device(args.device)
    repeats = args.repeats or (10 if args.quick else 200)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None

    header = ["workload", "variant", "contender", "median ms", "vs torch foreach", "first step s"]
    if bandwidth:
        header += ["GB/s", "% of copy bw"]
    rows = []
    for workload, shapes in workloads(device, args.quick).items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        for variant, settings in VARIANTS.items():
            makers = contenders(device, settings)
            if args.contenders:
                wanted = {"torch foreach", *(n.strip() for n in args.contenders.split(","))}
                makers = {name: make for name, make in makers.items() if name in wanted}
            results = time_side_by_side(makers, shapes, device, warmup=args.warmup,
                                        repeats=repeats)
            for name, (median, first) in results.items():
                print(f"{workload:18} {variant:18} {name:16} {median * 1e3:9.3f} ms "
                      f"(first step {first:.2f} s)", flush=True)
            baseline = results["torch foreach"][0]
            for name, (median, first) in results.items():
                row = [workload, variant, name, f"{median * 1e3:.3f}", f"{baseline / median:.2f}x",
                       f"{first:.2f}"]
                if bandwidth:
                    achieved = numel * bytes_per_element(settings) / median
                    row += [f"{achieved / 1e9:.0f}", f"{100 * achieved / bandwidth:.0f}%"]
                rows.append(row)

    lines = [
        f"# Optimizer step benchmark ({datetime.date.today()})",
        "",
        f"Device: {device_name(device)}; torch {torch.__version__}; "
        f"{'quick run' if args.quick else 'full run'}, median of {repeats} steps after "
        f"{args.warmup} warm-up "
        "steps; contenders take turns step by step in a rotating order; 4 rotating gradient sets; "
        "first step s = "
        f"the first call, {'with warm' if args.warm_compile_cache else 'with empty'} "
        "Inductor and torch_extensions caches (torch compiled compiles each variant; ours "
        "(fused) is on the CPU the fused C++ loop, built once per machine: the first variant's "
        "first step carries the build).",
        "Workloads: " + "; ".join(
            f"{w}: {len(s)} tensors, {sum(torch.Size(x).numel() for x in s) / 1e6:.1f}M parameters"
            for w, s in workloads(device, args.quick).items()),
    ]
    if bandwidth:
        lines.append(f"Copy bandwidth measured in this run: {bandwidth / 1e9:.0f} GB/s.")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    out = args.out or RESULTS / f"optimizer_step_{slug}{'_quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
