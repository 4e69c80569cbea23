"""Wasserstein GAN (Arjovsky, Chintala & Bottou 2017, arXiv:1701.07875) with an RMSProp critic.

Algorithm 1 of the paper, one critic iteration per Lightning batch:

    for each generator iteration:
        repeat n_critic times:                                   (lines 2-8)
            x ~ data, z ~ N(0, I)
            critic maximises  W = mean f(x) - mean f(G(z))        (lines 3-6, RMSProp)
            clip the critic's weights to [-c, c]                  (line 7)
        z ~ N(0, I)
        generator maximises mean f(G(z))                          (lines 9-11, RMSProp)

``W`` is the critic's estimate of the Wasserstein-1 distance (up to the Lipschitz constant set by
c); the paper's Fig. 3 shows it falling as the samples improve. ``penalty: gp`` replaces clipping
by the WGAN-GP penalty (Gulrajani et al. 2017, eq. 3) as a baseline.

Networks follow the reference code (github.com/martinarjovsky/WassersteinGAN, models/): DCGAN
generator and critic without biases, BatchNorm, LeakyReLU 0.2, N(0, 0.02) init; the same without
BatchNorm; and 4 x 512 ReLU MLPs. Launch with ``repro fit -c configs/wgan/smoke.yaml``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from datamodules.images import ImageDataModule
from optimizers import presets
from reproductions.experiment import Dashboard, Panel, Progress, run_directory
from reproductions.frechet import FrechetScore

NetworkName = Literal["dcgan", "dcgan_no_bn", "mlp"]
GENERATOR_ITERATIONS = "train/generator_iterations"
DASHBOARD = Dashboard(
    caption=("Arjovsky et al. 2017 (WGAN): Fig. 3, the critic's W estimate falls as samples "
             "improve; Sec. 4.2, the critic optimizer's step against its gradient"),
    panels=(
        Panel("W estimate vs generator iterations (Fig. 3)", ("train/wasserstein_estimate",),
              GENERATOR_ITERATIONS),
        Panel("Frechet distance vs generator iterations", ("train/frechet_distance",),
              GENERATOR_ITERATIONS),
        Panel("critic and generator losses", ("train/critic_loss", "train/generator_loss"),
              GENERATOR_ITERATIONS),
        Panel("cos(critic step, gradient) (Sec. 4.2)", ("train/critic_step_grad_cosine",),
              GENERATOR_ITERATIONS),
    ),
    x=GENERATOR_ITERATIONS,
    optimizer_arguments=("critic_optimizer", "generator_optimizer"),
)


# ------------------------------------------------------------------------------- networks
def init_dcgan_weights(module: nn.Module) -> None:
    """The reference code's init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def check_dcgan_size(image_size: int) -> None:
    """The DCGAN networks double (halve) the size from (to) 4 x 4 at every layer, with at least two
    such layers: image_size = 4 * 2^k, k >= 2."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"WGAN: DCGAN networks need image_size = 4 * 2^k >= 16 (16, 32, 64, "
                         f"128, ...), got {image_size}")


class DCGANGenerator(nn.Module):
    """z (nz) -> 4x4 with 8*ngf channels (for 64x64) -> doubling the size and halving the channels
    with 4x4 stride-2 transposed convs -> ``channels`` x image_size^2, tanh. No biases."""

    def __init__(self, nz: int, channels: int, image_size: int, ngf: int = 64,
                 batchnorm: bool = True) -> None:
        super().__init__()
        check_dcgan_size(image_size)
        width = ngf * image_size // 8  # 512 for 64x64 and ngf 64, as the reference code

        def block(c_in: int, c_out: int, *conv: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(c_out)] if batchnorm else []
            return [nn.ConvTranspose2d(c_in, c_out, 4, *conv, bias=False), *norm, nn.ReLU(True)]

        layers, size = block(nz, width, 1, 0), 4
        while size < image_size // 2:
            layers += block(width, width // 2, 2, 1)
            width, size = width // 2, size * 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


class DCGANCritic(nn.Module):
    """``channels`` x image_size^2 -> 4x4 stride-2 convs doubling the channels from ndf (no
    BatchNorm on the first), LeakyReLU 0.2 -> a 4x4 conv to one score per image; no sigmoid."""

    def __init__(self, channels: int, image_size: int, ndf: int = 64,
                 batchnorm: bool = True) -> None:
        super().__init__()
        check_dcgan_size(image_size)
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width, size = ndf, image_size // 2
        while size > 4:
            norm = [nn.BatchNorm2d(2 * width)] if batchnorm else []
            layers += [nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), *norm,
                       nn.LeakyReLU(0.2, True)]
            width, size = 2 * width, size // 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten()


class MLPGenerator(nn.Module):
    """z -> 4 ReLU layers of ``width`` units -> an image; no tanh (the paper's MLP generator)."""

    def __init__(self, nz: int, channels: int, image_size: int, width: int = 512) -> None:
        super().__init__()
        self.shape = (channels, image_size, image_size)
        sizes = [nz] + [width] * 4
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU(True))]
        self.net = nn.Sequential(*layers, nn.Linear(width, channels * image_size ** 2))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.shape)


