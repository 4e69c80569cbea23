"""Every variant on every path (foreach, for-loop, the Triton kernel in the interpreter, the
fused CPU loop of ``fused=True``), in float32 and float64, against the float64 reference over
many steps; the tolerance follows each element's conditioning (``helpers.rounding_spread``)."""

import contextlib
import functools

import pytest
import torch

from optimizers import RMSprop, cpu_kernel

from helpers import (TOLERANCES, VARIANTS, assert_matches_reference, gradients_in_one_buffer, initial_params, needs_triton, optimizer_trajectory,
                     reference_trajectory, rounding_spread, triton_on_cpu)

STEPS = 12
SHAPES = ((1,), (37,), (5, 7), (2, 3, 4))
PATHS = {
    "foreach": {},
    "for_loop": {"foreach": False},
    "kernel": {"fused": True},  # with triton_on_cpu
    "fused_cpu": {"fused": True},
}
ALL_PATHS = ["foreach", "for_loop", pytest.param("kernel", marks=needs_triton), "fused_cpu"]
DTYPES = [torch.float32, torch.float64]


@functools.cache
def expected(variant: str, shapes: tuple, steps: int, dtype: torch.dtype):
    """The start, and the reference's final params and states with their rounding spreads."""
    start = initial_params(shapes, dtype)
    finals, states = reference_trajectory(start, VARIANTS[variant], steps)
    return start, finals, states, *rounding_spread(start, VARIANTS[variant], steps)


def run_path(path: str, make_optimizer, start, steps: int):
    with triton_on_cpu() if path == "kernel" else contextlib.nullcontext():
        return optimizer_trajectory(make_optimizer, start, steps)


def check_against_reference(variant, path, shapes=SHAPES, steps=STEPS, dtype=torch.float32,
                            **optimizer_extras):
    start, finals, states, spreads, state_spreads = expected(variant, shapes, steps, dtype)
    actual, optimizer = run_path(
        path, lambda ps: RMSprop(ps, **VARIANTS[variant], **PATHS[path], **optimizer_extras),
        start, steps)
    for a, e, spread in zip(actual, finals, spreads):
        assert a.dtype == dtype
        assert_matches_reference(a, e, spread, dtype)
    for p, e, spread in zip(optimizer.param_groups[0]["params"], states, state_spreads):
        state = optimizer.state[p]
        assert state["step"].item() == steps
        assert set(state) - {"step"} == set(spread)
        for key, value in spread.items():
            assert_matches_reference(state[key], getattr(e, key), value, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("path", ALL_PATHS)
def test_every_path_matches_reference(path, variant, dtype):
    check_against_reference(variant, path, dtype=dtype)


def test_fused_cpu_odd_sizes_and_many_tensors_across_threads():
    # Tensors straddle the threads' chunks (cpu_kernel.GRAIN elements each); an empty tensor and
    # single elements sit between them.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        shapes = ((1,), (0,), (65537,), (40000,), (1023,)) + tuple((i % 7 + 1, i % 5 + 2)
                                                                 for i in range(40))
        check_against_reference("graves", "fused_cpu", shapes=shapes, steps=3)
    finally:
        torch.set_num_threads(threads)


@needs_triton
@pytest.mark.parametrize("variant", ["centered_momentum", "bias_correction"])
def test_kernel_odd_sizes_and_many_tensors(variant):
    # 1, 1023 and 65537 elements straddle the block size; 40 tensors of mixed shapes share a launch.
    # Bias correction reads each tensor's step in every block, before its last block advances it.
    shapes = ((1,), (1023,), (65537,)) + tuple((i % 7 + 1, i % 5 + 2) for i in range(40))
    check_against_reference(variant, "kernel", shapes=shapes, steps=3)


# The GPU test's shapes, 4M elements in one tensor: the interpreter's first run on tensors that
# large, and the case where the L2 term cancels the gradient of some elements (see
# helpers.rounding_spread), which a fixed tolerance reported as a kernel error.
LARGE_SHAPES = ((1,), (1023,), (65537,), (64, 3, 3, 3), (4096, 1000))


@needs_triton
def test_kernel_on_large_tensors_where_weight_decay_cancels_the_gradient():
    _, finals, _, spreads, _ = expected("l2_weight_decay", LARGE_SHAPES, 1, torch.float32)
    rtol, atol = TOLERANCES[torch.float32]
    beyond_fixed_tolerance = sum(int((s > atol + rtol * e.abs()).sum())
                                 for s, e in zip(spreads, finals))
    assert beyond_fixed_tolerance > 0  # the case is ill-conditioned somewhere
    check_against_reference("l2_weight_decay", "kernel", shapes=LARGE_SHAPES, steps=1)


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("variant", ["l2_weight_decay", "centered_momentum"])
def test_kernel_on_large_tensors_as_the_gpu_test(variant):
    check_against_reference(variant, "kernel", shapes=LARGE_SHAPES, steps=10)


