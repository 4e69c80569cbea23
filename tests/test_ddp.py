"""Lightning DDP on CPU (gloo): two processes at per-device batch B train exactly as one process
at batch 2B.

DDP averages the two ranks' mean-loss gradients, which is the mean-loss gradient of the union of
their batches. Each step takes the whole training split (4,000 digits), so the two runs see the
same examples whatever the samplers' orders. The plain LSTM cell and no initial-state noise keep
the forward pass free of per-rank batch statistics and per-rank random draws.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from reproductions.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SPLIT = 4000  # mnist5k's training split
TINY = ["-c", "configs/bn_lstm/smoke.yaml", "--model.cell=lstm", "--model.hidden_size=8",
        "--model.initial_state_noise=0", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
        "--checkpoint_every_n_steps=0", "--optimizer_monitor.every_n_steps=0"]


def fit(save_dir: Path, *extra: str) -> dict[str, torch.Tensor]:
    """``repro fit`` in its own process; the final weights from its last.ckpt."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "reproductions", "fit", *TINY,
                    f"--trainer.logger.init_args.save_dir={save_dir}", *extra],
                   cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    checkpoint = save_dir / "checkpoints" / "smoke" / "last.ckpt"  # cli.checkpoint_dir
    return torch.load(checkpoint, weights_only=False)["state_dict"]


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path, monkeypatch):
    two = fit(tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=2",
              f"--data.batch_size={TRAIN_SPLIT // 2}")
    one = fit(tmp_path / "single", "--trainer.devices=1", f"--data.batch_size={TRAIN_SPLIT}")
    monkeypatch.chdir(ROOT)
    initial = main(args=[*TINY, "--trainer.logger=false"], run=False).model.state_dict()
    assert one.keys() == two.keys() == initial.keys()
    for name in one:
        # the runs trained (moved far beyond the tolerance) and agree to fp32 rounding
        assert (one[name] - initial[name]).abs().max() > 1e-4, name
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)


def test_ddp_finishes_without_a_wandb_logger(tmp_path):
    # The run-config callback runs on rank 0 only; it must not call a collective (trainer.log_dir
    # broadcasts), or the other rank waits forever. Before the fix this run hung.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "reproductions", "fit", *TINY, "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp_path}", "--trainer.strategy=ddp",
                    "--trainer.devices=2", f"--data.batch_size={TRAIN_SPLIT // 2}"],
                   cwd=ROOT, env=env, check=True, timeout=120, capture_output=True)
    assert list(tmp_path.rglob("config.yaml"))
    assert list(tmp_path.rglob("last.ckpt"))
