"""Graves (2013), "Generating Sequences With Recurrent Neural Networks", Sec. 4-5: handwriting
prediction and synthesis on IAM-OnDB (arXiv:1308.0850), trained with the paper's RMSProp.

    repro fit -c configs/handwriting/prediction_smoke.yaml      # Hershey stand-in, CPU, minutes
    repro fit -c configs/handwriting/synthesis_smoke.yaml
    repro fit -c configs/handwriting/synthesis_iam.yaml --data.init_args.root /data/iam-ondb
    python -m reproductions.handwriting write --checkpoint last.ckpt --text "hello" --bias 1 \
        --out hello.svg

Prediction (Sec. 4): a skip-connected stacked LSTM reads pen offsets x_t = (dx, dy, end_of_stroke)
and emits y_t, the parameters of a mixture of M bivariate Gaussians for the next offset plus a
Bernoulli for the pen lift: 1 + 6M = 121 outputs for M = 20 (eq. 15-22). The loss is the sequence's
negative log-likelihood in nats (eq. 26), the number in the paper's Tables 3 and 4.

Synthesis (Sec. 5): a soft window over the one-hot characters c_1..c_U, computed from the first
layer, feeds every layer (eq. 46-52):

    (alpha_hat, beta_hat, kappa_hat) = W h^1_t + b             (K Gaussians each)
    alpha = exp(alpha_hat), beta = exp(beta_hat), kappa_t = kappa_{t-1} + exp(kappa_hat)
    phi(t, u) = sum_k alpha_k exp(-beta_k (kappa_k - u)^2),     w_t = sum_u phi(t, u) c_u
    h^1_t = LSTM^1([x_t, w_{t-1}]),  h^n_t = LSTM^n([x_t, h^{n-1}_t, w_t]),  y_t from [h^1..h^N]

Only layer 1 and the window must step one time step at a time (w_t feeds layer 1 at t+1); the
upper layers then run over the whole sequence.

The LSTM layers (``lstm``) are the paper's by default: ``graves`` builds ``GravesLSTM`` layers,
with peephole connections (eq. 7-11), fused; ``cudnn`` builds ``nn.LSTM`` layers (cuDNN), without.

Gradient clipping (Sec. 4): derivatives of the loss with respect to the network outputs y_hat are
clipped to [-100, 100] by a tensor hook, and "LSTM derivatives" to [-10, 10]: with ``lstm:
graves`` exactly where the paper clips them, the derivatives with respect to the gates'
pre-activations inside backpropagation through time. ``nn.LSTM`` (cuDNN) does not expose those,
so with ``lstm: cudnn`` the clip acts on the derivative with respect to each layer's outputs
h^n_t (per step in the first layer, where it includes the recurrent path; for whole-sequence
layers on what flows in from the output layer and the layer above). The bounds apply per sequence
as in the paper: we backpropagate the batch mean, so each bound is divided by the batch size.

Approximation: tanh(rho) is kept within 1 - 1e-6 of +-1 so the density stays finite.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn

from datamodules.handwriting import ALPHABET, denormalise, encode_text
from optimizers.presets import Graves
from reproductions.experiment import Dashboard, Panel
from reproductions.graves_lstm import clip_gradient
from reproductions.handwriting_pictures import PicturesMixin, figure_of_lines, figure_of_window
from reproductions.skip_lstm import LSTMKind, SkipLSTM, lstm_layer

RHO_LIMIT = 1.0 - 1e-6
DASHBOARD = Dashboard(
    caption="Graves 2013 Sec. 4-5: handwriting negative log-likelihood in nats",
    panels=(Panel("negative log-likelihood (nats)", ("train/nll_nats", "val/nll_nats")),),
)

# ----------------------------------------------------------------------------- mixture density


class Mixture(NamedTuple):
    """The mixture of Graves 2013 eq. 18-22, split from y_hat = (e_hat, pi_hat, mu, sigma_hat, rho_hat)."""
    end_logit: Tensor   # e_hat, (...,); e = 1 / (1 + exp(e_hat)) (eq. 18)
    pi_logits: Tensor   # pi_hat, (..., M); pi = softmax(pi_hat) (eq. 19)
    mu: Tensor          # (..., M, 2) (eq. 20)
    sigma_hat: Tensor   # (..., M, 2); sigma = exp(sigma_hat) (eq. 21)
    rho: Tensor         # (..., M); rho = tanh(rho_hat) (eq. 22)


def mixture_outputs(num_mixtures: int) -> int:
    return 1 + 6 * num_mixtures


def split_mixture(y_hat: Tensor, num_mixtures: int) -> Mixture:
    m = num_mixtures
    end_logit, pi_hat, mu, sigma_hat, rho_hat = y_hat.split([1, m, 2 * m, 2 * m, m], dim=-1)
    shape = y_hat.shape[:-1] + (m, 2)
    return Mixture(end_logit.squeeze(-1), pi_hat, mu.reshape(shape), sigma_hat.reshape(shape),
                   torch.tanh(rho_hat).clamp(-RHO_LIMIT, RHO_LIMIT))


def mixture_log_likelihood(y_hat: Tensor, target: Tensor, num_mixtures: int) -> Tensor:
    """log Pr(x_{t+1} | y_t) per step (eq. 23-25): log of the Gaussian mixture density of (dx, dy)
    plus the log of the Bernoulli pen-lift probability. y_hat (..., 1 + 6M), target (..., 3)."""
    mix = split_mixture(y_hat, num_mixtures)
    sigma = mix.sigma_hat.exp()
    z1, z2 = ((target[..., None, :2] - mix.mu) / sigma).unbind(-1)
    one_minus_rho2 = 1 - mix.rho ** 2
    z = z1 ** 2 + z2 ** 2 - 2 * mix.rho * z1 * z2                      # eq. 25
    log_normal = (-z / (2 * one_minus_rho2) - math.log(2 * math.pi)      # eq. 24
                  - mix.sigma_hat.sum(-1) - 0.5 * torch.log(one_minus_rho2))
    log_density = torch.logsumexp(F.log_softmax(mix.pi_logits, dim=-1) + log_normal, dim=-1)
    # e = sigmoid(-e_hat): log e = -softplus(e_hat), log(1 - e) = -softplus(-e_hat)
    pen = target[..., 2]
    log_bernoulli = -(pen * F.softplus(mix.end_logit) + (1 - pen) * F.softplus(-mix.end_logit))
    return log_density + log_bernoulli


def sequence_nll(y_hat: Tensor, targets: Tensor, mask: Tensor, num_mixtures: int) -> Tensor:
    """Loss of eq. 26 per sequence in nats: -sum_t log Pr(x_{t+1} | y_t) over the real steps."""
    return -(mixture_log_likelihood(y_hat, targets, num_mixtures) * mask).sum(dim=1)


def sample_mixture(y_hat: Tensor, num_mixtures: int, bias: float = 0.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """One offset per row from y_hat (B, 1 + 6M) with the sampling bias b of Sec. 5.4 (eq. 61-62):
    sigma = exp(sigma_hat - b), pi = softmax(pi_hat (1 + b)). Returns (B, 3)."""
    mix = split_mixture(y_hat, num_mixtures)
    pi = torch.softmax(mix.pi_logits * (1 + bias), dim=-1)
    component = torch.multinomial(pi, 1, generator=generator).squeeze(-1)
    rows = torch.arange(len(component), device=y_hat.device)
    mu, sigma = mix.mu[rows, component], (mix.sigma_hat[rows, component] - bias).exp()
    rho = mix.rho[rows, component]
    n1, n2 = torch.randn(2, len(component), generator=generator, device=y_hat.device)
    dx = mu[:, 0] + sigma[:, 0] * n1
    dy = mu[:, 1] + sigma[:, 1] * (rho * n1 + torch.sqrt(1 - rho ** 2) * n2)
    lift = torch.bernoulli(torch.sigmoid(-mix.end_logit), generator=generator)
    return torch.stack([dx, dy, lift], dim=-1)


# ----------------------------------------------------------------------------- prediction


class HandwritingBase(PicturesMixin, pl.LightningModule):
    """What prediction and synthesis share: offset statistics, loss, logging, optimizer."""

    def __init__(self, num_mixtures: int, output_clip: float, lstm_clip: float, lstm: LSTMKind,
                 optimizer: OptimizerCallable) -> None:
        super().__init__()
        if num_mixtures < 1 or output_clip <= 0 or lstm_clip <= 0:
            raise ValueError(f"{type(self).__name__}: need num_mixtures >= 1 and positive clip "
                             f"bounds, got {num_mixtures}, {output_clip}, {lstm_clip}")
        if lstm not in ("graves", "cudnn"):
            raise ValueError(f"{type(self).__name__}: lstm must be 'graves' or 'cudnn', got "
                             f"{lstm!r}")
        self.optimizer = optimizer
        # The training split's offset statistics (Sec. 4: mean 0, std 1), copied from the
        # datamodule in setup() and stored with every checkpoint as buffers.
        self.register_buffer("offset_mean", torch.zeros(2))
        self.register_buffer("offset_std", torch.ones(2))
        self.sequences_in_batch = 1  # set by batch_nll; scales the clip bounds to one sequence

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        # Lightning runs the datamodule's setup() before this one, so its statistics are ready.
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "offset_mean"):
            self.offset_mean.copy_(torch.as_tensor(datamodule.offset_mean))
            self.offset_std.copy_(torch.as_tensor(datamodule.offset_std))

    def denormalise(self, offsets: Tensor) -> np.ndarray:
        return denormalise(offsets.detach().cpu().numpy(), self.offset_mean.cpu().numpy(),
                           self.offset_std.cpu().numpy())

    def clip_output(self, y_hat: Tensor) -> Tensor:
        return clip_gradient(y_hat, self.hparams.output_clip / self.sequences_in_batch)

    def lstm_bound(self) -> float:
        """The LSTM layers' clip bound for this batch: ``lstm_clip`` per sequence."""
        return self.hparams.lstm_clip / self.sequences_in_batch

    def batch_nll(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nll = self.batch_nll(batch).mean()
        self.log("train/nll_nats", nll, prog_bar=True, batch_size=len(batch["inputs"]))
        return nll

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        nll = self.batch_nll(batch)
        self.log("val/nll_nats", nll.mean(), prog_bar=True, batch_size=len(nll))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())


