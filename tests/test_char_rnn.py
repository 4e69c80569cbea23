"""Graves (2013) character-level language models: data streams, BPC, skip connections,
vocabulary, sampling, corpus errors, configs against the papers, and an end-to-end ``repro fit``."""

from __future__ import annotations

import copy
import json
import math
import warnings
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import paper_facts
from datamodules.text import (UNK, CorpusError, StreamWindows, TextDataModule, Vocabulary)
from reproductions.char_rnn import CharRNN, main as char_rnn_main, nats_to_bits
from reproductions.graves_lstm import PeepholeLSTM
from reproductions.runner.wandb_records import read_finished_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "char_rnn"


def tiny_model(vocabulary: Vocabulary, **kwargs) -> CharRNN:
    torch.manual_seed(0)
    settings = dict(hidden_size=8, num_layers=2, loss_reduction="symbol", grad_clip="none",
                    sample_length=5)
    model = CharRNN(**{**settings, **kwargs})
    model.configure_vocabulary(vocabulary)
    return model


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def write_text(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Stream batching
# ------------------------------------------------------------------------------------------
def test_stream_windows_by_hand():
    # 21 symbols, 2 streams of (21 - 1) // 2 = 10, windows of 3: 4 windows, the last of 1.
    windows = StreamWindows(torch.arange(21), batch_size=2, seq_len=3, reset_every=2)
    assert len(windows) == 4
    assert windows[0]["inputs"].tolist() == [[0, 1, 2], [10, 11, 12]]
    assert windows[0]["targets"].tolist() == [[1, 2, 3], [11, 12, 13]]
    assert windows[1]["inputs"].tolist() == [[3, 4, 5], [13, 14, 15]]
    assert windows[3]["inputs"].tolist() == [[9], [19]]
    assert windows[3]["targets"].tolist() == [[10], [20]]
    assert [windows[i]["reset"] for i in range(4)] == [True, False, True, False]
    with pytest.raises(IndexError):
        windows[4]


def test_datamodule_resets_every_n_windows_and_each_epoch(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(4000))
    data = TextDataModule("text", str(write_text(tmp_path, text)), batch_size=4, seq_len=10,
                          reset_every=7, val_fraction=0.1, test_fraction=0.0)
    data.setup("fit")
    for _ in range(2):  # two epochs: each pass starts with a reset
        flags = [batch["reset"] for batch in data.train_dataloader()]
        stream_len = (3600 - 1) // 4
        assert len(flags) == math.ceil(stream_len / 10)
        assert flags == [i % 7 == 0 for i in range(len(flags))]
    # evaluation carries the state through the whole split: only the first window resets
    # 400 symbols: (400 - 1) // 4 = 99 per stream, 10 windows
    assert [b["reset"] for b in data.val_dataloader()] == [True] + [False] * 9


def test_training_carries_state_across_windows_and_resets():
    """Window-by-window training with the carried state scores each window exactly as one
    forward pass over the whole stream does; a reset window scores as from a zero state."""
    vocabulary = Vocabulary.from_text("abcdefgh")
    model = tiny_model(vocabulary)
    ids = torch.randint(0, 8, (37,), generator=torch.Generator().manual_seed(1))
    windows = StreamWindows(ids, batch_size=3, seq_len=4, reset_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        losses = [model.training_step(windows[i], i).item() for i in range(3)]
    full = windows.inputs[:, :8], windows.targets[:, :8]
    logits, _ = model(full[0])
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), full[1], reduction="none")
    assert losses[0] == pytest.approx(nll[:, :4].mean().item(), rel=1e-5)
    assert losses[1] == pytest.approx(nll[:, 4:8].mean().item(), rel=1e-5)  # carried state
    logits2, _ = model(windows[2]["inputs"])  # window 2 resets: zero state
    assert losses[2] == pytest.approx(model.loss(logits2, windows[2]["targets"]).item(), rel=1e-5)
    carried, _ = model(windows.inputs[:, :12])
    assert model.loss(carried[:, 8:], windows[2]["targets"]).item() != pytest.approx(losses[2])


