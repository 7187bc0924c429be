"""Readers of the bundled digits and of torchvision's on-disk dataset files.

torchvision's files are read here rather than through its dataset classes, because those
check md5 sums (rejecting files written by tests) and hold the images in their own layout.
torchvision is imported only to download missing files.

Files expected under ``data_dir`` (torchvision's layout, ``root=data_dir``)::

    cifar10   cifar-10-batches-py/data_batch_1 .. data_batch_5, cifar-10-batches-py/test_batch
    cifar100  cifar-100-python/train, cifar-100-python/test
    svhn      train_32x32.mat, test_32x32.mat
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np

from workers.data.arrays import ImageArrays
from workers.datasets import NUM_CLASSES
from workers.data.subsets import stratified_subset
from workers.errors import DatasetUnavailable

# Paths relative to data_dir of each split's files, in torchvision's layout.
TORCHVISION_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "cifar10": {
        "train": tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        "test": ("cifar-10-batches-py/test_batch",),
    },
    "cifar100": {"train": ("cifar-100-python/train",), "test": ("cifar-100-python/test",)},
    "svhn": {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
}

DIGITS_TEST_FRACTION = 1 / 3
DIGITS_SPLIT_SEED = 0


def digits_arrays() -> ImageArrays:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes) with a fixed split.

    Pixel values are the original 0..16 intensities stored as uint8 (per-image
    standardization makes their scale irrelevant). The test split is a stratified third
    (``stratified_subset`` with seed 0: 599 test, 1198 train), the same on every machine.

    Returns:
        ImageArrays with (N, 8, 8, 1) images.
    """
    pixels, labels = _digits_table()
    images = pixels.astype(np.uint8).reshape(-1, 8, 8, 1)     # (1797, 8, 8, 1)
    test = np.zeros(len(labels), dtype=bool)
    test[stratified_subset(labels, round(len(labels) * DIGITS_TEST_FRACTION),
                           DIGITS_SPLIT_SEED)] = True
    return ImageArrays(images[~test], labels[~test], images[test], labels[test],
                       NUM_CLASSES["digits"])


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 64) pixel values 0..16 and (1797,) int64 labels of scikit-learn's digits.

    Reads scikit-learn's bundled ``datasets/data/digits.csv.gz`` directly (about 10 ms):
    importing ``sklearn`` alone takes about 2 s here, paid by every trial process. Falls
    back to ``sklearn.datasets.load_digits`` if the file is not where it is expected.
    """
    bundled = digits_file()
    if bundled.is_file():
        table = np.loadtxt(bundled, delimiter=",", dtype=np.int64)   # (1797, 65)
        return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.int64), digits.target.astype(np.int64)


def digits_file() -> Path:
    """Where scikit-learn keeps its bundled digits (``datasets/data/digits.csv.gz``).

    Raises:
        DatasetUnavailable: scikit-learn is not installed.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DatasetUnavailable("dataset digits needs scikit-learn: pip install scikit-learn")
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


def torchvision_folder(dataset: str, data_dir: Path) -> Path:
    """The folder holding the dataset's torchvision files (``data_dir`` itself for SVHN)."""
    return (data_dir / TORCHVISION_FILES[dataset]["train"][0]).parent


def torchvision_files(dataset: str, data_dir: Path) -> list[Path]:
    """All files of ``dataset`` (train then test) in torchvision's layout under data_dir."""
    splits = TORCHVISION_FILES[dataset]
    return [data_dir / name for split in ("train", "test") for name in splits[split]]


def ensure_torchvision_files(dataset: str, data_dir: Path, download: bool) -> list[Path]:
    """The dataset's files, downloaded with torchvision first when missing and allowed.

    Returns:
        The paths of ``torchvision_files``, all existing.

    Raises:
        DatasetUnavailable: files missing (and download off, or the download failed),
            naming each expected path and how to provide it.
    """
    files = torchvision_files(dataset, data_dir)
    if download and missing_files_problem(dataset, data_dir):
        _download(dataset, data_dir)
    problem = missing_files_problem(dataset, data_dir)
    if problem:
        raise DatasetUnavailable(problem)
    return files


