"""The loop benchmark's own correctness: its plain loop does the steps that the Lightning
module does."""

import torch

from benchmarks.loop_overhead import Clock, Window, wgan_run


def test_the_plain_wgan_loop_trains_the_same_weights_as_the_lightning_module(tmp_path):
    # Same seed, data order and draws of noise: the same steps give the same weights, bit for bit.
    cpu = torch.device("cpu")
    plain = wgan_run("plain", cpu, Window(Clock(cpu), 1, 3), str(tmp_path / "plain"))
    module = wgan_run("lightning", cpu, Window(Clock(cpu), 1, 3), str(tmp_path / "module"))
    assert module.generator_iterations == 3
    for (name, ours), theirs in zip(module.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