# ------------------------------------------------------------------------------------------
# Bits per character
# ------------------------------------------------------------------------------------------
def test_bpc_matches_hand_computation(tmp_path):
    # Train "ab...", validation the last 50 characters: 10 a's then 40 b's.
    text = "ab" * 75 + "a" * 10 + "b" * 40
    data = TextDataModule("text", str(write_text(tmp_path, text)), batch_size=1, seq_len=20,
                          val_fraction=0.25, test_fraction=0.0)
    data.setup("validate")
    model = tiny_model(data.vocabulary)
    with torch.no_grad():  # the output ignores the input: p(a) = 1/2, p(b) = 1/4, p(<unk>) = 1/4
        model.output_layer.weight.zero_()
        model.output_layer.bias.copy_(torch.tensor([0.5, 0.25, 0.25]).log())
    assert data.vocabulary.symbols == ("a", "b", UNK)
    # 49 predicted symbols (9 a's, 40 b's) in windows of 20, 20, 9: a weighted mean is needed.
    expected = (9 * 1 + 40 * 2) / 49
    result = quiet_trainer().validate(model, data, verbose=False)[0]
    assert result["val/bpc"] == pytest.approx(expected, rel=1e-6)
    assert nats_to_bits(math.log(8)) == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------
# Derivative clipping
# ------------------------------------------------------------------------------------------
class RecordingSGD(torch.optim.SGD):
    """SGD with lr 0 that keeps the gradients it is stepped with."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        loss = super().step(closure)
        self.seen.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return loss


@pytest.mark.parametrize("loss_reduction", ["sequence", "symbol"])
@pytest.mark.parametrize("lstm", ["graves", "cudnn"])
def test_elementwise_clipping_in_the_cell_or_on_the_parameters(lstm, loss_reduction, tmp_path,
                                                                monkeypatch):
    """``grad_clip: elementwise``. graves: the layers clip their gate pre-activation derivatives
    at grad_clip_value for one sequence's loss (the objective divides that loss by the batch, and
    by the window's steps with the per-symbol mean), and the parameters' derivatives are left
    alone; cudnn: the parameters' derivatives are clipped to grad_clip_value."""
    from reproductions.graves_lstm import GravesLSTM

    bounds = []
    forward = GravesLSTM.forward
    monkeypatch.setattr(GravesLSTM, "forward", lambda self, x, state=None, grad_clip=None: (
        bounds.append(grad_clip), forward(self, x, state, grad_clip))[1])
    data = TextDataModule("text", str(write_text(tmp_path, "abcabd" * 200)), batch_size=4,
                          seq_len=12, val_fraction=0.1, test_fraction=0.0)
    model = tiny_model(Vocabulary.from_text("abcd"), lstm=lstm, grad_clip="elementwise",
                       grad_clip_value=0.01, loss_reduction=loss_reduction,
                       optimizer=RecordingSGD)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, data)
    gradients = torch.cat([g.flatten() for g in trainer.optimizers[0].seen[0]]).abs()
    if lstm == "graves":
        per_sequence = 0.01 / (4 if loss_reduction == "sequence" else 4 * 12)
        assert bounds == pytest.approx([per_sequence] * 2)   # both layers, one step
        assert gradients.max() > 0.01                        # the parameters are not clipped
    else:
        assert not bounds
        assert gradients.max() == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------
# Skip connections
# ------------------------------------------------------------------------------------------
def test_skip_connections():
    vocabulary = Vocabulary.from_text("abcdefgh")
    model = tiny_model(vocabulary)
    first, second = model.lstm.layers
    x1, x2 = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[4, 5, 6, 7]])

    # Layer 1 is an LSTM on the one-hot input alone: compare with the reference layer.
    reference = PeepholeLSTM(9, 8)  # 8 symbols + <unk> in, 8 units
    reference.load_state_dict(first.state_dict())
    features, _ = model.lstm(nn.functional.one_hot(x1, 9).float())
    assert torch.allclose(features[..., :8], reference(nn.functional.one_hot(x1, 9).float())[0])

    with torch.no_grad():
        for p in second.parameters():  # layer 2 silent: h2 = o * tanh(0) = 0
            p.zero_()
    assert torch.all(model.lstm(nn.functional.one_hot(x1, 9).float())[0][..., 8:] == 0)
    # the output still depends on the input through layer 1's direct path to the output
    assert not torch.allclose(model(x1)[0], model(x2)[0])
    with torch.no_grad():
        model.output_layer.weight[:, :8] = 0  # cut that path: the output is the bias alone
    assert torch.allclose(model(x1)[0], model.output_layer.bias.expand(1, 4, 9))

    # Layer 2 reads the input directly: with layer 1 silent, it still sees x.
    model = tiny_model(vocabulary)
    with torch.no_grad():
        for p in model.lstm.layers[0].parameters():
            p.zero_()
    f1 = model.lstm(nn.functional.one_hot(x1, 9).float())[0]
    f2 = model.lstm(nn.functional.one_hot(x2, 9).float())[0]
    assert torch.all(f1[..., :8] == 0)
    assert not torch.allclose(f1[..., 8:], f2[..., 8:])