class HandwritingPrediction(HandwritingBase):
    """Graves 2013 Sec. 4: unconditional handwriting, skip-connected LSTM + mixture density."""

    def __init__(
        self,
        hidden_size: int = 400,
        num_layers: int = 3,
        num_mixtures: int = 20,
        output_clip: float = 100.0,
        lstm_clip: float = 10.0,
        lstm: LSTMKind = "graves",
        optimizer: OptimizerCallable = Graves,
        picture_every_n_epochs: int = 1,
        num_samples: int = 4,
        sample_steps: int = 400,
        sample_bias: float = 0.0,
    ) -> None:
        super().__init__(num_mixtures, output_clip, lstm_clip, lstm, optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.lstm = SkipLSTM(3, hidden_size, num_layers, lstm=lstm)
        self.output = nn.Linear(self.lstm.output_size, mixture_outputs(num_mixtures))

    def forward(self, inputs: Tensor, state=None) -> tuple[Tensor, list]:
        features, state = self.lstm(inputs, state, self.lstm_bound())
        return self.clip_output(self.output(features)), state

    def batch_nll(self, batch: dict[str, Tensor]) -> Tensor:
        self.sequences_in_batch = len(batch["inputs"])
        y_hat, _ = self(batch["inputs"])
        return sequence_nll(y_hat, batch["targets"], batch["stroke_mask"],
                            self.hparams.num_mixtures)

    @torch.no_grad()
    def sample(self, num_samples: int, steps: int, bias: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Unconditional samples (Sec. 4.2), normalised offsets (num_samples, steps, 3)."""
        x, state, out = torch.zeros(num_samples, 1, 3, device=self.device), None, []
        for _ in range(steps):
            y_hat, state = self(x, state)
            x = sample_mixture(y_hat[:, -1], self.hparams.num_mixtures, bias, generator)[:, None]
            out.append(x)
        return torch.cat(out, dim=1)

    def on_validation_epoch_end(self) -> None:
        if not self.should_draw():
            return
        generator = torch.Generator(self.device).manual_seed(0)
        samples = self.sample(self.hparams.num_samples, self.hparams.sample_steps,
                              self.hparams.sample_bias, generator)
        self.publish("unconditional", figure_of_lines(
            [(self.denormalise(s), f"sample {i}") for i, s in enumerate(samples)]))


# ----------------------------------------------------------------------------- synthesis


class SynthesisState(NamedTuple):
    first: tuple[Tensor, Tensor]          # (h, c) of the first layer, (B, H) each
    kappa: Tensor                         # (B, K) window positions
    window: Tensor                        # (B, A) w_{t-1}
    upper: list[tuple[Tensor, Tensor]]    # (h, c) of layers 2..N, (1, B, H) each


class HandwritingSynthesis(HandwritingBase):
    """Graves 2013 Sec. 5: handwriting conditioned on text through a soft attention window."""

    def __init__(
        self,
        hidden_size: int = 400,
        num_layers: int = 3,
        num_mixtures: int = 20,
        window_gaussians: int = 10,
        output_clip: float = 100.0,
        lstm_clip: float = 10.0,
        lstm: LSTMKind = "graves",
        optimizer: OptimizerCallable = Graves,
        initial_steps_per_char: float = 20.0,
        picture_every_n_epochs: int = 1,
        phrases: Sequence[str] = ("hello world", "the house"),
        biases: Sequence[float] = (0.5, 2.0),
        max_steps_per_char: int = 40,
    ) -> None:
        super().__init__(num_mixtures, output_clip, lstm_clip, lstm, optimizer)
        if window_gaussians < 1 or num_layers < 1 or initial_steps_per_char <= 0:
            raise ValueError("HandwritingSynthesis: need window_gaussians >= 1, num_layers >= 1, "
                             f"initial_steps_per_char > 0, got {window_gaussians}, {num_layers}, "
                             f"{initial_steps_per_char}")
        self.save_hyperparameters(ignore=["optimizer"])
        a, h = len(ALPHABET), hidden_size
        self.first = lstm_layer(lstm, 3 + a, h)
        self.window = nn.Linear(h, 3 * window_gaussians)
        # Not in the paper: start kappa's step exp(kappa_hat) at 1 / initial_steps_per_char so the
        # untrained window moves about one character per that many pen points (IAM-OnDB: ~25).
        with torch.no_grad():
            self.window.bias[2 * window_gaussians:].fill_(-math.log(initial_steps_per_char))
        self.upper = nn.ModuleList(lstm_layer(lstm, 3 + a + h, h) for _ in range(num_layers - 1))
        self.output = nn.Linear(num_layers * h, mixture_outputs(num_mixtures))

    def initial_state(self, batch_size: int) -> SynthesisState:
        zeros = lambda *shape: torch.zeros(*shape, device=self.device)  # noqa: E731
        h = self.hparams.hidden_size
        return SynthesisState((zeros(batch_size, h), zeros(batch_size, h)),
                              zeros(batch_size, self.hparams.window_gaussians),
                              zeros(batch_size, len(ALPHABET)),
                              [(zeros(1, batch_size, h), zeros(1, batch_size, h))
                               for _ in self.upper])

    def soft_window(self, h1: Tensor, kappa: Tensor, text: Tensor,
                    text_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 46-51. Returns the window w_t (B, A), kappa_t (B, K) and phi(t, u) for
        u = 1..U+1 (B, U+1); u = U+1 is the position just past the text (the stopping rule)."""
        alpha, beta, kappa_step = self.window(h1).exp().chunk(3, dim=-1)
        kappa = kappa + kappa_step
        u = torch.arange(1, text.shape[1] + 2, device=h1.device, dtype=h1.dtype)
        distance2 = (kappa[:, :, None] - u) ** 2                                  # (B, K, U+1)
        phi = (alpha[:, :, None] * torch.exp(-beta[:, :, None] * distance2)).sum(1)
        weights = phi[:, :-1] * text_mask
        return torch.einsum("bu,bua->ba", weights, text), kappa, phi

    def forward(self, inputs: Tensor, text: Tensor, text_mask: Tensor,
                state: SynthesisState | None = None) -> tuple[Tensor, Tensor, SynthesisState]:
        """inputs (B, T, 3), text (B, U) indices, text_mask (B, U) -> y_hat (B, T, 1 + 6M),
        phi (B, T, U+1), the state after step T."""
        state = state or self.initial_state(len(inputs))
        onehot = F.one_hot(text, len(ALPHABET)).to(inputs.dtype)
        (h, c), kappa, w = state.first, state.kappa, state.window
        bound = self.lstm_bound()
        first_outputs, windows, phis = [], [], []
        for x in inputs.unbind(1):
            h, c = self.first.step(torch.cat([x, w], dim=-1), (h, c), bound)
            w, kappa, phi = self.soft_window(h, kappa, onehot, text_mask)
            first_outputs.append(h)
            windows.append(w)
            phis.append(phi)
        below, windows = torch.stack(first_outputs, 1), torch.stack(windows, 1)
        features, upper_state = [below], []
        for layer, layer_state in zip(self.upper, state.upper):
            below, layer_state = layer(torch.cat([inputs, below, windows], dim=-1), layer_state,
                                       bound)
            features.append(below)
            upper_state.append(layer_state)
        y_hat = self.clip_output(self.output(torch.cat(features, dim=-1)))
        return y_hat, torch.stack(phis, 1), SynthesisState((h, c), kappa, w, upper_state)

    def batch_nll(self, batch: dict[str, Tensor]) -> Tensor:
        self.sequences_in_batch = len(batch["inputs"])
        y_hat, _, _ = self(batch["inputs"], batch["text"], batch["text_mask"])
        return sequence_nll(y_hat, batch["targets"], batch["stroke_mask"],
                            self.hparams.num_mixtures)

    @torch.no_grad()
    def write(self, text: str, bias: float = 0.0, generator: torch.Generator | None = None,
              ) -> tuple[Tensor, Tensor]:
        """Sample handwriting for ``text`` (Sec. 5.3-5.4). Stops at the first step where the window
        weight just past the text exceeds every character's, phi(t, U+1) > phi(t, u) for all
        u <= U, or after ``max_steps_per_char`` points per character. Returns normalised offsets
        (T, 3) and the window weights phi (T, U)."""
        characters = encode_text(text)[None].to(self.device)
        mask = torch.ones_like(characters, dtype=torch.bool)
        x, state = torch.zeros(1, 1, 3, device=self.device), None
        offsets, phis = [], []
        for _ in range(self.hparams.max_steps_per_char * max(1, len(text))):
            y_hat, phi, state = self(x, characters, mask, state)
            x = sample_mixture(y_hat[:, -1], self.hparams.num_mixtures, bias, generator)[:, None]
            offsets.append(x[0, 0])
            phis.append(phi[0, -1, :-1])
            if phi[0, -1, -1] > phi[0, -1, :-1].max():
                break
        return torch.stack(offsets), torch.stack(phis)

    def on_validation_epoch_end(self) -> None:
        if not self.should_draw():
            return
        generator = torch.Generator(self.device).manual_seed(0)
        lines = [(self.denormalise(self.write(phrase, bias, generator)[0]),
                  f"bias {bias}: {phrase!r}")
                 for bias in self.hparams.biases for phrase in self.hparams.phrases]
        self.publish("synthesis", figure_of_lines(lines))
        self.publish("window", self.window_figure())

    def window_figure(self) -> Figure:
        """phi(t, u) on the first validation line, with the true strokes fed in."""
        from datamodules.handwriting import collate_handwriting, decode_text

        strokes, characters = self.trainer.datamodule.val_set[0]
        batch = collate_handwriting([(strokes, characters)])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.no_grad():
            _, phi, _ = self(batch["inputs"], batch["text"], batch["text_mask"])
        return figure_of_window(self.denormalise(strokes), phi[0, :, :-1].cpu().numpy(),
                                decode_text(characters))


# ----------------------------------------------------------------------------- command line


def write_command(argv: list[str] | None = None) -> Path:
    """``python -m reproductions.handwriting write --checkpoint C --text T --bias B --out F``."""
    parser = argparse.ArgumentParser(prog="python -m reproductions.handwriting",
                                     description="Write a phrase as handwriting from a "
                                                 "HandwritingSynthesis checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="sample handwriting for a text")
    write.add_argument("--checkpoint", required=True, type=Path)
    write.add_argument("--text", required=True)
    write.add_argument("--bias", type=float, default=0.0, help="sampling bias b >= 0 (Sec. 5.4)")
    write.add_argument("--seed", type=int, default=0)
    write.add_argument("--out", required=True, type=Path, help="a .png or .svg file")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() not in (".png", ".svg"):
        parser.error(f"--out must end in .png or .svg, got {args.out}")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.bias < 0:
        parser.error(f"--bias must be >= 0, got {args.bias}")
    hyperparameters = torch.load(args.checkpoint, map_location="cpu",
                                 weights_only=False).get("hyper_parameters", {})
    if "window_gaussians" not in hyperparameters:
        parser.error(f"--checkpoint {args.checkpoint} is not a HandwritingSynthesis checkpoint "
                     "(only the synthesis network reads text)")
    model = HandwritingSynthesis.load_from_checkpoint(args.checkpoint, map_location="cpu")
    model.eval()
    offsets, _ = model.write(args.text, args.bias, torch.Generator().manual_seed(args.seed))
    fig = figure_of_lines([(model.denormalise(offsets), "")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.text!r} ({len(offsets)} pen points, bias {args.bias}) to {args.out}")
    return args.out


if __name__ == "__main__":
    # Run the imported module's copy, so checkpoints resolve reproductions.handwriting's classes.
    from reproductions.handwriting import write_command as main

    main()
