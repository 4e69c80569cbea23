"""Every variant on every path (foreach, for-loop, the Triton kernel in the interpreter, the
fused CPU loop of ``compiled=True`` and its Inductor fallback) against the float64 reference,
over many steps."""

import pytest
import torch

from optimizers import RMSprop
from optimizers.rmsprop import kernel_can_run

from helpers import (DEFAULT_TOLERANCE, TOLERANCES, VARIANTS, gradient, gradients_in_one_buffer,
                     initial_params, optimizer_trajectory, reference_trajectory)

STEPS = 12
SHAPES = [(1,), (37,), (5, 7), (2, 3, 4)]
PATHS = {
    "foreach": {},
    "for_loop": {"foreach": False},
    "kernel": {"fused": True},
    "fused_cpu": {"compiled": True},
}
needs_kernel = pytest.mark.skipif(not kernel_can_run(torch.device("cpu")),
                                  reason="Triton is not installed")


def check_against_reference(variant, path_settings, shapes=SHAPES, steps=STEPS,
                            dtype=torch.float32, **optimizer_extras):
    settings = VARIANTS[variant]
    rtol, atol = TOLERANCES.get(variant, DEFAULT_TOLERANCE)
    start = initial_params(shapes, dtype)
    expected, expected_states = reference_trajectory(start, settings, steps)
    actual, optimizer = optimizer_trajectory(
        lambda ps: RMSprop(ps, **settings, **path_settings, **optimizer_extras), start, steps)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double(), e.to(a.dtype).double(), rtol=rtol, atol=atol)
    for p, e in zip(optimizer.param_groups[0]["params"], expected_states):
        state = optimizer.state[p]
        assert state["step"].item() == steps
        torch.testing.assert_close(state["square_avg"].double(),
                                   e.square_avg.to(state["square_avg"].dtype).double(),
                                   rtol=rtol, atol=atol)
        for key in ("grad_avg", "momentum_buffer"):
            assert (key in state) == (getattr(e, key) is not None)
            if key in state:
                torch.testing.assert_close(state[key].double(),
                                           getattr(e, key).to(state[key].dtype).double(),
                                           rtol=rtol, atol=atol)


@pytest.fixture
def no_inductor(monkeypatch):
    """Fail if compiled=True falls back to Inductor: the fused CPU loop must take the bucket."""
    def fallback(*args):
        raise AssertionError("the fused CPU loop refused a bucket it should take")
    monkeypatch.setattr("optimizers.rmsprop.compiled_update", fallback)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("path", ["foreach", "for_loop", "fused_cpu"])
def test_cpu_paths_match_reference(path, variant, no_inductor):
    check_against_reference(variant, PATHS[path])


def test_fused_cpu_odd_sizes_and_many_tensors_across_threads(no_inductor):
    # Tensors straddle the threads' chunks (cpu_kernel.GRAIN elements each); an empty tensor and
    # single elements sit between them.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        shapes = [(1,), (0,), (65537,), (40000,), (1023,)] + [(i % 7 + 1, i % 5 + 2)
                                                             for i in range(40)]
        check_against_reference("graves", PATHS["fused_cpu"], shapes=shapes, steps=3)
    finally:
        torch.set_num_threads(threads)


def test_fused_cpu_in_float64_matches_the_reference_to_rounding(no_inductor):
    settings = VARIANTS["centered_momentum"]
    start = initial_params(SHAPES, torch.float64)
    expected, _ = reference_trajectory(start, settings, STEPS)
    actual, _ = optimizer_trajectory(lambda ps: RMSprop(ps, **settings, compiled=True), start,
                                     STEPS)
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


@needs_kernel
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_matches_reference(variant):
    check_against_reference(variant, PATHS["kernel"])


@needs_kernel
@pytest.mark.parametrize("variant", ["centered_momentum", "bias_correction"])
def test_kernel_odd_sizes_and_many_tensors(variant):
    # 1, 1023 and 65537 elements straddle the block size; 40 tensors of mixed shapes share a launch.
    # Bias correction reads each tensor's step in every block, before its last block advances it.
    shapes = [(1,), (1023,), (65537,)] + [(i % 7 + 1, i % 5 + 2) for i in range(40)]
    check_against_reference(variant, PATHS["kernel"], shapes=shapes, steps=3)


@pytest.mark.parametrize("path", ["foreach", "for_loop", pytest.param("kernel", marks=needs_kernel),
                                  "fused_cpu"])  # fused_cpu: half params go to Inductor
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_with_fp32_state(path, dtype):
    # fp32 state and fp32 math: the parameters only pick up the rounding of their own storage.
    shapes = [(64,), (9, 9)]
    settings = VARIANTS["centered_momentum"]
    start = initial_params(shapes, dtype)
    expected, _ = reference_trajectory(start, settings, STEPS)
    actual, optimizer = optimizer_trajectory(
        lambda ps: RMSprop(ps, **settings, **PATHS[path], state_dtype=torch.float32), start, STEPS)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["square_avg"].dtype == torch.float32
    resolution = torch.finfo(dtype).eps
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        # each step rounds the stored parameter once: error stays within STEPS half-ulps
        torch.testing.assert_close(a.double(), e, rtol=STEPS * resolution, atol=STEPS * resolution)


@pytest.mark.parametrize("path", ["foreach", "for_loop", pytest.param("kernel", marks=needs_kernel),
                                  "fused_cpu"])
def test_tensor_learning_rate(path):
    settings = dict(VARIANTS["nesterov"])
    settings_tensor = dict(settings, lr=torch.tensor(settings.get("lr", 1e-2)))
    start = initial_params(SHAPES)
    expected, _ = reference_trajectory(start, settings, STEPS)
    actual, _ = optimizer_trajectory(lambda ps: RMSprop(ps, **settings_tensor, **PATHS[path]),
                                     start, STEPS)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double(), e, rtol=2e-5, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "graves", "bias_correction"])
def test_inductor_fallback_matches_reference(variant):
    # Non-contiguous params (a transposed view) are beyond the fused CPU loop: Inductor takes them.
    settings = VARIANTS[variant]
    start = initial_params([(5, 7), (3, 4)])
    params = [torch.nn.Parameter(s.t().contiguous().t()) for s in start]
    assert not params[0].is_contiguous()
    expected, _ = reference_trajectory(start, settings, STEPS)
    optimizer = RMSprop(params, compiled=True, **settings)
    for step in range(STEPS):
        for index, p in enumerate(params):
            p.grad = gradient(p.shape, step, index, p.dtype)
        optimizer.step()
    rtol, atol = TOLERANCES.get(variant, DEFAULT_TOLERANCE)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=rtol, atol=atol)


def test_compiled_path_follows_a_changing_learning_rate():
    # lr is an input of the compiled code, not a constant baked into it: with lr = 0 the
    # momentum step lr * b moves nothing.
    params = [p.requires_grad_() for p in initial_params([(3,), (2, 2)])]
    optimizer = RMSprop(params, compiled=True, **VARIANTS["centered_momentum"])
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    before = [p.detach().clone() for p in params]
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


@needs_kernel
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
    expected, _ = reference_trajectory(start, VARIANTS["graves"], STEPS)
    optimizer = RMSprop(params, fused=True, **VARIANTS["graves"])
    grad_buffer = torch.zeros(3 + sum(p.numel() for p in params))
    for step in range(STEPS):
        gradients_in_one_buffer(params, step, grad_buffer, offset=3 if step % 2 else 0)
        optimizer.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=2e-5, atol=2e-6)