# ------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------
def test_vocabulary_round_trip_and_unknowns():
    vocabulary = Vocabulary.from_text("hello world\n")
    assert vocabulary.symbols == ("\n", " ", "d", "e", "h", "l", "o", "r", "w", UNK)
    assert Vocabulary.from_dict(json.loads(json.dumps(vocabulary.to_dict()))) == vocabulary
    ids, unknown = vocabulary.encode("hello, World!")
    assert unknown == 3  # ',', 'W', '!'
    assert ids.tolist().count(vocabulary.unk_index) == 3
    assert vocabulary.decode(ids) == "hello\ufffd \ufffdorld\ufffd"
    assert vocabulary.decode(vocabulary.encode("low\n")[0]) == "low\n"


def test_datamodule_counts_unknown_symbols_and_keeps_vocabulary_in_state(tmp_path):
    text = "abc " * 90 + "abZ Z" + "ab" * 17 + "a"  # the last 40 (validation) hold two Z's
    data = TextDataModule("text", str(write_text(tmp_path, text)), batch_size=2, seq_len=8,
                          val_fraction=0.1, test_fraction=0.0)
    data.setup("fit")
    assert "Z" not in data.vocabulary.symbols
    with pytest.warns(UserWarning, match="2 of 40 symbols are not in the training vocabulary"):
        data.val_dataloader()
    assert data.unknown_symbols["val"] == 2
    restored = TextDataModule("text", str(tmp_path / "corpus.txt"))
    restored.load_state_dict(data.state_dict())
    assert restored.vocabulary == data.vocabulary


def test_byte_corpus_from_enwik8_zip(tmp_path):
    content = "<page><title>Zürich</title> ÿ".encode() * 40
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as archive:
        archive.writestr("enwik8", content)
    data = TextDataModule("enwik8", str(tmp_path), batch_size=2, seq_len=10)
    data.setup("fit")
    assert data.vocabulary.unit == "byte"
    assert len(data.vocabulary) == len(set(content)) + 1  # bytes seen, plus <unk>
    train = data.texts["train"].encode("latin-1")
    assert train == content[:len(train)]
    assert data.vocabulary.decode(data.vocabulary.encode(data.texts["train"][:60])[0]) \
        == content[:60].decode("utf-8", errors="replace")


def test_ptb_character_files(tmp_path):
    (tmp_path / "ptb.char.train.txt").write_text(" a e r _ b a n k\n t h e _ c a t\n" * 20)
    (tmp_path / "ptb.char.valid.txt").write_text(" n o _ i t\n")
    (tmp_path / "ptb.char.test.txt").write_text(" a _ c a r\n")
    data = TextDataModule("ptb", str(tmp_path), batch_size=2, seq_len=5)
    data.setup("fit")
    assert data.texts["train"].startswith("aer bank\nthe cat\n")
    assert data.texts["val"] == "no it\n" and data.texts["test"] == "a car\n"


