"""Pictures of handwriting: pen strokes from offsets, lines of samples, the attention window.

Drawn on ``matplotlib.figure.Figure`` objects, not through pyplot, so that importing or calling
this module never changes the matplotlib backend of the program that uses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pytorch_lightning.loggers import WandbLogger

from reproductions.experiment import run_directory


def strokes_from_offsets(offsets: np.ndarray) -> list[np.ndarray]:
    """(T, 3) raw offsets -> pen-down strokes as (n, 2) arrays of absolute positions."""
    points = np.cumsum(offsets[:, :2], axis=0)
    ends = np.flatnonzero(offsets[:, 2] > 0.5) + 1
    return [s for s in np.split(points, ends) if len(s)]


def draw_strokes(ax: Axes, offsets: np.ndarray, title: str = "") -> None:
    for stroke in strokes_from_offsets(offsets):
        ax.plot(stroke[:, 0], stroke[:, 1], "k-", linewidth=1.2, solid_capstyle="round")
    ax.set_aspect("equal")
    ax.invert_yaxis()  # IAM-OnDB's y grows downwards
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9, loc="left")


def figure_of_lines(lines: list[tuple[np.ndarray, str]]) -> Figure:
    fig = Figure(figsize=(8, 1.6 * len(lines)))
    axes = fig.subplots(len(lines), 1, squeeze=False)
    for ax, (offsets, title) in zip(axes[:, 0], lines):
        draw_strokes(ax, offsets, title)
    fig.tight_layout()
    return fig


def figure_of_window(offsets: np.ndarray, phi: np.ndarray, text: str) -> Figure:
    """The line and its window weights phi(t, u) over time (Graves 2013 Fig. 13's lower panel)."""
    fig = Figure(figsize=(8, 5))
    top, bottom = fig.subplots(2, 1, height_ratios=[1, 2])
    draw_strokes(top, offsets, f"teacher-forced: {text!r}")
    bottom.imshow(phi.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    bottom.set_yticks(range(len(text)), list(text), fontsize=7)
    bottom.set_xlabel("time step t")
    bottom.set_ylabel("character u")
    bottom.set_title("window weights phi(t, u)", fontsize=9, loc="left")
    fig.tight_layout()
    return fig


class PicturesMixin:
    """For a LightningModule: save a figure as a PNG in the run directory and, under W&B, log it
    as an image, every ``hparams.picture_every_n_epochs`` epochs and after the last one."""

    def publish(self, name: str, fig: Figure) -> Path:
        path = run_directory(self.trainer) / "pictures" / f"{name}_step{self.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"pictures/{name}", images=[str(path)], step=self.global_step)
        return path

    def should_draw(self) -> bool:
        trainer = self.trainer
        every = self.hparams.picture_every_n_epochs
        # Lightning sets max_epochs to -1 when only max_steps bounds the run.
        last = (trainer.max_epochs is not None and 0 < trainer.max_epochs <= self.current_epoch + 1
                ) or 0 < trainer.max_steps <= self.global_step
        # Rank 0 draws for everyone: under DDP the replicas hold the same weights, and the other
        # ranks have no W&B run directory to write into.
        return (not trainer.sanity_checking and trainer.is_global_zero and every > 0
                and ((self.current_epoch + 1) % every == 0 or last))
