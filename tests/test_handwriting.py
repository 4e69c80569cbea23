"""Graves 2013 handwriting: IAM-OnDB parsing, normalisation, the mixture density loss, the soft
window, biased sampling, derivative clipping, configs against the papers, tiny end-to-end fits."""

from __future__ import annotations

import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributions as D

import paper_facts
from datamodules.handwriting import (
    ALPHABET,
    HandwritingDataModule,
    collate_handwriting,
    denormalise,
    encode_text,
    normalise,
    parse_line_strokes,
    parse_transcription,
    write_hershey_dataset,
)
from reproductions.runner.wandb_records import read_finished_run
from reproductions.handwriting import (
    HandwritingPrediction,
    HandwritingSynthesis,
    mixture_log_likelihood,
    sample_mixture,
    write_command,
)

REPO = Path(__file__).resolve().parents[1]

# A line file exactly as IAM-OnDB ships them (whiteboard description first, then the strokes).
IAM_LINE_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription>
    <SensorLocation corner="top_left"/>
    <DiagonallyOppositeCoords x="6512" y="1376"/>
    <VerticallyOppositeCoords x="966" y="1376"/>
    <HorizontallyOppositeCoords x="6512" y="787"/>
  </WhiteboardDescription>
  <StrokeSet>
    <Stroke colour="black" start_time="769.05" end_time="769.64">
      <Point x="{x0}" y="1058" time="769.05"/>
      <Point x="{x1}" y="1074" time="769.07"/>
      <Point x="1082" y="1100" time="769.08"/>
    </Stroke>
    <Stroke colour="black" start_time="770.00" end_time="770.20">
      <Point x="1200" y="1000" time="770.00"/>
      <Point x="1230" y="990" time="770.02"/>
    </Stroke>
  </StrokeSet>
</WhiteboardCaptureSession>
"""

IAM_ASCII = """Writer: 10058
CSR: appears only after the OCR block

OCR:

A MOVE to stop Mr. Gaitskel
from nominating

CSR:

