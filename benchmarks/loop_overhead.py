"""What our training loops cost beyond the work itself, against plain PyTorch, in one run.

    OMP_NUM_THREADS=1 flock /tmp/rmsprop-bench.lock python benchmarks/loop_overhead.py
    python benchmarks/loop_overhead.py --device cuda             # on a GPU
    python benchmarks/loop_overhead.py --quick --out -           # about a minute, table printed

WGAN, as ``configs/wgan/smoke.yaml`` (mnist5k at 32x32, DCGAN ngf = ndf = 32, batch 64, n_critic
5, clipping 0.01, RMSProp), two ways, each against a plain PyTorch loop:

* Lightning: ``reproductions.wgan.WGAN`` under a ``Trainer`` with smoke.yaml's trainer settings
  (its epoch-end checkpoint included), no logger, no progress bar;
* repro fit: the Trainer that ``repro fit -c configs/wgan/smoke.yaml --trainer.logger false``
  builds, with the runner's callbacks (step seeding, non-finite step guard, RMSProp monitor,
  its checkpoints). ``--ablate-callbacks`` adds it once without each of them.

The plain loop runs over the same modules, optimizers and DataLoader and does the same steps
(``tests/test_loop_overhead.py`` checks it trains the same weights): the critic steps with their
clip, a generator step after each schedule's worth, W and the generator loss read to the host
once per generator iteration (the reference code prints them), the networks and optimizers saved
at each epoch's end (the reference code saves its networks). Each run is paired with a fresh plain
loop from the same seed, which a callback advances by one generator iteration after each of the
run's own: the two take turns every tenth of a second or so, and each is timed on its own, so the
load of a shared machine falls on both alike. Generator iterations ``K0 + 1`` to ``K1`` are timed
(after the smoke schedule's critic bursts, before its first sample grid and Frechet distance,
which are turned off). BN-LSTM: one training step (forward, backward, RMSProp step) of
``SequentialClassifier`` on sequential-MNIST shapes (batch 100, 100 units) with ``cell: lstm``
(``nn.LSTM``) and ``cell: bn_lstm`` (the fused cell, and its reference ``unroll``), at 784, 196
and 49 time steps.

Contenders run interleaved, in a rotating order, over several rounds; the table gives medians and
ratios measured side by side. The clock is the process's CPU time on the CPU (a shared machine's
other processes do not count) and the wall clock on CUDA (the host's CPU time would leave out
the waits for the device).
Operations per time step are counted with ``torch.profiler`` at two sequence lengths (the
difference over the extra steps): on CUDA the kernels launched, on the CPU the operators (ATen,
oneDNN, the BN-LSTM's own) called from Python and autograd, views and allocations left out.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import pytorch_lightning as pl  # noqa: E402

from reproductions.bn_lstm import SequentialClassifier  # noqa: E402
from reproductions.runner.cli import main as repro_cli  # noqa: E402
from reproductions.wgan import WGAN, clip_weights, critic_iterations  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
Times = tuple[float, float, float]  # (CPU, wall, system) seconds
SMOKE = ROOT / "configs" / "wgan" / "smoke.yaml"
RUNNER_CALLBACKS = ("StepSeeding", "SkipNonFiniteSteps", "RMSpropMonitor", "ModelCheckpoint")
SEQUENCES = ((784, 1), (196, 4), (49, 16))  # (time steps, pixels per step): 784 pixels each
OPERATOR = re.compile(r"\w+::\w+")  # an operator's event; autograd's and torch's wrappers have more
# Profiler events that compute nothing: views, allocations, bookkeeping.
NOT_COMPUTING = {
    "aten::" + name for name in (
        "empty", "empty_strided", "empty_like", "as_strided", "view", "_unsafe_view", "t",
        "transpose", "select", "slice", "unbind", "split", "split_with_sizes", "chunk", "narrow",
        "expand", "reshape", "_reshape_alias", "unsqueeze", "squeeze", "permute", "detach",
        "alias", "resolve_conj", "resolve_neg", "lift_fresh", "result_type", "item",
        "_local_scalar_dense", "is_nonzero")}


# ------------------------------------------------------------------------------------ clocks
class Clock:
    """(CPU, wall, system) seconds of this process so far, on CUDA after the device has caught
    up. The system part is the kernel's share of the CPU time: page faults, mostly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self) -> Times:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.process_time(), time.perf_counter(),
                resource.getrusage(resource.RUSAGE_SELF).ru_stime)


def clock_index(device: torch.device) -> int:
    """Which of a ``Times`` the tables read: CPU time on the CPU, wall time on CUDA."""
    return 0 if device.type == "cpu" else 1


