"""Non-finite steps are skipped without touching the optimizer; a killed fit resumes exactly from
any checkpoint (in process, and a SIGKILLed repro fit); checkpoints are written atomically."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from datamodules.resumable_sampler import resumable_train_sampler
from helpers import TINY_BN_LSTM
from optimizers import presets
from reproductions.runner.cli import main
from reproductions.runner.fault_tolerance import (AtomicCheckpointIO, NonFiniteTrainingError,
                                                  SkipNonFiniteSteps, StepSeeding, all_finite,
                                                  checkpoint_damage, intact_checkpoint)

REPO = Path(__file__).resolve().parents[1]


class Regression(pl.LightningModule):
    def __init__(self, manual: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.automatic_optimization = not manual

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self):
        return presets.Graves(self.parameters(), lr=1e-2)


def batches(poisoned: set[int], n: int = 6):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(n * 4, 3, generator=generator), torch.randn(n * 4, 1, generator=generator)
    for i in poisoned:
        x[i * 4] = float("nan")
    return x, y


def fit(x, y, manual=False, max_consecutive=10):
    model = Regression(manual)
    guard = SkipNonFiniteSteps(max_consecutive)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", callbacks=[guard])
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    return model, trainer.optimizers[0], guard


@pytest.mark.parametrize("manual", [False, True])
def test_a_nan_batch_is_skipped_as_if_it_were_absent(manual):
    x, y = batches({2})
    model, optimizer, guard = fit(x, y, manual)
    keep = torch.cat([torch.arange(0, 8), torch.arange(12, 24)])  # the same data without batch 2
    reference, reference_optimizer, _ = fit(x[keep], y[keep], manual)
    assert guard.skipped == 1
    assert torch.equal(model.layer.weight, reference.layer.weight)
    for p, q in zip(model.parameters(), reference.parameters()):
        state, expected = optimizer.state[p], reference_optimizer.state[q]
        for key in ("step", "square_avg", "grad_avg", "momentum_buffer"):
            assert torch.equal(state[key], expected[key]), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite_on_every_kind_of_bad_value(dtype):
    big = torch.finfo(dtype).max
    tensors = [torch.randn(5, 7).to(dtype), torch.randn(3).to(dtype)]
    cases = {"clean": [], "nan": [(0, (1, 2), float("nan"))], "inf": [(1, (0,), float("inf"))],
             "inf and -inf": [(0, (0, 0), float("inf")), (0, (0, 1), -float("inf"))],
             "largest finite, many": [(0, (i, j), big) for i in range(5) for j in range(7)]}
    for name, changes in cases.items():
        case = [t.clone() for t in tensors]
        for index, position, value in changes:
            case[index][position] = value
        expected = all(bool(torch.isfinite(t).all()) for t in case)
        assert bool(all_finite(case)) == expected, name
    assert bool(all_finite([]))
    assert bool(all_finite([tensors[0], torch.randn(4, dtype=torch.float64)]))


@pytest.mark.parametrize("poisoned, expected", [
    # Batches 0-5; global_step counts the skipped steps too (Lightning counts the step call), so
    # batch b ends at step b + 1. Each change is drawn as a step: the old count at the step
    # before it (unless already there), then the new one.
    ({2, 4}, [(0, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 2.0), (6, 2.0)]),
    ({2, 3}, [(0, 0.0), (2, 0.0), (3, 1.0), (4, 2.0), (6, 2.0)])])
def test_the_skipped_count_reaches_the_logger_at_start_each_change_and_end(poisoned, expected):
    logged = []

    class Recorder(pl.loggers.Logger):
        name, version = "recorder", 0

        def log_metrics(self, metrics, step=None):
            if "train/skipped_steps" in metrics:
                logged.append((step, metrics["train/skipped_steps"]))

        def log_hyperparams(self, *args, **kwargs):
            pass

    x, y = batches(poisoned)
    trainer = pl.Trainer(max_epochs=1, logger=Recorder(), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", callbacks=[SkipNonFiniteSteps()])
    trainer.fit(Regression(), DataLoader(TensorDataset(x, y), batch_size=4))
    assert logged == expected


ONE_RANK_NAN = """
import sys
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from reproductions.runner.fault_tolerance import SkipNonFiniteSteps

