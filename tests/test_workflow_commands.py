"""``repro bench`` run for real and checked against the per-seed W&B runs it wrote; the
``repro dashboard`` builders checked against what each reproduction logs, offline."""

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_BN_LSTM, write_png_folder
from reproductions.runner import dashboard
from reproductions.runner.cli import main
from reproductions.runner.wandb_records import WandbRun, read_finished_run, read_run

REPO = Path(__file__).resolve().parents[1]


def finished_run(run_dir: Path, metric: str) -> WandbRun:
    """The run read back once it has finished; ``metric`` must be in it."""
    run = read_finished_run(run_dir)
    assert any(metric in row for row in run.history), metric
    return run


def final_values(run: WandbRun) -> dict[str, float]:
    """Each metric's last logged value, in the order the run file holds the rows."""
    last: dict[str, float] = {}
    for row in run.history:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                last[key] = value
    return last


def parse_bench_table(text: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{row label: {metric: (mean, std)}} from bench.md."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = {name: tuple(float(x) for x in cell.split(" ± "))
                           for name, cell in zip(header[1:], cells[1:]) if cell}
    return table


def panel_metrics(workspace) -> set[str]:
    return {name for section in workspace.sections for panel in section.panels
            for name in [panel.x, *panel.y]}


def test_bench_tabulates_mean_and_sample_std_of_the_seeds_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs/bn_lstm/smoke.yaml")  # no logger in the YAML: the default one
    with pytest.raises(SystemExit) as exit_info:
        main(args=["bench", "-c", config, "--seeds", "2", "--out", str(tmp_path / "bench"), "--",
                   *TINY_BN_LSTM])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "bench/bench.md").read_text()
    assert text in printed

    runs = []
    for seed in (0, 1):
        (run_dir,) = (tmp_path / f"bench/bn_lstm-smoke-seed{seed}/wandb").glob("offline-run-*")
        run = finished_run(run_dir, "val/acc")
        assert run.name == f"bn_lstm-smoke-seed{seed}"
        assert run.config["config"]["seed_everything"] == seed
        runs.append(final_values(run))
    row = parse_bench_table(text)["bn_lstm-smoke (n=2)"]
    assert {"train/loss", "val/loss", "val/acc"} <= set(row)
    assert not any("optimizer" in name for name in row)  # monitor internals stay out
    for metric, (mean, std) in row.items():
        a, b = runs[0][metric], runs[1][metric]
        # mean and sample std (n - 1) of two numbers, by hand; the table rounds to 4 and 2 digits
        assert mean == pytest.approx((a + b) / 2, rel=5e-4, abs=1e-12), metric
        assert std == pytest.approx(abs(a - b) / math.sqrt(2), rel=5e-2, abs=1e-12), metric
    assert runs[0]["train/loss"] != runs[1]["train/loss"]  # the seeds really differ
    assert row["train/loss"][1] > 0

    # the dashboard's bn_lstm panels plot exactly names these runs logged
    logged = set().union(*runs)
    run = read_run(next((tmp_path / "bench/bn_lstm-smoke-seed0/wandb").glob("offline-run-*")))
    workspace = dashboard.build_workspace(run.group, set(run.tags), "entity", "rmsprop-repro")
    assert run.group == "bn_lstm" and panel_metrics(workspace) <= logged


def test_bench_names_a_missing_config_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args=["bench", "-c", str(REPO / "configs/bn_lstm/smoke.yaml"),
                   "-c", str(tmp_path / "no_such.yaml"), "--out", str(tmp_path / "bench")])
    assert exit_info.value.code == 2
    assert f"config {tmp_path / 'no_such.yaml'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()  # the existing config did not run either


def test_bench_refuses_a_config_without_a_logger(tmp_path, capsys):
    config = tmp_path / "silent.yaml"
    config.write_text((REPO / "configs/bn_lstm/smoke.yaml").read_text()
                      .replace("trainer:\n", "trainer:\n  logger: false\n"))
    with pytest.raises(SystemExit):
        main(args=["bench", "-c", str(config), "--out", str(tmp_path / "bench")])
    assert "sets trainer.logger: false" in capsys.readouterr().err


