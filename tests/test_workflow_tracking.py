"""repro fit's W&B identity and config (read back from the offline run's records), the offline
compare command, and config errors before training."""

from pathlib import Path

import pytest
import yaml

from helpers import TINY_HANDWRITING
from optimizers import presets
from reproductions.runner import tracking
from reproductions.runner.cli import main
from reproductions.runner.wandb_records import read_finished_run, read_run
from reproductions.runner.compare import compare

REPO = Path(__file__).resolve().parents[1]


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "-c", str(REPO / "configs/handwriting/prediction_smoke.yaml"),
            "--data.init_args.root", str(tmp_path / "hershey"), *TINY_HANDWRITING,
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]


def fit_and_read(tmp_path: Path, *extra: str):
    cli = main(args=tiny_args(tmp_path, *extra))
    cli.trainer.logger.experiment.finish()
    run_dir = sorted((tmp_path / "runs/wandb").glob("offline-run-*"))[-1]
    read_finished_run(run_dir)
    return cli, run_dir


def test_summary_kinds_follow_the_metric_name():
    assert tracking.summary_for("val/nll_nats") == "min"
    assert tracking.summary_for("train/bpc") == "min"
    assert tracking.summary_for("train/critic_loss") == "min"
    assert tracking.summary_for("val/acc") == "max"
    assert tracking.summary_for("train/wasserstein_estimate") is None


def test_identity_of_a_two_optimizer_config_tags_each_optimizer():
    config = {"model": {"class_path": "reproductions.wgan.WGAN", "init_args": {
        "critic_optimizer": {"class_path": "optimizers.presets.Wgan", "init_args": {"lr": 1e-4}},
        "generator_optimizer": {"class_path": "torch.optim.Adam", "init_args": {}},
        "nz": 100}},
        "data": {"class_path": "datamodules.images.ImageDataModule",
                 "init_args": {"dataset": "mnist5k"}}}
    identity = tracking.run_identity(config)
    assert identity["group"] == "wgan" and identity["job_type"] == "mnist5k"
    # the Wgan preset is torch's RMSprop defaults: no variant flag is on
    assert sorted(identity["tags"]) == ["critic_optimizer:Wgan", "generator_optimizer:Adam"]


def test_fit_groups_tags_and_configures_the_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    _, run_dir = fit_and_read(tmp_path, "--trainer.max_epochs", "1",
                              "--trainer.limit_train_batches", "2",
                              "--optimizer_monitor.every_n_steps", "1")
    run = read_run(run_dir)
    assert run.group == "handwriting" and run.job_type == "hershey"
    graves = presets.PRESETS["graves"].settings  # the paper's flags, from the preset table
    expected = {"Graves"} | {flag for flag in ("centered", "eps_in_sqrt", "lr_in_momentum")
                             if graves[flag]} | {"momentum"}
    assert set(run.tags) == expected
    effective = run.config["optimizers/0"]
    assert effective["class"] == "Graves" and effective["lr"] == 1e-3  # the YAML's override
    for key in ("alpha", "eps", "momentum", "centered", "eps_in_sqrt"):
        assert effective[key] == graves[key], key
    assert run.config["config"]["model"]["init_args"]["hidden_size"] == 8
    assert run.metric_summaries["val/nll_nats"] == {"min"}
    assert run.metric_summaries["train/nll_nats"] == {"min"}
    logged = set().union(*run.history)
    assert "train/optimizer0/group0/step_size_p50" in logged
    assert "train/optimizer0/layer/output.weight/eps_dominated" in logged or any(
        k.startswith("train/optimizer0/layer/") for k in logged)
    # the resolved config sits in the run's own folder, not in a shared runs/config.yaml
    saved = yaml.safe_load((run_dir / "files/config.yaml").read_text())
    assert saved["model"]["init_args"]["hidden_size"] == 8
    assert not (tmp_path / "runs/config.yaml").exists()
    # the checkpoints in a folder of this config and run: handwriting-prediction_smoke/<W&B id>
    assert (tmp_path / f"runs/checkpoints/handwriting-prediction_smoke/{run.id}/last.ckpt"
            ).is_file()

    # repro compare on this run and a CSV log: a plot per metric and the final values
    csv_dir = tmp_path / "csv_run"
    csv_dir.mkdir()
    (csv_dir / "metrics.csv").write_text("step,val/nll_nats\n0,5.0\n10,3.5\n")
    table = compare([run_dir, csv_dir], tmp_path / "cmp")
    text = table.read_text()
    final_val = [row for row in run.history if "val/nll_nats" in row][-1]["val/nll_nats"]
    assert f"{final_val:.4g}" in text and "| csv_run |" in text and "3.5" in text
    assert (tmp_path / "cmp/val_nll_nats.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--model.init_args.optimizer.init_args.lr", "-0.1"],
     "model.init_args.optimizer (optimizers.presets.Graves): RMSprop: lr must be >= 0"),
    (["--model.init_args.optimizer.init_args.alpha", "1.5"], "alpha must be in [0, 1)"),
])
def test_bad_optimizer_settings_fail_before_training_naming_the_key(tmp_path, monkeypatch,
                                                                    extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        main(args=tiny_args(tmp_path, *extra))
    assert not (tmp_path / "runs/checkpoints").exists()


@pytest.mark.parametrize("extra, names", [
    (["--model.init_args.hiden_size", "8"], "hiden_size"),
    (["--model.init_args.hidden_size", "eight"], "hidden_size"),
    (["--trainer.max_epochz", "1"], "max_epochz"),
])
def test_unknown_keys_and_wrong_types_are_rejected_by_name(tmp_path, monkeypatch, capsys,
                                                           extra, names):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args=tiny_args(tmp_path, *extra))
    assert exit_info.value.code == 2
    assert names in capsys.readouterr().err


def test_missing_dataset_path_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match="root=.*no lineStrokes"):
        main(args=tiny_args(tmp_path, "--data.init_args.dataset", "iam",
                            "--data.init_args.root", str(tmp_path / "no_such_folder")))