A MOVE to stop Mr. Gaitskell
from nominating any more
"""


def write_iam_form(root: Path, form: str = "a01-000u", lines: int = 2, x0: int = 1073) -> None:
    """An IAM-OnDB form: lineStrokes/a01/a01-000/a01-000u-0n.xml + ascii/a01/a01-000/a01-000u.txt"""
    folder = f"{form[:3]}/{form[:7]}"
    for n in range(1, lines + 1):
        path = root / "lineStrokes" / folder / f"{form}-{n:02d}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(IAM_LINE_XML.format(x0=x0 + n, x1=x0 + n + 4), encoding="latin-1")
    path = root / "ascii" / folder / f"{form}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(IAM_ASCII, encoding="latin-1")


# ----------------------------------------------------------------------------- data


def test_parser_reads_real_iam_format(tmp_path):
    write_iam_form(tmp_path)
    points = parse_line_strokes(tmp_path / "lineStrokes/a01/a01-000/a01-000u-01.xml")
    expected = [(1074, 1058, 0), (1078, 1074, 0), (1082, 1100, 1), (1200, 1000, 0), (1230, 990, 1)]
    np.testing.assert_array_equal(points, np.array(expected, dtype=float))
    assert parse_transcription(tmp_path / "ascii/a01/a01-000/a01-000u.txt") == [
        "A MOVE to stop Mr. Gaitskell", "from nominating any more"]


def test_datamodule_joins_lines_and_normalises_with_training_statistics(tmp_path):
    for i, form in enumerate(["a01-000u", "a01-001u", "a02-000u"]):
        write_iam_form(tmp_path, form, x0=1000 + 100 * i)
    (tmp_path / "trainset.txt").write_text("a01-000u\na01-001\n")  # a form id and a text id
    (tmp_path / "testset_v.txt").write_text("a02-000u\n")
    dm = HandwritingDataModule(dataset="iam", root=str(tmp_path), max_jump=50.0)
    dm.setup("fit")
    assert dm.summary["train_lines"] == 4 and dm.summary["val_lines"] == 2
    assert {line.text for line in dm.val_set.lines} == {"A MOVE to stop Mr. Gaitskell",
                                                        "from nominating any more"}
    # First line's points (1001, 1058), (1005, 1074), (1082, 1100) | (1200, 1000), (1230, 990):
    # offsets (4, 16, 0), (77 -> 50, 26, 1), (118 -> 50, -100 -> -50, 0), (30, -10, 1)
    np.testing.assert_array_equal(dm.train_set.lines[0].offsets,
                                  [[4, 16, 0], [50, 26, 1], [50, -50, 0], [30, -10, 1]])
    raw = np.concatenate([line.offsets[:, :2] for line in dm.train_set.lines])
    np.testing.assert_allclose(dm.offset_mean, raw.mean(0), rtol=1e-6)
    normalised = torch.cat([dm.train_set[i][0][:, :2] for i in range(len(dm.train_set))]).double()
    np.testing.assert_allclose(normalised.mean(0), [0, 0], atol=1e-6)
    np.testing.assert_allclose(normalised.std(0, unbiased=False), [1, 1], atol=1e-6)


def test_normalisation_round_trip():
    rng = np.random.default_rng(0)
    offsets = np.concatenate([rng.normal(5, 30, (50, 2)), rng.integers(0, 2, (50, 1))], axis=1)
    mean, std = np.array([5.0, -2.0]), np.array([30.0, 20.0])
    back = denormalise(normalise(offsets, mean, std), mean, std)
    np.testing.assert_allclose(back, offsets, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(back[:, 2], offsets[:, 2])


def test_broken_and_untranscribed_files_are_skipped_with_their_path(tmp_path):
    write_iam_form(tmp_path, "a01-000u", lines=2)
    broken = tmp_path / "lineStrokes/a01/a01-000/a01-000u-02.xml"
    broken.write_text("<WhiteboardCaptureSession><StrokeSet><Stroke>")
    orphan = tmp_path / "lineStrokes/b01/b01-000/b01-000u-01.xml"
    orphan.parent.mkdir(parents=True)
    orphan.write_text(IAM_LINE_XML.format(x0=1, x1=2))
    dm = HandwritingDataModule(dataset="iam", root=str(tmp_path), val_fraction=0.5)
    with pytest.warns(UserWarning) as record:
        with pytest.raises(RuntimeError, match="split of 1 lines"):
            dm.setup("fit")  # one usable line cannot fill both splits
    messages = " ".join(str(w.message) for w in record)
    assert str(broken) in messages and "not well-formed" in messages
    assert str(orphan) in messages and "no transcription" in messages


def test_nothing_usable_and_missing_root_fail_clearly(tmp_path):
    (tmp_path / "lineStrokes").mkdir()
    (tmp_path / "ascii").mkdir()
    with pytest.raises(RuntimeError, match="no usable handwriting lines under"):
        HandwritingDataModule(dataset="iam", root=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match="no lineStrokes/ folder"):
        HandwritingDataModule(dataset="iam", root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs root="):
        HandwritingDataModule(dataset="iam")


def test_hershey_dataset_goes_through_the_iam_parser(tmp_path):
    write_hershey_dataset(tmp_path, num_lines=20, val_lines=10, max_chars=10, seed=1)
    dm = HandwritingDataModule(root=str(tmp_path))
    dm.setup("fit")
    assert dm.summary["train_lines"] == 10 and dm.summary["val_lines"] == 10
    texts = [line.text for line in dm.train_set.lines]
    assert len(set(texts)) > 5 and all(0 < len(t) <= 10 for t in texts)
    for line in dm.train_set.lines:  # one pen lift per word at least, and the line ends lifted
        assert line.offsets[-1, 2] == 1 and line.offsets[:, 2].sum() >= len(line.text.split())


def test_workers_persist_across_epochs(tmp_path):
    write_hershey_dataset(tmp_path, num_lines=20, val_lines=10, max_chars=5, seed=1)
    dm = HandwritingDataModule(root=str(tmp_path), num_workers=1)
    dm.setup("fit")
    assert dm.train_dataloader().persistent_workers and dm.val_dataloader().persistent_workers


def test_alphabet_has_57_characters_and_maps_the_rest_to_non_letter():
    assert len(ALPHABET) == len(set(ALPHABET)) == 57
    assert encode_text("a1Z?").tolist() == [ALPHABET.index("a"), 0, ALPHABET.index("Z"), 0]


# ----------------------------------------------------------------------------- mixture density


def test_one_component_loss_is_bivariate_gaussian_plus_bernoulli():
    torch.manual_seed(0)
    # M = 1: e_hat, pi_hat, mu (2), sigma_hat (2), rho_hat
    y_hat = torch.randn(6, 7, dtype=torch.float64)
    target = torch.cat([torch.randn(6, 2, dtype=torch.float64),
                        torch.tensor([0, 1, 0, 1, 1, 0.], dtype=torch.float64)[:, None]], dim=1)
    e_hat, _, mu1, mu2, s1, s2, rho_hat = y_hat.unbind(-1)
    sigma1, sigma2, rho = s1.exp(), s2.exp(), rho_hat.tanh()
    cov = torch.stack([torch.stack([sigma1 ** 2, rho * sigma1 * sigma2], -1),
                       torch.stack([rho * sigma1 * sigma2, sigma2 ** 2], -1)], -2)
    gaussian = D.MultivariateNormal(torch.stack([mu1, mu2], -1), covariance_matrix=cov)
    bernoulli = D.Bernoulli(probs=1 / (1 + e_hat.exp()))  # Graves eq. 18
    expected = gaussian.log_prob(target[:, :2]) + bernoulli.log_prob(target[:, 2])
    torch.testing.assert_close(mixture_log_likelihood(y_hat, target, 1), expected)


def test_mixture_loss_matches_torch_mixture_same_family():
    torch.manual_seed(1)
    m = 3
    y_hat = torch.randn(5, 1 + 6 * m, dtype=torch.float64)
    target = torch.cat([torch.randn(5, 2), torch.ones(5, 1)], 1).double()
    e_hat, pi_hat = y_hat[:, 0], y_hat[:, 1:1 + m]
    mu = y_hat[:, 1 + m:1 + 3 * m].reshape(5, m, 2)
    sigma = y_hat[:, 1 + 3 * m:1 + 5 * m].reshape(5, m, 2).exp()
    rho = y_hat[:, 1 + 5 * m:].tanh()
    off = rho * sigma[..., 0] * sigma[..., 1]
    cov = torch.stack([torch.stack([sigma[..., 0] ** 2, off], -1),
                       torch.stack([off, sigma[..., 1] ** 2], -1)], -2)
    mixture = D.MixtureSameFamily(D.Categorical(logits=pi_hat), D.MultivariateNormal(mu, cov))
    expected = mixture.log_prob(target[:, :2]) + torch.log(1 / (1 + e_hat.exp()))
    torch.testing.assert_close(mixture_log_likelihood(y_hat, target, m), expected)


def test_output_derivatives_are_clipped_per_sequence():
    model = HandwritingPrediction(hidden_size=8, num_layers=2, num_mixtures=2)
    batch = collate_handwriting([(torch.randn(9, 3).clamp(0, 1), encode_text("ab"))] * 4)
    model.sequences_in_batch = 4
    y_hat, _ = model(batch["inputs"])
    seen = []
    y_hat.register_hook(seen.append)  # runs after the clipping hook registered in forward
    (1e6 * y_hat.sum()).backward()
    assert seen[0].abs().max().item() == pytest.approx(100.0 / 4)
    assert all(p.grad is not None for p in model.lstm.parameters())


def test_cudnn_lstm_derivatives_are_clipped_on_h_per_sequence():
    """``lstm: cudnn``, the approximation: the clip acts on each layer's outputs h^n_t."""
    model = HandwritingPrediction(hidden_size=8, num_layers=2, num_mixtures=2, lstm="cudnn")
    model.sequences_in_batch = 4
    hidden = []  # each layer's output sequence, hooked after the layer's own clipping hook
    for layer in model.lstm.layers:
        layer.register_forward_hook(lambda module, args, out: hidden.append(out[0]))
    features, _ = model.lstm(torch.randn(4, 9, 3), None, model.lstm_bound())
    seen = []
    for h in hidden:
        h.register_hook(seen.append)
    (1e6 * features.sum()).backward()
    assert [g.abs().max().item() for g in seen] == pytest.approx([10.0 / 4] * 2)