def missing_files_problem(dataset: str, data_dir: Path) -> str | None:
    """Which of the dataset's torchvision files are missing under ``data_dir``, and how to
    provide them; None when all are there."""
    missing = [p for p in torchvision_files(dataset, data_dir) if not p.is_file()]
    if not missing:
        return None
    listing = "\n".join(f"  {p}" for p in missing)
    return (f"dataset {dataset}: {len(missing)} file(s) missing in torchvision's layout under "
            f"{data_dir}:\n{listing}\n"
            "Provide them by one of: set download=true on a machine with internet access; "
            f"copy torchvision's {dataset} files into {data_dir}; or set data_file to a "
            "Parquet image table (columns split, label, image).")


def _download(dataset: str, data_dir: Path) -> None:
    """Fetch the dataset with torchvision into data_dir (both splits)."""
    import torchvision.datasets as tvd

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if dataset == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(root=str(data_dir), split=split, download=True)
        else:
            cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
            for train in (True, False):
                cls(root=str(data_dir), train=train, download=True)
    except Exception as error:  # network, disk, checksum: all mean "not available"
        raise DatasetUnavailable(
            f"dataset {dataset}: torchvision's download into {data_dir} failed "
            f"({type(error).__name__}: {error}). Without internet access, copy torchvision's "
            f"{dataset} files into {data_dir} or set data_file to a Parquet image table."
        ) from error


def read_torchvision_files(dataset: str, data_dir: Path) -> ImageArrays:
    """Decode torchvision's on-disk files of ``dataset`` (they must exist).

    Returns:
        ImageArrays with (N, 32, 32, 3) uint8 images in HWC order.

    Raises:
        DatasetUnavailable: a file cannot be read or lacks the expected content.
    """
    splits = TORCHVISION_FILES[dataset]
    parts = {}
    for split in ("train", "test"):
        paths = [data_dir / name for name in splits[split]]
        if dataset == "svhn":
            parts[split] = _read_svhn_mat(paths[0])
        else:
            label_key = "labels" if dataset == "cifar10" else "fine_labels"
            batches = [_read_cifar_pickle(p, label_key) for p in paths]
            parts[split] = (np.concatenate([b[0] for b in batches]),
                            np.concatenate([b[1] for b in batches]))
    return ImageArrays(*parts["train"], *parts["test"], NUM_CLASSES[dataset])


def _read_cifar_pickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle: ``data`` (N, 3072) uint8 in CHW order -> (N, 32, 32, 3) and labels."""
    try:
        with open(path, "rb") as f:
            # latin1 is how torchvision reads the original Python 2 pickles.
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(_get(entry, "data"), dtype=np.uint8)
        labels = np.asarray(_get(entry, label_key), dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # (N, H, W, C)
    except Exception as error:  # any failure means the file is not a CIFAR batch
        raise DatasetUnavailable(f"{path}: not a readable CIFAR batch with keys 'data' and "
                                 f"'{label_key}' ({type(error).__name__}: {error})") from error
    if len(labels) != len(images):
        raise DatasetUnavailable(f"{path}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _get(entry: dict, key: str):
    """``entry[key]`` for pickles whose keys are str (latin1-decoded) or bytes."""
    return entry[key] if key in entry else entry[key.encode()]


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file: X (32, 32, 3, N) -> (N, 32, 32, 3); y (N, 1), 10 -> digit 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2)  # (N, H, W, C)
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except Exception as error:  # any failure means the file is not an SVHN split
        raise DatasetUnavailable(f"{path}: not a readable SVHN .mat file with X and y "
                                 f"({type(error).__name__}: {error})") from error
    if len(labels) != len(images):
        raise DatasetUnavailable(f"{path}: {len(images)} images but {len(labels)} labels")
    labels[labels == 10] = 0  # SVHN stores digit 0 as class 10; torchvision maps it to 0
    return np.ascontiguousarray(images), labels
