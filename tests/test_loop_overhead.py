"""The loop benchmark's own correctness: its plain loop does the steps that the Lightning
module does."""

import itertools

import torch

from benchmarks.loop_overhead import plain_wgan, smoke_run, trainer_for


def test_the_plain_wgan_loop_trains_the_same_weights_as_the_lightning_module(tmp_path):
    # Same seed, data order and draws of noise: the same steps give the same weights, bit for bit.
    cpu, generator_iterations = torch.device("cpu"), 3
    plain = smoke_run(cpu, generator_iterations, str(tmp_path))
    loop = plain_wgan(plain.model, plain.datamodule, cpu, str(tmp_path))
    assert list(itertools.islice(loop, generator_iterations)) == [1, 2, 3]
    cli = smoke_run(cpu, generator_iterations, str(tmp_path))
    trainer_for("Lightning", cli, cpu, str(tmp_path)).fit(cli.model, cli.datamodule)
    assert cli.model.generator_iterations == generator_iterations
    for (name, ours), theirs in zip(cli.model.state_dict().items(),
                                    plain.model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
