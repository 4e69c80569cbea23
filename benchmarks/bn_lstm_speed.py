"""Time one training step (forward, backward, RMSprop step) of the BN-LSTM against nn.LSTM.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bn_lstm_speed.py            # paper's shapes
    PYTHONPATH=. python benchmarks/bn_lstm_speed.py --steps 98 --input-size 8    # smoke shapes

Both models are ``reproductions.bn_lstm.SequentialClassifier`` on the same batch: the baseline's
recurrence is ``nn.LSTM`` (one fused C++/cuDNN loop), the BN-LSTM's a Python loop over one step,
eager or ``torch.compile``d. The ratio BN-LSTM / LSTM is printed for each.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from reproductions.bn_lstm import SequentialClassifier


def time_training_step(model: SequentialClassifier, x: torch.Tensor, y: torch.Tensor,
                       warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one training step after ``warmup`` untimed ones, and the first step's."""
    optimizer = model.configure_optimizers()
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


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
    print(f"| model | median step (s) | first step (s) | ratio to nn.LSTM |")
    print(f"|---|---|---|---|")
    baseline = None
    for name, kwargs in variants.items():
        model = SequentialClassifier(input_size=args.input_size, hidden_size=args.hidden,
                                     t_max=args.steps, **kwargs).to(args.device)
        median, first = time_training_step(model, x, y, args.warmup, args.repeats)
        baseline = baseline or median
        print(f"| {name} | {median:.3f} | {first:.2f} | {median / baseline:.2f} |", flush=True)


if __name__ == "__main__":
    main()
