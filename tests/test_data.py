"""Tests of workers.data: standardization, subsets, every source format, cache, load_dataset.

Source files are written by the tests in torchvision's exact on-disk formats (no internet
here); the shared CIFAR-10 Parquet table is used when present and skipped otherwise.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.config import TrialConfig
from workers.data import (
    ImageArrays,
    load_dataset,
    load_image_arrays,
    per_image_standardize,
    probe_indices,
    shuffled_labels,
    stratified_subset,
)
from workers.data import parquet_table, sources
from workers.data.cache import CACHE_DIRNAME
from workers.errors import ConfigError, DatasetUnavailable

SHARED_CIFAR10 = Path(os.environ.get(
    "XMEM_CIFAR10_PARQUET",
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.parquet"))


# --- writers of source files in their owners' exact formats ------------------------------

def write_cifar_pickle(path: Path, data: np.ndarray, labels: list[int], label_key: str) -> None:
    """A CIFAR batch as the original release stores it: data (N, 3072) uint8, CHW rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"batch_label": "test batch", "data": data, label_key: labels,
             "filenames": [f"img{i}.png" for i in range(len(labels))]}
    if label_key == "fine_labels":
        entry["coarse_labels"] = [label // 5 for label in labels]
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path, per_batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10 files under root; returns the raw data rows and labels written per split."""
    rng = np.random.default_rng(seed)
    written = {"train_data": [], "train_labels": []}
    folder = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        write_cifar_pickle(folder / name, data, labels, "labels")
        if name == "test_batch":
            written["test_data"], written["test_labels"] = data, np.array(labels)
        else:
            written["train_data"].append(data)
            written["train_labels"] += labels
    written["train_data"] = np.concatenate(written["train_data"])
    written["train_labels"] = np.array(written["train_labels"])
    return written


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
        buffer, format="PNG")
    return buffer.getvalue()


def write_image_table(path: Path, splits: list[str], labels: list[int],
                      images: list[np.ndarray], **extra_columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"split": pa.array(splits).dictionary_encode(),
               "label": pa.array(labels, type=pa.int8()),
               "image": pa.array([png_bytes(im) for im in images], type=pa.binary()),
               **extra_columns}
    pq.write_table(pa.table(columns), path)


def nchw_reference(images: np.ndarray) -> np.ndarray:
    """Plain numpy per_image_standardization: (N, H, W, C) -> (N, C, H, W) float64."""
    out = []
    for image in images.astype(np.float64):
        scale = max(image.std(), 1.0 / np.sqrt(image.size))
        out.append(((image - image.mean()) / scale).transpose(2, 0, 1))
    return np.stack(out)


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    """CIFAR-10 files with 40 images per batch (200 train, 40 test, 10 classes)."""
    write_cifar10(tmp_path, per_batch=40)
    return tmp_path


# --- standardization ---------------------------------------------------------------------

def test_per_image_standardize_matches_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    images[1] = 77  # constant image: std 0 -> floored at 1/sqrt(d) -> zeros, not NaN
    out = per_image_standardize(torch.from_numpy(images))
    assert out.shape == (4, 3, 5, 6) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), nchw_reference(images), atol=1e-5)
    assert torch.all(out[1] == 0)
    assert torch.allclose(out[0].std(unbiased=False), torch.tensor(1.0), atol=1e-5)


def test_per_image_standardize_floor_and_float_input_untouched():
    # std 5e-4 is below 1/sqrt(d) = 1/sqrt(12), so the floor is the divisor.
    images = torch.zeros(2, 2, 2, 3, dtype=torch.float64)
    images[0, 0, 0, 0] = 1e-3
    images[1] = torch.arange(12, dtype=torch.float64).reshape(2, 2, 3)
    before = images.clone()
    out = per_image_standardize(images)
    np.testing.assert_allclose(out.numpy(), nchw_reference(images.numpy()), atol=1e-6)
    assert torch.equal(images, before)


# --- subsets -----------------------------------------------------------------------------

def test_stratified_subset_proportions_and_largest_remainder():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    idx = stratified_subset(labels, 100, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [50, 30, 20]
    # exact quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the leftover one to class 0
    small = np.repeat([0, 1, 2], [5, 3, 2])
    assert np.bincount(small[stratified_subset(small, 7, 0)]).tolist() == [4, 2, 1]
    # quotas 2.91, 0.06, 0.03 would starve two classes; every class keeps one
    rare = np.repeat([0, 1, 2], [97, 2, 1])
    assert np.bincount(rare[stratified_subset(rare, 3, 0)]).tolist() == [1, 1, 1]


def test_stratified_subset_seeding_and_size_error():
    labels = np.random.default_rng(0).integers(0, 10, size=1000)
    a = stratified_subset(labels, 200, seed=1)
    assert np.array_equal(a, stratified_subset(labels, 200, seed=1))
    assert not np.array_equal(a, stratified_subset(labels, 200, seed=2))
    assert np.array_equal(stratified_subset(labels, 1000, seed=1), np.arange(1000))
    with pytest.raises(ConfigError, match=r"train_size.*1000"):
        stratified_subset(labels, 1001, seed=1)


def test_shuffled_labels_is_a_fixed_permutation():
    labels = np.repeat(np.arange(10), 20)
    shuffled = shuffled_labels(labels, seed=5)
    assert np.array_equal(np.sort(shuffled), labels)
    assert np.array_equal(shuffled, shuffled_labels(labels, seed=5))
    assert not np.array_equal(shuffled, shuffled_labels(labels, seed=6))
    assert np.mean(shuffled != labels) > 0.5


def test_probe_indices_per_class_and_small_classes():
    labels = np.repeat([2, 0, 1], [10, 3, 7])
    probes = probe_indices(labels, per_class=5, seed=0)
    assert probes.dtype == np.int64 and len(np.unique(probes)) == len(probes)
    assert labels[probes].tolist() == [0] * 3 + [1] * 5 + [2] * 5  # grouped by class order
    assert sorted(probes[:3]) == np.flatnonzero(labels == 0).tolist()  # all of a small class
    assert np.array_equal(probes, probe_indices(labels, per_class=5, seed=0))
    assert not np.array_equal(probes, probe_indices(labels, per_class=5, seed=1))


# --- sources -----------------------------------------------------------------------------

def test_digits_offline(tmp_path):
    arrays = load_image_arrays("digits", str(tmp_path))
    assert arrays.train_images.shape == (1198, 8, 8, 1)
    assert arrays.test_images.shape == (599, 8, 8, 1)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_images.max() == 16
    assert arrays.num_classes == 10
    assert set(arrays.train_labels) == set(arrays.test_labels) == set(range(10))
    assert not (tmp_path / CACHE_DIRNAME).exists()  # bundled data is not cached


def test_digits_bundled_file_matches_sklearn():
    # The fast path reads sklearn's data file directly; it must agree with load_digits.
    from sklearn.datasets import load_digits

    pixels, labels = sources._digits_table()
    digits = load_digits()
    assert np.array_equal(pixels, digits.data) and np.array_equal(labels, digits.target)


def test_cifar10_files_pixels_in_hwc_order(tmp_path):
    written = write_cifar10(tmp_path, per_batch=3)
    arrays = load_image_arrays("cifar10", str(tmp_path))
    assert arrays.train_images.shape == (15, 32, 32, 3)
    assert arrays.test_images.shape == (3, 32, 32, 3)
    assert arrays.num_classes == 10
    assert arrays.train_labels.dtype == np.int64
    assert np.array_equal(arrays.train_labels, written["train_labels"])
    assert np.array_equal(arrays.test_labels, written["test_labels"])
    # A row is 1024 red, then 1024 green, then 1024 blue values, each row-major (h, w).
    data = written["train_data"]
    for n, h, w, c in [(0, 0, 1, 0), (4, 31, 0, 2), (14, 5, 17, 1)]:
        assert arrays.train_images[n, h, w, c] == data[n, c * 1024 + h * 32 + w]
    expected = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(arrays.train_images, expected)


def test_cifar100_files_use_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    data = {s: rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            for s, n in (("train", 6), ("test", 4))}
    labels = {"train": [0, 99, 50, 7, 42, 99], "test": [3, 98, 1, 0]}
    for split in ("train", "test"):
        write_cifar_pickle(folder / split, data[split], labels[split], "fine_labels")
    arrays = load_image_arrays("cifar100", str(tmp_path))
    assert arrays.num_classes == 100
    assert arrays.train_labels.tolist() == labels["train"]
    assert arrays.test_labels.tolist() == labels["test"]
    assert np.array_equal(arrays.test_images,
                          data["test"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_svhn_mat_files_hwc_and_label_ten_is_zero(tmp_path):
    import scipy.io

    rng = np.random.default_rng(2)
    written = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N)
        y = np.array([[10], [1], [9], [10], [5]][:n], dtype=np.uint8)   # (N, 1)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = x
    arrays = load_image_arrays("svhn", str(tmp_path))
    assert arrays.train_images.shape == (5, 32, 32, 3)
    assert arrays.train_labels.tolist() == [0, 1, 9, 0, 5]
    assert arrays.test_labels.tolist() == [0, 1, 9]
    assert arrays.train_images[3, 7, 20, 2] == written["train"][7, 20, 2, 3]
    assert np.array_equal(arrays.test_images, written["test"].transpose(3, 0, 1, 2))


@pytest.mark.parametrize("dataset, expected", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("svhn", "test_32x32.mat"),
])
def test_missing_files_offline_name_the_expected_path(tmp_path, dataset, expected):
    with pytest.raises(DatasetUnavailable) as error:
        load_image_arrays(dataset, str(tmp_path), download=False)
    message = str(error.value)
    assert str(tmp_path / expected) in message
    assert "download=true" in message and "data_file" in message


def test_download_fetches_missing_files_with_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # stands in for the network: writes the files the real one would
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_cifar10(Path(root), per_batch=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    arrays = load_image_arrays("cifar10", str(tmp_path), download=True)
    assert arrays.train_images.shape == (10, 32, 32, 3)
    assert calls[0] == (str(tmp_path), True, True)


def test_failed_download_is_dataset_unavailable(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(**kwargs):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "SVHN", offline)
    with pytest.raises(DatasetUnavailable, match="download into .* failed.*not known"):
        load_image_arrays("svhn", str(tmp_path), download=True)


def test_data_dir_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_cifar10(tmp_path / "data", per_batch=2)
    arrays = load_image_arrays("cifar10", "~/data")
    assert arrays.train_images.shape == (10, 32, 32, 3)
    assert any((tmp_path / "data" / CACHE_DIRNAME).iterdir())


# --- Parquet image table -----------------------------------------------------------------

def test_parquet_table_png_pixels_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8) for _ in range(6)]
    splits = ["test", "train", "train", "test", "train", "train"]
    labels = [9, 0, 3, 1, 3, 2]
    table = tmp_path / "table.parquet"
    write_image_table(table, splits, labels, images)
    arrays = load_image_arrays("cifar10", str(tmp_path / "data"), data_file=str(table))
    train_rows, test_rows = [1, 2, 4, 5], [0, 3]
    assert arrays.train_images.shape == (4, 4, 5, 3)
    assert np.array_equal(arrays.train_images, np.stack([images[i] for i in train_rows]))
    assert np.array_equal(arrays.test_images, np.stack([images[i] for i in test_rows]))
    assert arrays.train_labels.tolist() == [0, 3, 3, 2]
    assert arrays.test_labels.tolist() == [9, 1]
    assert arrays.num_classes == 10


def test_parquet_table_digits_stays_grayscale(tmp_path):
    images = [np.full((8, 8, 1), v, dtype=np.uint8) for v in (0, 16, 7)]
    table = tmp_path / "digits.parquet"
    write_image_table(table, ["train", "train", "test"], [0, 1, 2], images)
    arrays = load_image_arrays("digits", str(tmp_path), data_file=str(table))
    assert arrays.train_images.shape == (2, 8, 8, 1)
    assert arrays.test_images[0, 3, 3, 0] == 7


def test_parquet_table_problems_are_dataset_unavailable(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = np.zeros((2, 2, 3), dtype=np.uint8)
    with pytest.raises(DatasetUnavailable, match="no such file"):
        load_image_arrays("cifar10", str(tmp_path), data_file=str(tmp_path / "absent.parquet"))

    no_image = tmp_path / "no_image.parquet"
    pq.write_table(pa.table({"split": ["train"], "label": [0]}), no_image)
    with pytest.raises(DatasetUnavailable, match=r"no_image\.parquet.*missing column.*image"):
        load_image_arrays("cifar10", str(tmp_path), data_file=str(no_image))

    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_bytes(b"not a parquet file")
    with pytest.raises(DatasetUnavailable, match="not a readable Parquet file"):
        load_image_arrays("cifar10", str(tmp_path), data_file=str(not_parquet))

    bad_label = tmp_path / "bad_label.parquet"
    write_image_table(bad_label, ["train", "test"], [10, 0], [image, image])
    with pytest.raises(DatasetUnavailable, match=r"outside 0\.\.9"):
        load_image_arrays("cifar10", str(tmp_path), data_file=str(bad_label))
    # the same labels are fine for a 100-class dataset
    load_image_arrays("cifar100", str(tmp_path), data_file=str(bad_label))

    bad_split = tmp_path / "bad_split.parquet"
    write_image_table(bad_split, ["train", "valid"], [0, 0], [image, image])
    with pytest.raises(DatasetUnavailable, match="valid"):
        load_image_arrays("cifar10", str(tmp_path), data_file=str(bad_split))


# --- cache -------------------------------------------------------------------------------

def _forbid(*args, **kwargs):
    raise AssertionError("decoded although a cache entry exists")


def test_cache_second_load_skips_decoding(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8) for _ in range(4)]
    table = tmp_path / "t.parquet"
    write_image_table(table, ["train", "train", "test", "test"], [0, 1, 2, 3], images)
    data_dir = tmp_path / "data"
    first = load_image_arrays("cifar10", str(data_dir), data_file=str(table))
    cached = list((data_dir / CACHE_DIRNAME).glob("cifar10-parquet-*.npz"))
    assert len(cached) == 1
    assert not list((data_dir / CACHE_DIRNAME).glob("*.tmp"))  # temp file renamed away

    monkeypatch.setattr(parquet_table, "decode_image", _forbid)
    second = load_image_arrays("cifar10", str(data_dir), data_file=str(table))
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert second.num_classes == 10

    # A changed source file is a new cache key: decoded again, with the new content.
    monkeypatch.undo()
    write_image_table(table, ["train", "test", "test"], [5, 6, 7], images[:3])
    third = load_image_arrays("cifar10", str(data_dir), data_file=str(table))
    assert third.train_labels.tolist() == [5]


def test_cache_of_torchvision_files(cifar10_dir, monkeypatch):
    first = load_image_arrays("cifar10", str(cifar10_dir))
    monkeypatch.setattr(sources, "_read_cifar_pickle", _forbid)
    second = load_image_arrays("cifar10", str(cifar10_dir))
    assert np.array_equal(first.train_images, second.train_images)


def test_unreadable_cache_entry_is_decoded_again(cifar10_dir):
    first = load_image_arrays("cifar10", str(cifar10_dir))
    (entry,) = (cifar10_dir / CACHE_DIRNAME).glob("*.npz")
    entry.write_bytes(b"truncated")
    again = load_image_arrays("cifar10", str(cifar10_dir))
    assert np.array_equal(first.test_images, again.test_images)


# --- load_dataset ------------------------------------------------------------------------

def test_load_dataset_digits_mlp_is_flat_and_standardized():
    ds = load_dataset(TrialConfig(dataset="digits", model="mlp", probe_per_class=20))
    assert ds.x_train.shape == (1198, 64) and ds.x_train.dtype == torch.float32
    assert ds.x_test.shape == (599, 64)
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10
    assert ds.image_shape == (1, 8, 8)
    assert torch.allclose(ds.x_train.mean(1), torch.zeros(1198), atol=1e-5)
    assert torch.allclose(ds.x_train.std(1, unbiased=False), torch.ones(1198), atol=1e-4)
    assert ds.probe_train.shape == (200,) and ds.probe_test.shape == (200,)


def test_load_dataset_convnet_keeps_nchw_and_subsets(cifar10_dir):
    config = TrialConfig(dataset="cifar10", data_dir=str(cifar10_dir), model="convnet",
                         train_size=50, test_size=20, probe_per_class=3)
    ds = load_dataset(config)
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.image_shape == (3, 32, 32)
    assert torch.bincount(ds.y_train).tolist() == [5] * 10
    assert torch.bincount(ds.y_test).tolist() == [2] * 10
    # probes: valid indices, min(per_class, class count) of each class, grouped by class
    assert ds.probe_train.tolist() != [] and int(ds.probe_train.max()) < 50
    assert torch.bincount(ds.y_train[ds.probe_train]).tolist() == [3] * 10
    assert torch.bincount(ds.y_test[ds.probe_test]).tolist() == [2] * 10
    assert torch.all(torch.diff(ds.y_test[ds.probe_test]) >= 0)

    mlp = load_dataset(config.replace(model="mlp"))
    assert mlp.x_train.shape == (50, 3 * 32 * 32)
    assert torch.equal(mlp.x_train, ds.x_train.reshape(50, -1))


def test_load_dataset_shuffle_labels_changes_labels_only(cifar10_dir):
    config = TrialConfig(dataset="cifar10", data_dir=str(cifar10_dir), train_size=100)
    plain = load_dataset(config)
    shuffled = load_dataset(config.replace(shuffle_labels=True))
    assert torch.equal(plain.x_train, shuffled.x_train)
    assert torch.equal(plain.x_test, shuffled.x_test)
    assert torch.equal(plain.y_test, shuffled.y_test)
    assert not torch.equal(plain.y_train, shuffled.y_train)
    assert torch.equal(torch.bincount(plain.y_train), torch.bincount(shuffled.y_train))
    # probes follow the labels trained on
    assert torch.all(torch.diff(shuffled.y_train[shuffled.probe_train]) >= 0)


def test_load_dataset_sizes_too_large_name_both_keys(cifar10_dir):
    config = TrialConfig(dataset="cifar10", data_dir=str(cifar10_dir), train_size=201,
                         test_size=41)
    with pytest.raises(ConfigError) as error:
        load_dataset(config)
    message = str(error.value)
    assert "'train_size' is 201" in message and "has 200 examples" in message
    assert "'test_size' is 41" in message and "has 40 examples" in message


@pytest.mark.skipif(not SHARED_CIFAR10.is_file(),
                    reason=f"shared CIFAR-10 table not found at {SHARED_CIFAR10} "
                           "(set XMEM_CIFAR10_PARQUET)")
def test_shared_cifar10_table_through_load_dataset(tmp_path):
    config = TrialConfig(dataset="cifar10", data_dir=str(tmp_path), data_file=str(SHARED_CIFAR10),
                         train_size=500, test_size=100, probe_per_class=10)
    ds = load_dataset(config)
    assert ds.x_train.shape == (500, 3072) and ds.x_test.shape == (100, 3072)
    assert ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    assert torch.bincount(ds.y_train).tolist() == [50] * 10
    assert torch.bincount(ds.y_test).tolist() == [10] * 10
    assert ds.probe_train.shape == (100,)
    arrays = load_image_arrays("cifar10", str(tmp_path), data_file=str(SHARED_CIFAR10))
    assert isinstance(arrays, ImageArrays)
    assert arrays.train_images.shape == (50000, 32, 32, 3)
    assert arrays.test_images.shape == (10000, 32, 32, 3)