@pytest.mark.parametrize("model_class", [HandwritingPrediction, HandwritingSynthesis])
def test_graves_layers_clip_in_the_cell_at_the_per_sequence_bound(model_class, monkeypatch):
    """``lstm: graves`` (the default): every layer, the synthesis network's stepped first layer
    included, gets the bound lstm_clip / batch for its in-cell clip (tests/test_graves_lstm.py
    checks what the layer does with it)."""
    from reproductions.graves_lstm import GravesLSTM

    bounds = []
    forward, step = GravesLSTM.forward, GravesLSTM.step
    monkeypatch.setattr(GravesLSTM, "forward", lambda self, x, state=None, grad_clip=None: (
        bounds.append(("forward", grad_clip)), forward(self, x, state, grad_clip))[1])
    monkeypatch.setattr(GravesLSTM, "step", lambda self, x, state, grad_clip=None: (
        bounds.append(("step", grad_clip)), step(self, x, state, grad_clip))[1])
    model = model_class(hidden_size=8, num_layers=2, num_mixtures=2)
    batch = collate_handwriting([(torch.randn(5, 3).clamp(0, 1), encode_text("ab"))] * 4)
    model.batch_nll(batch).mean().backward()
    steps = batch["inputs"].shape[1]
    calls = [("forward", 2.5)] * 2 if model_class is HandwritingPrediction else \
        [("step", 2.5)] * steps + [("forward", 2.5)]   # the first layer, then the upper one
    assert bounds == calls