def elapsed(start: tuple[float, ...], end: tuple[float, ...], count: int = 1) -> tuple[float, ...]:
    return tuple((b - a) / count for a, b in zip(start, end))


# -------------------------------------------------------------------------------------- WGAN
def smoke_run(device: torch.device, k1: int, directory: str):
    """The model, data and Trainer that ``repro fit`` builds from smoke.yaml, stopping after k1
    generator iterations; samples and Frechet distances off."""
    return repro_cli(args=[
        "-c", str(SMOKE), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", directory,
        "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
        "--model.sample_every", "0", "--model.frechet_every", "0",
        "--model.max_generator_iterations", str(k1)], run=False)


def plain_wgan(model: WGAN, data: pl.LightningDataModule, device: torch.device,
               directory: str) -> Iterator[int]:
    """Algorithm 1 as a plain loop over the module's networks and optimizers: one generator
    iteration per ``next``, which returns how many are done."""
    h = model.hparams
    generator, critic = model.generator.to(device), model.critic.to(device)
    critic_optimizer, generator_optimizer = model.configure_optimizers()
    data.setup("fit")
    loader = data.train_dataloader()
    clip_weights(critic, h.clip_value)
    generator_iterations, critic_steps = 0, 0
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        for real, _ in loader:
            real = real.to(device, non_blocking=True)
            with torch.no_grad():
                fake = generator(torch.randn(real.shape[0], h.nz, device=device))
            wasserstein = critic(real).mean() - critic(fake).mean()
            critic_optimizer.zero_grad()
            (-wasserstein).backward()
            critic_optimizer.step()
            clip_weights(critic, h.clip_value)
            critic_steps += 1
            if critic_steps < critic_iterations(generator_iterations, h.n_critic,
                                                h.n_critic_burst, h.burst_below, h.burst_every):
                continue
            critic.requires_grad_(False)
            generator_loss = -critic(generator(torch.randn(real.shape[0], h.nz,
                                                           device=device))).mean()
            generator_optimizer.zero_grad()
            generator_loss.backward()
            generator_optimizer.step()
            critic.requires_grad_(True)
            generator_iterations, critic_steps = generator_iterations + 1, 0
            torch.stack([wasserstein.detach(), generator_loss.detach()]).tolist()
            yield generator_iterations
        torch.save({"generator": generator.state_dict(), "critic": critic.state_dict(),
                    "critic_optimizer": critic_optimizer.state_dict(),
                    "generator_optimizer": generator_optimizer.state_dict()},
                   Path(directory) / "plain.pt")


