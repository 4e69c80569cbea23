"""``repro compare`` on a real WGAN run (media left out, the generator-iteration axis, labels,
folders of runs, metrics no run has) and the progress bar counting generator iterations."""

from pathlib import Path

import pytest

from helpers import write_png_folder
from reproductions.runner.cli import main
from reproductions.runner.compare import compare, figure, read_series, run_label
from reproductions.runner.progress import ReproductionProgressBar
from reproductions.runner.wandb_records import WandbRun, read_run
from reproductions.wgan import GENERATOR_ITERATIONS

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 4


@pytest.fixture(scope="module")
def wgan_run(tmp_path_factory):
    """A tiny WGAN fit with W&B offline and the progress bar on: sample grids (W&B images) and
    Frechet distances every 2 generator iterations, one critic step per generator step."""
    tmp = tmp_path_factory.mktemp("wgan")
    write_png_folder(tmp / "images", count=8, size=16)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.chdir(tmp)
        cli = main([
            "fit", "-c", str(REPO / "configs/wgan/smoke.yaml"), "--data.dataset", "folder",
            "--data.root", str(tmp / "images"), "--data.image_size", "16", "--data.batch_size", "4",
            "--model.image_size", "16", "--model.channels", "3", "--model.ngf", "4",
            "--model.ndf", "4", "--model.n_critic", "1", "--model.burst_below", "0",
            "--model.max_generator_iterations", str(ITERATIONS), "--model.sample_every", "2",
            "--model.frechet_every", "2", "--model.frechet_samples", "8",
            "--optimizer_monitor.every_n_steps", "0", "--trainer.enable_progress_bar", "true",
            "--trainer.logger.init_args.save_dir", str(tmp / "runs")])
        cli.trainer.logger.experiment.finish()
    (run_dir,) = (tmp / "runs/wandb").glob("offline-run-*")
    return cli, run_dir


def test_the_wgan_progress_bar_counts_generator_iterations_with_w_and_frechet(wgan_run):
    cli, _ = wgan_run
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, ReproductionProgressBar)
    train = bar.train_progress_bar
    # 2 critic + 2 generator optimizer steps per generator iteration: 8 steps, 4 iterations
    assert cli.trainer.global_step == 2 * ITERATIONS
    assert (train.desc, train.n, train.total) == ("generator iterations: ", ITERATIONS, ITERATIONS)
    shown = train.postfix
    assert "W=" in shown and "Frechet=" in shown


def test_the_bar_is_lightnings_for_a_module_without_its_own_unit():
    parsed = main(["-c", str(REPO / "configs/bn_lstm/smoke.yaml"), "--trainer.logger", "false"],
                  run=False)
    assert isinstance(parsed.trainer.progress_bar_callback, ReproductionProgressBar)
    quiet = main(["-c", str(REPO / "configs/bn_lstm/smoke.yaml"), "--trainer.logger", "false",
                  "--trainer.enable_progress_bar", "false"], run=False)
    assert quiet.trainer.progress_bar_callback is None


def test_compare_draws_the_wgan_against_generator_iterations_without_media(wgan_run, tmp_path):
    _, run_dir = wgan_run
    run = read_run(run_dir)
    assert any(key.startswith("train/samples/") for row in run.history for key in row)
    iterations = [row[GENERATOR_ITERATIONS] for row in run.history
                  if "train/wasserstein_estimate" in row]
    assert iterations == list(range(1, ITERATIONS + 1))

    series = read_series(run_dir)
    assert not [metric for metric in series if metric.startswith("train/samples")]
    assert series.axis == GENERATOR_ITERATIONS
    fig = figure("train/wasserstein_estimate", [series])
    (line,) = fig.axes[0].lines
    assert fig.axes[0].get_xlabel() == GENERATOR_ITERATIONS
    assert list(line.get_xdata()) == iterations
    fig = figure("train/frechet_distance", [series])
    assert list(fig.axes[0].lines[0].get_xdata()) == [2, 4]
    # a metric logged without the generator iterations beside it stays on the global step
    assert figure("train/skipped_steps", [series]).axes[0].get_xlabel() == "trainer/global_step"

    assert series.label == run.name
    unnamed = WandbRun(run_dir, id=run.id, group="wgan", job_type="folder")
    assert run_label(unnamed) == f"wgan/folder {run.id}"  # reproduction/dataset and the id
    compare([run_dir], tmp_path / "cmp")
    drawn = {p.name for p in (tmp_path / "cmp").glob("*.png")}
    assert "train_wasserstein_estimate.png" in drawn
    assert not {name for name in drawn if name.startswith("train_samples")}


def test_compare_takes_a_folder_of_runs_and_names_metrics_no_run_has(wgan_run, tmp_path,
                                                                     capsys):
    _, run_dir = wgan_run
    for folder in (run_dir.parent, run_dir.parent.parent):  # runs/wandb and runs/
        table = compare([folder], tmp_path / folder.name,
                        ["train/wasserstein_estimate", "val/nope"])
        rows = [line for line in table.read_text().splitlines()[2:]]
        assert len(rows) == 1  # latest-run, a link to the same run, is not counted twice
        assert capsys.readouterr().err.splitlines() == [
            "repro compare: no run logged val/nope; no plot for it"]
        assert not (tmp_path / folder.name / "val_nope.png").exists()
        assert (tmp_path / folder.name / "train_wasserstein_estimate.png").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty is not a run and holds none"):
        compare([empty], tmp_path / "out")
