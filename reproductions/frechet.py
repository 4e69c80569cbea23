"""Frechet distances between generated and real images (the WGAN's sample-quality score).

``FrechetScore`` is torchmetrics' Frechet distance against a fixed set of real images. Its
features come from Inception-v3 (FID, with downloaded weights) or, by default, from a feature
extractor that needs no download:

FID needs Inception-v3 weights, which a fresh machine without a network does not have. Instead a
small CNN is trained once on the dataset itself (on its labels, or, for single-class data such as
LSUN bedrooms, on predicting which of four rotations was applied), and its penultimate layer gives
the features. The trained network is cached beside the data, so later runs load it at once.
Scores are comparable between runs that share the cache file, not with published FIDs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.image.fid import FrechetInceptionDistance

from datamodules.images import DatasetError, ImageDataModule


class FeatureClassifier(nn.Module):
    """Three conv blocks and a ``num_features``-wide layer; ``forward`` returns those features
    (what torchmetrics' ``FrechetInceptionDistance(feature=...)`` calls), ``logits`` the classes."""

    def __init__(self, channels: int, num_classes: int, width: int = 32,
                 num_features: int = 64) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics to size its feature statistics
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, num_features), nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))


def rotate_batch(images: Tensor) -> tuple[Tensor, Tensor]:
    """Each image turned by a random multiple of 90 degrees; the multiple is the label."""
    turns = torch.randint(0, 4, (images.shape[0],))
    rotated = torch.stack([torch.rot90(image, int(k), dims=(1, 2)) for image, k in
                           zip(images, turns)])
    return rotated, turns


def train_feature_classifier(dataset: Dataset, channels: int, max_images: int = 5000,
                             epochs: int = 3, batch_size: int = 32, lr: float = 2e-3,
                             seed: int = 0) -> tuple[FeatureClassifier, dict]:
    """Fit a FeatureClassifier on up to ``max_images`` images of ``dataset``: a few seconds on CPU
    for 32x32 images. Returns the network (in eval mode) and a summary of its training. Seeded
    on its own: the caller's random stream is the same whether the network is trained or loaded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _train(dataset, channels, max_images, epochs, batch_size, lr)


def _train(dataset: Dataset, channels: int, max_images: int, epochs: int, batch_size: int,
           lr: float) -> tuple[FeatureClassifier, dict]:
    indices = torch.randperm(len(dataset))[:max_images].tolist()
    images, labels = map(torch.cat, zip(*DataLoader(Subset(dataset, indices), batch_size=256)))
    labels = torch.as_tensor(labels).long()
    task = "labels" if labels.unique().numel() > 1 else "rotation"
    num_classes = int(labels.max()) + 1 if task == "labels" else 4

    network = FeatureClassifier(channels, num_classes)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    correct = seen = 0
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            x, y = images[batch], labels[batch]
            if task == "rotation":
                x, y = rotate_batch(x)
            logits = network.logits(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch == epochs - 1:
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
    summary = {"task": task, "num_classes": num_classes, "images": len(images),
               "epochs": epochs, "last_epoch_accuracy": correct / max(seen, 1)}
    return network.eval().requires_grad_(False), summary


def load_or_train(dataset: Dataset, channels: int, cache: Path,
                  **training: int) -> FeatureClassifier:
    """The cached feature classifier at ``cache``, trained and saved there first if absent."""
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            with torch.device("meta"):  # no random init to overwrite, no draw from the RNG
                network = FeatureClassifier(channels, saved["summary"]["num_classes"])
            network.load_state_dict(saved["state_dict"], assign=True)
        except Exception as error:  # noqa: BLE001 - truncated file, wrong shapes, foreign pickle
            raise DatasetError(f"cannot load the Frechet feature extractor cached at {cache} "
                               f"({type(error).__name__}: {str(error).splitlines()[0]}); "
                               f"delete the file to retrain it") from error
        return network.eval().requires_grad_(False)
    network, summary = train_feature_classifier(dataset, channels, **training)
    print(f"Frechet features: trained a {summary['task']} classifier on {summary['images']} "
          f"images ({summary['last_epoch_accuracy']:.1%} train accuracy), cached at {cache}",
          file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": network.state_dict(), "summary": summary}, cache)
    return network


def feature_extractor(data: ImageDataModule) -> FeatureClassifier:
    """The feature classifier of ``data``'s training set, cached beside the data."""
    data.setup()
    return load_or_train(data.train_set, data.channels, data.frechet_feature_cache)


class FrechetScore:
    """torchmetrics' Frechet distance against a fixed set of real images, whose statistics are
    computed once. A plain object, not an nn.Module, so that its feature network stays out of the
    GAN's parameters, train/eval switching and checkpoints."""

    def __init__(self, metric: FrechetInceptionDistance, real: Dataset, rgb01: bool) -> None:
        self.metric, self.rgb01 = metric, rgb01
        for images, _ in DataLoader(real, batch_size=256):
            metric.update(self.features_input(images.to(metric.device)), real=True)

    @classmethod
    def of_dataset(cls, data: ImageDataModule, features: Literal["classifier", "inception"],
                   samples: int, inception_weights: str | None,
                   device: torch.device) -> FrechetScore:
        """The score against ``samples`` images of ``data``'s training set (a fixed, seeded
        choice), on ``classifier`` features (trained once, cached beside the data) or
        ``inception`` ones (FID, needs torch-fidelity and the weights file)."""
        if features == "inception":
            metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                              reset_real_features=False,
                                              feature_extractor_weights_path=inception_weights)
        else:
            metric = FrechetInceptionDistance(feature=feature_extractor(data),
                                              reset_real_features=False)
        data.setup()
        chosen = torch.randperm(len(data.train_set), generator=torch.Generator().manual_seed(0))
        real = Subset(data.train_set, chosen[:samples].tolist())
        return cls(metric.to(device), real, rgb01=features == "inception")

    def features_input(self, images: Tensor) -> Tensor:
        """The classifier reads [-1, 1] images as trained; Inception (normalize=True) reads [0, 1]
        RGB."""
        if not self.rgb01:
            return images
        images = (images.clamp(-1, 1) + 1) / 2
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    @torch.no_grad()
    def __call__(self, generator: nn.Module, noise: Callable[[int], Tensor], samples: int) -> float:
        self.metric.reset()  # reset_real_features=False: clears the generated statistics only
        for start in range(0, samples, 256):
            fake = generator(noise(min(256, samples - start)))
            self.metric.update(self.features_input(fake), real=False)
        return float(self.metric.compute())
