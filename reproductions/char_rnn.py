"""Graves (2013), "Generating Sequences With Recurrent Neural Networks", Sec. 3: character-level
language models (Penn Treebank, Hutter Prize Wikipedia) trained with centered RMSProp.

    repro fit -c configs/char_rnn/smoke.yaml                      # CPU, a few minutes, stdlib
    repro fit -c configs/char_rnn/enwik8_7x700.yaml               # the paper's Wikipedia model
    repro test -c configs/char_rnn/ptb_1x1000.yaml --ckpt_path CKPT --model.dynamic_eval_lr 1e-4
    python -m reproductions.char_rnn sample --checkpoint CKPT --length 500 --temperature 0.8

Network (eq. 1-5, Fig. 1): symbols enter one-hot (or through an embedding), feed every layer of a
skip-connected LSTM stack (``SkipLSTM``), and every layer feeds a linear output layer whose softmax
predicts the next symbol (eq. 6-7). The loss is the mean negative log-likelihood in nats;
bits per character = nats / ln 2, logged as ``train/bpc``, ``val/bpc``, ``test/bpc``.

The LSTM layers (``lstm``) are the paper's by default: ``graves`` builds every layer as
``GravesLSTM``, with peephole connections (eq. 7-11) and in-cell derivative clipping, fused;
``cudnn`` builds ``nn.LSTM`` layers instead (cuDNN), without peepholes.

Training is truncated BPTT over the datamodule's streams: the hidden state is carried from one
window to the next (detached) and zeroed when the batch says ``reset``.

Gradient clipping (``grad_clip``): ``elementwise`` is the paper's (Sec. 2.1): with ``lstm:
graves`` the derivatives of the loss with respect to the LSTM gates' pre-activations are clipped
to ``[-grad_clip_value, grad_clip_value]`` inside backpropagation through time, exactly as the
paper does. The bound holds per sequence, as in the paper's per-sequence training: the objective
averages over the batch (and, with ``loss_reduction: symbol``, over the window's steps too), so
the layers clip at the bound times that average's weight. With ``lstm: cudnn``, whose fused LSTM
exposes no pre-activations, the parameters' derivatives are clipped element-wise instead.
``output_grad_clip`` clips the derivatives of the output layer's pre-softmax activations as the
paper's handwriting runs do. ``norm`` is the common global-norm clipping of the parameters.

Dynamic evaluation (Sec. 3.1, the paper's second column): with ``dynamic_eval_lr`` set, ``repro
validate``/``repro test`` record each window's loss and then take an SGD step on it, so the
network adapts to the evaluation stream; results are logged as ``val/bpc_dynamic`` /
``test/bpc_dynamic``, and the weights are restored afterwards. Validation during ``fit`` stays
static.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

from datamodules.text import Vocabulary
from optimizers import presets
from reproductions.experiment import Dashboard, Panel, run_directory
from reproductions.graves_lstm import clip_gradient
from reproductions.skip_lstm import LSTMKind, LSTMState, SkipLSTM, detach_state

DASHBOARD = Dashboard(
    caption="Graves 2013 Sec. 3: bits per character, training and validation",
    panels=(Panel("bits per character", ("train/bpc", "val/bpc")),),
)

LN2 = math.log(2.0)


def nats_to_bits(nats: Tensor | float) -> Tensor | float:
    """Bits per character from a mean negative log-likelihood in nats."""
    return nats / LN2


class CharRNN(pl.LightningModule):
    """Graves' character-level LSTM language model.

    Args:
        hidden_size: LSTM units per layer (the paper: 700 for Wikipedia, 1000 for PTB).
        num_layers: stacked LSTM layers (the paper: 7 for Wikipedia, 1 for PTB).
        lstm: ``graves`` (the paper's LSTM: peepholes, in-cell clipping; fused) or ``cudnn``
            (``nn.LSTM``: no peepholes, parameter clipping).
        input_encoding: ``one_hot`` (the paper) or ``embedding`` of ``embedding_dim``.
        optimizer: built on the parameters; default ``optimizers.presets.Graves`` (eq. 38-41).
        loss_reduction: the training objective: ``sequence`` (the loss summed over each
            window's symbols, averaged over streams: the paper's per-sequence loss) or
            ``symbol`` (the per-symbol mean). BPC is per symbol either way.
        grad_clip: ``elementwise`` (the paper's: in the cell with ``lstm: graves``, on the
            parameters' derivatives with ``lstm: cudnn``), ``norm`` (global norm) or ``none``.
        grad_clip_value: the element-wise range (per sequence with ``lstm: graves``) or the
            maximum norm.
        output_grad_clip: clip the derivatives of the output pre-activations to this range.
        dynamic_eval_lr: SGD learning rate of dynamic evaluation; None evaluates statically.
        sample_length, sample_temperature, sample_prime: the text sampled at every validation
            during training (logged as a W&B table and to ``samples.txt`` in the run folder);
            ``sample_length: 0`` logs none.
    """

    def __init__(
        self,
        hidden_size: int = 700,
        num_layers: int = 7,
        lstm: LSTMKind = "graves",
        input_encoding: Literal["one_hot", "embedding"] = "one_hot",
        embedding_dim: int = 64,
        optimizer: OptimizerCallable = presets.Graves,
        loss_reduction: Literal["sequence", "symbol"] = "sequence",
        grad_clip: Literal["elementwise", "norm", "none"] = "elementwise",
        grad_clip_value: float = 1.0,
        output_grad_clip: float | None = None,
        dynamic_eval_lr: float | None = None,
        sample_length: int = 300,
        sample_temperature: float = 1.0,
        sample_prime: str = "",
    ) -> None:
        super().__init__()
        for name, value, least in (("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1),
                                   ("embedding_dim", embedding_dim, 1),
                                   ("sample_length", sample_length, 0)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"CharRNN: {name} must be an integer >= {least}, got {value!r}")
        if lstm not in ("graves", "cudnn"):
            raise ValueError(f"CharRNN: lstm must be 'graves' or 'cudnn', got {lstm!r}")
        if input_encoding not in ("one_hot", "embedding"):
            raise ValueError("CharRNN: input_encoding must be 'one_hot' or 'embedding', got "
                             f"{input_encoding!r}")
        if loss_reduction not in ("sequence", "symbol"):
            raise ValueError("CharRNN: loss_reduction must be 'sequence' or 'symbol', got "
                             f"{loss_reduction!r}")
        if grad_clip not in ("elementwise", "norm", "none"):
            raise ValueError("CharRNN: grad_clip must be 'elementwise', 'norm' or 'none', got "
                             f"{grad_clip!r}")
        for name, value in (("grad_clip_value", grad_clip_value),
                            ("output_grad_clip", output_grad_clip),
                            ("dynamic_eval_lr", dynamic_eval_lr),
                            ("sample_temperature", sample_temperature)):
            if value is not None and not value > 0:
                raise ValueError(f"CharRNN: {name} must be > 0, got {value!r}")
        # dynamic_eval_lr is an evaluation setting, not part of the trained model: kept out of the
        # hyperparameters, since LightningCLI lets a checkpoint's hyperparameters override the
        # command line (`repro test --ckpt_path ... --model.dynamic_eval_lr ...` must take it).
        self.save_hyperparameters(ignore=["optimizer", "dynamic_eval_lr"])
        self.optimizer = optimizer
        self.dynamic_eval_lr = dynamic_eval_lr
        self.vocabulary: Vocabulary | None = None  # set from the data or a checkpoint
        self.bpc = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self._state: dict[str, LSTMState | None] = {}
        self._sample_rows: list[list[Any]] = []
        self._weights_before_dynamic_eval: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------------------------------
    # Network
    # ----------------------------------------------------------------------------------------
    def configure_vocabulary(self, vocabulary: Vocabulary, replace: bool = False) -> None:
        """Build the layers whose sizes depend on the vocabulary (input and output).

        A different vocabulary rebuilds them only with ``replace`` (before loading weights);
        otherwise it is an error.
        """
        if self.vocabulary is not None and vocabulary == self.vocabulary:
            return
        if self.vocabulary is not None and not replace:
            raise ValueError(f"CharRNN: the model's vocabulary ({len(self.vocabulary)} "
                             f"symbols) differs from the new one ({len(vocabulary)})")
        device = self.device
        hp = self.hparams
        self.vocabulary = vocabulary
        n = len(vocabulary)
        self.embedding = nn.Embedding(n, hp.embedding_dim) if hp.input_encoding == "embedding" \
            else None
        input_size = hp.embedding_dim if self.embedding is not None else n
        self.lstm = SkipLSTM(input_size, hp.hidden_size, hp.num_layers, lstm=hp.lstm)
        self.output_layer = nn.Linear(self.lstm.output_size, n)  # eq. 6: from every layer
        self.to(device)

    def forward(self, inputs: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """inputs (batch, time) symbol indices -> logits (batch, time, vocab), new state."""
        if self.vocabulary is None:
            raise RuntimeError("CharRNN: no vocabulary yet; train on a TextDataModule, load a "
                               "checkpoint, or call configure_vocabulary")
        x = self.embedding(inputs) if self.embedding is not None else \
            F.one_hot(inputs, len(self.vocabulary)).to(self.output_layer.weight.dtype)
        features, state = self.lstm(x, state, self._lstm_clip(inputs))
        logits = clip_gradient(self.output_layer(features), self.hparams.output_grad_clip)
        return logits, state

    def _lstm_clip(self, inputs: Tensor) -> float | None:
        """The in-cell clip bound for this batch: ``grad_clip_value`` for one sequence's loss,
        scaled as ``objective`` scales that loss (1 / batch, or 1 / (batch x steps))."""
        hp = self.hparams
        if hp.lstm != "graves" or hp.grad_clip != "elementwise":
            return None
        divisor = inputs.shape[0] * (1 if hp.loss_reduction == "sequence" else inputs.shape[1])
        return hp.grad_clip_value / divisor

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean negative log-likelihood of the next symbol, in nats (eq. 7)."""
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def _carried_state(self, key: str, batch: dict[str, Any]) -> LSTMState | None:
        state = self._state.get(key)
        if batch["reset"] or state is None or state[0][0].shape[1] != batch["inputs"].shape[0]:
            return None
        return state

    # ----------------------------------------------------------------------------------------
    # Lightning hooks
    # ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        vocabulary = getattr(datamodule, "vocabulary", None)
        if vocabulary is None and self.vocabulary is None:
            raise RuntimeError("CharRNN needs a datamodule with a `vocabulary` (TextDataModule)")
        if self.vocabulary is None:
            self.configure_vocabulary(vocabulary)
        elif stage == "fit":
            self.configure_vocabulary(vocabulary)  # an error if the data's symbols differ
        elif vocabulary is not None and vocabulary != self.vocabulary:
            # Evaluating a trained model on other text: read it in the model's symbols, so the
            # datamodule counts those it lacks as <unk>.
            datamodule.vocabulary = self.vocabulary

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())

    def on_fit_start(self) -> None:
        # The optimizer is a callable, left out of the hyperparameters; log what it built.
        optimizer = self.trainer.optimizers[0]
        settings = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float))}
        for logger in self.loggers:
            logger.log_hyperparams({"optimizer": type(optimizer).__name__,
                                    "vocabulary_size": len(self.vocabulary),
                                    **{f"optimizer.{k}": v for k, v in settings.items()}})

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits, state = self(batch["inputs"], self._carried_state("train", batch))
        self._state["train"] = detach_state(state)  # truncated BPTT: carry values, cut graph
        loss = self.loss(logits, batch["targets"])
        self.log("train/bpc", nats_to_bits(loss.detach()), prog_bar=True)
        return self.objective(loss, batch["targets"])

    def objective(self, loss: Tensor, targets: Tensor) -> Tensor:
        """What the optimizer minimises: the per-sequence loss (summed over the window's time
        steps, averaged over streams) as the paper's online training does, or the per-symbol mean.

        The scale matters to RMSProp through k (eq. 41): k = 1e-4 sits under sqrt(n - m^2), so
        with gradients seq_len times smaller (the per-symbol mean) k dominates and the step
        shrinks."""
        return loss * targets.shape[1] if self.hparams.loss_reduction == "sequence" else loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val is not None:
            raise ValueError("CharRNN clips gradients itself (model.grad_clip, "
                             "model.grad_clip_value); leave trainer.gradient_clip_val unset")
        self._clip_gradients(optimizer)

    def _clip_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        # The paper's element-wise clipping happens inside the Graves layers; nn.LSTM's stand-in
        # clips the parameters' derivatives.
        in_cell = self.hparams.lstm == "graves"
        algorithm = {"elementwise": None if in_cell else "value",
                     "norm": "norm"}.get(self.hparams.grad_clip)
        if algorithm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip_value,
                                gradient_clip_algorithm=algorithm)

    def _dynamic(self) -> bool:
        return self.dynamic_eval_lr is not None and not self.trainer.training \
            and self.trainer.state.fn != "fit"

    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> None:
        state = self._carried_state(stage, batch)
        if self._dynamic():
            # Sec. 3.1: score the window first, then adapt the weights to it.
            with torch.inference_mode(False), torch.enable_grad():
                inputs, targets = batch["inputs"].clone(), batch["targets"].clone()
                state = None if state is None else [(h.clone(), c.clone()) for h, c in state]
                logits, state = self(inputs, state)
                loss = self.loss(logits, targets)
                self._dynamic_optimizer.zero_grad()
                self.objective(loss, targets).backward()
                self._clip_gradients(self._dynamic_optimizer)
                self._dynamic_optimizer.step()
        else:
            logits, state = self(batch["inputs"], state)
            loss = self.loss(logits, batch["targets"])
        self._state[stage] = detach_state(state)
        self.bpc[stage].update(nats_to_bits(loss.detach()), batch["targets"].numel())

    def _evaluation_start(self, stage: str) -> None:
        self._state[stage] = None
        if self._dynamic():
            self._weights_before_dynamic_eval = copy.deepcopy(self.state_dict())
            self._dynamic_optimizer = torch.optim.SGD(self.parameters(),
                                                      lr=self.dynamic_eval_lr)

    def _evaluation_end(self, stage: str) -> None:
        name = f"{stage}/bpc_dynamic" if self._dynamic() else f"{stage}/bpc"
        self.log(name, self.bpc[stage].compute(), prog_bar=True)
        self.bpc[stage].reset()
        unknown = getattr(self.trainer.datamodule, "unknown_symbols", {}).get(stage)
        if unknown is not None:
            self.log(f"{stage}/unknown_symbols", float(unknown))
        if self._weights_before_dynamic_eval is not None:
            self.load_state_dict(self._weights_before_dynamic_eval)
            self._weights_before_dynamic_eval = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._evaluation_start("val")

    def on_test_epoch_start(self) -> None:
        self._evaluation_start("test")

    def on_validation_epoch_end(self) -> None:
        self._evaluation_end("val")
        # Rank 0 samples for everyone: under DDP the replicas hold the same weights.
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking \
                and self.hparams.sample_length > 0 and self.trainer.is_global_zero:
            self._log_sample()

    def on_test_epoch_end(self) -> None:
        self._evaluation_end("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vocabulary"] = self.vocabulary.to_dict()
        # Truncated BPTT: the state carried into the next training window, so that a run resumed
        # inside an epoch continues its streams exactly.
        checkpoint["carried_train_state"] = self._state.get("train")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the layers from the checkpoint's vocabulary before its weights load.

        Evaluating a checkpoint on another corpus keeps the checkpoint's vocabulary (the
        datamodule takes it too, and counts the symbols it lacks); resuming training needs the
        same vocabulary.
        """
        if "vocabulary" not in checkpoint:
            raise ValueError("CharRNN: the checkpoint holds no vocabulary; was it saved by "
                             "CharRNN?")
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        self.configure_vocabulary(Vocabulary.from_dict(checkpoint["vocabulary"]),
                                  replace=not fitting)
        if fitting:
            self._state["train"] = apply_to_collection(checkpoint.get("carried_train_state"),
                                                       Tensor, lambda t: t.to(self.device))

    # ----------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, length: int, temperature: float = 1.0, prime: str = "",
               generator: torch.Generator | None = None) -> str:
        """``prime`` followed by ``length`` symbols drawn from softmax(logits / temperature)."""
        if not temperature > 0:
            raise ValueError(f"sample: temperature must be > 0, got {temperature!r}")
        if length < 0:
            raise ValueError(f"sample: length must be >= 0, got {length!r}")
        start = prime or ("\n" if "\n" in self.vocabulary.symbols else self.vocabulary.symbols[0])
        ids, _ = self.vocabulary.encode(start)
        ids = ids.to(self.device)
        was_training = self.training
        self.eval()
        logits, state = self(ids[None, :])
        drawn = []
        for _ in range(length):
            probabilities = torch.softmax(logits[0, -1].double() / temperature, dim=-1)
            symbol = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(self.device)
            drawn.append(int(symbol))
            logits, state = self(symbol[None, :], state)
        self.train(was_training)
        return prime + self.vocabulary.decode(drawn)

    def _log_sample(self) -> None:
        hp = self.hparams
        text = self.sample(hp.sample_length, hp.sample_temperature, hp.sample_prime)
        step = self.global_step
        self._sample_rows.append([step, hp.sample_temperature, text])
        run_dir = run_directory(self.trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "samples.txt").open("a", encoding="utf-8") as f:
            f.write(f"===== step {step}, temperature {hp.sample_temperature} =====\n{text}\n")
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):  # the whole table each time: W&B tables are
                logger.log_table("samples", columns=["step", "temperature", "text"],  # immutable
                                 data=self._sample_rows, step=step)


# --------------------------------------------------------------------------------------------
# python -m reproductions.char_rnn sample --checkpoint CKPT ...
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reproductions.char_rnn",
                                     description="Sample text from a CharRNN checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="print text sampled from a checkpoint")
    sample.add_argument("--checkpoint", required=True, type=Path, help="a Lightning .ckpt file")
    sample.add_argument("--length", type=int, default=500, help="symbols to draw (>= 0)")
    sample.add_argument("--temperature", type=float, default=1.0, help="softmax temperature > 0")
    sample.add_argument("--prime", default="", help="text to condition on, printed first")
    sample.add_argument("--seed", type=int, default=None, help="random seed")
    sample.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {str(args.checkpoint)!r} does not exist")
    if args.temperature <= 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    if args.length < 0:
        parser.error(f"--length must be >= 0, got {args.length}")
    # The class as imported by its package name (not ``__main__``), which Lightning requires of
    # the class a checkpoint names.
    from reproductions.char_rnn import CharRNN as Model

    model = Model.load_from_checkpoint(args.checkpoint, map_location=args.device)
    generator = torch.Generator()
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()
    sys.stdout.write(model.sample(args.length, args.temperature, args.prime, generator) + "\n")


if __name__ == "__main__":
    main()
