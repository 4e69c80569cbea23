"""Graves' (2013) stacked LSTM with skip connections, shared by the character-level and the
handwriting reproductions.

The input feeds every layer and every layer feeds the output (Graves 2013, eq. 1-3 and Fig. 1):

    h^1_t = LSTM^1(x_t, h^1_{t-1})
    h^n_t = LSTM^n([x_t, h^{n-1}_t], h^n_{t-1})          n = 2..N
    output features = [h^1_t, ..., h^N_t]                (the model's output layer reads these)

Each layer is one of two kinds (``lstm``):

* ``graves`` (the default): ``GravesLSTM``, the paper's LSTM exactly: peephole connections
  (eq. 7-11), and the "LSTM derivatives" clipped where the paper clips them, on the four gate
  pre-activations inside backpropagation through time. Fused (``graves_lstm.py``).
* ``cudnn``: ``CudnnLSTM``, torch's ``nn.LSTM`` (cuDNN on GPU, oneDNN on CPU), an approximation:
  no peepholes, and the clip, where one is asked for, acts on the derivatives with respect to the
  layer's outputs h_t, the nearest point that cuDNN exposes.

Both are called alike: ``layer(x, state, grad_clip)`` for a sequence and
``layer.step(x_t, (h, c), grad_clip)`` for one time step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from reproductions.graves_lstm import GravesLSTM, LSTMStateTuple, clip_gradient

LSTMState = list[tuple[Tensor, Tensor]]  # (h, c) of each layer, each (1, batch, hidden)
LSTMKind = Literal["graves", "cudnn"]


class CudnnLSTM(nn.LSTM):
    """One ``nn.LSTM(batch_first=True)`` layer called as ``GravesLSTM`` is, ``grad_clip`` clipping
    the derivatives with respect to its outputs h_t (the approximation)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, batch_first=True)

    def forward(self, x: Tensor, state: LSTMStateTuple | None = None,
                grad_clip: float | None = None) -> tuple[Tensor, LSTMStateTuple]:
        outputs, state = super().forward(x, state)
        return clip_gradient(outputs, grad_clip), state

    def step(self, x: Tensor, state: tuple[Tensor, Tensor],
             grad_clip: float | None = None) -> tuple[Tensor, Tensor]:
        """One time step: x (batch, input_size), (h, c) each (batch, hidden) -> (h, c)."""
        h, c = torch.lstm_cell(x, state, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                               self.bias_hh_l0)
        return clip_gradient(h, grad_clip), c


def lstm_layer(kind: LSTMKind, input_size: int, hidden_size: int) -> GravesLSTM | CudnnLSTM:
    """One layer of the given kind: ``graves`` (exact) or ``cudnn`` (approximate)."""
    if kind == "graves":
        return GravesLSTM(input_size, hidden_size)
    if kind == "cudnn":
        return CudnnLSTM(input_size, hidden_size)
    raise ValueError(f"lstm must be 'graves' or 'cudnn', got {kind!r}")


class SkipLSTM(nn.Module):
    """N stacked LSTM layers with input-to-every-layer and every-layer-to-output skips.

    Args:
        input_size: width of x_t.
        hidden_size: LSTM units per layer.
        num_layers: N.
        lstm: the kind of every layer, ``graves`` (the paper's LSTM, exact) or ``cudnn``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int,
                 lstm: LSTMKind = "graves") -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SkipLSTM: num_layers must be >= 1, got {num_layers}")
        self.hidden_size = hidden_size
        input_sizes = [input_size] + [input_size + hidden_size] * (num_layers - 1)  # eq. 2
        self.layers = nn.ModuleList(lstm_layer(lstm, size, hidden_size) for size in input_sizes)

    @property
    def output_size(self) -> int:
        """Width of the concatenated hidden states that the output layer reads."""
        return self.hidden_size * len(self.layers)

    def forward(self, x: Tensor, state: LSTMState | None = None,
                grad_clip: float | None = None) -> tuple[Tensor, LSTMState]:
        """x: (batch, time, input_size) -> features (batch, time, output_size), new state.
        ``grad_clip`` bounds every layer's LSTM derivatives (see the module docstring)."""
        outputs, new_state = [], []
        below = None
        for n, layer in enumerate(self.layers):
            layer_input = x if below is None else torch.cat([x, below], dim=-1)
            below, layer_state = layer(layer_input, None if state is None else state[n],
                                       grad_clip)
            outputs.append(below)
            new_state.append(layer_state)
        return torch.cat(outputs, dim=-1), new_state


def detach_state(state: LSTMState) -> LSTMState:
    """Cut the graph between truncated-BPTT windows while carrying the values."""
    return [(h.detach(), c.detach()) for h, c in state]
