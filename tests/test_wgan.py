"""WGAN: networks against the reference code's shapes, clipping, the critic schedule, the gradient
penalty, the step/gradient cosine, configs against the papers, bad input, and one end-to-end run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import wandb
from pytorch_lightning.loggers import CSVLogger
from torch import nn

import paper_facts
from helpers import write_png_folder
from reproductions.runner.wandb_records import read_finished_run
from datamodules.images import DatasetError
from optimizers import RMSprop
from reproductions.runner.cli import main
from reproductions.wgan import (WGAN, DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator,
                                clip_weights, critic_iterations, flat_copy, gradient_penalty,
                                step_gradient_cosine)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "wgan"


# ------------------------------------------------------------------------------ networks
def layers_of(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_dcgan_64_has_the_reference_widths_and_no_biases():
    generator, critic = DCGANGenerator(100, 3, 64), DCGANCritic(3, 64)
    # papers.md: nz -> 512 (4x4) -> 256 -> 128 -> 64 -> 3; critic 3 -> 64, 128, 256, 512 -> 1.
    assert [(m.in_channels, m.out_channels) for m in layers_of(generator, nn.ConvTranspose2d)] == [
        (100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert [(m.in_channels, m.out_channels) for m in layers_of(critic, nn.Conv2d)] == [
        (3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert all(m.bias is None for m in layers_of(generator, nn.ConvTranspose2d)
               + layers_of(critic, nn.Conv2d))
    assert len(layers_of(generator, nn.BatchNorm2d)) == 4  # all but the output layer
    assert len(layers_of(critic, nn.BatchNorm2d)) == 3     # none on the first layer
    assert {m.negative_slope for m in layers_of(critic, nn.LeakyReLU)} == {0.2}
    assert not layers_of(critic, nn.Sigmoid)
    images = generator(torch.randn(2, 100))
    assert images.shape == (2, 3, 64, 64) and images.abs().max() <= 1  # tanh
    assert critic(images).shape == (2,)


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_dcgan_sizes_4_times_a_power_of_2_give_one_score_per_image(size):
    generator, critic = DCGANGenerator(8, 1, size, ngf=4), DCGANCritic(1, size, ndf=4)
    images = generator(torch.randn(2, 8))
    assert images.shape == (2, 1, size, size) and critic(images).shape == (2,)


@pytest.mark.parametrize("size", [8, 24, 48, 80, 96])
def test_other_dcgan_sizes_are_refused_when_built(size):
    # 48 passed the old multiple-of-16 check, then failed in the critic's last convolution
    # (a 3x3 map under a 4x4 kernel) when training started
    for network in (lambda: DCGANGenerator(8, 1, size), lambda: DCGANCritic(1, size)):
        with pytest.raises(ValueError, match=rf"image_size = 4 \* 2\^k >= 16 .*got {size}"):
            network()


def test_dcgan_32_and_no_batchnorm_variants():
    generator = DCGANGenerator(100, 1, 32, ngf=64, batchnorm=False)
    critic = DCGANCritic(1, 32, ndf=64, batchnorm=False)
    assert not layers_of(generator, nn.BatchNorm2d) and not layers_of(critic, nn.BatchNorm2d)
    assert [m.out_channels for m in layers_of(generator, nn.ConvTranspose2d)] == [256, 128, 64, 1]
    assert critic(generator(torch.randn(3, 100))).shape == (3,)


@torch.no_grad()
def test_dcgan_init_is_normal_0_002_and_batchnorm_normal_1_002():
    torch.manual_seed(0)
    generator = DCGANGenerator(100, 3, 64)
    weights = torch.cat([m.weight.flatten() for m in layers_of(generator, nn.ConvTranspose2d)])
    assert weights.mean().abs() < 1e-3 and float(weights.std()) == pytest.approx(0.02, rel=0.01)
    gammas = torch.cat([m.weight for m in layers_of(generator, nn.BatchNorm2d)])
    betas = torch.cat([m.bias for m in layers_of(generator, nn.BatchNorm2d)])
    assert float(gammas.mean()) == pytest.approx(1.0, abs=0.005)
    assert float(gammas.std()) == pytest.approx(0.02, rel=0.1) and (betas == 0).all()


def test_mlp_has_four_relu_layers_of_512_and_no_tanh():
    generator, critic = MLPGenerator(100, 3, 64), MLPCritic(3, 64)
    assert [m.out_features for m in layers_of(generator, nn.Linear)] == [512] * 4 + [3 * 64 * 64]
    assert [m.out_features for m in layers_of(critic, nn.Linear)] == [512] * 4 + [1]
    assert len(layers_of(generator, nn.ReLU)) == 4 and not layers_of(generator, nn.Tanh)
    assert generator(torch.randn(2, 100)).shape == (2, 3, 64, 64)


# --------------------------------------------------------------------- critic schedule
def test_reference_schedule_hand_counts():
    def schedule(g: int) -> int:
        return critic_iterations(g, n_critic=5, burst=100, burst_below=25, burst_every=500)

    assert [schedule(g) for g in (0, 24, 25, 26, 499, 500, 501, 1000)] == [
        100, 100, 5, 5, 5, 100, 5, 100]
    # First 1001 generator iterations: 25 bursts, then 475 x 5, the burst at 500, 499 x 5, 1000.
    assert sum(schedule(g) for g in range(1001)) == 25 * 100 + 475 * 5 + 100 + 499 * 5 + 100
    # The paper's Algorithm 1: n_critic always.
    assert {critic_iterations(g, 5, 100, 0, 0) for g in range(2000)} == {5}


class TinyImages(pl.LightningDataModule):
    """Random 16x16 images, as many batches as asked."""

    def __init__(self, batches: int, batch_size: int = 8) -> None:
        super().__init__()
        self.images = torch.rand(batches * batch_size, 1, 16, 16) * 2 - 1
        self.batch_size = batch_size

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(self.images, torch.zeros(len(self.images)))
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)


def tiny_wgan(**overrides) -> WGAN:
    settings = dict(image_size=16, channels=1, nz=8, ngf=4, ndf=4, sample_every=0,
                    frechet_every=0)
    return WGAN(**{**settings, **overrides})


def fit(model: WGAN, batches: int, **trainer) -> pl.Trainer:
    settings = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": 1}
    trainer = pl.Trainer(**{**settings, **trainer})
    trainer.fit(model, TinyImages(batches))
    return trainer


def test_training_follows_the_schedule_one_critic_step_per_batch():
    # n_critic 2, bursts of 3 for generator iterations 0 and 1 and every 4th: the critic needs
    # 3, 3, 2, 2, 3 (the 4th), 2 -> cumulative 3, 6, 8, 10, 13, 15 batches.
    model = tiny_wgan(n_critic=2, n_critic_burst=3, burst_below=2, burst_every=4)
    trainer = fit(model, batches=15)
    assert model.generator_iterations == 6 and model.cycle_critic_steps == 0
    assert trainer.global_step == 15 + 6  # Lightning counts critic and generator steps alike
    model = tiny_wgan(n_critic=2, n_critic_burst=3, burst_below=2, burst_every=4)
    fit(model, batches=14)
    assert model.generator_iterations == 5 and model.cycle_critic_steps == 1


def test_max_generator_iterations_stops_training():
    model = tiny_wgan(n_critic=1, burst_below=0, burst_every=0, max_generator_iterations=3)
    trainer = fit(model, batches=10)
    assert model.generator_iterations == 3 and trainer.global_step == 6


def test_checkpoint_keeps_the_generator_iteration_count(tmp_path):
    model = tiny_wgan(n_critic=1, burst_below=0, burst_every=0, max_generator_iterations=3)
    trainer = fit(model, batches=10)
    trainer.save_checkpoint(tmp_path / "wgan.ckpt")
    restored = WGAN.load_from_checkpoint(tmp_path / "wgan.ckpt")
    assert restored.generator_iterations == 3
    torch.testing.assert_close(restored.fixed_noise, model.fixed_noise)
    with torch.no_grad():
        torch.testing.assert_close(restored(model.fixed_noise), model(model.fixed_noise))


def test_each_generator_iteration_logs_its_metrics(tmp_path):
    # An SGD critic steps along -grad exactly: every critic step's cosine is 1, so is their mean.
    model = tiny_wgan(n_critic=3, burst_below=0, burst_every=0, max_generator_iterations=4,
                      critic_optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    fit(model, batches=20, logger=CSVLogger(tmp_path, name="run"))
    lines = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()
    rows = [row for row in csv.DictReader(lines) if row.get("train/generator_iterations")]
    assert [int(row["train/generator_iterations"]) for row in rows] == [1, 2, 3, 4]
    assert [int(row["step"]) for row in rows] == [4, 8, 12, 16]  # 3 critic steps + 1 G step each
    for row in rows:
        assert int(row["train/critic_iterations"]) == 3
        assert float(row["train/critic_step_grad_cosine"]) == pytest.approx(1.0, abs=1e-5)
        assert float(row["train/critic_loss"]) == -float(row["train/wasserstein_estimate"])
        assert math.isfinite(float(row["train/generator_loss"]))


def test_progress_bar_shows_w_and_the_generator_iteration():
    model = tiny_wgan(n_critic=1, burst_below=0, burst_every=0, max_generator_iterations=2)
    trainer = fit(model, batches=4, enable_progress_bar=True)
    assert trainer.progress_bar_metrics["G_iter"] == 2.0
    assert math.isfinite(trainer.progress_bar_metrics["W"])


# ------------------------------------------------------------------------------ clipping
def test_critic_sees_only_clipped_weights():
    c = 0.01
    model = tiny_wgan(n_critic=3, burst_below=0, burst_every=0, clip_value=c,
                      critic_optimizer=lambda p: RMSprop(p, lr=0.05))
    assert max(p.abs().max() for p in model.critic.parameters()) > 0.5  # BatchNorm gammas ~ 1
    seen = []
    model.critic.register_forward_pre_hook(
        lambda module, args: seen.append(max(float(p.detach().abs().max())
                                             for p in module.parameters())))
    after_steps = []
    model.on_train_batch_end = lambda *args: after_steps.append(
        max(float(p.abs().max()) for p in model.critic.parameters()))
    fit(model, batches=6)
    assert len(seen) == 6 * 2 + 2 and max(seen) <= c  # 2 forwards per critic step, 1 per G step
    assert len(after_steps) == 6 and max(after_steps) <= c
    assert max(after_steps) == pytest.approx(c)  # lr 0.05 pushes weights against the bound


def test_clip_weights_clamps_every_parameter():
    critic = DCGANCritic(1, 16, ndf=4)
    for parameter in critic.parameters():
        nn.init.normal_(parameter, 0.0, 1.0)
    expected = [p.detach().clamp(-0.01, 0.01) for p in critic.parameters()]
    clip_weights(critic, 0.01)
    for parameter, clamped in zip(critic.parameters(), expected):
        torch.testing.assert_close(parameter.detach(), clamped)


def test_gradient_penalty_variant_does_not_clip():
    model = tiny_wgan(penalty="gp", n_critic=1, burst_below=0, burst_every=0)
    fit(model, batches=3)
    gammas = torch.cat([m.weight for m in layers_of(model.critic, nn.BatchNorm2d)])
    assert gammas.abs().min() > 0.5


# -------------------------------------------------------------------------------- penalty
def test_gradient_penalty_of_a_linear_critic_is_lambda_norm_minus_one_squared():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    penalty = gradient_penalty(critic, real, fake, weight=10.0)
    norm = critic[1].weight.norm()  # grad_x (w.x + b) = w at every interpolate
    assert float(penalty) == pytest.approx(10 * (float(norm) - 1) ** 2, rel=1e-5)
    # d/dw 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||: the penalty is differentiable in w.
    penalty.backward()
    expected = 20 * (norm - 1) * critic[1].weight / norm
    torch.testing.assert_close(critic[1].weight.grad, expected.detach())


def test_gradient_penalty_is_taken_at_random_interpolates():
    class HalfSquaredNorm(nn.Module):  # f(x) = ||x||^2 / 2, so grad_x f = x
        def forward(self, x):
            return 0.5 * x.flatten(1).pow(2).sum(1)

    real, fake = torch.randn(6, 1, 3, 3), torch.randn(6, 1, 3, 3)
    torch.manual_seed(7)
    penalty = gradient_penalty(HalfSquaredNorm(), real, fake, weight=10.0)
    torch.manual_seed(7)
    eps = torch.rand(6, 1, 1, 1)
    x_hat = eps * real + (1 - eps) * fake
    expected = 10 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert float(penalty) == pytest.approx(float(expected), rel=1e-5)


def test_step_gradient_cosine():
    torch.manual_seed(0)
    parameter = nn.Parameter(torch.randn(10))
    (parameter ** 3).sum().backward()
    before, grad = flat_copy([parameter]), flat_copy([parameter.grad])
    torch.optim.SGD([parameter], lr=0.1).step()  # an SGD step is along -grad exactly
    assert float(step_gradient_cosine(before, flat_copy([parameter]), grad)) == pytest.approx(1.0)
    assert float(step_gradient_cosine(before, before + 0.1 * grad, grad)) == pytest.approx(-1.0)
    # RMSProp's first step from v = 0 is -lr g / (sqrt(0.01 g^2) + eps) = -10 lr sign(g):
    # cos(sign(g), g) = ||g||_1 / (sqrt(n) ||g||_2).
    parameter.data.copy_(before)
    RMSprop([parameter], lr=1e-3).step()
    expected = grad.abs().sum() / (math.sqrt(10) * grad.norm())
    assert float(step_gradient_cosine(before, flat_copy([parameter]), grad)) == pytest.approx(
        float(expected), rel=1e-4)


def test_flat_copy_is_a_detached_copy_in_parameter_order():
    first, second = nn.Parameter(torch.arange(6.0).view(2, 3)), nn.Parameter(torch.tensor([7.0]))
    copy = flat_copy([first, second])
    assert copy.tolist() == [0, 1, 2, 3, 4, 5, 7] and not copy.requires_grad
    with torch.no_grad():
        first.add_(1)
    assert copy[0] == 0  # a snapshot, not a view


# ------------------------------------------------------------------------------- configs
def parse(*configs: str, extra: tuple[str, ...] = ()):
    args = [arg for name in configs for arg in ("-c", str(CONFIGS / name))]
    return main(args=[*args, "--trainer.logger", "false", *extra], run=False)


def optimizer_of(factory) -> torch.optim.Optimizer:
    return factory([nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize("names, image_size, channels", [
    (("dcgan_lsun64.yaml",), 64, 3), (("dcgan_lsun64.yaml", "mlp_generator.yaml"), 64, 3),
    (("dcgan_cifar10.yaml",), 32, 3)])
def test_paper_configs_follow_algorithm_1(names, image_size, channels):
    cli = parse(*names)
    model, data = cli.model, cli.datamodule
    paper = paper_facts.WGAN
    for factory in (model.critic_optimizer, model.generator_optimizer):
        optimizer = optimizer_of(factory)
        assert isinstance(optimizer, RMSprop)
        assert optimizer.defaults["lr"] == paper["lr"]
        assert (optimizer.defaults["alpha"], optimizer.defaults["eps"]) == (paper["alpha"],
                                                                            paper["eps"])
        assert optimizer.defaults["momentum"] == 0 and not optimizer.defaults["centered"]
    h = model.hparams
    assert (h.penalty, h.clip_value, h.n_critic, h.nz) == ("clip", paper["clip_value"],
                                                           paper["n_critic"], paper["nz"])
    assert (h.n_critic_burst, h.burst_below, h.burst_every) == (
        paper["n_critic_burst"], paper["burst_below"], paper["burst_every"])
    assert data.batch_size == paper["batch_size"]
    assert (h.image_size, h.channels) == (data.image_size, data.channels) == (image_size, channels)
    if "lsun" in names[0]:
        assert (data.dataset_name, data.lsun_classes) == ("lsun", "bedroom_train")
    if "mlp_generator.yaml" in names:
        assert (h.generator, h.mlp_width) == ("mlp", paper["mlp_width"])


def test_wgan_gp_config_follows_gulrajani():
    cli = parse("wgan_gp_cifar10.yaml")
    h = cli.model.hparams
    paper = paper_facts.WGAN_GP  # and no critic BatchNorm
    assert (h.penalty, h.gp_weight, h.n_critic, h.critic) == ("gp", paper["gp_weight"],
                                                              paper["n_critic"], "dcgan_no_bn")
    assert critic_iterations(0, h.n_critic, h.n_critic_burst, h.burst_below, h.burst_every) == 5
    for factory in (cli.model.critic_optimizer, cli.model.generator_optimizer):
        optimizer = optimizer_of(factory)
        assert type(optimizer) is torch.optim.Adam
        assert optimizer.defaults["lr"] == paper["lr"]
        assert tuple(optimizer.defaults["betas"]) == paper["betas"]
    assert not layers_of(cli.model.critic, nn.BatchNorm2d)


def test_adam_critic_overlay_changes_only_the_critic_optimizer():
    base, ablation = parse("dcgan_lsun64.yaml"), parse("dcgan_lsun64.yaml", "adam_critic.yaml")
    adam = optimizer_of(ablation.model.critic_optimizer)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"][0] > 0  # paper Sec. 4.2
    assert isinstance(optimizer_of(ablation.model.generator_optimizer), RMSprop)
    assert dict(ablation.model.hparams) == dict(base.model.hparams)


def test_smoke_config_runs_mnist5k_at_32_on_cpu():
    cli = parse("smoke.yaml")
    assert (cli.datamodule.dataset_name, cli.datamodule.image_size) == ("mnist5k", 32)
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    assert cli.model.hparams.max_generator_iterations > 0


# ----------------------------------------------------------------------------- bad input
def test_unknown_config_key_is_named(capsys):
    with pytest.raises(SystemExit):
        parse("smoke.yaml", extra=("--model.init_args.clip_valu", "0.1"))
    assert "clip_valu" in capsys.readouterr().err


def test_negative_lr_names_the_optimizer_and_lr():
    # the CLI builds each configured optimizer once while parsing, before any training
    with pytest.raises(ValueError, match=r"critic_optimizer .*lr must be >= 0"):
        parse("smoke.yaml", extra=("--model.critic_optimizer.init_args.lr=-1e-4",))


@pytest.mark.parametrize("field, value", [("clip_value", -0.01), ("n_critic", 0), ("nz", 0),
                                          ("image_size", 40), ("gp_weight", -1.0)])
def test_bad_model_arguments_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        WGAN(**{field: value})


def test_missing_dataset_path_fails_before_training(tmp_path):
    with pytest.raises(DatasetError, match="no_such_folder"):
        main(args=["fit", "-c", str(CONFIGS / "smoke.yaml"), "--trainer.logger", "false",
                   "--data.dataset", "folder", "--data.root", str(tmp_path / "no_such_folder"),
                   "--model.channels", "3", "--trainer.default_root_dir", str(tmp_path)])


def test_model_and_data_shapes_must_agree(tmp_path):
    with pytest.raises(ValueError, match="model.channels is 3 .* channels 1"):
        main(args=["fit", "-c", str(CONFIGS / "smoke.yaml"), "--trainer.logger", "false",
                   "--model.channels", "3", "--trainer.default_root_dir", str(tmp_path)])


# --------------------------------------------------------------------------- end to end
def read_wandb_history(run_file: Path) -> list[dict]:
    """History rows of an offline W&B run file, read by the project's own offline reader."""
    return read_finished_run(run_file.parent).history


