"""Graves' (2013) stacked LSTM with skip connections, shared by the character-level and the
handwriting reproductions.

The input feeds every layer and every layer feeds the output (Graves 2013, eq. 1-3 and Fig. 1):

    h^1_t = LSTM^1(x_t, h^1_{t-1})
    h^n_t = LSTM^n([x_t, h^{n-1}_t], h^n_{t-1})          n = 2..N
    output features = [h^1_t, ..., h^N_t]                (the model's output layer reads these)

By default each layer is an ``nn.LSTM``, so cuDNN serves it on GPU. The paper's LSTM has peephole
connections (eq. 7-11), which cuDNN lacks: ``peephole=True`` builds every layer as a
``PeepholeLSTM`` instead, the paper's network, stepped through time in Python (slower).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LSTMState = list[tuple[Tensor, Tensor]]  # (h, c) of each layer, each (1, batch, hidden)


class PeepholeLSTM(nn.Module):
    """One LSTM layer with Graves' peephole connections (Graves 2013, eq. 7-11):

        i_t = sigma(W_xi x_t + W_hi h_{t-1} + w_ci * c_{t-1} + b_i)        (7)
        f_t = sigma(W_xf x_t + W_hf h_{t-1} + w_cf * c_{t-1} + b_f)        (8)
        c_t = f_t * c_{t-1} + i_t * tanh(W_xc x_t + W_hc h_{t-1} + b_c)   (9)
        o_t = sigma(W_xo x_t + W_ho h_{t-1} + w_co * c_t + b_o)            (10)
        h_t = o_t * tanh(c_t)                                              (11)

    The peephole matrices W_c* are diagonal, so each is a vector here (``peephole_weight``, rows
    w_ci, w_cf, w_co). Called like a one-layer ``nn.LSTM(batch_first=True)``: ``(x, (h, c))`` ->
    ``(output, (h, c))`` with states of shape (1, batch, hidden). The gate rows of ``weight_ih``,
    ``weight_hh`` and ``bias`` follow nn.LSTM's order (i, f, g, o; g is the cell input of eq. 9),
    so its weights copy across (with ``bias = bias_ih + bias_hh``: the paper has one bias per
    gate).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.peephole_weight = nn.Parameter(torch.empty(3, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden), 1/sqrt(hidden)) for every weight, as nn.LSTM initialises."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (batch, time, input_size) -> h of every step (batch, time, hidden), final (h, c)."""
        if state is None:
            h = c = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h, c = state[0][0], state[1][0]
        # The input's share of all four gates, for every time step in one matrix product.
        from_input = F.linear(x, self.weight_ih, self.bias)
        w_ci, w_cf, w_co = self.peephole_weight
        outputs = []
        for t in range(x.shape[1]):
            gates = from_input[:, t] + F.linear(h, self.weight_hh)
            i, f, g, o = gates.chunk(4, dim=-1)
            i = torch.sigmoid(i + w_ci * c)    # eq. 7: the input gate sees the previous cell
            f = torch.sigmoid(f + w_cf * c)    # eq. 8: so does the forget gate
            c = f * c + i * torch.tanh(g)      # eq. 9
            o = torch.sigmoid(o + w_co * c)    # eq. 10: the output gate sees the new cell
            h = o * torch.tanh(c)              # eq. 11
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h[None], c[None])


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