class MLPCritic(nn.Module):
    """An image -> 4 ReLU layers of ``width`` units -> one score."""

    def __init__(self, channels: int, image_size: int, width: int = 512) -> None:
        super().__init__()
        sizes = [channels * image_size ** 2] + [width] * 4
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU(True))]
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten()


# ------------------------------------------------------------------------ training pieces
def critic_iterations(generator_iterations: int, n_critic: int, burst: int, burst_below: int,
                      burst_every: int) -> int:
    """Critic iterations before generator iteration number ``generator_iterations`` (from 0).

    Not in the paper, from the reference code: ``burst`` (100) iterations while fewer than
    ``burst_below`` (25) generator iterations are done and at every ``burst_every``-th (500), so
    the critic is near its optimum whenever W is read off. ``burst_below=0, burst_every=0`` gives
    the paper's Algorithm 1 (``n_critic`` always).
    """
    if generator_iterations < burst_below or (
            burst_every > 0 and generator_iterations % burst_every == 0):
        return burst
    return n_critic


@torch.no_grad()
def clip_weights(module: nn.Module, c: float) -> None:
    """w <- clip(w, -c, c) for every parameter, BatchNorm's included (Algorithm 1, line 7).

    Two foreach calls whatever the number of tensors (one launch each on a GPU)."""
    parameters = list(module.parameters())
    torch._foreach_clamp_min_(parameters, -c)
    torch._foreach_clamp_max_(parameters, c)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, weight: float) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): weight * E[(||grad_x f(x_hat)||_2 - 1)^2] at
    x_hat = eps x + (1 - eps) x_fake, eps ~ U[0, 1] per sample."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)
    interpolates = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(interpolates).sum(), interpolates,
                                      create_graph=True)
    return weight * ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()


