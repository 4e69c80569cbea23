"""Graves' (2013) skip-connected LSTM stack with its two kinds of layer, ``lstm: graves`` (the
paper's peephole LSTM, eq. 7-11) and ``lstm: cudnn`` (nn.LSTM): against torch's nn.LSTM, against
the equations written out by hand, finite differences, state carry, and short ``repro fit``s."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from reproductions.char_rnn import CharRNN
from reproductions.graves_lstm import GravesLSTM, PeepholeLSTM
from reproductions.handwriting import HandwritingSynthesis
from reproductions.skip_lstm import CudnnLSTM, SkipLSTM

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "char_rnn" / "smoke.yaml"


def random_state(layers: int, batch: int, hidden: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, batch, hidden, generator=generator, dtype=torch.float64),
             torch.randn(1, batch, hidden, generator=generator, dtype=torch.float64))
            for _ in range(layers)]


def test_zero_peepholes_equal_torch_lstm():
    """With w_c* = 0, eq. 7-11 are the standard LSTM: the fused Graves layers give the same
    outputs and states as nn.LSTM."""
    torch.manual_seed(0)
    plain = SkipLSTM(5, 6, num_layers=2, lstm="cudnn").double()
    peephole = SkipLSTM(5, 6, num_layers=2).double()
    assert all(isinstance(layer, nn.LSTM) for layer in plain.layers)
    assert all(isinstance(layer, GravesLSTM) for layer in peephole.layers)
    with torch.no_grad():
        for source, target in zip(plain.layers, peephole.layers):
            target.weight_ih.copy_(source.weight_ih_l0)
            target.weight_hh.copy_(source.weight_hh_l0)
            target.bias.copy_(source.bias_ih_l0 + source.bias_hh_l0)
            target.peephole_weight.zero_()
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    state = random_state(2, 3, 6, seed=1)
    for initial in (None, state):
        expected, expected_state = plain(x, initial)
        features, new_state = peephole(x, initial)
        assert features.shape == (3, 7, 12)
        torch.testing.assert_close(features, expected)
        for (h, c), (h_ref, c_ref) in zip(new_state, expected_state):
            assert h.shape == c.shape == (1, 3, 6)
            torch.testing.assert_close(h, h_ref)
            torch.testing.assert_close(c, c_ref)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize("layer_class", [PeepholeLSTM, GravesLSTM])
def test_one_step_matches_graves_equations_by_hand(layer_class):
    """One time step, unit by unit in Python floats, of Graves (2013) eq. 7-11 with non-zero
    peepholes; the weights are read through the documented gate order (i, f, g, o). Both the
    reference and the fused layer."""
    torch.manual_seed(0)
    n_in, n_hidden, batch = 3, 4, 2
    cell = layer_class(n_in, n_hidden).double()
    with torch.no_grad():
        cell.peephole_weight.uniform_(0.5, 1.5)  # large enough to matter
    x = torch.randn(batch, 1, n_in, dtype=torch.float64)
    (h0,), (c0,) = random_state(1, batch, n_hidden, seed=2)[0]  # (batch, hidden) each
    output, (h1, c1) = cell(x, (h0[None], c0[None]))

    W_x, W_h = cell.weight_ih.tolist(), cell.weight_hh.tolist()
    b, (w_ci, w_cf, w_co) = cell.bias.tolist(), cell.peephole_weight.tolist()

    def pre(gate: int, unit: int, xb: list, hb: list) -> float:
        row = gate * n_hidden + unit
        return (sum(W_x[row][k] * xb[k] for k in range(n_in))
                + sum(W_h[row][k] * hb[k] for k in range(n_hidden)) + b[row])

    for s in range(batch):
        xb, hb, cb = x[s, 0].tolist(), h0[s].tolist(), c0[s].tolist()
        for j in range(n_hidden):
            i = sigmoid(pre(0, j, xb, hb) + w_ci[j] * cb[j])                    # eq. 7
            f = sigmoid(pre(1, j, xb, hb) + w_cf[j] * cb[j])                    # eq. 8
            c = f * cb[j] + i * math.tanh(pre(2, j, xb, hb))                    # eq. 9
            o = sigmoid(pre(3, j, xb, hb) + w_co[j] * c)                        # eq. 10
            h = o * math.tanh(c)                                                # eq. 11
            assert c1[0, s, j].item() == pytest.approx(c, rel=1e-12, abs=1e-12)
            assert h1[0, s, j].item() == pytest.approx(h, rel=1e-12, abs=1e-12)
            assert output[s, 0, j].item() == pytest.approx(h, rel=1e-12, abs=1e-12)

    # The peepholes matter: without them the same step gives another h.
    with torch.no_grad():
        cell.peephole_weight.zero_()
    assert not torch.allclose(cell(x, (h0[None], c0[None]))[1][0], h1)


def test_state_carry_two_halves_equal_one_pass():
    torch.manual_seed(0)
    lstm = SkipLSTM(4, 5, num_layers=3).double()
    with torch.no_grad():
        for layer in lstm.layers:
            layer.peephole_weight.uniform_(-1.0, 1.0)
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    start = random_state(3, 2, 5, seed=3)
    whole, whole_state = lstm(x, start)
    first, middle = lstm(x[:, :6], start)
    second, end = lstm(x[:, 6:], middle)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for (h, c), (h_ref, c_ref) in zip(end, whole_state):
        torch.testing.assert_close(h, h_ref)
        torch.testing.assert_close(c, c_ref)
    # and the carried state matters: the second half from a zero state differs
    assert not torch.allclose(lstm(x[:, 6:])[0], second)


@pytest.mark.parametrize("layer_class", [PeepholeLSTM, GravesLSTM])
def test_gradients_match_finite_differences(layer_class):
    """Backpropagation through eq. 7-11, without clipping, against central finite differences,
    for the input, the carried state and every weight, peepholes included: autograd over the
    reference's Python time loop, and the fused layer's own backward."""
    torch.manual_seed(0)
    cell = layer_class(2, 3).double()
    names = [name for name, _ in cell.named_parameters()]
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h0, c0 = (t.requires_grad_() for t in random_state(1, 2, 3, seed=4)[0])
    weights = [p.detach().clone().requires_grad_() for p in cell.parameters()]

    def run(x, h0, c0, *weights):
        output, (h, c) = torch.func.functional_call(cell, dict(zip(names, weights)),
                                                    (x, (h0, c0)))
        return output, c

    assert torch.autograd.gradcheck(run, (x, h0, c0, *weights))


def test_charrnn_with_graves_layers_learns(tmp_path):
    """A few training steps move every peephole weight and lower the loss on a repetitive
    text."""
    from datamodules.text import TextDataModule

    path = tmp_path / "corpus.txt"
    path.write_text("abcabd" * 200, encoding="utf-8")
    data = TextDataModule("text", str(path), batch_size=4, seq_len=12, val_fraction=0.1,
                          test_fraction=0.0)
    data.setup("fit")
    torch.manual_seed(0)
    model = CharRNN(hidden_size=8, num_layers=2, lstm="graves", grad_clip="none",
                    sample_length=0,
                    optimizer=lambda params: torch.optim.Adam(params, lr=3e-2))
    model.configure_vocabulary(data.vocabulary)
    before = [layer.peephole_weight.detach().clone() for layer in model.lstm.layers]
    batch = next(iter(data.train_dataloader()))
    first_loss = model.loss(model(batch["inputs"])[0], batch["targets"]).item()
    trainer = pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(model, data)
    for layer, initial in zip(model.lstm.layers, before):
        assert torch.all(layer.peephole_weight != initial)
    last_loss = model.loss(model(batch["inputs"])[0], batch["targets"]).item()
    assert math.isfinite(last_loss) and last_loss < 0.8 * first_loss


def test_cudnn_step_equals_its_sequence():
    """``CudnnLSTM.step`` (torch.lstm_cell, the synthesis network's first layer in ``cudnn``
    mode) steps through the same recurrence as the layer's own nn.LSTM forward."""
    torch.manual_seed(0)
    layer = CudnnLSTM(3, 5).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    (h0,), (c0,) = random_state(1, 2, 5, seed=5)[0]
    expected, (h_ref, c_ref) = layer(x, (h0[None], c0[None]))
    h, c, outputs = h0, c0, []
    for x_t in x.unbind(1):
        h, c = layer.step(x_t, (h, c))
        outputs.append(h)
    torch.testing.assert_close(torch.stack(outputs, 1), expected)
    torch.testing.assert_close((h, c), (h_ref[0], c_ref[0]))