@pytest.mark.parametrize("path", ["foreach", "for_loop", pytest.param("kernel", marks=needs_triton)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_with_fp32_state(path, dtype):
    # fp32 state and fp32 math: the parameters only pick up the rounding of their own storage.
    shapes = [(64,), (9, 9)]
    settings = VARIANTS["centered_momentum"]
    start = initial_params(shapes, dtype)
    expected_params, _ = reference_trajectory(start, settings, STEPS)
    actual, optimizer = run_path(
        path, lambda ps: RMSprop(ps, **settings, **PATHS[path], state_dtype=torch.float32),
        start, STEPS)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["square_avg"].dtype == torch.float32
    resolution = torch.finfo(dtype).eps
    for a, e in zip(actual, expected_params):
        assert a.dtype == dtype
        # each step rounds the stored parameter once: error stays within STEPS half-ulps
        torch.testing.assert_close(a.double(), e, rtol=STEPS * resolution, atol=STEPS * resolution)


@pytest.mark.parametrize("params", [
    pytest.param(lambda: [torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)], id="bf16"),
    pytest.param(lambda: [torch.zeros(3, 4).t().requires_grad_()], id="non-contiguous"),
])
def test_fused_cpu_loop_refuses_what_it_cannot_take_by_name(params):
    params = params()
    optimizer = RMSprop(params, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="fused=True but the fused CPU loop cannot take this "
                                           "bucket: it takes contiguous float32 and float64"):
        optimizer.step()


@pytest.mark.parametrize("path", ALL_PATHS)
def test_tensor_learning_rate(path):
    settings = dict(VARIANTS["nesterov"])
    settings_tensor = dict(settings, lr=torch.tensor(settings.get("lr", 1e-2)))
    start = initial_params(SHAPES)
    expected_params, _ = reference_trajectory(start, settings, STEPS)
    actual, _ = run_path(path, lambda ps: RMSprop(ps, **settings_tensor, **PATHS[path]),
                         start, STEPS)
    for a, e in zip(actual, expected_params):
        torch.testing.assert_close(a.double(), e, rtol=2e-5, atol=2e-6)


def test_fused_cpu_loop_follows_a_changing_learning_rate(monkeypatch):
    # The loop takes lr at every call: a schedule's new value (a float, or a tensor changed in
    # place), with lr = 0 the momentum step lr * b moves nothing. Every step must be the loop's.
    calls = []
    loop = cpu_kernel.fused_cpu_update
    monkeypatch.setattr(cpu_kernel, "fused_cpu_update",
                        lambda tensors, hp: calls.append(hp.lr) or loop(tensors, hp))
    for lr in (1e-2, torch.tensor(1e-2)):
        params = [p.requires_grad_() for p in initial_params([(3,), (2, 2)])]
        optimizer = RMSprop(params, lr=lr, fused=True, **{
            k: v for k, v in VARIANTS["centered_momentum"].items() if k != "lr"})
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        before = [p.detach().clone() for p in params]
        if isinstance(lr, torch.Tensor):
            lr.fill_(0.0)
        else:
            optimizer.param_groups[0]["lr"] = 0.0
        optimizer.step()
        for p, b in zip(params, before):
            assert torch.equal(p.detach(), b)
    assert calls == [1e-2, 0.0, pytest.approx(1e-2), 0.0]


@needs_triton
def test_kernel_on_views_at_odd_offsets_beside_aligned_tensors():
    # Views into one flat buffer at odd offsets (as flat-parameter wrappers and DDP's gradient
    # buckets make) are not 16-byte aligned, and share a launch with tensors that are: each
    # tensor picks its own path, and all of them must be exact. Sizes span several blocks.
    shapes = [(2049,), (3, 4), (4100,), (7,)]
    start = initial_params(shapes)
    flat = torch.zeros(1 + 2049 + 12)
    params = [torch.nn.Parameter(flat[1:2050]), torch.nn.Parameter(flat[2050:].view(3, 4)),
              torch.nn.Parameter(torch.zeros(4100)), torch.nn.Parameter(torch.zeros(7))]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    assert params[0].data_ptr() % 16 and params[1].data_ptr() % 16
    expected_params, _ = reference_trajectory(start, VARIANTS["graves"], STEPS)
    with triton_on_cpu():
        optimizer = RMSprop(params, fused=True, **VARIANTS["graves"])
        grad_buffer = torch.zeros(3 + sum(p.numel() for p in params))
        for step in range(STEPS):
            gradients_in_one_buffer(params, step, grad_buffer, offset=3 if step % 2 else 0)
            optimizer.step()
    for p, e in zip(params, expected_params):
        torch.testing.assert_close(p.detach().double(), e, rtol=2e-5, atol=2e-6)
