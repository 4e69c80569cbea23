"""RMSprop as a drop-in for torch.optim.RMSprop: arguments, state dicts both ways, closures,
errors, presets, and the kernel's table cache."""

import copy
import weakref
import re

import pytest
import torch

from optimizers import RMSprop, presets
from optimizers.rmsprop import kernel_can_run

from helpers import gradient, initial_params

needs_kernel = pytest.mark.skipif(not kernel_can_run(torch.device("cpu")),
                                  reason="Triton is not installed")


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
@pytest.mark.parametrize("path", [{}, pytest.param({"fused": True}, marks=needs_kernel)])
def test_state_dict_interchange_continues_trajectory(settings, direction, path):
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
    ({"compiled": True, "differentiable": True}, "compiled=True does not support differentiable"),
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


def test_fused_without_a_kernel_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=re.escape("fused=True but no kernel can run")):
        RMSprop([torch.zeros(1, requires_grad=True)], fused=True)


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


@needs_kernel
def test_kernel_tables_follow_moved_gradients_and_rebuild_for_moved_params():
    params = [p.requires_grad_() for p in initial_params([(10,), (3, 3)])]
    optimizer = RMSprop(params, fused=True, centered=True)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    (launch,) = optimizer._launch_plans[0].launches
    table = launch.tensor_table.clone()
    params[1].grad = torch.ones(3, 3) * 2  # new storage: only the gradient table follows it
    optimizer.step()
    assert optimizer._launch_plans[0].launches == [launch]
    assert torch.equal(launch.tensor_table, table)
    assert launch.grad_table.tolist() == [p.grad.data_ptr() for p in params]
    params[0].data = params[0].data.clone()  # a param in new storage: the tables are rebuilt
    optimizer.step()
    (rebuilt,) = optimizer._launch_plans[0].launches
    assert rebuilt is not launch
    assert rebuilt.tensor_table[0, 0].item() == params[0].data_ptr()


@needs_kernel
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
    kernel_params[1].data = kernel_params[1].data.clone()  # a parameter in new storage
    assert steps(2) == 1
    for fused in runs:  # new state tensors
        optimizers[fused].load_state_dict(copy.deepcopy(optimizers[fused].state_dict()))
    assert steps(2) == 1
    assert steps(3, without_grad=(3,)) == 1  # a param without a gradient: a plan without it
    assert steps(2) == 1  # and with it again
    for optimizer in optimizers.values():  # the state reset: it starts again from step 1
        optimizer.state.clear()
    assert steps(2) == 1
    assert all(optimizers[True].state[p]["step"].item() == 2 for p in kernel_params)


@needs_kernel
def test_gradients_allocated_during_cuda_graph_capture_get_a_table_of_their_own(monkeypatch):
    # torch's recipe for capturing a whole training step sets the gradients to None, so that
    # backward allocates them from the graph's pool: the captured step must copy their addresses
    # into a table of its own (from a host buffer that replays copy again), leaving the eager
    # table alone, while tables that would need a full rebuild are refused by name.
    from optimizers import triton_kernel

    settings = dict(centered=True, momentum=0.9)
    start = initial_params([(10,), (3, 3)])
    params = [p.clone().requires_grad_() for p in start]
    copies = [p.clone().requires_grad_() for p in start]
    fused, foreach = RMSprop(params, fused=True, **settings), RMSprop(copies, **settings)
    for step in range(3):
        for optimizer, ps in ((fused, params), (foreach, copies)):
            for index, p in enumerate(ps):
                p.grad = gradient(p.shape, step, index, p.dtype)
            optimizer.step()
    (launch,) = fused._launch_plans[0].launches
    eager_table, eager_addresses = launch.grad_table.clone(), launch.grad_addresses
    kept = len(triton_kernel._CAPTURED_GRAD_ADDRESSES)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    for optimizer, ps in ((fused, params), (foreach, copies)):
        for index, p in enumerate(ps):
            p.grad = gradient(p.shape, 3, index, p.dtype).clone()  # new storage
        optimizer.step()
    for p, c in zip(params, copies):
        torch.testing.assert_close(p, c, rtol=1e-5, atol=1e-6)
    assert torch.equal(launch.grad_table, eager_table) and launch.grad_addresses == eager_addresses
    (source,) = triton_kernel._CAPTURED_GRAD_ADDRESSES[kept:]
    assert source.tolist() == [p.grad.data_ptr() for p in params]

    fused.state.clear()  # new state: its tables cannot be built during capture
    with pytest.raises(RuntimeError, match="new or have moved since the last step outside CUDA "
                                           "graph capture.*Run one step outside the capture"):
        fused.step()