def test_bad_lstm_kinds_are_refused():
    with pytest.raises(ValueError, match="lstm must be 'graves' or 'cudnn'"):
        SkipLSTM(3, 4, 1, lstm="peephole")
    with pytest.raises(ValueError, match="CharRNN: lstm must be 'graves' or 'cudnn'"):
        CharRNN(lstm=1)
    with pytest.raises(ValueError, match="HandwritingSynthesis: lstm must be 'graves' or 'cudnn'"):
        HandwritingSynthesis(lstm="cuda")


@pytest.mark.parametrize(("lstm", "layer_class"), [("graves", GravesLSTM),
                                                   ("cudnn", CudnnLSTM)])
def test_repro_fit_trains_and_checkpoints_either_kind(lstm, layer_class, monkeypatch, tmp_path):
    """`repro fit --model.lstm KIND` builds that layer in every position, trains with a finite
    loss, and the checkpoint rebuilds the same layers with the trained weights."""
    from reproductions.runner.cli import main

    monkeypatch.chdir(tmp_path)
    cli = main(args=["fit", "-c", str(SMOKE), "--model.lstm", lstm,
                     "--trainer.max_steps", "4", "--trainer.limit_val_batches", "1",
                     "--trainer.val_check_interval", "4", "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false",
                     "--trainer.default_root_dir", str(tmp_path),
                     "--data.max_bytes", "20000", "--data.batch_size", "2",
                     "--data.seq_len", "10", "--model.hidden_size", "8",
                     "--model.sample_length", "0"])
    model = cli.model
    assert model.hparams.lstm == lstm
    assert [type(layer) for layer in model.lstm.layers] == [layer_class, layer_class]
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    assert math.isfinite(metrics["train/bpc"]) and math.isfinite(metrics["val/bpc"])

    checkpoint = next(tmp_path.rglob("*.ckpt"))
    restored = CharRNN.load_from_checkpoint(checkpoint)
    assert [type(layer) for layer in restored.lstm.layers] == [layer_class, layer_class]
    inputs = torch.tensor([[0, 1, 2, 3]])
    torch.testing.assert_close(restored(inputs)[0], model(inputs)[0])
