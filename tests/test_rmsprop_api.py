"""RMSprop as a drop-in for torch.optim.RMSprop: arguments, state dicts both ways, closures,
errors, presets."""

import contextlib
import copy
import re

import pytest
import torch

from optimizers import RMSprop, presets

from helpers import gradient, initial_params, needs_triton, triton_on_cpu


def test_signature_matches_torch():
    import inspect

    ours = list(inspect.signature(RMSprop.__init__).parameters.values())
    theirs = list(inspect.signature(torch.optim.RMSprop.__init__).parameters.values())
    positional = [p for p in ours if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in positional] == [p.name for p in theirs]
    assert [p.default for p in positional] == [p.default for p in theirs]


def step_with(optimizer, params, step):
    for index, p in enumerate(params):
        p.grad = gradient(p.shape, step, index, p.dtype)
    optimizer.step()


@pytest.mark.parametrize("settings", [{}, {"centered": True, "momentum": 0.9}, {"momentum": 0.5}])
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("kernel", ["foreach", "fused_cpu", pytest.param("triton", marks=needs_triton)])
def test_state_dict_interchange_continues_trajectory(settings, direction, kernel):
    path = {} if kernel == "foreach" else {"fused": True}
    with triton_on_cpu() if kernel == "triton" else contextlib.nullcontext():
        check_state_dict_interchange(settings, direction, path)


def check_state_dict_interchange(settings, direction, path):
    start = initial_params([(6,), (3, 4)])
    # Uninterrupted torch run: the trajectory to continue.
    torch_params = [p.clone().requires_grad_() for p in start]
    torch_optimizer = torch.optim.RMSprop(torch_params, **settings)
    for step in range(10):
        step_with(torch_optimizer, torch_params, step)

    first_params = [p.clone().requires_grad_() for p in start]
    make_first, make_second = (
        (lambda ps: torch.optim.RMSprop(ps, **settings), lambda ps: RMSprop(ps, **settings, **path))
        if direction == "torch_to_ours" else
        (lambda ps: RMSprop(ps, **settings, **path), lambda ps: torch.optim.RMSprop(ps, **settings))
    )
    first = make_first(first_params)
    for step in range(5):
        step_with(first, first_params, step)
    saved = copy.deepcopy(first.state_dict())

    second_params = [p.detach().clone().requires_grad_() for p in first_params]
    second = make_second(second_params)
    second.load_state_dict(saved)
    for step in range(5, 10):
        step_with(second, second_params, step)
    for ours, theirs in zip(second_params, torch_params):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    if direction == "torch_to_ours":
        # the loaded torch groups got our extra keys, from this optimizer's own defaults
        assert second.param_groups[0]["eps_in_sqrt"] is False
        assert second.param_groups[0]["fused"] == path.get("fused")


def test_loading_torch_state_keeps_preset_settings():
    params = [torch.zeros(3, requires_grad=True)]
    torch_state = torch.optim.RMSprop(params).state_dict()
    graves = presets.Graves([torch.zeros(3, requires_grad=True)])
    graves.load_state_dict(torch_state)
    assert graves.param_groups[0]["eps_in_sqrt"] is True
    assert graves.param_groups[0]["lr_in_momentum"] is True


def test_state_dtype_survives_a_round_trip():
    # torch's loader casts state to the param dtype; fp32 state of bf16 params must stay exact.
    params = [torch.zeros(5, dtype=torch.bfloat16, requires_grad=True)]
    optimizer = RMSprop(params, state_dtype="float32")
    step_with(optimizer, params, 0)
    square_avg = optimizer.state[params[0]]["square_avg"].clone()
    assert square_avg.dtype == torch.float32
    restored = RMSprop([params[0].detach().clone().requires_grad_()], state_dtype=torch.float32)
    restored.load_state_dict(optimizer.state_dict())
    restored_avg = restored.state[restored.param_groups[0]["params"][0]]["square_avg"]
    assert restored_avg.dtype == torch.float32
    assert torch.equal(restored_avg, square_avg)


