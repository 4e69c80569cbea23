"""A ``repro`` command given something it cannot use ends with one line naming the option, the
value and what is accepted (exit status 2), not a traceback; a bug keeps its traceback, and
``--debug``/``REPRO_DEBUG=1`` keeps every traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reproductions.runner import cli, user_errors

REPO = Path(__file__).resolve().parents[1]
WGAN_SMOKE = ["fit", "-c", str(REPO / "configs/wgan/smoke.yaml"), "--trainer.logger", "false"]


def run_console(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``repro ARGS`` in this process: (exit status, stderr)."""
    monkeypatch.setenv(user_errors.DEBUG_VARIABLE, "0")
    monkeypatch.setattr(sys, "argv", ["repro", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.console_main()
    return exit_info.value.code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The one error line; Lightning's own log lines (``Seed set to 0``) may precede it."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith(user_errors.PREFIX)]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().endswith(errors[0])
    return errors[0].removeprefix(user_errors.PREFIX)


@pytest.mark.parametrize("extra, expected", [
    (["--model.init_args.bogus", "1"],
     "--model.init_args.bogus 1: reproductions.wgan.WGAN has no argument 'bogus'; it takes "
     "generator, critic, image_size,"),
    (["--model.init_args.clip_valu", "0.1"],
     "has no argument 'clip_valu' (did you mean clip_value?)"),
    (["--model.critic_optimizer.class_path", "optimizers.presets.Nope"],
     "--model.init_args.critic_optimizer optimizers.presets.Nope: optimizers.presets has no Nope; "
     "accepted: optimizers.presets.Pytorch, optimizers.presets.Hinton,"),
    (["--model.critic_optimizer.init_args.bogus", "3"],
     "--model.init_args.critic_optimizer.init_args.bogus 3: optimizers.presets.Wgan has no "
     "argument 'bogus'; it takes lr, alpha, eps,"),
    (["--model.generator", "gan"], "--model.init_args.generator gan: accepted: dcgan, dcgan_no_bn, "
                                   "mlp"),
    (["--trainer.max_steps", "many"], "--trainer.max_steps many: expected an integer"),
    # refused by the constructors, before anything starts
    (["--data.batch_size", "0"], "ImageDataModule: batch_size must be >= 1, got 0"),
    (["--model.image_size", "48", "--data.image_size", "48"],
     "WGAN: DCGAN networks need image_size = 4 * 2^k >= 16 (16, 32, 64, 128, ...), got 48"),
    (["--model.critic_optimizer.init_args.lr", "abc"],
     "model.init_args.critic_optimizer.init_args.lr: 'abc' is not a number; "
     "optimizers.presets.Wgan takes a number (default 5e-05)"),
])
def test_a_bad_option_ends_in_one_line_naming_option_value_and_accepted(
        monkeypatch, capsys, tmp_path, extra, expected):
    monkeypatch.chdir(tmp_path)
    status, stderr = run_console(monkeypatch, capsys, *WGAN_SMOKE, *extra)
    assert status == 2
    assert expected in error_line(stderr)
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize("content, expected", [
    (None, "{path}: no such file"),
    ("", "--config {path}: the file holds no options; a config is a YAML mapping"),
    ("# a comment only\n", "--config {path}: the file holds no options"),
    ("- 1\n- 2\n", "--config {path}: holds a YAML list, expected a mapping of options"),
    ("trainer: [1, 2\n", "--config {path}: not valid YAML (line 2, column 1): expected ',' or "
                         "']', but got '<stream end>'"),
])
def test_a_config_file_that_is_missing_empty_or_not_a_mapping_is_named(
        monkeypatch, capsys, tmp_path, content, expected):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    status, stderr = run_console(monkeypatch, capsys, "fit", "-c", str(path))
    assert status == 2
    assert expected.format(path=path) in error_line(stderr)


def test_debug_flag_and_variable_keep_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv(user_errors.DEBUG_VARIABLE, "0")  # restored after the test
    monkeypatch.setattr(sys, "argv", ["repro", *WGAN_SMOKE, "--data.batch_size", "0", "--debug"])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        cli.console_main()
    assert "--debug" not in sys.argv  # taken out before the parser sees it
    for extra in (["--data.batch_size", "0"], ["--model.init_args.bogus", "1"]):
        monkeypatch.setenv(user_errors.DEBUG_VARIABLE, "1")
        monkeypatch.setattr(sys, "argv", ["repro", *WGAN_SMOKE, *extra])
        with pytest.raises(Exception, match="batch_size must be|Option 'bogus' is not accepted"):
            cli.console_main()


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    from reproductions.runner.compare import read_series

    csv = tmp_path / "metrics.csv"
    csv.write_text("step,train/loss\n0,abc\n")  # float("abc") in read_series: no one wrote it
    monkeypatch.setattr(cli, "main", lambda: read_series(csv))
    monkeypatch.setenv(user_errors.DEBUG_VARIABLE, "0")
    with pytest.raises(ValueError, match="could not convert string to float"):
        cli.console_main()


def test_user_error_follows_a_library_wrapper_but_not_a_bug():
    from reproductions.wgan import check_dcgan_size

    try:
        check_dcgan_size(48)
    except ValueError as raised:
        ours = raised
    assert user_errors.user_error(ours) is ours and user_errors.exit_status(ours) == 2
    wrapper = ValueError("Does not validate against any of the Union subtypes")  # a library's
    wrapper.__context__ = ours
    try:
        raise wrapper
    except ValueError as raised:
        assert user_errors.user_error(raised) is ours
    try:
        user_errors.one_line(None)  # AttributeError inside our code: a bug
    except AttributeError as bug:
        bug.__context__ = ours
        assert user_errors.user_error(bug) is None


def test_the_console_command_prints_exactly_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "reproductions", *WGAN_SMOKE, "--model.init_args.bogus", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), user_errors.DEBUG_VARIABLE: "0"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        user_errors.PREFIX + "--model.init_args.bogus 1: reproductions.wgan.WGAN has no argument "
        "'bogus'; it takes " + ", ".join(user_errors.argument_names("reproductions.wgan.WGAN"))]


@pytest.mark.parametrize("args, status, expected", [
    ([*WGAN_SMOKE, "--data.dataset", "folder", "--data.root", "{tmp}/no_such_folder",
      "--model.channels", "3"], 1, "folder: {tmp}/no_such_folder is not a directory"),
    (["fit", "-c", str(REPO / "configs/char_rnn/smoke.yaml"), "--trainer.logger", "false",
      "--data.corpus", "text", "--data.path", "{tmp}/no_such.txt"], 2,
     "text: path '{tmp}/no_such.txt' does not exist"),
])
def test_a_missing_dataset_ends_in_one_line(monkeypatch, capsys, tmp_path, args, status,
                                            expected):
    monkeypatch.chdir(tmp_path)
    code, stderr = run_console(monkeypatch, capsys, *[a.format(tmp=tmp_path) for a in args])
    assert code == status
    assert expected.format(tmp=tmp_path) in error_line(stderr)