# ----------------------------------------------------------------------------- window, sampling


def test_window_kappa_is_non_decreasing_and_window_is_phi_weighted_text():
    torch.manual_seed(0)
    model = HandwritingSynthesis(hidden_size=16, num_layers=2, num_mixtures=2, window_gaussians=3)
    text = encode_text("hello")[None].repeat(2, 1)
    mask = torch.ones_like(text, dtype=torch.bool)
    onehot = torch.nn.functional.one_hot(text, len(ALPHABET)).double()
    model = model.double()
    kappa = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(20):
        h = 5 * torch.randn(2, 16, dtype=torch.float64)
        w, new_kappa, phi = model.soft_window(h, kappa, onehot, mask)
        assert (new_kappa >= kappa).all()
        a, b, k = model.window(h).exp().chunk(3, -1)
        k = kappa + k
        by_hand = torch.stack([(a * torch.exp(-b * (k - u) ** 2)).sum(-1) for u in range(1, 7)], -1)
        torch.testing.assert_close(phi, by_hand)
        torch.testing.assert_close(w, (by_hand[:, :5, None] * onehot).sum(1))
        kappa = new_kappa


def test_synthesis_step_by_step_equals_whole_sequence():
    torch.manual_seed(0)
    model = HandwritingSynthesis(hidden_size=8, num_layers=3, num_mixtures=2, window_gaussians=2)
    inputs, text = torch.randn(2, 6, 3), encode_text("abc")[None].repeat(2, 1)
    mask = torch.ones_like(text, dtype=torch.bool)
    whole, phi, _ = model(inputs, text, mask)
    state, steps = None, []
    for t in range(6):
        y_hat, _, state = model(inputs[:, t:t + 1], text, mask, state)
        steps.append(y_hat)
    torch.testing.assert_close(torch.cat(steps, 1), whole)
    assert phi.shape == (2, 6, 4)