class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if batch_idx == 1 and self.global_rank == 1:  # a term with no gradient: finite gradients
            loss = loss + torch.tensor(float("nan"))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        torch.save({"weight": self.layer.weight.detach(), "skipped": guard.skipped},
                   f"{sys.argv[1]}/rank{self.global_rank}.pt")
        self.trainer.strategy.barrier()  # rank 0, the launching process, exits after rank 1 saved

if __name__ == "__main__":
    guard = SkipNonFiniteSteps()
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, generator=generator),
                         torch.randn(16, 1, generator=generator))
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[guard])
    trainer.fit(Regression(), DataLoader(data, batch_size=4))
"""


def test_under_ddp_a_loss_non_finite_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    # DDP averages the gradients, so they agree across ranks, but each rank sees its own loss: a
    # rank that skipped alone would leave the replicas apart for the rest of the run.
    script = tmp_path / "one_rank_nan.py"
    script.write_text(ONE_RANK_NAN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                   check=True, timeout=240, capture_output=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [rank["skipped"] for rank in ranks] == [1, 1]
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])


def test_consecutive_non_finite_steps_stop_the_run_with_untouched_weights():
    x, y = batches({1, 2, 3, 4, 5})
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive"):
        fit(x, y, max_consecutive=3)
    reference, _, _ = fit(x[:4], y[:4])  # only the one clean batch
    model = Regression()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         callbacks=[SkipNonFiniteSteps(3)])
    with pytest.raises(NonFiniteTrainingError):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert torch.equal(model.layer.weight, reference.layer.weight)


def test_atomic_checkpoint_io_leaves_the_old_file_when_saving_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"weights": torch.zeros(3), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


class NoisyRegression(pl.LightningModule):
    """Every kind of randomness a step may draw: dropout, torch noise, numpy, random; validation
    draws too (it must not shift training's streams)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(8, 1))

    def training_step(self, batch, _):
        x, y = batch
        x = x + 0.1 * torch.randn_like(x) + float(np.random.normal()) + random.random()
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        torch.randn(5), np.random.normal(), random.random()

    def configure_optimizers(self):
        return presets.Graves(self.parameters(), lr=1e-2)


class Data(pl.LightningDataModule):
    """22 examples in batches of 4, shuffled: 6 batches an epoch, the last one short; or
    (``prebatched``) 6 ready-made batches in their order, as the text streams are."""

    def __init__(self, prebatched: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.train_set = TensorDataset(torch.randn(22, 3, generator=generator),
                                       torch.randn(22, 1, generator=generator))
        self.prebatched = prebatched

    def train_dataloader(self):
        if self.prebatched:
            batches = [self.train_set[i:i + 4] for i in range(0, 22, 4)]
            sampler = resumable_train_sampler(self.trainer, batches, None, shuffle=False)
            return DataLoader(batches, batch_size=None, sampler=sampler)
        sampler = resumable_train_sampler(self.trainer, self.train_set, 4, shuffle=True)
        return DataLoader(self.train_set, batch_size=4, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.train_set, batch_size=11)


class Kill(Exception):
    pass


class KillAtStep(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.step:
            raise Kill


def noisy_fit(directory, ckpt_path=None, kill_at=None, save_on_train_epoch_end=None,
              prebatched=False):
    pl.seed_everything(0, verbose=False)
    model = NoisyRegression()
    callbacks = [StepSeeding(),
                 ModelCheckpoint(directory, "{step}", every_n_train_steps=1, save_top_k=-1),
                 ModelCheckpoint(directory, "epoch{epoch}-end", every_n_epochs=1, save_top_k=-1,
                                 auto_insert_metric_name=False,
                                 save_on_train_epoch_end=save_on_train_epoch_end)]
    if kill_at is not None:
        callbacks.append(KillAtStep(kill_at))
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=callbacks,
                         num_sanity_val_steps=0)
    trainer.fit(model, Data(prebatched), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("checkpoint, save_on_train_epoch_end, prebatched", [
    ("step=3.ckpt", None, False),  # inside epoch 0
    ("step=6.ckpt", None, False),  # after epoch 0's last batch, before its end
    ("epoch0-end.ckpt", None, False),  # on_train_epoch_end
    ("epoch0-end.ckpt", False, False),  # on_validation_end, at the end of epoch 0
    ("step=9.ckpt", False, False),  # inside epoch 1, after a validation-end checkpoint
    ("step=3.ckpt", None, True),  # inside epoch 0 of a loader whose items are batches
])
def test_a_killed_fit_resumes_exactly_from_any_checkpoint(tmp_path, checkpoint,
                                                          save_on_train_epoch_end, prebatched):
    options = dict(save_on_train_epoch_end=save_on_train_epoch_end, prebatched=prebatched)
    whole, whole_trainer = noisy_fit(tmp_path / "whole", **options)
    with pytest.raises(Kill):  # killed 4 steps after the checkpoint: those steps are redone
        noisy_fit(tmp_path / "killed", kill_at=10, **options)
    resumed, trainer = noisy_fit(tmp_path / "resumed", ckpt_path=tmp_path / "killed" / checkpoint,
                                 **options)

    assert trainer.global_step == whole_trainer.global_step == 18
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(whole.parameters(), resumed.parameters()):
        state, expected = trainer.optimizers[0].state[q], whole_trainer.optimizers[0].state[p]
        assert state.keys() == expected.keys()
        for key in expected:
            assert torch.equal(state[key], expected[key]), key


def truncate(path: Path) -> None:
    """Cut ``path`` to half its size, as a full disk or an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_intact_checkpoint_names_the_damage_and_takes_the_newest_intact_one(tmp_path, capsys):
    noisy_fit(tmp_path)  # step=1..18.ckpt and epoch0..2-end.ckpt, real Lightning checkpoints
    newest = [tmp_path / name for name in ("step=18.ckpt", "step=17.ckpt", "step=16.ckpt")]
    for age, path in enumerate(newest):  # one second apart, whatever the clock's resolution
        os.utime(path, (1e9 - age, 1e9 - age))
    for path in tmp_path.glob("*.ckpt"):
        if path not in newest:
            os.utime(path, (1e9 - 10, 1e9 - 10))
    assert intact_checkpoint(newest[0]) == newest[0] and not capsys.readouterr().err

    truncate(newest[0])
    corrupt = bytearray(newest[1].read_bytes())  # one bit of a weight: torch.load would not see
    weight = torch.load(newest[1], weights_only=False)["state_dict"]["net.0.weight"]
    offset = corrupt.find(weight.numpy().tobytes()[:8])
    assert offset > 0
    corrupt[offset] ^= 1
    newest[1].write_bytes(corrupt)
    assert intact_checkpoint(newest[0]) == newest[2]
    assert capsys.readouterr().err.splitlines() == [
        f"repro: checkpoint {newest[0]} is damaged (not a complete zip archive: File is not a zip "
        f"file); resuming from {newest[2]}, the newest intact checkpoint beside it"]
    assert "fails its CRC check" in checkpoint_damage(newest[1])

    for path in tmp_path.glob("*.ckpt"):
        truncate(path)
    with pytest.raises(RuntimeError, match=r"step=18.ckpt is damaged .* no checkpoint beside it "
                                           r"is intact; start afresh without --ckpt_path"):
        intact_checkpoint(newest[0])
    with pytest.raises(FileNotFoundError, match="--ckpt_path .*nope.ckpt: no such checkpoint"):
        intact_checkpoint(tmp_path / "nope.ckpt")


def test_repro_fit_resumes_from_the_newest_intact_checkpoint_past_a_truncated_last_ckpt(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "-c", str(REPO / "configs/bn_lstm/smoke.yaml"), *TINY_BN_LSTM,
           "--trainer.logger", "false", "--checkpoint_every_n_steps", "2"]
    main(fit)  # 3 steps: step=2.ckpt, then epoch0-end.ckpt and last.ckpt at step 3
    (last,) = Path().glob("**/last.ckpt")  # relative to the run's folder, as the run names it
    epoch_end, step_2 = last.parent / "epoch0-end.ckpt", last.parent / "step=2.ckpt"
    assert torch.load(epoch_end, weights_only=False)["global_step"] == 3
    os.utime(step_2, (1e9, 1e9))
    os.utime(epoch_end, (1e9 + 1, 1e9 + 1))
    truncate(last)
    capsys.readouterr()

    resumed = main([*fit, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert f"repro: checkpoint {last} is damaged (not a complete zip archive: File is not a zip " \
        f"file); resuming from {epoch_end}, the newest intact checkpoint beside it" in \
        capsys.readouterr().err
    assert Path(resumed.trainer.ckpt_path) == epoch_end
    assert resumed.trainer.global_step == 6  # epoch 1's three steps after the three restored
    truncate(epoch_end)
    explicit = main([*fit, "--trainer.max_epochs", "2", "--ckpt_path", str(epoch_end)])
    assert Path(explicit.trainer.ckpt_path) != epoch_end  # an intact one beside it, named
    assert f"repro: checkpoint {epoch_end} is damaged" in capsys.readouterr().err


def repro_fit(tmp_path: Path, save_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reproductions", "fit",
            "-c", str(REPO / "configs/handwriting/prediction_smoke.yaml"),
            "--data.init_args.root", str(tmp_path / "hershey"),
            "--data.init_args.hershey_lines", "40", "--data.init_args.hershey_val_lines", "4",
            "--data.init_args.batch_size", "8", "--model.init_args.hidden_size", "16",
            "--model.init_args.num_mixtures", "2", "--model.init_args.picture_every_n_epochs", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "6",
            "--trainer.enable_model_summary", "false",
            "--checkpoint_every_n_steps", "3",
            "--trainer.logger.init_args.save_dir", str(tmp_path / save_dir), *extra]


@pytest.mark.slow
def test_sigkilled_fit_resumes_exactly_with_ckpt_path_last(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    run = dict(cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(repro_fit(tmp_path, "whole"), check=True, timeout=300, **run)

    # 4 batches an epoch, a step checkpoint (and last.ckpt) every 3 steps: killed just after
    # step 6, inside epoch 1 (or, if the kill comes late, after a later step's checkpoint).
    runs = tmp_path / "killed/checkpoints/handwriting-prediction_smoke"

    def written() -> bool:  # step=6.ckpt, then last.ckpt after it (both renamed into place)
        try:
            (step,) = runs.glob("*/step=6.ckpt")
            return (step.parent / "last.ckpt").stat().st_mtime_ns >= step.stat().st_mtime_ns
        except (FileNotFoundError, ValueError):
            return False

    process = subprocess.Popen(repro_fit(tmp_path, "killed"), **run)
    deadline = time.time() + 240
    while not written() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    (directory,) = runs.iterdir()
    last = directory / "last.ckpt"
    killed_at = torch.load(last, weights_only=False)
    assert killed_at["epoch"] < 5
    print(f"killed; last.ckpt at epoch {killed_at['epoch']}, step {killed_at['global_step']}")
    resumed = subprocess.run(repro_fit(tmp_path, "killed", "--ckpt_path", "last"), timeout=300,
                             **run)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]

    (whole_last,) = (tmp_path / "whole/checkpoints").rglob("last.ckpt")
    whole = torch.load(whole_last, weights_only=False)
    again = torch.load(last, weights_only=False)
    assert again["global_step"] == whole["global_step"]
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    assert sorted(p.name for p in directory.glob("last*")) == ["last.ckpt"]
    assert [p.name for p in runs.iterdir()] == [directory.name]  # the resume used the same folder
    states = whole["optimizer_states"][0]["state"], again["optimizer_states"][0]["state"]
    assert states[0].keys() == states[1].keys()
    for index, expected in states[0].items():
        for key, value in expected.items():
            assert torch.equal(value, states[1][index][key]), (index, key)