def children_of(pid: int) -> list[int]:
    """The running (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.timeout(300)
def test_a_signal_to_bench_stops_its_running_fit_and_bench_waits_for_it(tmp_path, signum):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "stderr").open("w")  # a file: an orphaned fit cannot hold a pipe open
    bench = subprocess.Popen(
        [sys.executable, "-m", "reproductions", "bench", "-c",
         str(REPO / "configs/bn_lstm/smoke.yaml"), "--seeds", "2", "--out", str(tmp_path), "--",
         *TINY_BN_LSTM, "--trainer.max_epochs", "100000"],  # a fit that would run for hours
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
    fits = []
    try:
        deadline = time.time() + 200
        while not list(tmp_path.glob("*-seed0/wandb/offline-run-*")):  # the fit has started
            assert bench.poll() is None and time.time() < deadline, "the fit did not start"
            time.sleep(0.2)
        fits = children_of(bench.pid)
        assert len(fits) == 1
        bench.send_signal(signum)
        bench.wait(timeout=120)
        stderr = (tmp_path / "stderr").read_text()
        assert bench.returncode == 128 + signum, stderr[-2000:]
        assert not running(fits[0])  # bench waited for its fit to stop
        assert f"repro bench: stopped by {signal.Signals(signum).name}" in stderr
        assert not list(tmp_path.glob("*-seed1"))  # and started no other run
    finally:
        for pid in [bench.pid, *fits]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        bench.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------------------- dashboard
TINY_FITS = {
    "wgan": ("wgan/smoke.yaml", [
        "--data.dataset", "folder", "--data.root", "{tmp}/images", "--data.image_size", "16",
        "--data.batch_size", "4", "--model.image_size", "16", "--model.channels", "3",
        "--model.ngf", "4", "--model.ndf", "4", "--model.n_critic", "1",
        "--model.burst_below", "0", "--model.max_generator_iterations", "2",
        "--model.sample_every", "0", "--model.frechet_every", "2",
        "--model.frechet_samples", "8"]),
    "char_rnn": ("char_rnn/smoke.yaml", [
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "1", "--data.max_bytes", "20000",
        "--data.batch_size", "2", "--data.seq_len", "10", "--model.hidden_size", "8",
        "--model.sample_length", "4"]),
    "handwriting": ("handwriting/prediction_smoke.yaml", [
        "--data.init_args.root", "{tmp}/hershey", "--data.init_args.hershey_lines", "16",
        "--data.init_args.hershey_val_lines", "4", "--data.init_args.batch_size", "8",
        "--model.init_args.hidden_size", "8", "--model.init_args.num_mixtures", "2",
        "--model.init_args.picture_every_n_epochs", "0", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2"]),
}


@pytest.mark.parametrize("reproduction", sorted(TINY_FITS))
def test_dashboard_panels_plot_what_the_reproduction_logs(reproduction, tmp_path, monkeypatch):
    """A tiny real fit per reproduction; the workspace built from the run's own group and tags
    plots only names that run logged, filters on its group, and shows the variance panels for
    the centered (Graves) runs."""
    pytest.importorskip("wandb_workspaces")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    config, extra = TINY_FITS[reproduction]
    if reproduction == "wgan":
        write_png_folder(tmp_path / "images", count=8, size=16)
    cli = main(args=["fit", "-c", str(REPO / "configs" / config),
                     *[arg.format(tmp=tmp_path) for arg in extra],
                     "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
                     "--optimizer_monitor.every_n_steps", "1",
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    cli.trainer.logger.experiment.finish()
    (run_dir,) = (tmp_path / "runs/wandb").glob("offline-run-*")
    headline = dashboard.dashboard_of(reproduction).panels[-1].y[-1]
    run = finished_run(run_dir, headline)
    logged = set().union(*run.history)
    assert run.group == reproduction

    workspace = dashboard.build_workspace(run.group, set(run.tags), "entity", "rmsprop-repro")
    plotted = panel_metrics(workspace)
    assert plotted <= logged, plotted - logged
    figures = {name for panel in dashboard.dashboard_of(reproduction).panels for name in panel.y}
    assert figures <= plotted
    centered = any(tag.endswith("centered") for tag in run.tags)
    assert centered == (reproduction != "wgan")  # Graves presets are centered, Wgan's is not
    assert any(name.endswith("/variance_min") for name in plotted) == centered

    # what the server would receive: runs of this W&B group only, grouped by tags
    view = workspace._to_model().model_dump(by_alias=True)
    filters = str(view)
    assert re.search(r"'key': \{'section': 'run', 'name': 'group'\}, 'op': '=', "
                     rf"'value': '{reproduction}'", filters)
    assert "'grouping': [{'section': 'run', 'name': 'tags'}]" in filters

    report = dashboard.build_report(run.group, set(run.tags), "entity", "rmsprop-repro")
    grids = [block for block in report.blocks if hasattr(block, "panels")]
    assert {name for grid in grids for panel in grid.panels for name in [panel.x, *panel.y]} \
        == plotted
    assert all(str(grid.runsets[0].filters) == f"Metric(\"Group\") == '{reproduction}'"
               for grid in grids)


def test_dashboard_offline_prints_the_way_forward_and_exits_0(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert dashboard.dashboard(None, "rmsprop-repro") == 0
    out = capsys.readouterr().out
    assert "W&B is offline" in out and "wandb sync" in out and "repro compare" in out


def test_dashboard_without_wandb_workspaces_says_how_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # import fails as if absent
    assert dashboard.dashboard(None, "rmsprop-repro") == 0
    assert "pip install rmsprop-repro[dashboard]" in capsys.readouterr().out


def test_bench_layers_a_base_and_its_overlays(tmp_path):
    from reproductions.runner.bench import (BenchConfigError, bench_command, check_bench_configs,
                                            config_files)
    from reproductions.runner.run_folder import config_label

    base, overlay = REPO / "configs/bn_lstm/seq_mnist.yaml", REPO / "configs/bn_lstm/lstm.yaml"
    config = f"{base},{overlay}"
    assert config_label(config_files(config)) == "bn_lstm-seq_mnist+lstm"
    command = bench_command(config, 1, tmp_path / "run", [])
    assert command[command.index("fit") + 1:command.index("fit") + 5] == [
        "-c", str(base), "-c", str(overlay)]
    check_bench_configs([config])
    silent = tmp_path / "silent.yaml"
    silent.write_text("trainer:\n  logger: false\n")
    with pytest.raises(BenchConfigError, match="logger: false"):
        check_bench_configs([f"{base},{silent}"])
    with pytest.raises(BenchConfigError, match="no_such.yaml does not exist"):
        check_bench_configs([f"{base},{tmp_path / 'no_such.yaml'}"])
