"""Shared pieces of the tests: the optimizer variants and a trajectory runner, image folders, and
the arguments of tiny runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from optimizers import reference
from optimizers.reference import Hyperparameters

# Every published form and every extra flag, each at least once.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "hinton": {"alpha": 0.9, "lr": 1e-3},
    "centered": {"centered": True},
    "momentum": {"momentum": 0.9},
    "centered_momentum": {"centered": True, "momentum": 0.9},
    "eps_in_sqrt": {"eps_in_sqrt": True, "eps": 1e-3},
    "tensorflow1": {"initial_square_avg": 1.0, "eps_in_sqrt": True, "lr_in_momentum": True,
                    "momentum": 0.9, "alpha": 0.9, "eps": 1e-10},
    "graves": {"centered": True, "eps_in_sqrt": True, "lr_in_momentum": True, "momentum": 0.9,
               "alpha": 0.95, "eps": 1e-4, "lr": 1e-4},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "nesterov_lr_inside": {"momentum": 0.8, "nesterov": True, "lr_in_momentum": True},
    "l2_weight_decay": {"weight_decay": 0.1, "momentum": 0.5},
    "decoupled_weight_decay": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "bias_correction": {"bias_correction": True, "alpha": 0.9},
    # centered + bias correction: v^ - m^^2 is exactly 0 at step 1, so eps goes inside the root
    "bias_correction_centered": {"bias_correction": True, "centered": True, "alpha": 0.9,
                                 "eps_in_sqrt": True, "eps": 1e-2},
    "maximize": {"maximize": True, "momentum": 0.5, "centered": True},
}

# fp32 against the float64 reference. The centered + bias-corrected variance is a difference of
# two nearly equal numbers in its first steps, so fp32 carries fewer correct digits there.
TOLERANCES: dict[str, tuple[float, float]] = {"bias_correction_centered": (3e-4, 3e-5)}
DEFAULT_TOLERANCE = (2e-5, 2e-6)


def gradient(shape, step: int, index: int, dtype: torch.dtype) -> torch.Tensor:
    """A deterministic gradient with varied signs and scales, in ``dtype``."""
    n = torch.Size(shape).numel()
    x = torch.arange(n, dtype=torch.float64).reshape(shape)
    g = torch.sin(x * (0.7 + index) + 1.3 * step) * (1 + torch.cos(x * 0.11 + step) ** 2)
    return g.to(dtype)


def initial_params(shapes, dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for shape in shapes]


def reference_trajectory(params, settings: dict, steps: int) -> tuple[list, list]:
    """Final params and states of reference.update in float64 from the same start."""
    hp = Hyperparameters(**{k: v for k, v in settings.items() if k in Hyperparameters._fields})
    finals, states = [], []
    for index, p in enumerate(params):
        dtype, p = p.dtype, p.double()
        state = reference.init(p, hp)
        for step in range(steps):
            g = gradient(p.shape, step, index, dtype).double()
            p, state = reference.update(p, g, state, hp)
        finals.append(p)
        states.append(state)
    return finals, states


def optimizer_trajectory(make_optimizer, params, steps: int):
    """Final params and the optimizer after ``steps`` steps on the same gradients."""
    params = [p.clone().requires_grad_() for p in params]
    optimizer = make_optimizer(params)
    for step in range(steps):
        for index, p in enumerate(params):
            p.grad = gradient(p.shape, step, index, p.dtype)
        optimizer.step()
    return [p.detach() for p in params], optimizer


def gradients_in_one_buffer(params, step: int, buffer: torch.Tensor, offset: int) -> None:
    """Each param's gradient is the next view of ``buffer`` from ``offset`` on (as DDP's gradient
    buckets are; an odd offset leaves them unaligned), holding ``gradient(shape, step, index)``."""
    for index, p in enumerate(params):
        p.grad = buffer[offset:offset + p.numel()].view(p.shape)
        p.grad.copy_(gradient(p.shape, step, index, p.dtype))
        offset += p.numel()


def write_png_folder(root: Path, count: int, size: int) -> None:
    """An ImageFolder on disk: ``count`` random RGB PNGs of ``size`` pixels in classes a and b."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(count // 2):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / label / f"{i}.png")


# A handwriting prediction run small enough for a test: 24 Hershey lines, 8 units, 2 mixtures.
TINY_HANDWRITING = [
    "--data.init_args.hershey_lines", "24", "--data.init_args.hershey_val_lines", "4",
    "--data.init_args.batch_size", "8", "--model.init_args.hidden_size", "8",
    "--model.init_args.num_mixtures", "2", "--model.init_args.picture_every_n_epochs", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]

# A BN-LSTM run on mnist5k small enough for a test: 3 batches of 16, 7 steps of 112 pixels.
TINY_BN_LSTM = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "16",
    "--data.init_args.pixels_per_step", "112", "--model.init_args.input_size", "112",
    "--model.init_args.t_max", "7", "--model.init_args.hidden_size", "8",
    "--optimizer_monitor.every_n_steps", "1"]