# ------------------------------------------------------------------------------------------
# Corrupt or missing corpora
# ------------------------------------------------------------------------------------------
def test_missing_and_corrupt_corpora(tmp_path):
    with pytest.raises(CorpusError, match=r"enwik8: no file at .*missing.*mattmahoney"):
        TextDataModule("enwik8", str(tmp_path / "missing")).setup("fit")
    (tmp_path / "enwik8.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CorpusError, match="enwik8.zip.*zip archive"):
        TextDataModule("enwik8", str(tmp_path / "enwik8.zip")).setup("fit")
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a", "x")
        archive.writestr("b", "y")
    with pytest.raises(CorpusError, match="expected one file in the zip"):
        TextDataModule("enwik8", str(tmp_path / "two.zip")).setup("fit")
    write_text(tmp_path, "hello World", "text8")
    with pytest.raises(CorpusError, match="not text8.*'W' at offset 6"):
        TextDataModule("text8", str(tmp_path / "text8")).setup("fit")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match="latin1.txt.*not UTF-8"):
        TextDataModule("text", str(tmp_path / "latin1.txt")).setup("fit")
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.char.train.txt").write_text(" a b\n c dd e\n")
    (ptb / "ptb.char.valid.txt").write_text(" a\n")
    with pytest.raises(CorpusError, match=r"ptb.char.train.txt:2: .*'dd'"):
        TextDataModule("ptb", str(ptb)).setup("fit")
    (ptb / "ptb.char.train.txt").write_text(" a b\n")
    with pytest.raises(CorpusError, match="ptb.char.test.txt.*does not exist"):
        TextDataModule("ptb", str(ptb)).setup("fit")
    write_text(tmp_path, "abc", "short.txt")
    data = TextDataModule("text", str(tmp_path / "short.txt"), batch_size=8)
    data.setup("fit")
    with pytest.raises(CorpusError, match="too few for 8 streams"):
        data.train_dataloader()
    data = TextDataModule("text", str(tmp_path / "short.txt"), test_fraction=0.0)
    data.setup("test")
    with pytest.raises(CorpusError, match="test split is empty"):
        data.test_dataloader()


@pytest.mark.parametrize("kwargs, message", [
    ({"corpus": "enwik8"}, "needs `path`"),
    ({"corpus": "wiki"}, "corpus must be one of"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"seq_len": -5}, "seq_len must be an integer >= 1"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "must be < 1"),
])
def test_bad_datamodule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextDataModule(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
    ({"grad_clip": "clip"}, "grad_clip must be"),
    ({"grad_clip_value": -1.0}, "grad_clip_value must be > 0"),
    ({"loss_reduction": "sum"}, "loss_reduction must be"),
])
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CharRNN(**kwargs)


def test_stdlib_corpus_is_deterministic_and_bounded():
    first = TextDataModule(max_bytes=30_000)
    second = TextDataModule(max_bytes=30_000)
    first.setup("fit")
    second.setup("fit")
    assert first.texts == second.texts
    total = sum(len(t.encode()) for t in first.texts.values())
    assert 29_000 < total <= 30_000
    assert len(first.texts["val"]) == round(sum(map(len, first.texts.values())) * 0.05)


# ------------------------------------------------------------------------------------------
# Dynamic evaluation
# ------------------------------------------------------------------------------------------
def test_dynamic_evaluation_matches_manual_sgd(tmp_path):
    text = "".join("abcdefgh"[(i * i) % 8] for i in range(400))
    data = TextDataModule("text", str(write_text(tmp_path, text)), batch_size=2, seq_len=10,
                          val_fraction=0.1, test_fraction=0.0)
    data.setup("validate")
    model = tiny_model(data.vocabulary, dynamic_eval_lr=0.5)
    before = copy.deepcopy(model.state_dict())

    # Reference: score each window, then one SGD step on it; state carried, computed pre-step.
    reference = copy.deepcopy(model)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.5)
    bits, symbols, state = 0.0, 0, None
    for batch in data.val_dataloader():
        logits, state = reference(batch["inputs"], state)
        loss = reference.loss(logits, batch["targets"])
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        state = [(h.detach(), c.detach()) for h, c in state]
        bits += nats_to_bits(loss.item()) * batch["targets"].numel()
        symbols += batch["targets"].numel()

    result = quiet_trainer().validate(model, data, verbose=False)[0]
    assert result["val/bpc_dynamic"] == pytest.approx(bits / symbols, rel=1e-5)
    static = quiet_trainer().validate(tiny_model(data.vocabulary), data, verbose=False)[0]
    assert static["val/bpc"] != pytest.approx(result["val/bpc_dynamic"], rel=1e-3)
    for name, tensor in model.state_dict().items():  # weights restored afterwards
        assert torch.equal(tensor, before[name]), name