def trainer_for(kind: str, cli, device: torch.device, directory: str,
                without: str | None = None) -> pl.Trainer:
    """The ``Lightning`` Trainer (smoke.yaml's trainer settings) or the ``repro fit`` one (the
    CLI's, ``without`` one of the runner's callbacks)."""
    if kind == "Lightning":
        settings = yaml.safe_load(SMOKE.read_text())["trainer"]
        settings.update(accelerator="gpu" if device.type == "cuda" else "cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=directory)
        return pl.Trainer(**settings)
    trainer = cli.trainer
    if without:
        trainer.callbacks[:] = [c for c in trainer.callbacks if type(c).__name__ != without]
    return trainer


class Paired(pl.Callback):
    """After each generator iteration of the Trainer's run, one of the plain loop's, each timed
    on its own over iterations k0 + 1 to k1: the two take turns every tenth of a second or so,
    so the load of a shared machine falls on both alike."""

    def __init__(self, plain: Iterator[int], clock: Clock, k0: int, k1: int) -> None:
        self.plain, self.clock, self.k0, self.k1 = plain, clock, k0, k1
        self.totals = {"module": (0.0, 0.0, 0.0), "plain": (0.0, 0.0, 0.0)}
        self.last: Times | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.cycle_critic_steps:  # no generator iteration ended with this batch
            return
        between = self.clock()
        next(self.plain)
        after = self.clock()
        if self.k0 < pl_module.generator_iterations <= self.k1:
            for name, start, end in (("module", self.last, between), ("plain", between, after)):
                self.totals[name] = tuple(t + d for t, d in zip(self.totals[name],
                                                                elapsed(start, end)))
        self.last = after

    def per_iteration(self) -> tuple[Times, Times]:
        """(the Trainer's run, the plain loop's) seconds per generator iteration."""
        count = self.k1 - self.k0
        return tuple(tuple(t / count for t in self.totals[name])  # type: ignore[return-value]
                     for name in ("module", "plain"))


def wgan_contender(kind: str, device: torch.device, k0: int, k1: int,
                   without: str | None = None) -> Callable[[], tuple[Times, Times]]:
    """A function that trains a fresh ``kind`` run paired with a fresh plain loop (the same
    seed) and returns both's seconds per generator iteration."""
    def run() -> tuple[Times, Times]:
        with tempfile.TemporaryDirectory() as directory:
            plain = smoke_run(device, k1, directory)
            cli = smoke_run(device, k1, directory)
            paired = Paired(plain_wgan(plain.model, plain.datamodule, device, directory),
                            Clock(device), k0, k1)
            trainer = trainer_for(kind, cli, device, directory, without)
            trainer.callbacks.append(paired)
            trainer.fit(cli.model, cli.datamodule)
        return paired.per_iteration()

    return run


# ----------------------------------------------------------------------------------- BN-LSTM
# name -> (cell, through): SequentialClassifier's cell, and its forward or the reference unroll.
BN_LSTM_CONTENDERS = {"nn.LSTM": ("lstm", "forward"), "BN-LSTM": ("bn_lstm", "forward"),
                      "BN-LSTM reference": ("bn_lstm", "unroll")}


def training_step(contender: str, steps: int, pixels: int,
                  device: torch.device) -> Callable[[], None]:
    """One training step of a fresh ``SequentialClassifier`` on a fixed random batch of 100
    sequences."""
    cell, through = BN_LSTM_CONTENDERS[contender]
    torch.manual_seed(0)
    model = SequentialClassifier(cell=cell, input_size=pixels, t_max=steps).to(device).train()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(100, steps, pixels, generator=generator).to(device)
    y = torch.randint(0, 10, (100,), generator=generator).to(device)
    optimizer = model.configure_optimizers()

    def logits() -> torch.Tensor:
        if through == "forward":
            return model(x)
        hs, _ = model.rnn.unroll(x, model.initial_state(x))
        return model.classifier(hs[-1])

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(logits(), y).backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None], clock: Clock) -> Callable[[], Times]:
    def run() -> Times:
        start = clock()
        step()
        return elapsed(start, clock())

    return run


