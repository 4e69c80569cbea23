"""Random combinations of every setting (hypothesis): the foreach path, the fused CPU loop and
the kernel follow the float64 reference, whatever the combination."""

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from optimizers import RMSprop

from helpers import (initial_params, needs_triton, optimizer_trajectory, reference_trajectory,
                     triton_on_cpu)


@st.composite
def rmsprop_settings(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    bias_correction = draw(st.booleans())
    centered = draw(st.booleans())
    eps_in_sqrt = draw(st.booleans()) or (centered and bias_correction)  # see helpers.VARIANTS
    return {
        "lr": draw(st.sampled_from([1e-4, 1e-3, 1e-2])),
        # centered with alpha 0 has v - m^2 = 0 at every step: fp32 rounding decides its sign;
        # centered + bias correction with alpha 0.99 divides a difference of nearly equal fp32
        # numbers by 1 - alpha^t ~ 0.01, which leaves fewer digits than the tolerance asks for
        "alpha": draw(st.sampled_from(
            [0.0, 0.5, 0.9, 0.99] if not centered
            else [0.5, 0.9] if bias_correction else [0.5, 0.9, 0.99])),
        "eps": draw(st.sampled_from([1e-8, 1e-4, 1e-2])) if not eps_in_sqrt else 1e-2,
        "weight_decay": draw(st.sampled_from([0.0, 0.1])),
        "momentum": momentum,
        "centered": centered,
        "maximize": draw(st.booleans()),
        "eps_in_sqrt": eps_in_sqrt,
        "initial_square_avg": 0.0 if bias_correction else draw(st.sampled_from([0.0, 1.0])),
        "lr_in_momentum": draw(st.booleans()),
        "decoupled_weight_decay": draw(st.booleans()),
        "nesterov": momentum > 0 and draw(st.booleans()),
        "bias_correction": bias_correction,
    }


def assert_follows_reference(config, path):
    start = initial_params([(5,), (3, 2)])
    expected, _ = reference_trajectory(start, config, 6)
    actual, _ = optimizer_trajectory(lambda ps: RMSprop(ps, **config, **path), start, 6)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.double(), e, rtol=3e-4, atol=3e-5)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=rmsprop_settings())
def test_foreach_follows_reference_for_any_combination(config):
    assert_follows_reference(config, {})


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=rmsprop_settings())
def test_fused_cpu_loop_follows_reference_for_any_combination(config):
    assert_follows_reference(config, {"fused": True})


@needs_triton
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=rmsprop_settings())
def test_kernel_follows_reference_for_any_combination(config):
    with triton_on_cpu():
        assert_follows_reference(config, {"fused": True})