# ------------------------------------------------------------------------------------------
# Configs against the papers (tests/paper_facts.py)
# ------------------------------------------------------------------------------------------
def parse_config(name: str, monkeypatch, tmp_path):
    from reproductions.runner.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    return main(args=["-c", str(CONFIGS / name), "--trainer.default_root_dir", str(tmp_path)],
                run=False)


def test_paper_configs_carry_the_papers_settings(monkeypatch, tmp_path):
    text, rule = paper_facts.GRAVES_TEXT, paper_facts.GRAVES_RMSPROP
    seq, reset = text["sequence_length"], text["reset_every"]
    expected = {"enwik8_7x700.yaml": (text["wikipedia_layers"], text["wikipedia_units"], "enwik8"),
                "ptb_1x1000.yaml": (text["ptb_layers"], text["ptb_units"], "ptb")}
    for name, (layers, units, corpus) in expected.items():
        cli = parse_config(name, monkeypatch, tmp_path)
        hp, data = cli.model.hparams, cli.datamodule
        assert (hp.num_layers, hp.hidden_size) == (layers, units), name
        assert (data.corpus, data.seq_len, data.reset_every) == (corpus, seq, reset), name
        assert hp.input_encoding == "one_hot" and hp.grad_clip == "elementwise"
        optimizer = cli.model.optimizer([nn.Parameter(torch.zeros(2))])
        settings = optimizer.defaults
        assert (settings["alpha"], settings["momentum"], settings["lr"], settings["eps"]) == \
            (rule["alpha"], rule["momentum"], rule["lr"], rule["eps"]), name
        assert settings["centered"] and settings["eps_in_sqrt"] and settings["lr_in_momentum"]
    # enwik8: the paper's first 96M bytes for training, the next 4M for validation
    enwik8 = parse_config("enwik8_7x700.yaml", monkeypatch, tmp_path).datamodule
    assert (enwik8.val_fraction, enwik8.test_fraction) == (
        text["wikipedia_validation_fraction"], 0.0)


# ------------------------------------------------------------------------------------------
# End to end: repro fit on the smoke config, W&B offline, then sampling from the checkpoint
# ------------------------------------------------------------------------------------------
def offline_history(run_file: Path) -> list[dict]:
    """History rows of an offline W&B run file, read by the project's own offline reader."""
    return read_finished_run(run_file.parent).history


def test_repro_fit_logs_bpc_and_samples_then_samples_from_checkpoint(monkeypatch, tmp_path,
                                                                     capsys):
    from reproductions.runner.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    main(args=["fit", "-c", str(CONFIGS / "smoke.yaml"), "--trainer.max_steps", "6",
               "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2",
               "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
               "--data.max_bytes", "60000",
               "--data.batch_size", "4", "--data.seq_len", "20",
               "--model.hidden_size", "16", "--model.sample_length", "40"])
    import wandb

    wandb.finish()
    wandb.teardown()  # stops W&B's service, which flushes the offline run file to disk
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    history = offline_history(next(runs[0].glob("run-*.wandb")))
    val_bpc = [row["val/bpc"] for row in history if "val/bpc" in row]
    assert len(val_bpc) == 2 and all(0 < v < math.log2(300) for v in val_bpc)
    assert any("train/bpc" in row for row in history)
    tables = [row for row in history if row.get("samples/_type") == "table-file"]
    assert [row["samples/nrows"] for row in tables] == [1, 2]  # the table grows each validation
    last = json.loads((files / tables[-1]["samples/path"]).read_text())
    assert last["columns"] == ["step", "temperature", "text"]
    assert [row[0] for row in last["data"]] == [3, 6]
    assert last["data"][-1][2] in (files / "samples.txt").read_text()

    checkpoint = next((tmp_path / "runs").rglob("*.ckpt"))
    stored = torch.load(checkpoint, weights_only=False)
    vocabulary = Vocabulary.from_dict(stored["vocabulary"])
    assert stored["TextDataModule"]["vocabulary"] == stored["vocabulary"]
    capsys.readouterr()
    char_rnn_main(["sample", "--checkpoint", str(checkpoint), "--length", "25",
                   "--temperature", "1e-4", "--prime", "def ", "--seed", "0"])
    printed = capsys.readouterr().out

    # Reference: greedy decoding (temperature -> 0) with the checkpoint's weights.
    model = CharRNN(**{k: v for k, v in stored["hyper_parameters"].items()
                       if not k.startswith("_")})
    model.configure_vocabulary(vocabulary)
    model.load_state_dict(stored["state_dict"])
    with torch.no_grad():
        logits, state = model(vocabulary.encode("def ")[0][None])
        greedy = []
        for _ in range(25):
            greedy.append(int(logits[0, -1].argmax()))
            logits, state = model(torch.tensor([[greedy[-1]]]), state)
    assert printed == "def " + vocabulary.decode(greedy) + "\n"

    # Dynamic evaluation from the command line: an evaluation setting that the checkpoint's
    # hyperparameters (which LightningCLI applies over the command line) must not override.
    evaluation = ["-c", str(CONFIGS / "smoke.yaml"), "--ckpt_path", str(checkpoint),
                  "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                  "--data.max_bytes", "60000", "--data.batch_size", "4", "--data.seq_len", "20",
                  "--trainer.limit_val_batches", "2"]
    static = main(args=["validate", *evaluation]).trainer.callback_metrics
    dynamic = main(args=["validate", *evaluation, "--model.dynamic_eval_lr", "0.01"])
    assert static["val/bpc"] == pytest.approx(val_bpc[-1], rel=1e-5)
    assert "val/bpc_dynamic" in dynamic.trainer.callback_metrics
    assert dynamic.model.dynamic_eval_lr == 0.01

    with pytest.raises(SystemExit):
        char_rnn_main(["sample", "--checkpoint", str(tmp_path / "nope.ckpt")])
    with pytest.raises(SystemExit):
        char_rnn_main(["sample", "--checkpoint", str(checkpoint), "--temperature", "0"])
    assert "--temperature must be > 0" in capsys.readouterr().err


