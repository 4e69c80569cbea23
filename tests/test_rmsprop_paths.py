"""Every variant on every path (foreach, for-loop, the Triton kernel in the interpreter, and the
compiled path) against the float64 reference, over many steps."""

import pytest
import torch

from optimizers import RMSprop
from optimizers.rmsprop import kernel_can_run

from helpers import (DEFAULT_TOLERANCE, TOLERANCES, VARIANTS, gradient, initial_params,
                     optimizer_trajectory, reference_trajectory)

STEPS = 12
SHAPES = [(1,), (37,), (5, 7), (2, 3, 4)]
PATHS = {
    "foreach": {},
    "for_loop": {"foreach": False},
    "kernel": {"fused": True},
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


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("path", ["foreach", "for_loop"])
def test_cpu_paths_match_reference(path, variant):
    check_against_reference(variant, PATHS[path])


@needs_kernel
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_matches_reference(variant):
    check_against_reference(variant, PATHS["kernel"])


@needs_kernel
def test_kernel_odd_sizes_and_many_tensors():
    # 1, 1023 and 65537 elements straddle the block size; 40 tensors of mixed shapes share a launch.
    shapes = [(1,), (1023,), (65537,)] + [(i % 7 + 1, i % 5 + 2) for i in range(40)]
    check_against_reference("centered_momentum", PATHS["kernel"], shapes=shapes, steps=3)


@pytest.mark.parametrize("path", ["foreach", "for_loop", pytest.param("kernel", marks=needs_kernel)])
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


@pytest.mark.parametrize("path", ["foreach", "for_loop", pytest.param("kernel", marks=needs_kernel)])
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
def test_compiled_path_matches_reference(variant):
    check_against_reference(variant, {"compiled": True})


def test_compiled_path_small():
    # A quick compile (two tensors) keeps the compiled path in the default suite.
    check_against_reference("centered_momentum", {"compiled": True},
                            shapes=[(3,), (2, 2)], steps=3)


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
def test_kernel_on_unaligned_views():
    # Parameters that are views into one flat buffer at odd offsets (as flat-parameter wrappers
    # make) are not 16-byte aligned: the kernel must notice and still be exact.
    flat = torch.zeros(1 + 37 + 12)
    start = initial_params([(37,), (3, 4)])
    params = [torch.nn.Parameter(flat[1:38]), torch.nn.Parameter(flat[38:].view(3, 4))]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    expected, _ = reference_trajectory(start, VARIANTS["graves"], STEPS)
    optimizer = RMSprop(params, fused=True, **VARIANTS["graves"])
    for step in range(STEPS):
        for index, p in enumerate(params):
            p.grad = gradient(p.shape, step, index, p.dtype)
        optimizer.step()
    assert not next(iter(optimizer._kernel_tables.values())).aligned
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=2e-5, atol=2e-6)
