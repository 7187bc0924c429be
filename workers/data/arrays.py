"""The decoded raw images of one dataset, as every source returns them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """Decoded raw images of a dataset (both splits, before any subsetting).

    Attributes:
        train_images: (N_train, H, W, C) uint8 pixel values.
        train_labels: (N_train,) int64 class ids in [0, num_classes).
        test_images: (N_test, H, W, C) uint8, same H, W, C as the training images.
        test_labels: (N_test,) int64.
        num_classes: number of classes of the dataset (not of the classes present).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        # A wrong shape or dtype here is a bug in a source reader (or a stale cache file),
        # so fail at the boundary rather than deep inside training.
        problems = []
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                problems.append(f"{split}_images must be (N, H, W, C) uint8, got "
                                f"{images.shape} {images.dtype}")
            if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                problems.append(f"{split}_labels must be ({images.shape[0]},) int64, got "
                                f"{labels.shape} {labels.dtype}")
        if not problems and self.train_images.shape[1:] != self.test_images.shape[1:]:
            problems.append(f"train images are {self.train_images.shape[1:]} but test images "
                            f"are {self.test_images.shape[1:]}")
        if problems:
            raise ValueError("inconsistent ImageArrays: " + "; ".join(problems))
