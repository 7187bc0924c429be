"""Facts about the datasets xmem knows: classes, split sizes, image shapes. Torch-free.

The config's choices, the loaders' label checks, the ConvNet's size rule and the claims'
chance levels all read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset as its standard source ships it."""

    num_classes: int
    train_size: int
    """Examples in the full training split."""
    test_size: int
    """Examples in the full test split."""
    image_shape: tuple[int, int, int]
    """(H, W, C) in pixels and channels."""


FACTS: dict[str, DatasetFacts] = {
    "cifar10": DatasetFacts(10, 50_000, 10_000, (32, 32, 3)),
    "cifar100": DatasetFacts(100, 50_000, 10_000, (32, 32, 3)),
    "svhn": DatasetFacts(10, 73_257, 26_032, (32, 32, 3)),
    # scikit-learn's 1797 digits, split once by workers.data.sources (stratified, seed 0).
    "digits": DatasetFacts(10, 1_198, 599, (8, 8, 1)),
}
DATASETS = tuple(FACTS)
NUM_CLASSES = {name: facts.num_classes for name, facts in FACTS.items()}
