"""What a trial's MLflow run records of its data: name, source, digest and profile.

``workers.mlflow_log`` logs a ``DatasetDescription`` as the run's MLflow dataset input (the
UI's Dataset column); nothing here imports mlflow. The members of a pack share their data, so
a pack describes it once (the digest is computed when the data is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.data.images import source_location

if TYPE_CHECKING:
    from workers.config import TrialConfig
    from workers.data.dataset import DeviceDataset


@dataclass(frozen=True)
class DatasetDescription:
    """A trial's data as an MLflow dataset input shows it."""

    name: str
    """The dataset: cifar10, cifar100, svhn or digits."""
    source_kind: str
    """parquet, torchvision or scikit-learn (``workers.data.images.source_location``)."""
    source: str
    """The absolute path the images were read from: a Parquet file, torchvision's folder, or
    scikit-learn's bundled digits file (on the machine that trained)."""
    digest: str
    """``DeviceDataset.digest``: the images and labels actually used, both splits."""
    profile: dict[str, Any] = field(default_factory=dict)
    """Split sizes (used and available), subset, labels, classes and image shape."""


def describe_dataset(config: "TrialConfig", data: "DeviceDataset") -> DatasetDescription:
    """The description of ``data``, loaded by ``load_dataset`` for ``config``."""
    kind, path = source_location(config.dataset, config.data_dir, config.data_file)
    subset = (f"stratified by class, data_seed {config.data_seed}"
              if config.train_size is not None or config.test_size is not None else "none")
    labels = f"shuffled, data_seed {config.data_seed}" if config.shuffle_labels else "original"
    c, h, w = data.image_shape
    profile = {"train": int(data.y_train.shape[0]), "test": int(data.y_test.shape[0]),
               "train_available": data.available[0], "test_available": data.available[1],
               "subset": subset, "labels": labels, "classes": data.num_classes,
               "image": f"{h}x{w}x{c}", "format": kind}
    return DatasetDescription(config.dataset, kind, str(path), data.digest, profile)
