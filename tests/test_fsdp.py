"""FSDP2 (``torch.distributed.fsdp.fully_shard``) with our RMSprop, on CPU with gloo.

Under FSDP2 every parameter is a DTensor holding this rank's flat shard (dim-0 rows), and its
gradient is the matching shard of the rank-averaged gradient (a reduce-scatter). RMSProp is
element-wise, so updating each shard on its own rank is the unsharded update of those elements:
two processes at batch B, each sharding the model, must end with the weights of one unsharded
process at batch 2B, to fp32 rounding of the gradient reduction (``rtol=1e-5, atol=1e-6``).

torch's ``fully_shard`` is driven directly in two processes from ``torch.multiprocessing``; every
variant trains in the same two processes, so one spawn serves them all. Lightning's
``FSDPStrategy`` (FSDP1) refuses a CPU accelerator (``accelerator_connector``: "requires a GPU
accelerator"); its ``ModelParallelStrategy`` (FSDP2, the module shards itself in
``configure_model``) does start on CPU with gloo, but is not compared here yet.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from optimizers import RMSprop

from helpers import triton_on_cpu

WORLD_SIZE = 2
BATCH = 16  # global batch; 8 per rank
STEPS = 3
# The kernel (in Triton's interpreter here) and the fused CPU loop address memory directly: they
# must take each DTensor's local shard, whose storage is its own (the DTensor's data_ptr() is 0).
VARIANTS = {
    "plain": {"lr": 1e-2, "foreach": True},
    "centered_momentum": {"lr": 1e-2, "centered": True, "momentum": 0.9, "foreach": True},
    "eps_in_sqrt": {"lr": 1e-2, "eps_in_sqrt": True, "eps": 1e-4, "alpha": 0.9, "foreach": True},
    "graves": {"lr": 1e-3, "centered": True, "eps_in_sqrt": True, "lr_in_momentum": True,
               "momentum": 0.9, "alpha": 0.95, "eps": 1e-4, "foreach": True},
    "kernel": {"lr": 1e-2, "centered": True, "momentum": 0.9, "fused": True},
    "kernel_bias_correction": {"lr": 1e-2, "bias_correction": True, "alpha": 0.9, "fused": True},
    "fused_cpu_loop": {"lr": 1e-2, "centered": True, "momentum": 0.9, "fused": True},
}
TRITON_VARIANTS = {"kernel", "kernel_bias_correction"}  # the others' fused=True: the C++ loop


def network() -> nn.Sequential:
    """Rows not divisible by the world size (7, 5) so that the shards are uneven and padded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 6, generator=generator),
             torch.randint(0, 3, (BATCH,), generator=generator)) for _ in range(STEPS)]


def train(model: nn.Module, variant: str, rows: slice) -> None:
    with triton_on_cpu() if variant in TRITON_VARIANTS else contextlib.nullcontext():
        optimizer = RMSprop(model.parameters(), **VARIANTS[variant])
        for x, y in batches():
            optimizer.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()


def check_a_gradient_laid_out_unlike_its_param_is_refused() -> None:
    # A replicated gradient of a row-sharded param holds other elements than the param's shard:
    # no element-wise update of the local tensors may pair them.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    param = nn.Parameter(distribute_tensor(torch.randn(6, 3), mesh, [Shard(0)]))
    param.grad = distribute_tensor(torch.randn(6, 3), mesh, [Replicate()])
    for kernel, context in (("kernel", triton_on_cpu()), ("fused CPU loop", contextlib.nullcontext())):
        with context, pytest.raises(RuntimeError, match=f"fused=True but the {kernel} cannot take "
                                                        "a tensor subclass, or a DTensor gradient"):
            RMSprop([param], fused=True).step()


def sharded_worker(rank: int, init_file: str, out: str, variants: list[str]) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    walks = []  # the general path's walks over the params; a launch plan skips them
    walk = RMSprop._init_group
    RMSprop._init_group = lambda self, group: walks.append(1) or walk(self, group)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        check_a_gradient_laid_out_unlike_its_param_is_refused()
        results = {}
        for variant in variants:
            model = network()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            assert all(isinstance(p, DTensor) for p in model.parameters())
            per_rank = BATCH // WORLD_SIZE
            walks.clear()
            train(model, variant, slice(rank * per_rank, (rank + 1) * per_rank))
            if variant in TRITON_VARIANTS:  # the steps after the first reused the launch plan
                assert len(walks) == 1, (variant, len(walks))
            results[variant] = {name: p.full_tensor() for name, p in model.named_parameters()}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()
    exit_without_finalizing()


def exit_without_finalizing() -> None:
    """End this rank's process now, successfully, skipping the interpreter's finalization.

    ``destroy_process_group`` leaves the gloo backend running while FSDP's meshes still refer to
    it, and its worker threads release each finished collective, with its tensors, only after
    waking the caller. A tensor whose Python object outlived Python's references needs the GIL to
    be freed; once the interpreter is finalizing, CPython ends a thread that takes the GIL with
    ``pthread_exit``, whose unwinding through a ``noexcept`` frame is ``std::terminate``:
    "terminate called without an active exception", SIGABRT, in ``pt_gloo_runloop``
    (``ProcessGroupGloo::runLoop`` -> ``TensorImpl::decref_pyobject`` -> ``PyEval_AcquireThread``).
    Rank 1, which exits right after its last collective, died so in 7 of about 280 runs of two
    pairs of ranks sharing two cores (the abort pytorch/pytorch#179291 describes). Without
    finalization no thread is ended so.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train_sharded(folder, variants: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``variants`` trained under FSDP2 in one pair of gloo processes: variant -> full weights."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(sharded_worker, args=(str(folder / "init"), str(folder / "sharded.pt"), variants),
             nprocs=WORLD_SIZE, join=True)
    return torch.load(folder / "sharded.pt")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    return train_sharded(tmp_path_factory.mktemp("fsdp"), list(VARIANTS))


@pytest.mark.parametrize("variant", VARIANTS)
def test_fsdp2_shards_with_our_rmsprop_match_one_unsharded_process(sharded, variant):
    assert_matches_one_process(sharded[variant], variant)


def assert_matches_one_process(sharded: dict[str, torch.Tensor], variant: str) -> None:
    model = network()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, variant, slice(0, BATCH))
    for name, p in model.named_parameters():
        assert (p.detach() - initial[name]).abs().max() > 1e-4, name  # it trained
        torch.testing.assert_close(sharded[name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)

