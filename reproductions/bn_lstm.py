"""Recurrent batch normalization (Cooijmans et al. 2016, arXiv:1603.09025) on sequential and
permuted MNIST: an LSTM and a BN-LSTM classify a digit read one pixel per time step.

    repro fit -c configs/bn_lstm/smoke.yaml             # mnist5k, CPU, a few minutes
    repro fit -c configs/bn_lstm/seq_mnist.yaml -c configs/bn_lstm/permuted.yaml  # permuted MNIST

BN-LSTM (eq. 6-8), with BN(x; gamma, beta) = beta + gamma (x - E[x]) / sqrt(Var[x] + eps):

    (f, i, o, g) = BN(W_h h_{t-1}; gamma_h, 0) + BN(W_x x_t; gamma_x, 0) + b      (6)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)                            (7)
    h_t = sigmoid(o) * tanh(BN(c_t; gamma_c, beta_c))                            (8)

The input-to-hidden and hidden-to-hidden terms are normalised separately and carry no shift of
their own (b already is one); the cell update (7) is not normalised. Each time step keeps its own
population statistics (Sec. 4); gamma and beta are shared over time. Training normalises with the
statistics of the batch at that step, evaluation with step t's population statistics, and steps
beyond T_max (the training length) reuse step T_max's. gamma starts at 0.1 (Sec. 4: with gamma
1.0 tanh saturates and the gradient vanishes through time, Fig. 1). Our measurement
(``benchmarks/bn_lstm_gradient_flow.py``) reproduces that for a batch-normalised tanh RNN; for this
untrained BN-LSTM it finds the opposite ordering, gamma 0.1 vanishing faster than 1.0.

Two implementations of the one cell, with the same parameters and statistics:

* ``BNLSTM.unroll``, the reference: ``bn_lstm_step`` (the equations, with ``F.batch_norm``, which
  updates step t's population statistics in place) stepped in Python and differentiated by
  autograd, about 40 operations per time step. Its h_t are the tensors the recurrence used, so
  ``torch.autograd.grad(loss, hs)`` gives the paper's dL/dh_t (Fig. 1).
* ``BNLSTM.forward``, fused (``bn_lstm_fused.py``): per time step the products W_h h_{t-1} and
  W_x x_t and one kernel for both gate batch norms, the gates, the cell, its batch norm and h,
  the population's update included; backward one kernel and five products. C++ on the CPU,
  Triton on CUDA; other devices and dtypes take ``unroll``. At 784 steps a training step takes
  1.07x ``nn.LSTM``'s CPU time on one thread (``benchmarks/results/loop_overhead_cpu.md``).
"""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from optimizers import presets
from reproductions.bn_lstm_fused import BNLSTMSequence, Cell, backend_for
from reproductions.experiment import Dashboard, Panel

DASHBOARD = Dashboard(
    caption="Cooijmans et al. 2016 Fig. 1/2: LSTM vs BN-LSTM on sequential MNIST",
    panels=(Panel("validation accuracy (Fig. 1/2)", ("val/acc",)),
            Panel("loss", ("train/loss", "val/loss"))),
)

State = tuple[Tensor, Tensor]  # (h, c), each (batch, hidden)


