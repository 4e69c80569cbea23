"""How far back the loss gradient reaches in untrained batch-normalised recurrent networks, as a
function of the initial gamma (Cooijmans et al. 2016, Sec. 4 and Fig. 1b): ||dL/dh_t|| at every
time step of a 784-step sequential MNIST input, L the cross-entropy of a classifier on h_784.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bn_lstm_gradient_flow.py

Two networks, both freshly initialised, with training-mode batch statistics, noise 0.1 on h_0,
100 units, on 100 real digits from mnist5k, averaged over ``--seeds`` initialisations:

* a batch-normalised tanh RNN, h_t = tanh(BN(W_h h_{t-1}; gamma, 0) + BN(W_x x_t; gamma, 0) + b),
  the kind of network the paper's gamma argument is about: with gamma 1.0 the pre-activations have
  unit variance, tanh saturates and its derivative shrinks the gradient at every step; with gamma
  0.1 tanh stays near its linear regime;
* our BN-LSTM (``reproductions.bn_lstm``), the paper's eq. (6)-(8) with its MNIST initialisation.

Writes ``benchmarks/results/bn_lstm_gradient_flow.{png,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F

from datamodules.sequential_mnist import SequentialMNISTDataModule
from reproductions.bn_lstm import SequentialClassifier

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


HIDDEN = 100
EPS = 1e-5


def bn_lstm_gradient_norms(gamma: float, x: torch.Tensor, y: torch.Tensor,
                           seed: int) -> torch.Tensor:
    """||dL/dh_t|| (Frobenius over the batch) for t = 1..T of a fresh BN-LSTM, training mode."""
    torch.manual_seed(seed)
    model = SequentialClassifier(cell="bn_lstm", input_size=x.shape[-1], hidden_size=HIDDEN,
                                 t_max=x.shape[1], gamma_init=gamma).train()
    hs, _ = model.rnn.unroll(x, model.initial_state(x))
    loss = F.cross_entropy(model.classifier(hs[-1]), y)
    return torch.stack([g.norm() for g in torch.autograd.grad(loss, hs)])


def bn_rnn_gradient_norms(gamma: float, x: torch.Tensor, y: torch.Tensor,
                          seed: int) -> torch.Tensor:
    """The same for a fresh batch-normalised tanh RNN (orthogonal W_x, identity W_h, b = 0)."""
    torch.manual_seed(seed)
    weight_x = torch.nn.init.orthogonal_(torch.empty(HIDDEN, x.shape[-1])).requires_grad_()
    weight_h = torch.eye(HIDDEN, requires_grad=True)
    gamma_x = torch.full((HIDDEN,), gamma, requires_grad=True)
    gamma_h = torch.full((HIDDEN,), gamma, requires_grad=True)
    classifier = torch.nn.Linear(HIDDEN, 10)
    h = torch.randn(x.shape[0], HIDDEN) * 0.1
    input_terms = x @ weight_x.t()
    hs = []
    for t in range(x.shape[1]):
        h = torch.tanh(F.batch_norm(h @ weight_h.t(), None, None, gamma_h, None, True, 0.0, EPS)
                       + F.batch_norm(input_terms[:, t], None, None, gamma_x, None, True, 0.0, EPS))
        hs.append(h)
    loss = F.cross_entropy(classifier(hs[-1]), y)
    return torch.stack([g.norm() for g in torch.autograd.grad(loss, hs)])


NETWORKS = {"BN tanh RNN": bn_rnn_gradient_norms, "BN-LSTM": bn_lstm_gradient_norms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.1, 0.3, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    data = SequentialMNISTDataModule(dataset="mnist5k")  # 784 steps of one pixel, the paper's input
    data.setup()
    x, y = (tensor[:args.batch] for tensor in data.splits["train"].tensors)
    norms = {(network, gamma): torch.stack([gradient_norms(gamma, x, y, seed)
                                            for seed in range(args.seeds)]).mean(0)
             for network, gradient_norms in NETWORKS.items() for gamma in args.gammas}

    RESULTS.mkdir(exist_ok=True)
    figure, panels = plt.subplots(1, len(NETWORKS), figsize=(11, 4), sharey=True)
    steps = torch.arange(1, x.shape[1] + 1)
    for axes, network in zip(panels, NETWORKS):
        for gamma in args.gammas:
            axes.semilogy(steps, norms[network, gamma], label=f"gamma = {gamma:g}")
        axes.set(xlabel="time step t", title=f"untrained {network}, 784-step MNIST")
        axes.grid(alpha=0.3, which="both")
        axes.legend()
    panels[0].set_ylabel("||dL / dh_t||")
    figure.tight_layout()
    figure.savefig(RESULTS / "bn_lstm_gradient_flow.png", dpi=120)

    shown = [1, 100, 200, 400, 600, 784]
    lines = [f"# ||dL/dh_t|| of untrained networks on 784-step MNIST, batch {args.batch}, "
             f"mean of {args.seeds} initialisations", "",
             "| network | gamma | " + " | ".join(f"t={t}" for t in shown) + " | t=1 / t=784 |",
             "|---|---|" + "---|" * (len(shown) + 1)]
    for (network, gamma), norm in norms.items():
        lines.append(f"| {network} | {gamma:g} | " + " | ".join(f"{norm[t - 1]:.2e}" for t in shown)
                     + f" | {norm[0] / norm[-1]:.2e} |")
    (RESULTS / "bn_lstm_gradient_flow.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
