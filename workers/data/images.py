"""``load_image_arrays``: a dataset's decoded images from its source, through the cache."""

from __future__ import annotations

from pathlib import Path

from workers.data.arrays import ImageArrays
from workers.datasets import NUM_CLASSES
from workers.data.cache import cache_path, read_cache, write_cache
from workers.data.parquet_table import read_parquet_table, table_problem
from workers.data.sources import (digits_arrays, digits_file, ensure_torchvision_files,
                                  missing_files_problem, read_torchvision_files, torchvision_folder)
from workers.errors import ConfigError, DatasetUnavailable


def source_problem(dataset: str, data_dir: str, data_file: str | None = None,
                   download: bool = False) -> str | None:
    """What ``load_image_arrays`` would find wrong with the dataset's source, from file
    names and a Parquet footer alone (no image decoded): a missing, unreadable or wrong-column
    data_file, or torchvision files missing under data_dir without ``download``. None when
    the source looks usable. Same order of sources as ``load_image_arrays``."""
    if data_file is not None:
        return table_problem(Path(data_file).expanduser().resolve())
    if dataset == "digits" or download:
        return None
    return missing_files_problem(dataset, Path(data_dir).expanduser())


# Kinds of source, as ``source_location`` names them (first match wins, as in load_image_arrays).
SOURCE_PARQUET, SOURCE_DIGITS, SOURCE_TORCHVISION = "parquet", "scikit-learn", "torchvision"


def source_location(dataset: str, data_dir: str, data_file: str | None = None) -> tuple[str, Path]:
    """Which source ``load_image_arrays`` reads for these settings, and where: (kind, the
    absolute path of the Parquet table, the bundled digits file or torchvision's folder)."""
    if data_file is not None:
        return SOURCE_PARQUET, Path(data_file).expanduser().resolve()
    if dataset == "digits":
        return SOURCE_DIGITS, digits_file()
    return SOURCE_TORCHVISION, torchvision_folder(dataset, Path(data_dir).expanduser().resolve())


def source_problems(sources: list[tuple[str, str, str | None, bool]]) -> list[str | None]:
    """``source_problem`` of each ``(dataset, data_dir, data_file, download)``: what the
    driver's preflight runs on a worker node of a cluster, in one small Ray task."""
    return [source_problem(*source) for source in sources]


def load_image_arrays(dataset: str, data_dir: str, data_file: str | None = None,
                      download: bool = False) -> ImageArrays:
    """All images and labels of ``dataset`` (both splits, before subsetting).

    Sources, first match wins:
      1. ``data_file``: a Parquet image table (see ``parquet_table``).
      2. digits: scikit-learn's bundled copy (not cached: it loads in milliseconds).
      3. cifar10/cifar100/svhn: torchvision's files under ``data_dir``, downloaded first
         when missing and ``download`` is true.
    Decoded arrays of 1 and 3 are cached under ``<data_dir>/xmem-cache/``.

    Args:
        dataset: one of cifar10, cifar100, svhn, digits.
        data_dir: folder of torchvision's files and of the cache; ``~`` is expanded.
        data_file: path of a Parquet image table, or None; ``~`` is expanded, a relative
            path is taken from the current directory.
        download: fetch torchvision's files when missing (needs internet).

    Raises:
        DatasetUnavailable: the source files are missing or unreadable.
        ConfigError: unknown dataset name.
    """
    if dataset not in NUM_CLASSES:
        raise ConfigError([f"'dataset' is {dataset!r}; valid choices: {', '.join(NUM_CLASSES)}"])
    root = Path(data_dir).expanduser()
    if data_file is not None:
        table = Path(data_file).expanduser().resolve()
        if not table.is_file():
            raise DatasetUnavailable(f"data_file {table}: no such file (a Parquet table with "
                                     "columns split, label, image was expected there)")
        files, source = [table], "parquet"

        def decode() -> ImageArrays:
            return read_parquet_table(table, dataset)
    elif dataset == "digits":
        return digits_arrays()
    else:
        files, source = ensure_torchvision_files(dataset, root, download), "torchvision"

        def decode() -> ImageArrays:
            return read_torchvision_files(dataset, root)

    path = cache_path(root, dataset, source, files)
    arrays = read_cache(path)
    if arrays is None:
        arrays = decode()
        write_cache(path, arrays)
    return arrays