def test_closure_runs_with_grad_enabled_and_loss_is_returned():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    optimizer = RMSprop([w], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(5.0)
    # first step: w - lr * g / sqrt((1 - a) g^2) = w - lr * sign(g) / sqrt(0.01)
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 1.0, -2.0 + 1.0]), atol=1e-6, rtol=0)


def test_params_without_grad_are_skipped():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    optimizer = RMSprop([a, b])
    a.grad = torch.ones(2)
    optimizer.step()
    assert b not in optimizer.state and torch.equal(b, torch.ones(2))


def test_differentiable_matches_torch():
    # Gradient of the updated parameter w.r.t. the incoming gradient, through two steps.
    def unrolled(optimizer_class):
        w = torch.tensor([0.5, -1.5], requires_grad=True)
        g = torch.tensor([0.3, 0.7], requires_grad=True)
        p = w.clone()
        optimizer = optimizer_class([p], lr=0.1, momentum=0.9, differentiable=True)
        for _ in range(2):
            p.grad = g * 1.0
            optimizer.step()
        return torch.autograd.grad(p.sum(), g)[0]

    torch.testing.assert_close(unrolled(RMSprop), unrolled(torch.optim.RMSprop))


BAD_SETTINGS = [
    ({"lr": -0.1}, "lr must be >= 0"),
    ({"alpha": 1.0}, r"alpha must be in \[0, 1\)"),
    ({"alpha": -0.5}, r"alpha must be in \[0, 1\)"),
    ({"eps": -1e-8}, "eps must be >= 0"),
    ({"momentum": -0.9}, "momentum must be >= 0"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"initial_square_avg": -1.0}, "initial_square_avg must be >= 0"),
    ({"nesterov": True}, "nesterov=True needs momentum > 0"),
    ({"bias_correction": True, "initial_square_avg": 1.0}, "bias_correction=True"),
    ({"fused": True, "foreach": True}, "fused=True and foreach=True"),
    ({"compiled": True, "differentiable": True}, "fused=True does not support differentiable"),
    ({"compiled": True, "fused": False}, r"compiled=True \(an alias of fused=True\) and fused=False"),
    ({"state_dtype": "float8"}, "state_dtype must be None or one of"),
    ({"lr": torch.tensor([0.1, 0.2])}, "lr must be a one-element tensor"),
]


@pytest.mark.parametrize("settings, message", BAD_SETTINGS, ids=lambda x: str(x)[:40])
def test_bad_hyperparameters_name_the_argument(settings, message):
    with pytest.raises(ValueError, match=message):
        RMSprop([torch.zeros(1, requires_grad=True)], **settings)


def test_bad_value_in_a_param_group_is_caught():
    with pytest.raises(ValueError, match="lr must be >= 0"):
        RMSprop([{"params": [torch.zeros(1, requires_grad=True)], "lr": -1.0}])


def test_torchs_own_error_cases_raise_torchs_messages():
    # torch's OptimizerInfo error inputs for RMSprop, with the exception type and message that
    # its tests expect of torch.optim.RMSprop: code and tests written against torch keep working.
    from torch.testing._internal.common_optimizers import optim_error_inputs_func_rmsprop

    cases = optim_error_inputs_func_rmsprop("cpu", torch.float32)
    assert any("Invalid momentum value" in case.error_regex for case in cases)
    assert any("Tensor lr must be 1-element" in case.error_regex for case in cases)
    for case in cases:
        inputs = case.optimizer_error_input
        params = inputs.params if inputs.params is not None else [
            torch.nn.Parameter(torch.randn(1, 1))]
        if issubclass(case.error_type, Warning):
            with pytest.warns(case.error_type, match=case.error_regex):
                RMSprop(params, **inputs.kwargs)
        else:
            with pytest.raises(case.error_type, match=case.error_regex):
                RMSprop(params, **inputs.kwargs)