def test_trained_model_evaluates_other_text_in_its_own_symbols(tmp_path):
    model = tiny_model(Vocabulary.from_text("abc "))
    text = "abcXYZ " * 40  # validation (the last 28 characters) holds 4 of each of X, Y, Z
    data = TextDataModule("text", str(write_text(tmp_path, text)), batch_size=2, seq_len=5,
                          val_fraction=0.1, test_fraction=0.0)
    with pytest.warns(UserWarning, match="12 of 28 symbols"):
        result = quiet_trainer().validate(model, data, verbose=False)[0]
    assert data.vocabulary == model.vocabulary
    assert result["val/unknown_symbols"] == 12


# ------------------------------------------------------------------------------------------
# Resuming inside the truncated-BPTT streams
# ------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


class KillAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.step:
            raise Killed


def test_resume_in_the_middle_of_a_stream_carries_the_hidden_state(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from reproductions.runner.fault_tolerance import StepSeeding

    text = "".join("abcdefgh"[(i * i + i // 3) % 8] for i in range(1200))
    corpus = write_text(tmp_path, text)

    def fit(name, ckpt_path=None, stop_at=None):
        pl.seed_everything(0, verbose=False)
        data = TextDataModule("text", str(corpus), batch_size=2, seq_len=10, reset_every=8,
                              val_fraction=0.05, test_fraction=0.0)
        data.setup("fit")
        model = tiny_model(data.vocabulary)
        callbacks = [StepSeeding(), ModelCheckpoint(tmp_path / name, "{step}",
                                                    every_n_train_steps=1, save_top_k=-1)]
        if stop_at is not None:
            callbacks.append(KillAtStep(stop_at))
        trainer = pl.Trainer(max_steps=20, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu",
                             num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return model

    whole = fit("whole")
    with pytest.raises(Killed):
        fit("killed", stop_at=15)
    # step 13: window 13 of the first pass, 5 windows after the reset at window 8
    resumed = fit("resumed", ckpt_path=tmp_path / "killed" / "step=13.ckpt")
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # without the carried state (a zero state at window 13), the run diverges
    checkpoint = torch.load(tmp_path / "killed" / "step=13.ckpt", weights_only=False)
    del checkpoint["carried_train_state"]
    torch.save(checkpoint, tmp_path / "no_state.ckpt")
    restarted = fit("restarted", ckpt_path=tmp_path / "no_state.ckpt")
    assert any(not torch.equal(value, restarted.state_dict()[name])
               for name, value in whole.state_dict().items())
