"""Graves' (2013) stacked LSTM with skip connections, shared by the character-level and the
handwriting reproductions.

The input feeds every layer and every layer feeds the output (Graves 2013, eq. 1-3 and Fig. 1):

    h^1_t = LSTM^1(x_t, h^1_{t-1})
    h^n_t = LSTM^n([x_t, h^{n-1}_t], h^n_{t-1})          n = 2..N
    output features = [h^1_t, ..., h^N_t]                (the model's output layer reads these)

By default each layer is an ``nn.LSTM``, so cuDNN serves it on GPU. The paper's LSTM has peephole
connections (eq. 7-11), which cuDNN lacks: ``peephole=True`` builds every layer as a
``PeepholeLSTM`` instead (``graves_lstm.py``), the paper's network, stepped through time in Python
(slower).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reproductions.graves_lstm import PeepholeLSTM

LSTMState = list[tuple[Tensor, Tensor]]  # (h, c) of each layer, each (1, batch, hidden)


class SkipLSTM(nn.Module):
    """N stacked LSTM layers with input-to-every-layer and every-layer-to-output skips.

    Args:
        input_size: width of x_t.
        hidden_size: LSTM units per layer.
        num_layers: N.
        peephole: build every layer as a ``PeepholeLSTM`` (the paper's cell, eq. 7-11) instead of
            ``nn.LSTM``. Off by default because cuDNN serves ``nn.LSTM`` and has no peepholes.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int,
                 peephole: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SkipLSTM: num_layers must be >= 1, got {num_layers}")
        if not isinstance(peephole, bool):
            raise ValueError(f"SkipLSTM: peephole must be true or false, got {peephole!r}")
        self.hidden_size = hidden_size
        self.peephole = peephole
        input_sizes = [input_size] + [input_size + hidden_size] * (num_layers - 1)  # eq. 2
        self.layers = nn.ModuleList(
            PeepholeLSTM(size, hidden_size) if peephole
            else nn.LSTM(size, hidden_size, batch_first=True)
            for size in input_sizes
        )

    @property
    def output_size(self) -> int:
        """Width of the concatenated hidden states that the output layer reads."""
        return self.hidden_size * len(self.layers)

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """x: (batch, time, input_size) -> features (batch, time, output_size), new state."""
        outputs, new_state = [], []
        below = None
        for n, layer in enumerate(self.layers):
            layer_input = x if below is None else torch.cat([x, below], dim=-1)
            below, layer_state = layer(layer_input, None if state is None else state[n])
            outputs.append(below)
            new_state.append(layer_state)
        return torch.cat(outputs, dim=-1), new_state


def detach_state(state: LSTMState) -> LSTMState:
    """Cut the graph between truncated-BPTT windows while carrying the values."""
    return [(h.detach(), c.detach()) for h, c in state]
