"""The optimizer inside Lightning (closure, checkpoint, exact resume) and the repro CLI's logger
choice."""

import subprocess
import sys

import pytorch_lightning as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from optimizers import presets
from reproductions.runner import cli, tracking


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return presets.Graves(self.parameters(), lr=1e-2)


def loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return DataLoader(TensorDataset(x, y), batch_size=8)


def trainer(tmp_path, max_steps, callbacks=()):
    return pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                      callbacks=list(callbacks), enable_checkpointing=bool(callbacks))


def manual_steps(model, optimizer, first, last):
    batches = list(loader())
    for step in range(first, last):
        x, y = batches[step % len(batches)]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model.layer(x), y).backward()
        optimizer.step()


def test_lightning_checkpoint_continues_the_same_trajectory(tmp_path):
    pl.seed_everything(0)
    model = Regression()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1,
                                               filename="{step}")
    trainer(tmp_path, 24, [every_epoch]).fit(model, loader())

    # The optimizer state that Lightning saved at step 8, loaded into a fresh RMSprop, continues
    # exactly the trajectory of the uninterrupted Lightning run.
    checkpoint = torch.load(tmp_path / "step=8.ckpt", weights_only=False)
    resumed = Regression()
    resumed.load_state_dict(checkpoint["state_dict"])
    optimizer = resumed.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    manual_steps(resumed, optimizer, 8, 24)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

    x, y = next(iter(loader()))
    loss_before = torch.nn.functional.mse_loss(x @ initial["layer.weight"].T + initial["layer.bias"], y)
    assert torch.nn.functional.mse_loss(model.layer(x), y) < loss_before / 10


@pytest.mark.parametrize("env, offline", [
    ({"WANDB_MODE": "offline"}, True),
    ({"WANDB_MODE": "online", "WANDB_API_KEY": ""}, False),
    ({"WANDB_API_KEY": "k" * 40}, False),
    ({}, True),  # no key, no netrc entry
])
def test_wandb_runs_offline_unless_logged_in(monkeypatch, tmp_path, env, offline):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty home: no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracking.wandb_offline() is offline


def test_netrc_login_counts_as_logged_in(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracking.wandb_offline() is False


def test_module_entry_point_shows_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "reproductions", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout and "--config" in result.stdout


def test_console_script_exits_with_zero_after_a_run(monkeypatch):
    # A console script hands its function's return value to sys.exit: returning the CLI object
    # would print it and exit with status 1 after a successful run.
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    module, function = scripts["project"]["scripts"]["repro"].split(":")
    assert (module, function) == ("reproductions.runner.cli", "console_main")
    monkeypatch.setattr(cli, "main", lambda: object())
    assert cli.console_main() is None


def not_logged_in(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))


def test_offline_hint_only_before_a_run_and_naming_its_folder(monkeypatch, tmp_path, capsys):
    not_logged_in(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "argv", ["repro"])
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    assert "W&B" not in capsys.readouterr().err  # --help starts no run: no hint
    save_dir = tmp_path / "my_runs"
    cli.main(["-c", "configs/bn_lstm/smoke.yaml", "--trainer.logger.init_args.save_dir",
              str(save_dir)], run=False)  # parses and instantiates, trains nothing
    hint = [line for line in capsys.readouterr().err.splitlines() if line.startswith("W&B")]
    assert hint == [f"W&B: not logged in, logging offline under {save_dir}/wandb; upload later "
                    f"with `wandb sync {save_dir}/wandb/offline-run-*`"]


def test_repro_fit_writes_checkpoints_atomically_without_a_config_warning(monkeypatch):
    import warnings

    from reproductions.runner.fault_tolerance import AtomicCheckpointIO

    monkeypatch.setattr(sys, "argv", ["repro"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = cli.main(["-c", "configs/bn_lstm/smoke.yaml", "--trainer.logger=false"],
                          run=False)
    assert not [w for w in caught if "Unable to serialize" in str(w.message)]
    assert isinstance(parsed.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
