"""The optimizer benchmark's own correctness, where a CPU can show it."""

import contextlib
import gc
import weakref

import torch

from benchmarks import optimizer_step


class FakeCuda:
    """Stand-ins for the CUDA stream and graph API: capture runs the step, replay counts."""

    class Stream:
        def wait_stream(self, other):
            pass

    class CUDAGraph:
        replays = 0

        def replay(self):
            FakeCuda.CUDAGraph.replays += 1

    @staticmethod
    def install(monkeypatch):
        monkeypatch.setattr(torch.cuda, "Stream", FakeCuda.Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: FakeCuda.Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCuda.CUDAGraph)
        monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())


def test_a_graphed_contender_keeps_its_optimizer_alive_for_its_replays(monkeypatch):
    # The first H200 run crashed in CUDAGraph.replay with an illegal memory access: a graphed
    # contender kept only graph.replay, so the optimizer was freed, and with it the state and
    # the kernel tables that the graph reads at their captured addresses; the next contenders'
    # tensors took that memory.
    FakeCuda.install(monkeypatch)
    made = []

    class Recorded(optimizer_step.RMSprop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(optimizer_step, "RMSprop", Recorded)
    make = optimizer_step.contenders(torch.device("cuda"), {"centered": True})["ours (CUDA graph)"]
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn(3)
    step = make(params)
    gc.collect()
    (optimizer,) = made
    assert optimizer() is not None
    step()
    assert FakeCuda.CUDAGraph.replays == 1
    del step
    gc.collect()
    assert optimizer() is None


def test_steps_per_second_counts_the_steps_after_the_skipped_batches(tmp_path, caplog):
    import logging

    import pytorch_lightning as pl

    from benchmarks.steps_per_second import StepsPerSecond

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_index):
            return self.layer(batch).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callback = StepsPerSecond(skip=4)
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback], default_root_dir=tmp_path, accelerator="cpu")
    with caplog.at_level(logging.INFO):
        trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=4))
    (line,) = [r.getMessage() for r in caplog.records if "STEPS_PER_SECOND" in r.getMessage()]
    assert "(8 steps, 8 batches in" in line and "after the first 4 batches" in line
    assert float(line.split()[1]) > 0