def test_bias_shrinks_sigma_and_large_bias_is_near_deterministic():
    torch.manual_seed(0)
    m = 2
    # pi_hat (0, 1), mu (10, 2) and (-10, 4), sigma_hat all log 2, rho 0.5 -> tanh^-1
    y_hat = torch.tensor([[0.0, 0.0, 1.0, 10.0, 2.0, -10.0, 4.0] + [math.log(2)] * 4
                          + [math.atanh(0.5)] * 2]).repeat(20000, 1)
    for bias in (0.0, 1.0):
        sample = sample_mixture(y_hat, m, bias)
        second = sample[:, 0] < 0  # samples of the second component (mu_x = -10)
        pi_second = torch.softmax(torch.tensor([0.0, 1.0]) * (1 + bias), 0)[1].item()
        assert second.float().mean().item() == pytest.approx(pi_second, abs=0.02)
        xy = sample[second, :2]
        expected_sigma = 2 * math.exp(-bias)
        assert xy.std(0).tolist() == pytest.approx([expected_sigma] * 2, rel=0.05)
        assert torch.corrcoef(xy.T)[0, 1].item() == pytest.approx(0.5, abs=0.03)
    nearly = sample_mixture(y_hat[:100], m, bias=20.0)
    torch.testing.assert_close(nearly[:, :2], torch.tensor([[-10.0, 4.0]]).expand(100, 2),
                               atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["prediction_iam", "synthesis_iam"])
def test_paper_configs_carry_the_papers_settings(name, tmp_path, monkeypatch):
    from reproductions.runner.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    write_iam_form(tmp_path / "iam")
    cli = main(args=["-c", str(REPO / f"configs/handwriting/{name}.yaml"),
                     "--data.init_args.root", str(tmp_path / "iam")], run=False)
    model, hp = cli.model, cli.model.hparams
    paper, rule = paper_facts.GRAVES_HANDWRITING, paper_facts.GRAVES_RMSPROP
    assert (hp.num_layers, hp.hidden_size) == (paper["layers"], paper["units"])
    assert hp.num_mixtures == paper["mixtures"]
    assert model.output.out_features == paper["output_units"]
    assert (hp.output_clip, hp.lstm_clip) == (paper["output_clip"], paper["lstm_clip"])
    optimizer = model.configure_optimizers()
    group = optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"], group["eps"]) == (
        rule["lr"], rule["alpha"], rule["momentum"], rule["eps"])
    assert group["centered"] and group["eps_in_sqrt"]
    if name == "synthesis_iam":
        assert hp.window_gaussians == paper["window_gaussians"]
        assert len(ALPHABET) == paper["characters"]
        assert model.window.out_features == 3 * hp.window_gaussians


# ----------------------------------------------------------------------------- end to end


