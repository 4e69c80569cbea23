"""The Triton kernel's host side, in Triton's interpreter on CPU tensors: its tables follow moved
gradients and rebuild for moved params and state, the launch plan notices every change, and
what a CUDA graph captured stays valid for its replays (capture itself mocked: a CPU cannot
capture; tests/test_gpu.py captures for real)."""

import copy
import weakref

import pytest
import torch

from optimizers import RMSprop, triton_kernel

from helpers import gradient, initial_params, needs_triton, triton_on_cpu

pytestmark = needs_triton


@pytest.fixture(autouse=True)
def kernel_on_cpu():
    with triton_on_cpu():
        yield


def group_launches(optimizer):
    return optimizer._group_launches[0]


def set_gradients(params, step, new_storage=True):
    for index, p in enumerate(params):
        g = gradient(p.shape, step, index, p.dtype)
        if new_storage or p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def test_kernel_tables_follow_moved_gradients_and_rebuild_for_moved_params():
    params = [p.requires_grad_() for p in initial_params([(10,), (3, 3)])]
    optimizer = RMSprop(params, fused=True, centered=True)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    (launch,) = group_launches(optimizer).plan.launches
    table = launch.tensor_table.clone()
    params[1].grad = torch.ones(3, 3) * 2  # new storage: only the gradient table follows it
    optimizer.step()
    assert group_launches(optimizer).plan.launches == (launch,)
    assert torch.equal(launch.tensor_table, table)
    assert launch.grad_table.tolist() == [p.grad.data_ptr() for p in params]
    params[0].data = params[0].data.clone()  # a param in new storage: the tables are rebuilt
    optimizer.step()
    (rebuilt,) = group_launches(optimizer).plan.launches
    assert rebuilt is not launch
    assert rebuilt.tensor_table[0, 0].item() == params[0].data_ptr()


def test_kernel_plan_follows_every_change_of_storage_and_state(monkeypatch):
    # Steady kernel steps reuse the group's launch plan and skip the walk over the params
    # (_init_group), also when gradients move. Each other change below must send the step back
    # through that walk, and the kernel must stay on the foreach path's trajectory, state and
    # step counters included, throughout.
    settings = dict(centered=True, momentum=0.9, nesterov=True)
    start = initial_params([(0,), (5,), (2049,), (3, 4)])  # empty, and more than one block
    runs = {fused: [p.clone().requires_grad_() for p in start] for fused in (True, False)}
    optimizers = {fused: RMSprop(params, fused=fused, **settings) for fused, params in runs.items()}
    walks = []
    walk = RMSprop._init_group
    monkeypatch.setattr(RMSprop, "_init_group",
                        lambda self, group: walks.append(self.defaults["fused"]) or walk(self, group))
    counter = iter(range(100))

    def steps(count: int, without_grad: tuple[int, ...] = ()) -> int:
        """Run `count` steps on both paths (gradients written in place); the kernel's walks."""
        before = walks.count(True)
        for _ in range(count):
            step = next(counter)
            for fused, params in runs.items():
                for index, p in enumerate(params):
                    g = gradient(p.shape, step, index, p.dtype)
                    if index in without_grad:
                        p.grad = None
                    elif p.grad is None:
                        p.grad = g
                    else:
                        p.grad.copy_(g)
                optimizers[fused].step()
        for p, q in zip(runs[True], runs[False]):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
            for key, value in optimizers[False].state[q].items():
                torch.testing.assert_close(optimizers[True].state[p][key], value,
                                           rtol=1e-4, atol=1e-5)
        return walks.count(True) - before

    assert steps(4) == 1  # the first step builds the plan
    kernel_params = runs[True]
    old_grad = kernel_params[2].grad
    kernel_params[2].grad = old_grad.clone()  # a gradient in new storage: the plan follows it
    assert steps(2) == 0
    freed = weakref.ref(old_grad)
    del old_grad
    assert freed() is None  # the plan keeps addresses, not the gradients themselves
    kernel_params[2].grad = torch.zeros(2049 * 2)[::2]  # moved, and not contiguous: noticed
    with pytest.raises(RuntimeError, match="kernel cannot take a non-contiguous"):
        optimizers[True].step()
    kernel_params[2].grad = kernel_params[2].grad.contiguous()
    assert steps(1) == 1
    kernel_params[1].data = kernel_params[1].data.clone()  # a parameter in new storage
    assert steps(2) == 1
    for fused in runs:  # new state tensors
        optimizers[fused].load_state_dict(copy.deepcopy(optimizers[fused].state_dict()))
    assert steps(2) == 1
    # a param's state replaced by hand, as Lightning does when it moves the state to a device
    optimizers[True].state[kernel_params[1]] = dict(optimizers[True].state[kernel_params[1]])
    assert steps(2) == 1
    assert steps(3, without_grad=(3,)) == 1  # a param without a gradient: a plan without it
    assert steps(2) == 1  # and with it again
    for optimizer in optimizers.values():  # the state reset: it starts again from step 1
        optimizer.state.clear()
    assert steps(2) == 1
    assert all(optimizers[True].state[p]["step"].item() == 2 for p in kernel_params)