def flat_copy(tensors: list[Tensor]) -> Tensor:
    """The tensors' values, detached, concatenated into one new vector (one op)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def step_gradient_cosine(before: Tensor, after: Tensor, grad: Tensor) -> Tensor:
    """cos(theta_after - theta_before, -grad) of flat vectors, as a 0-dim tensor on their device:
    1 for plain SGD; RMSProp stays positive; the paper (Sec. 4.2) sees Adam's turn negative when
    training becomes unstable."""
    return -F.cosine_similarity(after - before, grad, dim=0)


# ----------------------------------------------------------------------------- the module
class WGAN(pl.LightningModule):
    """Wasserstein GAN, Algorithm 1, with manual optimization (one critic step per batch).

    Args:
        generator, critic: ``dcgan``, ``dcgan_no_bn`` (the reference code's no-BatchNorm
            variant) or ``mlp`` (4 x ``mlp_width`` ReLU layers).
        image_size, channels: the images' shape; must match the datamodule.
        nz: dimension of the generator's N(0, I) input (100 in the paper).
        ngf, ndf: DCGAN widths (64 in the reference code); mlp_width: MLP units (512).
        penalty: ``clip`` (WGAN, weight clipping at ``clip_value``) or ``gp`` (WGAN-GP with
            ``gp_weight``, no clipping).
        n_critic: critic iterations per generator iteration (5 in the paper).
        n_critic_burst, burst_below, burst_every: the reference code's schedule (not the paper's),
            see :func:`critic_iterations`; ``burst_below: 0, burst_every: 0`` turns it off.
        critic_optimizer, generator_optimizer: optimizer callables; RMSprop with the ``wgan``
            preset (lr 5e-5) by default.
        max_generator_iterations: stop after this many generator iterations (None: the Trainer's
            limits decide; its ``max_steps`` counts critic and generator steps alike).
        sample_every: generator iterations between sample grids (0: never).
        frechet_every: generator iterations between Frechet distances (0: never).
        frechet_samples: real and generated images per Frechet distance.
        frechet_features: ``classifier`` (a small net trained on the dataset, no download) or
            ``inception`` (FID proper; needs torch-fidelity and ``inception_weights``, a local
            copy of the FID Inception weights).
    """

    def __init__(
        self,
        generator: NetworkName = "dcgan",
        critic: NetworkName = "dcgan",
        image_size: int = 32,
        channels: int = 1,
        nz: int = 100,
        ngf: int = 64,
        ndf: int = 64,
        mlp_width: int = 512,
        penalty: Literal["clip", "gp"] = "clip",
        clip_value: float = 0.01,
        gp_weight: float = 10.0,
        n_critic: int = 5,
        n_critic_burst: int = 100,
        burst_below: int = 25,
        burst_every: int = 500,
        critic_optimizer: OptimizerCallable = presets.Wgan,
        generator_optimizer: OptimizerCallable = presets.Wgan,
        max_generator_iterations: int | None = None,
        sample_every: int = 100,
        frechet_every: int = 500,
        frechet_samples: int = 1000,
        frechet_features: Literal["classifier", "inception"] = "classifier",
        inception_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["critic_optimizer", "generator_optimizer"])
        self._validate()
        self.automatic_optimization = False
        self.critic_optimizer = critic_optimizer
        self.generator_optimizer = generator_optimizer
        self.generator = self._build_network("generator", generator)
        self.critic = self._build_network("critic", critic)
        self.register_buffer("fixed_noise", torch.randn(64, nz, generator=torch.Generator()
                                                        .manual_seed(0)))
        # Generator iterations are counted here: Lightning's global_step counts every optimizer
        # step, critic and generator alike.
        self.generator_iterations = 0
        self.cycle_critic_steps = 0
        self.frechet: FrechetScore | None = None
        self.last_frechet_distance: float | None = None

    def _validate(self) -> None:
        h = self.hparams
        positive = {"image_size": h.image_size, "channels": h.channels, "nz": h.nz, "ngf": h.ngf,
                    "ndf": h.ndf, "mlp_width": h.mlp_width, "n_critic": h.n_critic,
                    "n_critic_burst": h.n_critic_burst, "clip_value": h.clip_value}
        non_negative = {"gp_weight": h.gp_weight, "burst_below": h.burst_below,
                        "burst_every": h.burst_every, "sample_every": h.sample_every,
                        "frechet_every": h.frechet_every}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"WGAN: {name} must be > 0, got {value!r}")
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"WGAN: {name} must be >= 0, got {value!r}")
        for name in ("generator", "critic"):
            if h[name] not in ("dcgan", "dcgan_no_bn", "mlp"):
                raise ValueError(f"WGAN: {name} must be dcgan, dcgan_no_bn or mlp, got {h[name]!r}")
        if h.penalty not in ("clip", "gp"):
            raise ValueError(f"WGAN: penalty must be 'clip' or 'gp', got {h.penalty!r}")
        if h.frechet_every and h.frechet_samples < 2:
            raise ValueError(f"WGAN: frechet_samples must be >= 2, got {h.frechet_samples}")
        if h.frechet_every and h.frechet_features == "inception":
            if importlib.util.find_spec("torch_fidelity") is None:
                raise ValueError("WGAN: frechet_features 'inception' needs torch-fidelity "
                                 "(`pip install torch-fidelity`); or use 'classifier'")
            if not h.inception_weights or not Path(h.inception_weights).is_file():
                raise ValueError(f"WGAN: frechet_features 'inception' needs inception_weights, a "
                                 f"local file of torch-fidelity's FID Inception weights "
                                 f"(pt_inception-2015-12-05); got {h.inception_weights!r}")

    def _build_network(self, role: str, name: str) -> nn.Module:
        h = self.hparams
        if role == "generator":
            if name == "mlp":
                return MLPGenerator(h.nz, h.channels, h.image_size, h.mlp_width)
            return DCGANGenerator(h.nz, h.channels, h.image_size, h.ngf, name == "dcgan")
        if name == "mlp":
            return MLPCritic(h.channels, h.image_size, h.mlp_width)
        return DCGANCritic(h.channels, h.image_size, h.ndf, name == "dcgan")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        optimizers = []
        for name, build, network in (("critic_optimizer", self.critic_optimizer, self.critic),
                                     ("generator_optimizer", self.generator_optimizer,
                                      self.generator)):
            try:
                optimizers.append(build(network.parameters()))
            except (ValueError, TypeError) as error:
                raise ValueError(f"WGAN: model.{name}: {error}") from error
        return optimizers

    def noise(self, batch_size: int) -> Tensor:
        return torch.randn(batch_size, self.hparams.nz, device=self.device)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    # ------------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if self.trainer else None
        for name in ("channels", "image_size"):
            value = getattr(data, name, None)
            if value is not None and value != self.hparams[name]:
                raise ValueError(f"WGAN: model.{name} is {self.hparams[name]} but the data has "
                                 f"{name} {value}; set --model.{name} {value}")
        self._find_unused_parameters_under_ddp()

    def _find_unused_parameters_under_ddp(self) -> None:
        """DDP must look for parameters without a gradient: a critic step gives the generator
        none, and a generator step gives the frozen critic (``toggle_optimizer``) none. Plain
        ``ddp`` is switched to ``ddp_find_unused_parameters_true`` here, before the strategy
        wraps the model (its ``setup`` runs after this hook); an explicit ``..._false`` fails."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, DDPStrategy):
            return
        ddp_kwargs = strategy._ddp_kwargs  # DistributedDataParallel's arguments (no public API)
        if ddp_kwargs.get("find_unused_parameters") is False:
            raise ValueError("WGAN: trainer.strategy sets find_unused_parameters=False, but the "
                             "critic and generator steps each leave the other network without "
                             "gradients; use --trainer.strategy ddp (switched on for you) or "
                             "ddp_find_unused_parameters_true")
        if not ddp_kwargs.get("find_unused_parameters"):
            ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("WGAN: DDP with find_unused_parameters=True (each step trains one "
                           "network); the same as --trainer.strategy "
                           "ddp_find_unused_parameters_true")

    @property
    def progress(self) -> Progress:
        """For the progress bar: generator iterations (the paper's unit; each batch is one critic
        iteration) toward max_generator_iterations, and the last Frechet distance."""
        values = {} if self.last_frechet_distance is None else {
            "Frechet": self.last_frechet_distance}
        return Progress("generator iterations", self.generator_iterations,
                        self.hparams.max_generator_iterations, values)

    def on_fit_start(self) -> None:
        if self.hparams.frechet_every:
            self.frechet = self._build_frechet()

    def on_train_start(self) -> None:
        # The reference code clips before each critic iteration (which also clips the initial
        # weights, BatchNorm's gammas ~ 1 included), the paper after each update (line 7), so
        # that the generator step sees a clipped critic too. Both: once here, then after every
        # update; a clip before any later iteration would find the weights clipped already.
        if self.hparams.penalty == "clip":
            clip_weights(self.critic, self.hparams.clip_value)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """One critic iteration per batch; after as many as the schedule asks, one generator
        iteration and its metrics."""
        real, _ = batch
        h = self.hparams
        self.cycle_critic_steps += 1
        cycle_ends = self.cycle_critic_steps >= critic_iterations(
            self.generator_iterations, h.n_critic, h.n_critic_burst, h.burst_below, h.burst_every)
        wasserstein, critic_loss, cosine = self.critic_step(real, measure_cosine=cycle_ends)
        if not cycle_ends:
            return
        generator_loss = self.generator_step(real.shape[0])
        self.generator_iterations += 1
        self.log_generator_iteration(wasserstein, critic_loss, generator_loss, cosine)
        if h.max_generator_iterations and self.generator_iterations >= h.max_generator_iterations:
            self.trainer.should_stop = True

    def critic_step(self, real: Tensor, measure_cosine: bool) -> tuple[Tensor, Tensor,
                                                                        Tensor | None]:
        """Algorithm 1, lines 2-8: the critic maximises W = mean f(x) - mean f(G(z)) by one
        optimizer step, then its weights are clipped. Returns W, the critic's loss and (if
        ``measure_cosine``) the step/gradient cosine as 0-dim tensors, without a host sync."""
        h = self.hparams
        optimizer = self.optimizers()[0]
        with torch.no_grad():  # no generator gradients: it needs no toggling
            fake = self.generator(self.noise(real.shape[0]))
        wasserstein = self.critic(real).mean() - self.critic(fake).mean()
        loss = -wasserstein
        if h.penalty == "gp":
            loss = loss + gradient_penalty(self.critic, real, fake, h.gp_weight)
        optimizer.zero_grad()
        self.manual_backward(loss)
        cosine = None
        if measure_cosine:
            parameters = [p for p in self.critic.parameters() if p.grad is not None]
            before, grad = flat_copy(parameters), flat_copy([p.grad for p in parameters])
        optimizer.step()
        if measure_cosine:  # Sec. 4.2's diagnostic on the optimizer's own step, before the clip
            cosine = step_gradient_cosine(before, flat_copy(parameters), grad)
        if h.penalty == "clip":
            clip_weights(self.critic, h.clip_value)
        return wasserstein.detach(), loss.detach(), cosine

    def generator_step(self, batch_size: int) -> Tensor:
        """Algorithm 1, lines 9-11: the generator maximises the critic's mean score of fresh
        samples by one optimizer step, the critic frozen. Returns its loss as a 0-dim tensor."""
        optimizer = self.optimizers()[1]
        self.toggle_optimizer(optimizer)  # the critic's weights get no gradients
        loss = -self.critic(self.generator(self.noise(batch_size))).mean()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        return loss.detach()

    def log_generator_iteration(self, wasserstein: Tensor, critic_loss: Tensor,
                                generator_loss: Tensor, cosine: Tensor) -> None:
        """The generator iteration's metrics to every logger: the last critic iteration's W,
        losses and step/gradient cosine (one host copy for all four; the cosine of one step in
        five costs a fifth of every step's, ~1% of a step on the CPU), and at their intervals the
        Frechet distance and a sample grid."""
        h = self.hparams
        values = torch.stack([wasserstein, critic_loss, generator_loss, cosine]).tolist()
        metrics = dict(zip(("train/wasserstein_estimate", "train/critic_loss",
                            "train/generator_loss", "train/critic_step_grad_cosine"), values))
        metrics["train/generator_iterations"] = self.generator_iterations
        metrics["train/critic_iterations"] = self.cycle_critic_steps
        self.cycle_critic_steps = 0
        if h.frechet_every and self.generator_iterations % h.frechet_every == 0:
            metrics["train/frechet_distance"] = self.frechet_distance()
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        if h.sample_every and self.generator_iterations % h.sample_every == 0 \
                and self.trainer.is_global_zero:  # DDP replicas agree; rank 0 draws for all
            self.log_samples()
        if self.trainer.progress_bar_callback is not None:  # self.log costs ~1 ms a call
            self.log("W", metrics["train/wasserstein_estimate"], prog_bar=True, logger=False)
            self.log("G_iter", float(self.generator_iterations), prog_bar=True, logger=False)

    # ------------------------------------------------------------------------- samples
    @torch.no_grad()
    def log_samples(self) -> Path:
        """A grid of G(fixed noise), as a PNG in the run directory and a W&B image."""
        grid = make_grid(self.generator(self.fixed_noise), nrow=8, normalize=True,
                         value_range=(-1, 1))
        name = f"generator_iteration_{self.generator_iterations:06d}.png"
        path = run_directory(self.trainer) / "samples" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("train/samples", [grid], step=self.global_step,
                                 caption=[f"generator iteration {self.generator_iterations}"])
        return path

    def _build_frechet(self) -> FrechetScore:
        h = self.hparams
        data = self.trainer.datamodule
        if not isinstance(data, ImageDataModule):
            raise ValueError("WGAN: Frechet distances need datamodules.images.ImageDataModule "
                             "(its train_set and feature cache); or set --model.frechet_every 0")
        return FrechetScore.of_dataset(data, h.frechet_features, h.frechet_samples,
                                       h.inception_weights, self.device)

    @torch.no_grad()
    def frechet_distance(self) -> float:
        """Frechet distance between ``frechet_samples`` generated images and the real ones."""
        self.last_frechet_distance = self.frechet(self.generator, self.noise,
                                                  self.hparams.frechet_samples)
        return self.last_frechet_distance

    # ------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wgan_counters"] = {"generator_iterations": self.generator_iterations,
                                       "cycle_critic_steps": self.cycle_critic_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("wgan_counters", {})
        self.generator_iterations = counters.get("generator_iterations", 0)
        self.cycle_critic_steps = counters.get("cycle_critic_steps", 0)
