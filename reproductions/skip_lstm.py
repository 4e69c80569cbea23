"""Graves' (2013) stacked LSTM with skip connections, shared by the character-level and the
handwriting reproductions.

The input feeds every layer and every layer feeds the output (Graves 2013, eq. 1-3 and Fig. 1):

    h^1_t = LSTM^1(x_t, h^1_{t-1})
    h^n_t = LSTM^n([x_t, h^{n-1}_t], h^n_{t-1})          n = 2..N
    output features = [h^1_t, ..., h^N_t]                (the model's output layer reads these)

Each layer is an ``nn.LSTM``, so cuDNN serves it on GPU. The paper uses peephole connections,
which cuDNN lacks; they are left out here (a documented approximation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LSTMState = list[tuple[Tensor, Tensor]]  # (h, c) of each layer, each (1, batch, hidden)


class SkipLSTM(nn.Module):
    """N stacked LSTM layers with input-to-every-layer and every-layer-to-output skips."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SkipLSTM: num_layers must be >= 1, got {num_layers}")
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            nn.LSTM(input_size + (hidden_size if n > 0 else 0), hidden_size, batch_first=True)
            for n in range(num_layers)
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