def operations(step: Callable[[], None], device: torch.device) -> Counter:
    """Operations of one call of ``step`` by name (module docstring: what counts)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step()
    with torch.profiler.profile(activities=activities) as profile:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        return Counter(event.name for event in profile.events()
                       if event.device_type == torch.autograd.DeviceType.CUDA)

    def computes(event) -> bool:  # an operator (aten::, mkldnn::, bn_lstm::, ...), no wrapper
        return OPERATOR.fullmatch(event.name) is not None and event.name not in NOT_COMPUTING

    def called_by_an_operator(event) -> bool:
        parent = event.cpu_parent
        while parent is not None and not computes(parent):
            parent = parent.cpu_parent
        return parent is not None

    return Counter(event.name for event in profile.events()
                   if computes(event) and not called_by_an_operator(event))


def operations_per_time_step(contender: str, device: torch.device) -> float:
    """The extra operations of a training step per extra time step, from 16 to 32 steps."""
    counts = [sum(operations(training_step(contender, steps, 1, device), device).values())
              for steps in (16, 32)]
    return (counts[1] - counts[0]) / 16


# ------------------------------------------------------------------------------------ driver
def interleaved(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Each contender once per round, in an order that rotates from round to round."""
    names = list(contenders)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(contenders[name]())
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def medians(samples: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(statistics.median(column) for column in zip(*samples))


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = found.group(1).strip() if found else model
    return (f"{model} ({os.cpu_count()} cores, shared), {threads} thread "
            f"(torch.set_num_threads({threads})), torch {torch.__version__}")


def wgan_table(device: torch.device, rounds: int, k0: int, k1: int, ablate: bool) -> list[str]:
    contenders = {"Lightning": wgan_contender("Lightning", device, k0, k1),
                  "repro fit": wgan_contender("repro fit", device, k0, k1)}
    if ablate:
        for callback in RUNNER_CALLBACKS:
            contenders[f"repro fit without {callback}"] = wgan_contender(
                "repro fit", device, k0, k1, without=callback)
    samples = interleaved(contenders, rounds)
    clock, at = ("CPU" if device.type == "cpu" else "wall"), clock_index(device)
    lines = [(f"## WGAN, generator iterations {k0 + 1} to {k1}, each run paired with a plain loop "
              f"({rounds} runs per loop, interleaved)"), "",
             (f"| loop | ms per generator iteration ({clock}) | its plain loop's | vs plain, "
              f"median | runs' range | generator iterations/s |"), "|---|---|---|---|---|---|"]
    for name, runs in samples.items():
        ratios = [module[at] / plain[at] for module, plain in runs]
        module = statistics.median(run[0][at] for run in runs)
        plain = statistics.median(run[1][at] for run in runs)
        lines.append(f"| {name} | {module * 1e3:.1f} | {plain * 1e3:.1f} | "
                     f"{statistics.median(ratios):.3f}x | {min(ratios):.3f}-{max(ratios):.3f} | "
                     f"{1 / module:.2f} |")
    return lines


def bn_lstm_table(device: torch.device, rounds: int, sequences) -> list[str]:
    clock = Clock(device)
    contenders = {}
    for steps, pixels in sequences:
        for name in BN_LSTM_CONTENDERS:
            step = training_step(name, steps, pixels, device)
            for _ in range(2):  # warm-up (on CUDA, Triton compiles its kernels on the first)
                step()
            contenders[f"{steps}x{name}"] = timed(step, clock)
    results = {key: medians(samples) for key, samples in interleaved(contenders, rounds).items()}
    label, at = ("CPU s" if device.type == "cpu" else "s"), clock_index(device)
    header = " | ".join(f"{name} ({label}) | vs nn.LSTM" if name != "nn.LSTM" else
                        f"nn.LSTM ({label})" for name in BN_LSTM_CONTENDERS)
    lines = [f"## BN-LSTM training step, batch 100, 100 units ({rounds} rounds, interleaved)", "",
             f"| time steps x pixels | {header} | BN-LSTM steps/s |",
             "|---|" + "---|" * (2 * len(BN_LSTM_CONTENDERS))]
    for steps, pixels in sequences:
        row = [f"{steps} x {pixels}"]
        base = results[f"{steps}xnn.LSTM"][at]
        for name in BN_LSTM_CONTENDERS:
            main, system = results[f"{steps}x{name}"][at], results[f"{steps}x{name}"][2]
            shown = f"{main:.3f} ({system:.2f})" if device.type == "cpu" else f"{main:.3f}"
            row += [shown] if name == "nn.LSTM" else [shown, f"{main / base:.2f}x"]
        row.append(f"{1 / results[f'{steps}xBN-LSTM'][at]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    if device.type == "cpu":
        lines += ["", ("In brackets: the part of the CPU time spent in the kernel (system "
                       "time), page faults mostly: nn.LSTM's oneDNN kernel takes fresh memory at "
                       "every call.")]
    what = "kernels launched" if device.type == "cuda" else \
        "operators called from Python and autograd, views and allocations left out"
    lines += ["", (f"Operations per time step of a training step ({what}; profiler, "
                   f"16 vs 32 steps):"), "", "| model | operations per time step |", "|---|---|"]
    for name in BN_LSTM_CONTENDERS:
        lines.append(f"| {name} | {operations_per_time_step(name, device):g} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--rounds", type=int, default=None, help="default 7 (quick: 3)")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, a shorter WGAN window, 784 and 49 steps")
    parser.add_argument("--only", choices=("wgan", "bn_lstm"), default=None)
    parser.add_argument("--ablate-callbacks", action="store_true",
                        help="also repro fit without each of the runner's callbacks")
    parser.add_argument("--out", default=None, help="table path; '-': print only (default: "
                        "benchmarks/results/loop_overhead_<device>.md, quick: print only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 7)
    k0, k1 = (12, 27) if args.quick else (12, 60)
    sequences = (SEQUENCES[0], SEQUENCES[-1]) if args.quick else SEQUENCES
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    command = "python benchmarks/loop_overhead.py " + " ".join(sys.argv[1:])
    lines = [f"# Loop overhead on {device.type} ({datetime.date.today()})", "",
             f"Machine: {machine(device, args.threads)}. Command: `{command.strip()}`. "
             + ("Times are the process's CPU time (other processes on the shared machine do not "
                "count)." if device.type == "cpu" else
                "Times are wall-clock, the device synchronised at each end."), ""]
    if args.only != "bn_lstm":
        lines += wgan_table(device, rounds, k0, k1, args.ablate_callbacks) + [""]
    if args.only != "wgan":
        lines += bn_lstm_table(device, rounds, sequences)
    table = "\n".join(lines) + "\n"
    print(table)
    out = args.out or ("-" if args.quick else str(RESULTS / f"loop_overhead_{device.type}.md"))
    if out != "-":
        Path(out).write_text(table)
        print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