def test_repro_fit_logs_the_metrics_to_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    write_png_folder(tmp_path / "images", count=16, size=20)
    main(args=["fit", "-c", str(CONFIGS / "smoke.yaml"),
               "--data.dataset", "folder", "--data.root", str(tmp_path / "images"),
               "--data.image_size", "16", "--data.batch_size", "4",
               "--model.image_size", "16", "--model.channels", "3", "--model.ngf", "4",
               "--model.ndf", "4", "--model.n_critic", "1", "--model.burst_below", "0",
               "--model.max_generator_iterations", "4", "--model.sample_every", "2",
               "--model.frechet_every", "2", "--model.frechet_samples", "8",
               "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path),
               "--trainer.logger.init_args.save_dir", str(tmp_path)])
    wandb.finish()  # the CLI leaves the run open until exit
    wandb.teardown()  # stops W&B's service, which flushes the offline run file to disk
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    rows = read_wandb_history(run_file)
    logged = [row for row in rows if "train/generator_iterations" in row]
    assert [row["train/generator_iterations"] for row in logged] == [1, 2, 3, 4]
    for key in ("train/wasserstein_estimate", "train/critic_loss", "train/generator_loss",
                "train/critic_step_grad_cosine"):
        assert all(math.isfinite(row[key]) for row in logged), key
    for row in logged:  # critic loss = -(D(real) - D(fake)) under clipping
        assert row["train/critic_loss"] == pytest.approx(-row["train/wasserstein_estimate"])
    assert [row["_step"] for row in rows if "train/frechet_distance" in row] == [
        row["_step"] for row in logged[1::2]]
    images = [row for row in rows if "train/samples/_type" in row]  # W&B stores images nested
    assert [row["trainer/global_step"] for row in images] == [
        row["trainer/global_step"] for row in logged[1::2]]
    samples = sorted(p.name for p in run_file.parent.glob("files/samples/*.png"))
    assert samples == ["generator_iteration_000002.png", "generator_iteration_000004.png"]