class Capture:
    """A mocked CUDA graph capture: the kernel path sees a capturing stream; the steps run."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        self.monkeypatch.setattr(triton_kernel, "capturing", lambda device: True)

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def twin_optimizers(settings, shapes=((10,), (3, 3))):
    """The kernel and the foreach path on copies of the same params, after three steps."""
    start = initial_params(shapes)
    params = [p.clone().requires_grad_() for p in start]
    copies = [p.clone().requires_grad_() for p in start]
    fused, foreach = RMSprop(params, fused=True, **settings), RMSprop(copies, **settings)
    for step in range(3):
        for optimizer, ps in ((fused, params), (foreach, copies)):
            set_gradients(ps, step)
            optimizer.step()
    return (fused, params), (foreach, copies)


def step_both(pairs, step, new_storage=True):
    for optimizer, ps in pairs:
        set_gradients(ps, step, new_storage)
        optimizer.step()
    (_, params), (_, copies) = pairs
    for p, c in zip(params, copies):
        torch.testing.assert_close(p, c, rtol=1e-5, atol=1e-6)


def test_gradients_allocated_during_capture_get_a_table_of_their_own(monkeypatch):
    # torch's recipe for capturing a whole training step sets the gradients to None, so that
    # backward allocates them from the graph's pool: the captured step copies their addresses
    # into a table of its own, from a host buffer that the replays copy again (pinned on CUDA,
    # which capture requires; made before the capture), leaving the eager table alone. Captured
    # again on the same gradients, it reuses that buffer: nothing grows with the captures.
    pairs = twin_optimizers(dict(centered=True, momentum=0.9))
    (fused, params), _ = pairs
    launch = group_launches(fused).launches[next(iter(group_launches(fused).launches))]
    eager_table, eager_addresses = launch.grad_table.clone(), launch.grad_addresses
    spare = launch.spare_source
    assert spare is not None and spare.is_pinned() == (spare.device.type == "cuda")
    with Capture(monkeypatch):
        step_both(pairs, 3)
    assert torch.equal(launch.grad_table, eager_table) and launch.grad_addresses == eager_addresses
    captured = tuple(p.grad.data_ptr() for p in params)
    assert list(launch.graph_grad_sources) == [captured]
    assert launch.graph_grad_sources[captured] is spare
    assert spare.tolist() == list(captured)
    for _ in range(3):  # recaptured on the same gradient storage (a graph's pool gives it back)
        with Capture(monkeypatch):
            step_both(pairs, 4, new_storage=False)
    assert list(launch.graph_grad_sources) == [captured]
    step_both(pairs, 5)  # an eager step: a new spare for the next capture, made outside it
    assert launch.spare_source is not None and launch.spare_source is not spare


def test_a_gradient_table_that_a_graph_reads_is_never_written_again(monkeypatch):
    # A graph captured on the gradients of the eager steps reads grad_table itself. Eager steps
    # on gradients elsewhere afterwards must write another table, or the graph's replays would
    # read their gradients (freed, or someone else's memory, by then).
    pairs = twin_optimizers(dict(momentum=0.9, bias_correction=True))
    (fused, params), _ = pairs
    (launch,) = group_launches(fused).plan.launches
    with Capture(monkeypatch):
        step_both(pairs, 3, new_storage=False)
    read_by_graph = launch.grad_table
    addresses = read_by_graph.tolist()
    for step in (4, 5):
        step_both(pairs, step)  # new gradient storage
    assert launch.grad_table is not read_by_graph
    assert read_by_graph.tolist() == addresses
    assert launch.graph_grad_tables == [read_by_graph]
    assert launch.grad_table.tolist() == [p.grad.data_ptr() for p in params]


def test_a_launch_that_a_graph_captured_outlives_a_rebuild_and_no_other_does(monkeypatch):
    # New params or state rebuild a group's tables; a graph captured before still reads the old
    # ones at every replay, so they are kept as long as the optimizer (one launch per capture
    # that a rebuild followed), while a launch no graph captured is let go.
    pairs = twin_optimizers(dict(centered=True))
    (fused, params), (foreach, copies) = pairs
    (never_captured,) = group_launches(fused).plan.launches
    dropped = weakref.ref(never_captured)
    del never_captured
    params[0].data, copies[0].data = params[0].data.clone(), copies[0].data.clone()
    step_both(pairs, 3)
    assert dropped() is None
    (captured,) = group_launches(fused).plan.launches
    with Capture(monkeypatch):
        step_both(pairs, 4, new_storage=False)
    kept = weakref.ref(captured.tensor_table)
    del captured
    params[1].data, copies[1].data = params[1].data.clone(), copies[1].data.clone()
    step_both(pairs, 5)
    fused.load_state_dict(copy.deepcopy(fused.state_dict()))
    step_both(pairs, 6)
    assert kept() is not None
    assert len(group_launches(fused).in_graphs) == 1


def test_tables_are_not_built_during_capture(monkeypatch):
    (fused, params), _ = twin_optimizers(dict(centered=True, momentum=0.9))
    fused.state.clear()  # new state: its tables cannot be built during capture
    set_gradients(params, 3)
    with Capture(monkeypatch), pytest.raises(
            RuntimeError, match="new or have moved since the last step outside CUDA graph "
                                "capture.*Run one step outside the capture"):
        fused.step()
