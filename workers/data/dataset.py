"""``load_dataset``: a trial's data, subset, standardized and resident on its device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from workers.data.images import load_image_arrays
from workers.data.standardize import per_image_standardize
from workers.data.subsets import probe_indices, shuffled_labels, stratified_subset
from workers.errors import ConfigError

if TYPE_CHECKING:
    from workers.config import TrialConfig


@dataclass(frozen=True)
class DeviceDataset:
    """Everything a trial trains and measures on, resident on the training device.

    Attributes:
        x_train: (N, C*H*W) float32 for model mlp, else (N, C, H, W); per-image standardized.
        y_train: (N,) int64 training labels (already permuted when shuffle_labels).
        x_test: (M, ...) float32, laid out like x_train.
        y_test: (M,) int64.
        num_classes: number of classes of the dataset.
        image_shape: (C, H, W) of one image before flattening.
        probe_train: (P,) int64 indices into x_train, up to probe_per_class per class of
            y_train, grouped by class.
        probe_test: (Q,) int64 indices into x_test, likewise for y_test.
        digest: hex digest of the data as used, both splits (``data_digest``); "" when the
            tensors were built by hand.
        available: (train, test) examples in the source before subsetting; (0, 0) when built
            by hand.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int, int]
    probe_train: torch.Tensor
    probe_test: torch.Tensor
    digest: str = ""
    available: tuple[int, int] = (0, 0)


DIGEST_LENGTH = 16  # hex characters (64 bits) of sha256: MLflow keeps up to 36


def data_digest(splits: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """The first ``DIGEST_LENGTH`` hex characters of sha256 over each ``(split, images,
    labels)``: its name, the images' shape and uint8 bytes, the labels as int64.

    Taken from the images before standardization (exact on every machine, and a quarter of
    the bytes of the float tensors): about 0.15 s for CIFAR-10's 50,000 training images.
    """
    digest = hashlib.sha256()
    for split, images, labels in splits:
        digest.update(f"{split}:{images.shape}:{images.dtype};".encode())
        digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        digest.update(memoryview(np.ascontiguousarray(labels, dtype=np.int64)).cast("B"))
    return digest.hexdigest()[:DIGEST_LENGTH]


def load_dataset(config: "TrialConfig", device: torch.device | str = "cpu") -> DeviceDataset:
    """Load, subset, shuffle, standardize and place on ``device`` the data of one trial.

    Steps: ``load_image_arrays`` -> stratified subsets of train_size / test_size (data_seed)
    -> label shuffle when shuffle_labels (data_seed, its own random stream) -> uint8 images
    moved to ``device`` once -> ``per_image_standardize`` there -> flattened to (N, C*H*W)
    for model mlp -> probe indices (probe_per_class, data_seed) on the final labels, so a
    shuffled-label run measures alignment on the classes it is trained on. The digest covers
    the subset images and the final labels of both splits (``data_digest``).

    The flattened layout is (C, H, W) order; the reference flattens (H, W, C), a fixed
    permutation of the inputs that an MLP with i.i.d. first-layer weights cannot tell apart.

    Raises:
        ConfigError: train_size or test_size larger than the split (both reported).
        DatasetUnavailable: the dataset's files are missing or unreadable.
    """
    arrays = load_image_arrays(config.dataset, config.data_dir, config.data_file,
                               config.download)
    requests = (("train_size", "train", config.train_size, arrays.train_labels),
                ("test_size", "test", config.test_size, arrays.test_labels))
    problems = [f"'{key}' is {size} but the {config.dataset} {split} split has {len(labels)} "
                f"examples; use at most {len(labels)}, or null for all"
                for key, split, size, labels in requests
                if size is not None and size > len(labels)]
    if problems:
        raise ConfigError(problems, source=f"dataset {config.dataset}")

    device = torch.device(device)
    flatten = config.model == "mlp"

    used: list[tuple[str, np.ndarray, np.ndarray]] = []  # (split, images, labels) for the digest

    def split_tensors(split: str, images: np.ndarray, labels: np.ndarray, size: int | None,
                      shuffle: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if size is not None:
            keep = stratified_subset(labels, size, config.data_seed)
            images, labels = images[keep], labels[keep]
        if shuffle:
            labels = shuffled_labels(labels, config.data_seed)
        used.append((split, images, labels))
        # uint8 crosses to the device (4x fewer bytes than float32); standardize there.
        x = per_image_standardize(torch.from_numpy(np.array(images, copy=True)).to(device))
        if flatten:
            x = x.reshape(len(x), -1)                                    # (N, C*H*W)
        probes = probe_indices(labels, config.probe_per_class, config.data_seed)
        return (x, torch.from_numpy(labels.astype(np.int64)).to(device),
                torch.from_numpy(probes).to(device))

    x_train, y_train, probe_train = split_tensors(
        "train", arrays.train_images, arrays.train_labels, config.train_size, config.shuffle_labels)
    x_test, y_test, probe_test = split_tensors(
        "test", arrays.test_images, arrays.test_labels, config.test_size, False)
    h, w, c = arrays.train_images.shape[1:]
    return DeviceDataset(x_train, y_train, x_test, y_test, arrays.num_classes, (c, h, w),
                         probe_train, probe_test, digest=data_digest(used),
                         available=(len(arrays.train_labels), len(arrays.test_labels)))