def tiny_fit(tmp_path: Path, config: str, *extra: str) -> Path:
    """``repro fit`` of 2 steps on 24 Hershey lines; returns the offline W&B run folder."""
    from reproductions.runner.cli import main

    cli = main(args=["fit", "-c", str(REPO / f"configs/handwriting/{config}.yaml"),
                     "--data.init_args.root", str(tmp_path / "hershey"),
                     "--data.init_args.hershey_lines", "24", "--data.init_args.hershey_val_lines", "4",
                     "--data.init_args.batch_size", "8",
                     "--model.init_args.hidden_size", "8", "--model.init_args.num_mixtures", "2",
                     "--model.init_args.picture_every_n_epochs", "1", *extra,
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                     "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    cli.trainer.logger.experiment.finish()  # flush the offline run's records before reading them
    return next((tmp_path / "runs/wandb").glob("offline-run-*"))


def assert_logged(run: Path, pictures: list[str]) -> None:
    for picture in pictures:
        assert list((run / "files/pictures").glob(f"{picture}_step*.png"))
        assert list((run / "files/media/images/pictures").glob(f"{picture}_*.png"))
    logged = set().union(*read_finished_run(run).history)
    assert {"val/nll_nats", "train/nll_nats"} <= logged


def test_tiny_prediction_fit_logs_nats_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    run = tiny_fit(tmp_path, "prediction_smoke", "--model.init_args.sample_steps", "20")
    assert_logged(run, ["unconditional"])


def test_tiny_synthesis_fit_logs_nats_pictures_and_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    run = tiny_fit(tmp_path, "synthesis_smoke", "--model.init_args.max_steps_per_char", "3")
    assert_logged(run, ["synthesis", "window"])
    checkpoint = Path(glob.glob(str(tmp_path / "runs/**/*.ckpt"), recursive=True)[0])
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    dm = HandwritingDataModule(root=str(tmp_path / "hershey"))
    dm.setup("fit")
    raw = np.concatenate([line.offsets[:, :2] for line in dm.train_set.lines]).astype(np.float64)
    np.testing.assert_allclose(state["offset_mean"].numpy(), raw.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["offset_std"].numpy(), raw.std(0), rtol=1e-5)
    out = write_command(["write", "--checkpoint", str(checkpoint), "--text", "hi",
                         "--bias", "1", "--out", str(tmp_path / "hi.svg")])
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    with pytest.raises(SystemExit):
        write_command(["write", "--checkpoint", str(checkpoint), "--text", "hi", "--out", "hi.gif"])


# ----------------------------------------------------------------------------- learning (slow)


def smoke_fit(tmp_path: Path, config: str, epochs: int):
    from reproductions.runner.cli import main

    cli = main(args=["fit", "-c", str(REPO / f"configs/handwriting/{config}.yaml"),
                     "--data.init_args.root", str(tmp_path / "hershey"),
                     "--model.init_args.picture_every_n_epochs", "0",
                     "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    cli.trainer.logger.experiment.finish()
    return cli


def untrained_val_nll(model_class, trained, batch: dict) -> float:
    torch.manual_seed(0)
    fresh = model_class(**{k: v for k, v in trained.hparams.items() if not k.startswith("_")})
    fresh.load_state_dict({**fresh.state_dict(), "offset_mean": trained.offset_mean,
                           "offset_std": trained.offset_std})
    with torch.no_grad():
        return fresh.batch_nll(batch).mean().item()


@pytest.mark.slow
def test_prediction_smoke_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    cli = smoke_fit(tmp_path, "prediction_smoke", epochs=4)
    batch = collate_handwriting(list(cli.datamodule.val_set))
    trained = cli.trainer.callback_metrics["val/nll_nats"].item()
    assert trained < untrained_val_nll(HandwritingPrediction, cli.model, batch) - 100


@pytest.mark.slow
def test_synthesis_smoke_window_moves_along_the_text(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    cli = smoke_fit(tmp_path, "synthesis_smoke", epochs=4)
    model = cli.model.eval()
    batch = collate_handwriting(list(cli.datamodule.val_set))
    assert cli.trainer.callback_metrics["val/nll_nats"].item() < untrained_val_nll(
        HandwritingSynthesis, model, batch) - 100
    with torch.no_grad():
        _, phi, _ = model(batch["inputs"], batch["text"], batch["text_mask"])
    last_step = batch["stroke_mask"].sum(1) - 1
    chars = batch["text_mask"].sum(1)
    rows = torch.arange(len(chars))
    focus_first = phi[:, 0, :-1].argmax(-1)
    focus_last = phi[rows, last_step, :-1].masked_fill(~batch["text_mask"], -1).argmax(-1)
    assert (focus_first <= 1).float().mean() > 0.8          # starts at the first characters
    assert (focus_last >= chars - 2).float().mean() > 0.8   # ends on the last characters


@pytest.mark.parametrize("max_epochs, max_steps, epoch, step, drawn", [
    (-1, 100, 0, 10, False),   # only max_steps bounds the run: epochs in between are not the last
    (-1, 100, 0, 100, True),   # the step that ends the run
    (-1, 100, 4, 50, True),    # every 5th epoch
    (3, -1, 2, 7, True),       # the last of max_epochs
    (30, -1, 2, 7, False),
])
def test_pictures_every_n_epochs_and_at_the_end(max_epochs, max_steps, epoch, step, drawn):
    from types import SimpleNamespace

    model = HandwritingPrediction(hidden_size=4, num_layers=1, num_mixtures=2,
                                  picture_every_n_epochs=5)
    model._trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps,
                                     current_epoch=epoch, global_step=step,
                                     sanity_checking=False, is_global_zero=True)
    assert model.should_draw() == drawn
