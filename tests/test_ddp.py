"""Lightning DDP on CPU (gloo) for every reproduction: two processes at per-device batch B against
one process at batch 2B, the same global batch.

Why they can agree: DDP averages the ranks' mean-loss gradients, which is the mean-loss gradient of
the union of their batches whenever every rank holds the same number of examples. Each test
either takes the whole training split in every step (so the two runs see the same examples
whatever the samplers' orders) or, for the character streams, shards the streams by rank (see
``datamodules.text``). What is left is the order of float additions (the all-reduce sums two
half-batch gradients, one process sums the whole batch at once): a few fp32 ulps per step, which
RMSProp's division by sqrt(v) can scale up by at most the ratio of a step to the gradient, hence
``rtol=1e-5, atol=1e-6`` on weights of order 0.1-1 after a few steps.

Where equality is not the mathematical truth, the test checks what is:
* BN-LSTM: batch normalisation uses each rank's own half batch (its batch norm is ``F.batch_norm``
  per time step, which ``trainer.sync_batchnorm`` does not convert), so DDP equals a single
  process that normalises the two halves separately and averages their gradients.
* WGAN: every rank draws its own noise (``StepSeeding`` seeds by rank), so no single process
  draws the same noise; the replicas must still hold identical weights after training, which
  they do only if every critic and generator gradient was all-reduced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer
from torch.utils.data import DistributedSampler, default_collate

from datamodules.text import StreamWindows
from reproductions.runner.cli import main
from reproductions.runner.wandb_records import read_run
from reproductions.wgan import WGAN

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
          "--checkpoint_every_n_steps=0", "--optimizer_monitor.every_n_steps=0"]
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2"]
ONE = ["--trainer.devices=1"]

TRAIN_SPLIT = 4000  # mnist5k's training split
TINY_LSTM = ["-c", "configs/bn_lstm/smoke.yaml", "--model.cell=lstm", "--model.hidden_size=8",
             "--model.initial_state_noise=0", "--trainer.max_steps=2",
             "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", *COMMON]
TINY = TINY_LSTM  # the name the test without W&B uses
# One step: RMSProp's first update is lr g / (sqrt(1 - alpha) |g| + eps), nearly lr sign(g) / 0.32,
# so a gradient element that is ~0 up to float summation order would flip its whole update; an
# eps above such elements makes the update continuous in g there.
# Permuted MNIST: in raster order the first 32 pixels (steps 0-1) are blank in every digit, so with
# h0 = 0 the whole batch has h = c = 0 there and the batch norms of W_h h and c see zero batch
# variance. Their backward is then gamma / sqrt(bn_eps) (dy - mean(dy)), 31.6 x per norm: dL/dc_1
# reaches 1e3 per digit yet sums to 1e-4 over the batch, and that sum is what rnn.bias's g gate and
# bn_c.bias receive, so in fp32 it is summation-order noise (off from fp64 by more than itself): no
# two runs can agree. Permuted, every step's input varies over the batch from step 0 on.
TINY_BN_LSTM = [*TINY_LSTM, "--model.cell=bn_lstm", "--trainer.max_steps=1",
                "--model.optimizer.init_args.eps=1e-4", "--data.permuted=true"]
# 1 MB of the stdlib corpus cut into 8 streams of 20-symbol windows: 4 steps, 2 validations.
TINY_CHAR_RNN = ["-c", "configs/char_rnn/smoke.yaml", "--model.hidden_size=8",
                 "--model.num_layers=1", "--model.sample_length=5", "--data.max_bytes=20000",
                 "--data.seq_len=20", "--trainer.max_steps=4", "--trainer.val_check_interval=2",
                 "--trainer.limit_val_batches=2", *COMMON]
# 30 training lines (an even number: DistributedSampler pads an odd split with a repeat), all in
# one batch per step; 2 epochs; pictures drawn on rank 0 only (they would crash rank 1).
TINY_HANDWRITING = ["-c", "configs/handwriting/prediction_smoke.yaml", "--model.hidden_size=8",
                    "--model.num_layers=2", "--model.num_mixtures=2", "--model.sample_steps=5",
                    "--model.picture_every_n_epochs=1", "--data.hershey_lines=40",
                    "--data.hershey_val_lines=8", "--trainer.max_epochs=2",
                    "--trainer.logger.init_args.name=smoke", *COMMON]
HANDWRITING_TRAIN_LINES = 30
TINY_WGAN = ["-c", "configs/wgan/smoke.yaml", "--model.ngf=8", "--model.ndf=8",
             "--model.image_size=16", "--data.image_size=16", "--model.n_critic=2",
             "--model.burst_below=0", "--model.max_generator_iterations=2",
             "--model.frechet_every=0", "--model.sample_every=1", "--data.batch_size=8", *COMMON]


class SaveParametersPerRank(Callback):
    """Writes every rank's parameters at the end of training to ``rank<N>.pt`` in ``dirpath``
    (last.ckpt holds rank 0's only). Loaded by the ``repro fit`` subprocess as
    ``test_ddp.SaveParametersPerRank``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        parameters = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        torch.save(parameters, self.dirpath / f"rank{trainer.global_rank}.pt")
        trainer.strategy.barrier()  # rank 0, the launching process, exits after every rank saved


def fit(save_dir: Path, *args: str) -> dict[str, torch.Tensor]:
    """``repro fit`` in its own process; the final weights from its last.ckpt."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "reproductions", "fit", *args,
                    f"--trainer.logger.init_args.save_dir={save_dir}"],
                   cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    (checkpoint,) = (save_dir / "checkpoints").rglob("last.ckpt")  # the run's own folder
    return torch.load(checkpoint, weights_only=False)["state_dict"]


def initial(args: list[str], monkeypatch) -> tuple[LightningModule, LightningDataModule]:
    """Model and data as ``repro fit`` builds them (seeded), before any step."""
    monkeypatch.chdir(ROOT)
    cli = main(args=[*args, "--trainer.logger=false"], run=False)
    return cli.model, cli.datamodule


def assert_trained_and_equal(one: dict, two: dict, start: dict) -> None:
    assert one.keys() == two.keys()
    for name, value in start.items():
        # the runs trained (moved far beyond the tolerance) and agree to fp32 rounding
        assert (one[name] - value).abs().max() > 1e-4, name
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)


def final_value(save_dir: Path, metric: str) -> float:
    (run_dir,) = save_dir.glob("wandb/offline-run-*")
    return [row[metric] for row in read_run(run_dir).history if metric in row][-1]


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path, monkeypatch):
    two = fit(tmp_path / "ddp", *TINY_LSTM, *DDP, f"--data.batch_size={TRAIN_SPLIT // 2}")
    one = fit(tmp_path / "single", *TINY_LSTM, *ONE, f"--data.batch_size={TRAIN_SPLIT}")
    initial_weights = initial(TINY_LSTM, monkeypatch)[0].state_dict()
    assert one.keys() == two.keys() == initial_weights.keys()
    assert_trained_and_equal(one, two, initial_weights)


@pytest.mark.parametrize("args", [
    [*TINY, f"--data.batch_size={TRAIN_SPLIT // 2}"],
    # the WGAN draws samples on rank 0 every generator iteration
    [*TINY_WGAN, "--model.max_generator_iterations=3"]], ids=["lstm", "wgan_samples"])
def test_ddp_finishes_without_a_wandb_logger(tmp_path, args):
    # Whatever runs on rank 0 only (the run-config callback, sample pictures) must not call a
    # collective: trainer.log_dir broadcasts, and the other rank would wait forever. Before the
    # fix both runs hung.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "reproductions", "fit", *args, "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp_path}", *DDP],
                   cwd=ROOT, env=env, check=True, timeout=180, capture_output=True)
    assert list(tmp_path.rglob("config.yaml"))
    assert list(tmp_path.rglob("last.ckpt"))


# ---------------------------------------------------------------------------- character streams
def test_rank_shards_of_the_streams_are_the_rows_of_one_process_at_the_global_batch():
    ids = torch.arange(203)
    whole = StreamWindows(ids, batch_size=6, seq_len=5, reset_every=3)
    shards = [StreamWindows(ids, batch_size=3, seq_len=5, reset_every=3, shard=(rank, 2))
              for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole)  # no rank waits on the other
    for window, rank0, rank1 in zip(whole, *shards):
        # stream b continues itself: 203 symbols -> 6 streams of 33, window i at 5i
        assert torch.equal(torch.cat([rank0["inputs"], rank1["inputs"]]), window["inputs"])
        assert torch.equal(torch.cat([rank0["targets"], rank1["targets"]]), window["targets"])
        assert rank0["reset"] == rank1["reset"] == window["reset"]
    assert torch.equal(shards[1][0]["inputs"][0], torch.arange(99, 104))  # stream 3 starts at 3*33


@pytest.mark.slow
def test_char_rnn_ddp_matches_one_process_with_all_streams(tmp_path, monkeypatch):
    """Rank r reads streams [4r, 4r + 4) of the 8 that one process reads; the loss is a mean over
    each rank's 4 x 20 symbols, so the averaged gradient is the 8-stream gradient, and the
    element-wise clipping acts on it after the all-reduce. Validation BPC (a torchmetrics mean,
    synchronised over ranks) must agree too."""
    two = fit(tmp_path / "ddp", *TINY_CHAR_RNN, *DDP, "--data.batch_size=4")
    one = fit(tmp_path / "single", *TINY_CHAR_RNN, *ONE, "--data.batch_size=8")
    model, data = initial([*TINY_CHAR_RNN, "--data.batch_size=8"], monkeypatch)
    data.setup("fit")
    model.configure_vocabulary(data.vocabulary)  # as CharRNN.setup does, at the same RNG state
    assert_trained_and_equal(one, two, model.state_dict())
    assert final_value(tmp_path / "ddp", "val/bpc") == pytest.approx(
        final_value(tmp_path / "single", "val/bpc"), rel=1e-5)


# ---------------------------------------------------------------------------------- handwriting
@pytest.mark.slow
def test_handwriting_ddp_matches_one_process_at_the_same_global_batch(tmp_path, monkeypatch):
    """All 30 training lines in one step: 15 per rank against 30 in one process. The loss is the
    mean over lines of each line's summed NLL, so equal halves average to the whole; padding to
    each batch's longest line is masked out."""
    half = HANDWRITING_TRAIN_LINES // 2
    two = fit(tmp_path / "ddp", *TINY_HANDWRITING, *DDP, f"--data.batch_size={half}")
    one = fit(tmp_path / "single", *TINY_HANDWRITING, *ONE,
              f"--data.batch_size={HANDWRITING_TRAIN_LINES}")
    model, data = initial(TINY_HANDWRITING, monkeypatch)
    data.setup("fit")
    assert len(data.train_set) == HANDWRITING_TRAIN_LINES
    assert_trained_and_equal(one, two, dict(model.named_parameters()))
    assert list((tmp_path / "ddp").rglob("pictures/unconditional_*.png"))  # drawn by rank 0


# -------------------------------------------------------------------------------------- BN-LSTM
@pytest.mark.slow
def test_bn_lstm_ddp_normalises_each_rank_half_and_averages_the_gradients(tmp_path, monkeypatch):
    """Batch statistics are per rank. One DDP step at 2 x 2000 digits against a hand-made
    reference: the same initial model normalising each rank's half (the indices of torch's
    DistributedSampler, seed 0, as Lightning builds it) and the mean of the two gradients, clipped
    to norm 1 (the config's gradient_clip_val) and stepped with the config's RMSprop. A second
    reference normalising all 4000 at once must differ, so the check can tell the two apart."""
    two = fit(tmp_path / "ddp", *TINY_BN_LSTM, *DDP, f"--data.batch_size={TRAIN_SPLIT // 2}")
    model, data = initial(TINY_BN_LSTM, monkeypatch)
    data.setup("fit")
    dataset = data.train_dataloader().dataset
    assert len(dataset) == TRAIN_SPLIT
    halves = [list(DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0))
              for rank in range(2)]

    def one_step(batches: list[list[int]]) -> dict[str, torch.Tensor]:
        reference = initial(TINY_BN_LSTM, monkeypatch)[0]
        reference.train()
        optimizer = reference.configure_optimizers()
        optimizer.zero_grad()
        for indices in batches:
            x, y = default_collate([dataset[i] for i in indices])
            # no step where the whole batch has one input (see TINY_BN_LSTM)
            assert (x != x[:1]).any(dim=2).any(dim=0).all()
            loss = F.cross_entropy(reference(x), y)
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        optimizer.step()
        return {n: p.detach() for n, p in reference.named_parameters()}

    per_rank = one_step(halves)
    global_batch = one_step([halves[0] + halves[1]])
    start = dict(model.named_parameters())
    assert per_rank.keys() == start.keys()
    gap = max((per_rank[n] - global_batch[n]).abs().max() for n in per_rank)
    assert gap > 1e-4  # per-rank statistics are a different computation
    for name in per_rank:
        assert (per_rank[name] - start[name]).abs().max() > 1e-4, name
        torch.testing.assert_close(two[name], per_rank[name], rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------- WGAN
@pytest.mark.slow
def test_wgan_under_plain_ddp_finds_unused_parameters_and_keeps_replicas_equal(tmp_path,
                                                                               monkeypatch):
    """Plain ``--trainer.strategy ddp``: the WGAN switches on find_unused_parameters (else DDP
    fails at the first generator step). Each rank draws its own noise and data, so only the
    all-reduce of every critic and generator gradient keeps the two replicas' weights equal."""
    probe = tmp_path / "ranks"
    fit(tmp_path / "ddp", *TINY_WGAN, *DDP, "--trainer.callbacks+=test_ddp.SaveParametersPerRank",
        f"--trainer.callbacks.dirpath={probe}")
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt") for r in range(2))
    initial_weights = dict(initial(TINY_WGAN, monkeypatch)[0].named_parameters())
    moved = 0
    for name in rank0:
        torch.testing.assert_close(rank1[name], rank0[name], rtol=0, atol=0, msg=name)
        moved += bool((rank0[name] - initial_weights[name]).abs().max() > 1e-6)
    assert moved == len(rank0)  # both networks trained
    assert list((tmp_path / "ddp").rglob("samples/generator_iteration_*.png"))  # rank 0 draws


def test_wgan_switches_plain_ddp_to_find_unused_parameters_and_refuses_an_explicit_false():
    model = WGAN(generator="mlp", critic="mlp", image_size=16, mlp_width=4, frechet_every=0)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    model.trainer = trainer
    model.setup("fit")
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    trainer = Trainer(accelerator="cpu", devices=2, logger=False,
                      strategy="ddp_find_unused_parameters_false")
    model.trainer = trainer
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        model.setup("fit")
