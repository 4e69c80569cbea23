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
    make = optimizer_step.contenders(torch.device("cuda"), {"centered": True})["ours, CUDA graph"]
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
