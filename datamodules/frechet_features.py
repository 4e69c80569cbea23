"""A feature extractor for Frechet distances that needs no download.

FID needs Inception-v3 weights, which a fresh machine without a network does not have. Instead a
small CNN is trained once on the dataset itself (on its labels, or, for single-class data such as
LSUN bedrooms, on predicting which of four rotations was applied), and its penultimate layer gives
the features. The trained network is cached beside the data, so later runs load it at once.
Scores are comparable between runs that share the cache file, not with published FIDs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from .images import DatasetError


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
