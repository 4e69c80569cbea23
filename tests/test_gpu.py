"""The compiled Triton kernel on a real GPU: every variant against the float64 reference in
float32 and float64, low precision, one launch per step, and capture in a CUDA graph, what the
graph reads outliving a rebuild of the tables included. Skipped without CUDA."""

import pytest
import torch

from benchmarks.optimizer_step import GraphedStep
from optimizers import RMSprop

from helpers import (VARIANTS, assert_matches_reference, gradient, gradients_in_one_buffer,
                     initial_params, reference_trajectory, rounding_spread)

pytestmark = pytest.mark.gpu
SHAPES = [(1,), (1023,), (65537,), (64, 3, 3, 3), (4096, 1000)]


def cuda_params(shapes, dtype=torch.float32):
    return [p.cuda().requires_grad_() for p in initial_params(shapes, dtype)]


def run_steps(optimizer, params, steps):
    for step in range(steps):
        for index, p in enumerate(params):
            p.grad = gradient(p.shape, step, index, p.dtype).cuda()
        optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_matches_reference_on_cuda(variant, dtype):
    # The tolerance follows each element's conditioning (helpers.rounding_spread): with L2
    # weight decay some of the 4M elements have g = grad + wd theta near 0, where any fp32
    # implementation, the reference's own equations in fp32 included, is 1e-4-1e-3 off.
    start = [p.cuda() for p in initial_params(SHAPES, dtype)]  # the reference on the GPU too
    expected, _ = reference_trajectory(start, VARIANTS[variant], 10)
    spreads, _ = rounding_spread(start, VARIANTS[variant], 10)
    params = [p.clone().requires_grad_() for p in start]
    run_steps(RMSprop(params, **VARIANTS[variant]), params, 10)
    for p, e, spread in zip(params, expected, spreads):
        assert p.dtype == dtype
        assert_matches_reference(p.detach(), e, spread, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_low_precision_matches_foreach(dtype):
    fused, foreach = cuda_params(SHAPES, dtype), cuda_params(SHAPES, dtype)
    run_steps(RMSprop(fused, centered=True, momentum=0.9, state_dtype="float32"), fused, 5)
    run_steps(RMSprop(foreach, centered=True, momentum=0.9, state_dtype="float32", fused=False),
              foreach, 5)
    for a, b in zip(fused, foreach):
        torch.testing.assert_close(a, b, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)


def test_one_kernel_launch_per_step():
    from optimizers import triton_kernel

    params = cuda_params([(7,)] * 200)
    optimizer = RMSprop(params, centered=True, momentum=0.9, bias_correction=True)
    run_steps(optimizer, params, 2)  # warm-up: compile and build the tables
    assert triton_kernel._COMPILED  # the steps after the first call the compiled launcher
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        optimizer.step()
        torch.cuda.synchronize()
    names = [event.name for event in profile.events() if event.device_type.name == "CUDA"]
    assert len(names) == 1 and "rmsprop_kernel" in names[0]  # the step counters included
    assert all(optimizer.state[p]["step"].item() == 3 for p in params)


def test_training_loop_with_gradients_freed_every_step_matches_foreach():
    # zero_grad() frees the gradients, so they may come back at other addresses; the cached
    # launch must follow them. Bias correction reads each tensor's step in every block. The
    # foreach path gets copies of the same gradients, so both see the same sequence.
    torch.manual_seed(0)
    model = torch.nn.LSTM(64, 128, num_layers=2).cuda()
    copies = [p.detach().clone().requires_grad_() for p in model.parameters()]
    settings = dict(centered=True, momentum=0.9, bias_correction=True, eps_in_sqrt=True, eps=1e-2)
    fused = RMSprop(model.parameters(), **settings)
    foreach = RMSprop(copies, fused=False, **settings)
    for _ in range(20):
        fused.zero_grad()
        model(torch.randn(30, 8, 64, device="cuda"))[0].square().mean().backward()
        for p, c in zip(model.parameters(), copies):
            c.grad = p.grad.clone()
        fused.step()
        foreach.step()
    for p, c in zip(model.parameters(), copies):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=1e-4, atol=1e-5)


def test_step_captures_in_a_cuda_graph():
    params = cuda_params([(1000,), (33, 7)])
    lr = torch.tensor(1e-2, device="cuda")
    optimizer = RMSprop(params, lr=lr, centered=True, momentum=0.9, capturable=True)
    for p in params:
        p.grad = torch.ones_like(p)
    replay = GraphedStep(optimizer)  # a warm-up step outside capture, then the capture
    reference = [p.detach().clone() for p in params]
    replay()
    lr.fill_(0.0)  # a tensor lr changes the replayed step without recapture
    before = [p.detach().clone() for p in params]
    replay()
    for p, b, r in zip(params, before, reference):
        assert not torch.equal(b, r)
        torch.testing.assert_close(p.detach(), b)