class StepwiseBatchNorm(nn.Module):
    """Batch normalisation with separate population statistics for each time step (Sec. 4).

    gamma (``weight``) and beta (``bias``) are shared over time; ``running_mean[t]`` and
    ``running_var[t]`` are step t's population statistics, kept for t < t_max and reused from
    step t_max - 1 beyond it. ``shift=False`` gives BN(x; gamma, 0), with no beta at all. The
    normalisation itself is ``F.batch_norm`` (one native kernel, cuDNN on GPU) on a row view of
    the buffers, which it updates in place as ``nn.BatchNorm1d`` does (unbiased variance), one
    time step at a time in ``bn_lstm_step`` with the rows of ``step_statistics``.
    """

    def __init__(self, num_features: int, t_max: int, gamma_init: float = 0.1, shift: bool = True,
                 momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if t_max < 1:
            raise ValueError(f"StepwiseBatchNorm: t_max must be >= 1, got {t_max}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"StepwiseBatchNorm: momentum must be in (0, 1], got {momentum}")
        self.t_max, self.momentum, self.eps = t_max, momentum, eps
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init)))
        self.bias = nn.Parameter(torch.zeros(num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(t_max, num_features))
        self.register_buffer("running_var", torch.ones(t_max, num_features))

    def step_statistics(self, steps: int) -> list[tuple[Tensor | None, Tensor | None]]:
        """Population statistics (row views) of time steps 0 .. steps - 1: step t's own below
        t_max; beyond it step t_max - 1's in evaluation, and none in training, where the batch's
        statistics alone normalise."""
        own = list(zip(self.running_mean.unbind(0), self.running_var.unbind(0)))
        beyond = (None, None) if self.training else own[-1]
        return own[:steps] + [beyond] * (steps - self.t_max)


def bn_lstm_step(x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                 bias: Tensor, gammas: tuple[Tensor, Tensor, Tensor], beta_c: Tensor,
                 statistics: tuple[Tensor | None, ...], training: bool, momentum: float,
                 eps: float) -> tuple[Tensor, Tensor]:
    """One BN-LSTM time step, eq. (6)-(8), from x_t (batch, input_size) and (h, c) = (h_{t-1},
    c_{t-1}).

    gammas: (gamma_x, gamma_h, gamma_c); statistics: step t's population (mean_x, var_x, mean_h,
    var_h, mean_c, var_c), updated in place in training, or Nones beyond t_max. b is the shift of
    the hidden-to-hidden batch norm: BN(W_h h; gamma_h, 0) + b = BN(W_h h; gamma_h, b).
    """
    mean_x, var_x, mean_h, var_h, mean_c, var_c = statistics
    gamma_x, gamma_h, gamma_c = gammas
    gates = (F.batch_norm(h @ weight_hh.t(), mean_h, var_h, gamma_h, bias, training, momentum, eps)
             + F.batch_norm(x @ weight_ih.t(), mean_x, var_x, gamma_x, None, training, momentum,
                            eps))                                                   # (6)
    # split, not slices: its backward is one concatenation, where slices' are zero-fills.
    sigmoid_gates, g = gates.split((3 * h.shape[1], h.shape[1]), dim=1)
    f, i, o = torch.sigmoid(sigmoid_gates).chunk(3, dim=1)
    c = torch.addcmul(f * c, i, torch.tanh(g))                                      # (7)
    c_hat = F.batch_norm(c, mean_c, var_c, gamma_c, beta_c, training, momentum, eps)
    return o * torch.tanh(c_hat), c                                                 # (8)


class BNLSTM(nn.Module):
    """A single-layer batch-normalised LSTM, batch first, with gate order (f, i, o, g).

    Initialisation as the paper's MNIST experiments: orthogonal input-to-hidden weights,
    identity hidden-to-hidden weights (per gate), every gamma at ``gamma_init``, beta_c 0, and
    bias b 0 except the forget gate's ``forget_bias``. ``forward`` is the fused cell, ``unroll``
    the reference (module docstring).
    """

    def __init__(self, input_size: int, hidden_size: int, t_max: int, gamma_init: float = 0.1,
                 forget_bias: float = 1.0, bn_momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.bn_ih = StepwiseBatchNorm(4 * hidden_size, t_max, gamma_init, False, bn_momentum, eps)
        self.bn_hh = StepwiseBatchNorm(4 * hidden_size, t_max, gamma_init, False, bn_momentum, eps)
        self.bn_c = StepwiseBatchNorm(hidden_size, t_max, gamma_init, True, bn_momentum, eps)
        init_lstm_weights(self.weight_ih, self.weight_hh)
        with torch.no_grad():
            self.bias[:hidden_size].fill_(forget_bias)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"BNLSTM: expected input (batch, time, {self.input_size}), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ValueError("BNLSTM: a sequence needs at least one time step, got none")
        if self.training and x.shape[0] < 2:
            raise ValueError("BNLSTM: training normalises with batch statistics and needs a batch "
                             f"of at least 2 sequences, got {x.shape[0]}")

    def unroll(self, x: Tensor, state: State) -> tuple[list[Tensor], Tensor]:
        """The reference: ``bn_lstm_step`` over x (batch, time, input_size) from state (h0, c0);
        every h_t and the last c.

        The h_t are the tensors the recurrence itself used, so gradients with respect to them
        (``torch.autograd.grad(loss, hs)``) are the paper's dL/dh_t of Fig. 1.
        """
        self._check(x)
        steps = x.shape[1]
        statistics = zip(*(bn.step_statistics(steps) for bn in (self.bn_ih, self.bn_hh, self.bn_c)))
        gammas = (self.bn_ih.weight, self.bn_hh.weight, self.bn_c.weight)
        h, c = state
        hs = []
        for x_t, (stats_x, stats_h, stats_c) in zip(x.unbind(1), statistics):
            h, c = bn_lstm_step(x_t, h, c, self.weight_ih, self.weight_hh, self.bias, gammas,
                                self.bn_c.bias, (*stats_x, *stats_h, *stats_c), self.training,
                                self.bn_c.momentum, self.bn_c.eps)
            hs.append(h)
        return hs, c

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (batch, time, input_size) -> outputs (batch, time, hidden), (h_T, c_T), as nn.LSTM:
        the fused cell (``unroll`` where x's device and dtype have no kernels)."""
        backend = backend_for(x)
        if backend is None:
            hs, c = self.unroll(x, state)
            return torch.stack(hs, dim=1), (hs[-1], c)
        self._check(x)
        steps = x.shape[1]
        statistics = [(*h, *i, *c) for h, i, c in zip(
            *(bn.step_statistics(steps) for bn in (self.bn_hh, self.bn_ih, self.bn_c)))]
        parameters = (self.weight_ih, self.weight_hh, self.bias, self.bn_ih.weight,
                      self.bn_hh.weight, self.bn_c.weight, self.bn_c.bias)
        cell = Cell(*parameters, self.training, self.bn_c.momentum, self.bn_c.eps, backend)
        h0, c0 = (s.contiguous() for s in state)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, c0, *parameters)):
            outputs, c = BNLSTMSequence.apply(x, h0, c0, *parameters, statistics, cell)
        else:
            hidden, cells, _, _ = cell.forward(x, h0, c0, statistics)
            outputs, c = hidden[1:], cells[-1]
        return outputs.transpose(0, 1), (outputs[-1], c)


def init_lstm_weights(weight_ih: Tensor, weight_hh: Tensor) -> None:
    """Orthogonal input-to-hidden and identity hidden-to-hidden weights, per gate block."""
    with torch.no_grad():
        for block_ih, block_hh in zip(weight_ih.chunk(4, 0), weight_hh.chunk(4, 0)):
            nn.init.orthogonal_(block_ih)
            nn.init.eye_(block_hh)


class SequentialClassifier(pl.LightningModule):
    """Classify a sequence from the last hidden state of an LSTM or a BN-LSTM (Cooijmans 2016).

    Args:
        cell: ``lstm`` (``nn.LSTM``, the baseline) or ``bn_lstm`` (eq. 6-8).
        input_size: values per time step: 1 for the paper's pixel-by-pixel MNIST; must equal the
            datamodule's ``pixels_per_step``.
        hidden_size: units (the paper: 100).
        num_classes: output classes (10 digits).
        t_max: steps with their own population statistics (the paper: the training length, 784).
        gamma_init: initial gamma of every BN (the paper: 0.1; 1.0 for the Fig. 1 comparison).
        initial_state_noise: std of the Gaussian noise on the initial hidden state in training
            (the paper: 0.1 on MNIST). It also keeps the batch variance of W_h h_0 away from zero:
            without it, the blank first pixels of sequential MNIST give every sequence the same
            h and c for the first steps, the batch norms see zero variance, and the gradients of
            the g-gate bias and of beta_c become sums of large per-sequence terms that cancel to
            fp32 rounding noise.
        forget_bias: initial forget-gate bias (our choice; papers.md does not fix it).
        bn_momentum: weight of each new batch in the population statistics.
        optimizer: the optimizer, given the parameters (default: the ``bn_lstm`` RMSprop preset,
            lr 1e-3, decay 0.9, no momentum).
    """

    def __init__(self, cell: Literal["lstm", "bn_lstm"] = "bn_lstm", input_size: int = 1,
                 hidden_size: int = 100, num_classes: int = 10, t_max: int = 784,
                 gamma_init: float = 0.1, initial_state_noise: float = 0.1,
                 forget_bias: float = 1.0, bn_momentum: float = 0.1,
                 optimizer: OptimizerCallable = presets.BnLstm) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_classes", num_classes), ("t_max", t_max)):
            if value < 1:
                raise ValueError(f"SequentialClassifier: {name} must be >= 1, got {value}")
        if initial_state_noise < 0:
            raise ValueError("SequentialClassifier: initial_state_noise must be >= 0, "
                             f"got {initial_state_noise}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        if cell == "bn_lstm":
            self.rnn = BNLSTM(input_size, hidden_size, t_max, gamma_init, forget_bias,
                              bn_momentum)
        elif cell == "lstm":
            self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)
            # nn.LSTM's gate order is (i, f, g, o) and it has two biases: b = b_ih + b_hh.
            init_lstm_weights(self.rnn.weight_ih_l0, self.rnn.weight_hh_l0)
            with torch.no_grad():
                self.rnn.bias_ih_l0.zero_()
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0[hidden_size:2 * hidden_size].fill_(forget_bias)
        else:
            raise ValueError("SequentialClassifier: cell must be 'lstm' or 'bn_lstm', "
                             f"got {cell!r}")
        self.classifier = nn.Linear(hidden_size, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        """Check the model against the datamodule's sequences before any training step."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        pixels_per_step = getattr(datamodule, "pixels_per_step", None)
        if pixels_per_step is not None and pixels_per_step != self.hparams.input_size:
            raise ValueError(f"SequentialClassifier: model.init_args.input_size "
                             f"({self.hparams.input_size}) must equal the data's pixels_per_step "
                             f"({pixels_per_step})")
        steps = getattr(datamodule, "steps", None)
        if steps is not None and self.hparams.cell == "bn_lstm" and steps != self.hparams.t_max:
            rank_zero_warn(f"SequentialClassifier: t_max ({self.hparams.t_max}) differs from the "
                           f"data's sequence length ({steps}); the paper sets T_max to the "
                           "training length")

    def initial_state(self, x: Tensor) -> State:
        """Zero (h0, c0), with N(0, noise^2) on h0 in training (the paper's MNIST setting)."""
        zeros = x.new_zeros(x.shape[0], self.hparams.hidden_size)
        h0 = zeros
        if self.training and self.hparams.initial_state_noise > 0:
            h0 = torch.randn_like(zeros) * self.hparams.initial_state_noise
        return h0, zeros

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, time, input_size) -> class logits (batch, num_classes)."""
        h0, c0 = self.initial_state(x)
        if isinstance(self.rnn, BNLSTM):
            _, (last, _) = self.rnn(x, (h0, c0))
        else:
            if x.dim() != 3 or x.shape[-1] != self.hparams.input_size:
                raise ValueError(f"SequentialClassifier: expected input (batch, time, "
                                 f"{self.hparams.input_size}), got shape {tuple(x.shape)}")
            _, (h_n, _) = self.rnn(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
            last = h_n[0]
        return self.classifier(last)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
