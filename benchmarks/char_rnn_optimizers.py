"""The claim, small scale: Graves' centered RMSProp against its neighbours on a char-level LSTM.

The same CharRNN (2 x 96 skip-connected LSTM, one-hot input, the paper's per-sequence loss and
element-wise clipping) on the embedded ``stdlib`` corpus, with the same steps, data order and
seeds, trained by:

* ``graves``: ``presets.Graves`` as published (centered, k = 1e-4 inside the root, momentum 0.9
  with lr inside, decay 0.95, lr 1e-4);
* ``graves lr 1e-3``: the same at 10x the lr (the smoke config's setting);
* ``pytorch``: ``presets.Pytorch`` (torch.optim.RMSprop defaults: lr 1e-2, alpha 0.99, eps 1e-8);
* ``pytorch centered``: the same with ``centered=True``;
* ``adam``: ``torch.optim.Adam`` defaults (lr 1e-3).

Writes ``benchmarks/results/char_rnn_optimizers.md`` (table) and ``char_rnn_optimizers.png``
(validation BPC against steps, mean over seeds).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/char_rnn_optimizers.py
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/char_rnn_optimizers.py --steps 20 --seeds 0
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from datamodules.text import TextDataModule  # noqa: E402
from optimizers import presets  # noqa: E402
from reproductions.char_rnn import CharRNN  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OPTIMIZERS: dict[str, Callable] = {
    "graves": presets.Graves,
    "graves lr 1e-3": functools.partial(presets.Graves, lr=1e-3),
    "pytorch": presets.Pytorch,
    "pytorch centered": functools.partial(presets.Pytorch, centered=True),
    "adam": torch.optim.Adam,
}


class ValidationCurve(pl.Callback):
    """Records (step, val/bpc) at every validation."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.points.append((trainer.global_step, float(trainer.callback_metrics["val/bpc"])))


def run(optimizer: Callable, seed: int, args: argparse.Namespace) -> tuple[list, float]:
    pl.seed_everything(seed, verbose=False)
    data = TextDataModule(corpus="stdlib", max_bytes=args.max_bytes, batch_size=32, seq_len=100,
                          reset_every=100)
    model = CharRNN(hidden_size=96, num_layers=2, optimizer=optimizer, sample_length=0)
    curve = ValidationCurve()
    trainer = pl.Trainer(max_steps=args.steps, val_check_interval=args.every,
                         check_val_every_n_epoch=None, limit_val_batches=args.val_batches,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[curve])
    start = time.perf_counter()
    trainer.fit(model, data)
    return curve.points, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="validate every this many steps")
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-bytes", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    curves: dict[str, list[list[tuple[int, float]]]] = {}
    seconds: dict[str, float] = {}
    for name, optimizer in OPTIMIZERS.items():
        runs = [run(optimizer, seed, args) for seed in args.seeds]
        curves[name] = [points for points, _ in runs]
        seconds[name] = sum(t for _, t in runs) / len(runs)
        print(f"{name}: final val BPC per seed {[c[-1][1] for c in curves[name]]}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    steps = [s for s, _ in curves["graves"][0]]
    mean = {name: [sum(c[i][1] for c in runs) / len(runs) for i in range(len(steps))]
            for name, runs in curves.items()}
    lines = [
        "# Character-level LSTM on `stdlib`: validation BPC by optimizer",
        "",
        f"CharRNN 2 x 96 (skip connections, one-hot), batch 32 x 100 symbols, state reset every "
        f"100 windows, per-sequence loss, element-wise clipping at 1; {args.steps} steps; "
        f"validation on the first {args.val_batches * 32 * 100:,} validation symbols; "
        f"seeds {args.seeds}; `{args.max_bytes:,}` bytes of the standard library. "
        f"Produced by `benchmarks/char_rnn_optimizers.py` (OMP_NUM_THREADS=1, CPU). "
        "Wall time per run includes validation and reflects a shared machine's load more than "
        "the optimizers' cost.",
        "",
        "| optimizer | " + " | ".join(f"step {s}" for s in steps) + " | s / run |",
        "|---|" + "---|" * (len(steps) + 1),
    ]
    for name in OPTIMIZERS:
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in mean[name])
                     + f" | {seconds[name]:.0f} |")
    (args.out / "char_rnn_optimizers.md").write_text("\n".join(lines) + "\n")

    figure, axes = plt.subplots(figsize=(6, 4))
    for name in OPTIMIZERS:
        axes.plot(steps, mean[name], marker="o", label=name)
    axes.set_xlabel("training step")
    axes.set_ylabel(f"validation BPC (mean of {len(args.seeds)} seeds)")
    axes.set_title("CharRNN 2x96 on stdlib")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.out / "char_rnn_optimizers.png", dpi=120)
    print((args.out / "char_rnn_optimizers.md").read_text())


if __name__ == "__main__":
    main()