def test_views_at_odd_offsets_beside_aligned_tensors_on_cuda():
    # A 128-bit access to a misaligned view faults on a GPU: each tensor of the launch must pick
    # its own path (the interpreter, which ignores alignment, cannot check this).
    shapes = [(4099,), (3, 4), (4100,)]
    start = initial_params(shapes)
    expected, _ = reference_trajectory(start, VARIANTS["graves"], 10)
    flat = torch.zeros(1 + 4099 + 12, device="cuda")
    params = [torch.nn.Parameter(flat[1:4100]), torch.nn.Parameter(flat[4100:].view(3, 4)),
              torch.nn.Parameter(torch.zeros(4100, device="cuda"))]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    optimizer = RMSprop(params, **VARIANTS["graves"])
    grad_buffer = torch.zeros(1 + sum(p.numel() for p in params), device="cuda")
    for step in range(10):  # the gradients too, at odd offsets every other step
        gradients_in_one_buffer(params, step, grad_buffer, offset=step % 2)
        optimizer.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().cpu().double(), e, rtol=2e-5, atol=2e-6)


def test_whole_training_step_captured_as_torch_documents_it():
    # torch's recipe: warm up on a side stream, set the gradients to None so that backward
    # allocates them from the graph's pool, capture forward, backward and step, then replay.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(),
                                torch.nn.Linear(256, 8)).cuda()
    copies = [p.detach().clone().requires_grad_() for p in model.parameters()]
    settings = dict(centered=True, momentum=0.9, bias_correction=True, eps_in_sqrt=True, eps=1e-2)
    fused = RMSprop(model.parameters(), **settings)
    foreach = RMSprop(copies, fused=False, **settings)
    static_input = torch.randn(32, 64, device="cuda")

    def loss_of(x):
        return model(x).square().mean()

    def eager_reference_step(x):
        # the same loss on the copies, stepped by the foreach path
        h = torch.tanh(x @ copies[0].T + copies[1])
        out = h @ copies[2].T + copies[3]
        foreach.zero_grad()
        out.square().mean().backward()
        foreach.step()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fused.zero_grad(set_to_none=True)
            loss_of(static_input).backward()
            fused.step()
            eager_reference_step(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    fused.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_of(static_input).backward()
        fused.step()
    (launch,) = fused._group_launches[0].launches.values()
    (source,) = launch.graph_grad_sources.values()
    assert source.is_pinned()  # capture copies only from pinned host memory
    for _ in range(5):
        static_input.copy_(torch.randn(32, 64, device="cuda"))
        graph.replay()
        eager_reference_step(static_input)
    torch.cuda.synchronize()
    for p, c in zip(model.parameters(), copies):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=1e-4, atol=1e-5)


def test_a_graph_captured_before_the_tables_are_rebuilt_still_replays():
    # A param moved after capture rebuilds the group's tables; the graph replays the old ones,
    # which must still be there (a freed table read by a replay is an illegal address). Eager
    # steps on moved gradients in between must not rewrite the table that the graph reads. The
    # tensors the graph updates are the caller's to keep, as with any captured op.
    params = cuda_params([(1000,), (33, 7)])
    optimizer = RMSprop(params, centered=True, momentum=0.9, capturable=True)
    for p in params:
        p.grad = torch.ones_like(p)
    replay = GraphedStep(optimizer)
    captured_grads = [p.grad for p in params]
    for p in params:
        p.grad = torch.full_like(p, 2.0)  # new storage: an eager step writes another table
    optimizer.step()
    captured_param = params[0].data
    params[0].data = captured_param.clone()  # new storage: the tables are rebuilt
    optimizer.step()
    torch.cuda.empty_cache()  # freed blocks go back to the driver: a stale read would fault
    for _ in range(3):
        replay()
    torch.cuda.synchronize()
    assert not torch.equal(captured_param, params[0].detach())  # the replays moved the old one
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in params)
    assert captured_grads[1].data_ptr() != params[1].grad.data_ptr()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_params_on_another_device_than_the_current_one():
    # Triton launches on the current device: the step must switch to the params' own.
    start = initial_params(SHAPES)
    expected, _ = reference_trajectory(start, VARIANTS["centered_momentum"], 5)
    params = [p.to("cuda:1").requires_grad_() for p in start]
    optimizer = RMSprop(params, **VARIANTS["centered_momentum"])
    with torch.cuda.device(0):
        for step in range(5):
            for index, p in enumerate(params):
                p.grad = gradient(p.shape, step, index, p.dtype).to("cuda:1")
            optimizer.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().cpu().double(), e, rtol=2e-5, atol=2e-6)