@pytest.mark.parametrize("settings, torch_message", [
    ({"lr": -0.1}, "Invalid learning rate: -0.1"),
    ({"eps": -1.0}, "Invalid epsilon value: -1.0"),
    ({"momentum": -1.0}, "Invalid momentum value: -1.0"),
    ({"weight_decay": -1.0}, "Invalid weight_decay value: -1.0"),
    ({"alpha": -1.0}, "Invalid alpha value: -1.0"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
])
def test_range_errors_carry_torchs_text_beside_ours(settings, torch_message):
    with pytest.raises(ValueError, match=re.escape(torch_message)) as raised:
        torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], **settings)
    assert str(raised.value) == torch_message  # torch's own text, as it is today
    with pytest.raises(ValueError, match=re.escape(f"({torch_message})")) as raised:
        RMSprop([torch.zeros(1, requires_grad=True)], **settings)
    assert str(raised.value).startswith(f"RMSprop: {next(iter(settings))} must be")


def test_fused_without_a_kernel_says_why(monkeypatch):
    with pytest.raises(RuntimeError, match="fused=True but no fused kernel can run: a parameter "
                                           "is on meta; the fused kernels take CUDA and CPU"):
        RMSprop([torch.zeros(1, device="meta", requires_grad=True)], fused=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with triton_on_cpu(), pytest.raises(RuntimeError, match="only under TRITON_INTERPRET=1"):
        RMSprop([torch.zeros(1, requires_grad=True)], fused=True)


def test_compiled_is_a_deprecated_alias_of_fused():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.warns(DeprecationWarning, match="compiled=True is deprecated; it is fused=True"):
        optimizer = RMSprop(params, compiled=True)
    assert optimizer.param_groups[0]["fused"] is True and "compiled" not in optimizer.defaults
    # a state dict saved when compiled=True was a group setting of its own
    saved = optimizer.state_dict()
    saved["param_groups"][0].update(fused=None, compiled=True)
    restored = RMSprop([torch.zeros(2, requires_grad=True)])
    with pytest.warns(DeprecationWarning):
        restored.load_state_dict(saved)
    assert restored.param_groups[0]["fused"] is True
    assert "compiled" not in restored.param_groups[0]


def test_sparse_gradients_are_refused():
    w = torch.zeros(3, requires_grad=True)
    optimizer = RMSprop([w])
    w.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


# Published numbers, from ../shared/papers.md.
PAPER_SETTINGS = {
    "pytorch": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8},
    "hinton": {"alpha": 0.9, "eps_in_sqrt": False},
    "tensorflow1": {"alpha": 0.9, "eps": 1e-10, "initial_square_avg": 1.0, "eps_in_sqrt": True,
                    "lr_in_momentum": True},
    "keras": {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7, "initial_square_avg": 0.0,
              "eps_in_sqrt": True, "lr_in_momentum": True},
    "graves": {"lr": 1e-4, "alpha": 0.95, "eps": 1e-4, "momentum": 0.9, "centered": True,
               "eps_in_sqrt": True, "lr_in_momentum": True},
    "dqn": {"lr": 2.5e-4, "alpha": 0.95, "eps": 0.01, "centered": True, "eps_in_sqrt": True,
            "momentum": 0.0},
    "wgan": {"lr": 5e-5, "alpha": 0.99, "eps": 1e-8},
    "bn_lstm": {"lr": 1e-3},
}


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_presets_carry_the_published_settings(name):
    optimizer = presets.from_name(name, [torch.zeros(1, requires_grad=True)])
    for key, value in PAPER_SETTINGS[name].items():
        assert optimizer.defaults[key] == value, (name, key)
    assert isinstance(optimizer, RMSprop)


def test_preset_values_can_be_overridden_and_unknown_names_are_refused():
    optimizer = presets.from_name("graves", [torch.zeros(1, requires_grad=True)], lr=3e-4)
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["centered"] is True
    with pytest.raises(ValueError, match="unknown RMSprop preset 'adam'"):
        presets.from_name("adam", [])
