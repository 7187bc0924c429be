"""On-disk cache of decoded ImageArrays, so that only a dataset's first load decodes.

Files live under ``<data_dir>/xmem-cache/`` as ``<dataset>-<source>-<key>.npz``
(uncompressed: loading 60,000 CIFAR images takes a fraction of a second). The key hashes the
dataset name, the source kind and each source file's resolved path, size and mtime_ns, so
replacing a source file makes a new entry (old entries are left in place; delete the folder
to reclaim the space). Writes are atomic (temp file + ``os.replace``) because several trials
may load the same dataset at once; a cache that cannot be read or written is skipped with a
warning, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from workers.data.arrays import ImageArrays

log = logging.getLogger(__name__)

CACHE_DIRNAME = "xmem-cache"
# Bump when the decoded content of a source changes, to invalidate existing entries.
CACHE_FORMAT = 1


def cache_path(data_dir: Path, dataset: str, source: str, files: list[Path]) -> Path:
    """Where the decoded arrays of ``dataset`` read from ``files`` are cached.

    Args:
        data_dir: the (user-expanded) data folder.
        dataset: dataset name.
        source: kind of source, e.g. "torchvision" or "parquet".
        files: the existing source files whose identity (path, size, mtime) keys the entry.
    """
    identity = {"format": CACHE_FORMAT, "dataset": dataset, "source": source, "files": []}
    for f in files:
        stat = f.stat()
        identity["files"].append([str(f.resolve()), stat.st_size, stat.st_mtime_ns])
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return data_dir / CACHE_DIRNAME / f"{dataset}-{source}-{key}.npz"


def read_cache(path: Path) -> ImageArrays | None:
    """The cached arrays at ``path``, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return ImageArrays(z["train_images"], z["train_labels"], z["test_images"],
                               z["test_labels"], int(z["num_classes"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.warning("ignoring unreadable dataset cache %s (%s); decoding again", path, error)
        return None


def write_cache(path: Path, arrays: ImageArrays) -> None:
    """Store ``arrays`` at ``path`` atomically; a failure is logged and ignored."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, train_images=arrays.train_images, train_labels=arrays.train_labels,
                     test_images=arrays.test_images, test_labels=arrays.test_labels,
                     num_classes=np.int64(arrays.num_classes))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; others sharing data_dir may read it
        os.replace(tmp, path)  # atomic: readers see the old state or the whole file
        tmp = None
    except OSError as error:  # read-only or full disk: training can go on without a cache
        log.warning("could not write dataset cache %s (%s); the next load decodes again",
                    path, error)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
