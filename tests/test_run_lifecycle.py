"""A run's life in ``repro fit``: its own checkpoint folder, resuming it (the same W&B run, the
config's optimizer settings), refusing another config's checkpoint, failed starts that leave no
W&B run behind, and W&B's own settings (WANDB_MODE, WANDB_DIR) honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reproductions.runner.cli import main
from reproductions.runner.run_folder import (CHECKPOINT_KEY, CheckpointMismatchError,
                                             newest_checkpoint)

REPO = Path(__file__).resolve().parents[1]
# Two steps of a tiny LSTM on the embedded digits: a run in a few seconds.
TINY_BN_LSTM = ["-c", str(REPO / "configs/bn_lstm/smoke.yaml"), "--model.cell=lstm",
                "--model.hidden_size=8", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", "--optimizer_monitor.every_n_steps=0"]


def fit(root: Path, *extra: str):
    cli = main(args=["fit", *TINY_BN_LSTM, f"--trainer.default_root_dir={root}", *extra])
    for logger in cli.trainer.loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    return cli


def run_ids(root: Path) -> list[str]:
    """The W&B run id of each offline run folder (from its run-<id>.wandb file: a folder's name
    gets a suffix when two runs of one id start within the same second)."""
    return sorted(path.stem.removeprefix("run-")
                  for path in (root / "wandb").glob("offline-run-*/run-*.wandb"))


def test_each_run_has_its_own_folder_and_a_resume_continues_it(tmp_path):
    first = fit(tmp_path)
    second = fit(tmp_path)  # the same config again: a new run, a new folder
    folders = sorted((tmp_path / "checkpoints" / "bn_lstm-smoke").iterdir())
    assert len(folders) == 2 and {f.name for f in folders} == set(run_ids(tmp_path))
    assert first.run_key.run_id != second.run_key.run_id

    resumed = fit(tmp_path, "--trainer.max_steps=4", "--ckpt_path=last")
    assert resumed.run_key == second.run_key  # the newest run of this config
    assert resumed.trainer.global_step == 4
    # one experiment, one W&B run: the resumed process logged under the same id
    assert run_ids(tmp_path).count(second.run_key.run_id) == 2
    last = tmp_path / "checkpoints" / "bn_lstm-smoke" / second.run_key.run_id / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 4
    assert saved[CHECKPOINT_KEY] == {"reproduction": "bn_lstm", "config": "bn_lstm-smoke",
                                     "run_id": second.run_key.run_id}


def test_a_checkpoint_of_another_config_is_refused_before_any_run(tmp_path):
    fit(tmp_path)
    (checkpoint,) = (tmp_path / "checkpoints").rglob("last.ckpt")
    before = run_ids(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"bn_lstm-smoke .*this launch is wgan "
                                                      r"with config wgan-smoke"):
        main(args=["fit", "-c", str(REPO / "configs/wgan/smoke.yaml"),
                   f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={checkpoint}"])
    assert run_ids(tmp_path) == before
    # --ckpt_path last looks only among the runs of the launch's own config
    assert newest_checkpoint(tmp_path, "bn_lstm-smoke") == checkpoint
    assert newest_checkpoint(tmp_path, "wgan-smoke") is None


def test_a_resume_trains_at_the_configs_learning_rate_and_says_so(tmp_path, caplog):
    fit(tmp_path)
    with caplog.at_level("INFO"):
        resumed = fit(tmp_path, "--trainer.max_steps=3", "--ckpt_path=last",
                      "--model.optimizer.init_args.lr=0.01")
    group = resumed.trainer.optimizers[0].param_groups[0]
    assert group["lr"] == 0.01  # without the fix, the checkpoint's 1e-3
    assert "lr = 0.01 from the config (the checkpoint had 0.001)" in caplog.text
    # the other settings were the checkpoint's and the config's alike: nothing else reported
    assert caplog.text.count("from the config") == 1


def test_a_run_failing_before_its_first_step_leaves_no_wandb_run(tmp_path):
    with pytest.raises(ValueError, match="input_size"):  # the model does not fit the data
        fit(tmp_path, "--model.input_size=3")
    assert run_ids(tmp_path) == []


def test_a_missing_dataset_fails_before_the_logger_starts(tmp_path):
    with pytest.raises(Exception, match="MNIST"):
        fit(tmp_path, "--data.dataset=mnist", f"--data.data_dir={tmp_path / 'none'}",
            "--data.download=false")
    assert not (tmp_path / "wandb").exists()


def test_wandb_mode_disabled_writes_no_run(tmp_path, monkeypatch):
    import wandb

    wandb.teardown()  # W&B reads WANDB_MODE once per process; this test changes it mid-process
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        fit(tmp_path)
    finally:
        wandb.teardown()
    assert not (tmp_path / "wandb").exists()
    assert list((tmp_path / "checkpoints").rglob("last.ckpt"))


def test_wandb_dir_and_default_root_dir_place_the_runs(tmp_path, monkeypatch):
    fit(tmp_path / "root")
    assert run_ids(tmp_path / "root") and list((tmp_path / "root/checkpoints").rglob("*.ckpt"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    fit(tmp_path / "root2")
    assert run_ids(tmp_path / "wandb_dir")  # W&B's files where WANDB_DIR says
    assert list((tmp_path / "root2/checkpoints").rglob("*.ckpt"))  # checkpoints at the root


def test_compare_draws_a_resumed_run_as_one_and_tells_runs_of_one_config_apart(tmp_path):
    from reproductions.runner.compare import compare, read_series, wandb_runs

    first = fit(tmp_path, "--trainer.log_every_n_steps=1")
    second = fit(tmp_path, "--trainer.log_every_n_steps=1", "--trainer.max_steps=3")
    fit(tmp_path, "--trainer.log_every_n_steps=1", "--trainer.max_steps=5", "--ckpt_path=last")
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 3  # the resume wrote a folder of its own
    runs = {run.id: run for run in wandb_runs(folders)}
    assert set(runs) == {first.run_key.run_id, second.run_key.run_id}
    steps = [step for step, _ in read_series(runs[second.run_key.run_id])["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # steps 0..4, each once
    table = compare([tmp_path / "wandb"], tmp_path / "cmp").read_text()
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 2
    assert {row.split("|")[1].strip() for row in rows} == {
        f"bn_lstm-smoke ({first.run_key.run_id})", f"bn_lstm-smoke ({second.run_key.run_id})"}
