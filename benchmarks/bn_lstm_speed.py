"""Time one training step (forward, backward, RMSprop step) of the BN-LSTM against nn.LSTM.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bn_lstm_speed.py            # paper's shapes
    PYTHONPATH=. python benchmarks/bn_lstm_speed.py --steps 98 --input-size 8    # smoke shapes

Both models are ``reproductions.bn_lstm.SequentialClassifier`` on the same batch: the baseline's
recurrence is ``nn.LSTM`` (one fused C++/cuDNN loop), the BN-LSTM's a Python loop over one step,
eager or ``torch.compile``d. Repeats are interleaved and the fastest is kept, so that the load of
a shared machine does not favour one variant; the ratio BN-LSTM / LSTM is printed for each.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from reproductions.bn_lstm import SequentialClassifier


def training_step(model: SequentialClassifier, x: torch.Tensor,
                  y: torch.Tensor) -> Callable[[], float]:
    """A function that runs one training step of ``model`` and returns its seconds."""
    optimizer = model.configure_optimizers()
    model.train()

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=784, help="time steps per sequence")
    parser.add_argument("--input-size", type=int, default=1, help="values per time step")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled BN-LSTM")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.rand(args.batch, args.steps, args.input_size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    variants = {"lstm (nn.LSTM)": dict(cell="lstm"), "bn_lstm eager": dict(cell="bn_lstm")}
    if not args.no_compile:
        variants["bn_lstm compiled"] = dict(cell="bn_lstm", compile=True)

    print(f"# One training step, batch {args.batch}, {args.steps} steps x {args.input_size} "
          f"inputs, {args.hidden} units, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| model | fastest step (s) | first step (s) | ratio to nn.LSTM |")
    print("|---|---|---|---|")
    steps, first = {}, {}
    for name, kwargs in variants.items():
        model = SequentialClassifier(input_size=args.input_size, hidden_size=args.hidden,
                                     t_max=args.steps, **kwargs).to(args.device)
        steps[name] = training_step(model, x, y)
        first[name] = steps[name]()  # includes torch.compile's compilation
        for _ in range(args.warmup - 1):
            steps[name]()
    # Interleaved repeats, fastest kept: a shared machine's load hits every variant alike.
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(step())
    fastest = {name: min(seconds) for name, seconds in times.items()}
    baseline = fastest["lstm (nn.LSTM)"]
    for name in variants:
        print(f"| {name} | {fastest[name]:.3f} | {first[name]:.2f} | "
              f"{fastest[name] / baseline:.2f} |", flush=True)


if __name__ == "__main__":
    main()
