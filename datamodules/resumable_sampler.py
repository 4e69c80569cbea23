"""The training order of every datamodule: a function of (seed, epoch) alone, able to start
after the batches that a checkpoint has already trained.

A ``DataLoader(shuffle=True)`` draws its order from the global torch generator when its iterator
starts, and Lightning starts the first iterator of a resumed run in ``FitLoop.setup_data``,
before any epoch hook can reseed (and before it calls ``set_epoch``), always at the epoch's first
batch. A resumed run then trains the interrupted epoch on another order, from its start, with
some batches twice. ``ResumableSampler`` is a ``DistributedSampler`` (so Lightning keeps it as it
is under DDP and calls its ``set_epoch`` each epoch): epoch ``e``'s order is drawn from a
generator seeded with ``seed + e`` (this rank's share of it under DDP), and
``resumable_train_sampler`` positions it where the restored loops will go on, read from
Lightning's own progress counters (saved in every checkpoint) when the datamodule builds the
training DataLoader, which Lightning does after it has restored them.

    DataLoader(dataset, batch_size, drop_last=True,
               sampler=resumable_train_sampler(self.trainer, dataset, batch_size, shuffle=True,
                                               drop_last=True))
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from typing import Iterator, Sized

import pytorch_lightning as pl
from torch.utils.data import DistributedSampler


def training_seed() -> int:
    """The run's seed: ``seed_everything``'s (Lightning exports it as PL_GLOBAL_SEED), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """This rank's indices of epoch ``epoch`` (shuffled by ``seed + epoch``, or in order), without
    the first ``start`` of them; ``start`` applies to the next iteration only."""

    def __init__(self, dataset: Sized, *, shuffle: bool, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


def resume_position(trainer: pl.Trainer) -> tuple[int, int]:
    """(epoch, batches of it already trained) where the restored fit loop goes on; (0, 0) in a
    fresh run. A checkpoint saved inside epoch e (a step checkpoint, or at validation end) leaves
    it started but not processed; one saved at ``on_train_epoch_end`` leaves it processed."""
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started > epochs.processed:
        return epochs.processed, trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return epochs.processed, 0


def resumable_train_sampler(trainer: pl.Trainer | None, dataset: Sized, batch_size: int | None,
                            *, shuffle: bool, drop_last: bool = False,
                            sharded: bool = False) -> ResumableSampler:
    """The training sampler, placed at the restored run's position (the start without a trainer).

    Args:
        trainer: the datamodule's ``self.trainer`` (None outside a Trainer).
        batch_size: the DataLoader's; None when every item already is a batch.
        drop_last: the DataLoader's.
        sharded: the dataset already holds only this rank's share (the text streams): the
            sampler takes all of it instead of dealing it out over the ranks.
    """
    world, rank = (trainer.world_size, trainer.global_rank) \
        if trainer is not None and not sharded else (1, 0)
    sampler = ResumableSampler(dataset, shuffle=shuffle, seed=training_seed(),
                               num_replicas=world, rank=rank)
    if trainer is None:
        return sampler
    epoch, done = resume_position(trainer)
    items_per_batch = batch_size or 1
    batches = (sampler.num_samples // items_per_batch if drop_last
               else math.ceil(sampler.num_samples / items_per_batch))
    limit = trainer.limit_train_batches  # as Lightning's _parse_num_batches reads it
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if done >= batches:  # saved after the epoch's last batch: the next epoch comes whole
        epoch, done = epoch + 1, 0
    sampler.set_epoch(epoch)
    sampler.start = done * items_per_batch
    if done:
        # Lightning warns on a mid-epoch resume unless the DataLoader has a state_dict; this one
        # resumes from Lightning's counters instead, exactly.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended "
                                "before the epoch ended")
    return sampler
