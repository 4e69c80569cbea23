"""``tests/paper_facts.py`` against the project's notes on the papers (``papers.md``, beside the
checkout, where the project keeps them): the numbers the config tests rely on are the papers'.
A plain clone has no such notes, and these tests skip; the config tests themselves never do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import paper_facts

PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers.md"
NUMBER = r"([0-9.]+(?:e-?[0-9]+)?)"


@pytest.fixture(scope="module")
def notes() -> str:
    if not PAPERS.is_file():
        pytest.skip(f"{PAPERS} not present (outside the project's workspace)")
    return " ".join(PAPERS.read_text().split())  # one line: settings wrap across lines


def section(notes: str, title: str) -> str:
    return notes.split(f"## {title}")[1].split(" ## ")[0]


def find(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in papers.md"
    return float(match.group(1))


def test_wgan(notes):
    wgan = section(notes, "WGAN")
    facts = paper_facts.WGAN
    assert find(wgan, rf"RMSProp lr {NUMBER}") == facts["lr"]
    assert find(wgan, rf"weight clipping c = {NUMBER}") == facts["clip_value"]
    assert find(wgan, rf"batch {NUMBER}") == facts["batch_size"]
    assert find(wgan, rf"n_critic = {NUMBER}") == facts["n_critic"]
    assert find(wgan, rf"z is {NUMBER}-d") == facts["nz"]
    assert find(wgan, rf"alpha {NUMBER}") == facts["alpha"]
    assert find(wgan, rf"eps {NUMBER}\)") == facts["eps"]
    assert find(wgan, rf"critic runs {NUMBER} iterations") == facts["n_critic_burst"]
    assert find(wgan, rf"generator iterations < {NUMBER}") == facts["burst_below"]
    assert find(wgan, rf"% {NUMBER} == 0") == facts["burst_every"]
    assert find(wgan, rf"4 ReLU layers of {NUMBER} units") == facts["mlp_width"]
    gp = paper_facts.WGAN_GP
    assert find(wgan, rf"penalty lambda {NUMBER}") == gp["gp_weight"]
    assert find(wgan, rf"Adam lr {NUMBER} betas") == gp["lr"]
    assert re.search(r"betas \((\d), ([\d.]+)\)", wgan).groups() == ("0", "0.9") == tuple(
        f"{b:g}" for b in gp["betas"])
    assert find(wgan, rf"betas \(0, 0.9\), n_critic {NUMBER}") == gp["n_critic"]


def test_graves_rmsprop(notes):
    rule = re.search(rf"a {NUMBER}, mu {NUMBER}, lr {NUMBER}, k {NUMBER} \|", notes)
    facts = paper_facts.GRAVES_RMSPROP
    assert tuple(map(float, rule.groups())) == (facts["alpha"], facts["momentum"], facts["lr"],
                                                facts["eps"])


def test_graves_text(notes):
    graves = section(notes, "Graves 2013")
    facts = paper_facts.GRAVES_TEXT
    wiki = re.search(r"sequences of (\d+).*reset every (\d+) sequences; (\d+) layers of (\d+)",
                     graves)
    assert tuple(map(int, wiki.groups())) == (facts["sequence_length"], facts["reset_every"],
                                              facts["wikipedia_layers"], facts["wikipedia_units"])
    train, val = map(int, re.search(r"first (\d+)M bytes train, next (\d+)M", graves).groups())
    assert val / (train + val) == facts["wikipedia_validation_fraction"]
    ptb = re.search(r"Penn Treebank, characters: (\d+) layer of (\d+) units", graves)
    assert tuple(map(int, ptb.groups())) == (facts["ptb_layers"], facts["ptb_units"])


def test_graves_handwriting(notes):
    graves = section(notes, "Graves 2013")
    facts = paper_facts.GRAVES_HANDWRITING
    assert find(graves, r"(\d+) layers of \d+; output-gradient") == facts["layers"]
    assert find(graves, r"\d+ layers of (\d+); output-gradient") == facts["units"]
    assert find(graves, r"output (\d+) bivariate Gaussians") == facts["mixtures"]
    assert find(graves, r"= (\d+) units") == facts["output_units"]
    assert find(graves, r"output-gradient clipping \[-\d+, (\d+)\]") == facts["output_clip"]
    assert find(graves, r"LSTM-gradient clipping \[-\d+, (\d+)\]") == facts["lstm_clip"]
    assert find(graves, r"K = (\d+) Gaussians") == facts["window_gaussians"]
    assert find(graves, r"(\d+) characters; 3 x 400") == facts["characters"]


def test_bn_lstm(notes):
    text = section(notes, "Recurrent Batch Normalization")
    facts = paper_facts.BN_LSTM
    train, valid = re.search(r"train/valid (\d+)k/(\d+)k", text).groups()
    assert find(text, rf"{NUMBER} units") == facts["hidden_size"]
    assert find(text, rf"RMSProp lr {NUMBER}") == facts["lr"]
    assert find(text, rf"clipping {NUMBER}") == facts["gradient_clip"]
    assert find(text, rf"batch {NUMBER}") == facts["batch_size"]
    assert find(text, rf"noise {NUMBER} on the initial hidden") == facts["initial_state_noise"]
    assert find(text, rf"gamma initialised to {NUMBER}") == facts["gamma_init"]
    assert find(text, rf"{NUMBER} steps of one pixel") == facts["steps"]
    assert (int(train) * 1000, int(valid) * 1000) == (facts["train_size"], facts["val_size"])
