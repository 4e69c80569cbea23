"""WGAN's claim at small scale: the critic's Wasserstein estimate falls as the samples improve.

Trains the smoke-sized WGAN (DCGAN 32x32, weight clipping) on the embedded mnist5k digits on CPU,
once with the RMSProp critic of Algorithm 1 and once with an Adam critic (the paper's Sec. 4.2
ablation), and writes to benchmarks/results/:

* ``wgan_curve.png``: the Wasserstein estimate (median-filtered, as the paper's Fig. 3) beside
  the Frechet distance of the samples over generator iterations, and the cosine between the
  critic's step and its negative gradient;
* ``wgan_curve.md``: a table with Spearman's rank correlation between the two curves, the final
  values and the cosine statistics;
* ``wgan_curve.csv``: the curves themselves.

    OMP_NUM_THREADS=1 python benchmarks/wgan_curve.py            (about 15 minutes on 1 core)
    OMP_NUM_THREADS=1 python benchmarks/wgan_curve.py --generator-iterations 40 --frechet-every 10
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402
from scipy.ndimage import median_filter  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.images import ImageDataModule  # noqa: E402
from optimizers import presets  # noqa: E402
from reproductions.frechet import feature_extractor  # noqa: E402
from reproductions.wgan import WGAN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LR = 2e-4  # the smoke config's lr, for both optimizers: only the critic's optimizer differs
CRITIC_OPTIMIZERS = {
    "RMSProp": lambda params: presets.Wgan(params, lr=LR),
    "Adam (beta1 0.5)": lambda params: torch.optim.Adam(params, lr=LR, betas=(0.5, 0.999)),
}


def train(critic_optimizer, args: argparse.Namespace, log_dir: Path) -> tuple[dict, float]:
    """One run; returns its per-generator-iteration metrics (from Lightning's CSV log) and time."""
    pl.seed_everything(args.seed, verbose=False)
    model = WGAN(image_size=32, channels=1, ngf=32, ndf=32, n_critic=5, n_critic_burst=10,
                 burst_below=10, burst_every=0,
                 critic_optimizer=critic_optimizer,
                 generator_optimizer=lambda params: presets.Wgan(params, lr=LR),
                 max_generator_iterations=args.generator_iterations, sample_every=0,
                 frechet_every=args.frechet_every, frechet_samples=args.frechet_samples)
    data = ImageDataModule("mnist5k", root=args.data_root, image_size=32, batch_size=64)
    feature_extractor(data)  # trained once and cached: keep it out of the timing
    logger = CSVLogger(log_dir, name="", version="")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=-1, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/generator_iterations")]
    columns = {key: np.array([float(row[key]) if row[key] else math.nan for row in rows])
               for key in ("train/generator_iterations", "train/wasserstein_estimate",
                           "train/frechet_distance", "train/critic_step_grad_cosine")}
    return columns, seconds


def summarise(columns: dict, filter_size: int) -> dict:
    iterations = columns["train/generator_iterations"]
    smoothed = median_filter(columns["train/wasserstein_estimate"], size=filter_size,
                             mode="nearest")
    scored = ~np.isnan(columns["train/frechet_distance"])
    rho, p_value = spearmanr(smoothed[scored], columns["train/frechet_distance"][scored])
    cosine = columns["train/critic_step_grad_cosine"]
    return {"iterations": iterations, "smoothed": smoothed, "scored": scored, "rho": rho,
            "p": p_value, "cosine_mean": cosine.mean(), "cosine_min": cosine.min(),
            "cosine_negative": (cosine < 0).mean()}


def plot(runs: dict, path: Path, filter_size: int) -> None:
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.4))
    for (name, (columns, _, s)), color in zip(runs.items(), ("tab:blue", "tab:red")):
        it = s["iterations"]
        left.plot(it, columns["train/wasserstein_estimate"], color=color, alpha=0.2, lw=0.6)
        left.plot(it, s["smoothed"], color=color, label=f"{name} critic")
        middle.plot(it[s["scored"]], columns["train/frechet_distance"][s["scored"]], "o-",
                    color=color, ms=3, label=f"{name}: Spearman rho(W, FD) = {s['rho']:.2f}")
        right.plot(it, columns["train/critic_step_grad_cosine"], color=color, lw=0.6,
                   label=f"{name}: mean {s['cosine_mean']:.3f}, min {s['cosine_min']:.3f}")
    left.set(title=f"critic's Wasserstein estimate (median filter {filter_size})",
             xlabel="generator iterations", ylabel="mean D(real) - mean D(fake)")
    middle.set(title="Frechet distance of samples (local MNIST classifier features)",
               xlabel="generator iterations", ylabel="Frechet distance", yscale="log")
    right.set(title="cos(critic step, -gradient), each cycle's last critic step",
              xlabel="generator iterations")
    right.axhline(0, color="black", lw=0.5)
    for axis in (left, middle, right):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle("WGAN on mnist5k (32x32, DCGAN, clipping 0.01, n_critic 5): RMSProp vs Adam "
                    "critic")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def table(runs: dict, args: argparse.Namespace) -> str:
    lines = [
        f"WGAN on mnist5k, {args.generator_iterations} generator iterations, DCGAN 32x32 "
        f"(ngf = ndf = 32), clipping 0.01, n_critic 5, lr {LR} for both networks, seed "
        f"{args.seed}, CPU with OMP_NUM_THREADS={torch.get_num_threads()}. Frechet distance: "
        f"{args.frechet_samples} samples every {args.frechet_every} generator iterations, "
        f"features of a small classifier trained on mnist5k (not Inception: not comparable "
        f"with published FIDs). Spearman's rho between the median-filtered (size "
        f"{args.filter_size}) Wasserstein estimate and the Frechet distance at the scored "
        f"iterations.",
        "",
        "| critic optimizer | W estimate, peak -> last (filtered) | Frechet distance, first -> "
        "last | Spearman rho (p) | cos(step, -grad) mean | min | share < 0 | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (columns, seconds, s) in runs.items():
        fd = columns["train/frechet_distance"][s["scored"]]
        lines.append(
            f"| {name} | {s['smoothed'].max():.4f} -> {s['smoothed'][-1]:.4f} | {fd[0]:.1f} -> "
            f"{fd[-1]:.1f} | {s['rho']:.2f} ({s['p']:.1g}) | {s['cosine_mean']:.3f} | "
            f"{s['cosine_min']:.3f} | {s['cosine_negative']:.1%} | {seconds / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def write_series(runs: dict, path: Path) -> None:
    """The logged curves, one row per run and generator iteration (empty: not scored there)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["critic_optimizer", "generator_iteration", "wasserstein_estimate",
                         "wasserstein_estimate_filtered", "frechet_distance",
                         "critic_step_grad_cosine"])
        for name, (columns, _, s) in runs.items():
            for i, iteration in enumerate(s["iterations"]):
                fd = columns["train/frechet_distance"][i]
                writer.writerow([name, int(iteration),
                                 f"{columns['train/wasserstein_estimate'][i]:.6g}",
                                 f"{s['smoothed'][i]:.6g}", "" if math.isnan(fd) else f"{fd:.6g}",
                                 f"{columns['train/critic_step_grad_cosine'][i]:.6g}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator-iterations", type=int, default=300)
    parser.add_argument("--frechet-every", type=int, default=15)
    parser.add_argument("--frechet-samples", type=int, default=500)
    parser.add_argument("--filter-size", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    with tempfile.TemporaryDirectory() as logs:
        for i, (name, critic_optimizer) in enumerate(CRITIC_OPTIMIZERS.items()):
            columns, seconds = train(critic_optimizer, args, Path(logs) / str(i))
            runs[name] = (columns, seconds, summarise(columns, args.filter_size))
            print(f"{name}: {seconds / 60:.1f} min, rho {runs[name][2]['rho']:.2f}", flush=True)
    plot(runs, args.out / "wgan_curve.png", args.filter_size)
    write_series(runs, args.out / "wgan_curve.csv")
    markdown = table(runs, args)
    (args.out / "wgan_curve.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
