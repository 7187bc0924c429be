"""Reader of a Parquet image table: columns ``split``, ``label``, ``image`` (PNG/JPEG bytes).

Such a table (e.g. ``cifar10-jpeg.parquet``) supplies a dataset's images where torchvision's
files cannot be downloaded. Extra columns are ignored.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from workers.data.arrays import ImageArrays
from workers.datasets import NUM_CLASSES
from workers.errors import DatasetUnavailable

REQUIRED_COLUMNS = ("split", "label", "image")
SPLITS = ("train", "test")


def table_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a Parquet image table, read from its footer alone (no
    image is read): missing, not a file, not Parquet, or without the required columns. None
    when it looks right."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        return f"data_file {path}: no such file"
    if not path.is_file():
        return f"data_file {path}: is a folder, not a Parquet file"
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        return (f"data_file {path}: not a readable Parquet file ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})")
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        return (f"data_file {path}: missing column(s) {', '.join(missing)}; a Parquet image "
                f"table needs {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(schema.names)})")
    return None


def read_parquet_table(path: Path, dataset: str) -> ImageArrays:
    """Decode every image of the table at ``path`` as images of ``dataset``.

    Images are decoded with Pillow to RGB, or to grayscale ("L") for digits; all must have
    the same size. Labels must lie in [0, NUM_CLASSES[dataset]).

    Returns:
        ImageArrays with (N, H, W, 3) uint8 images ((N, H, W, 1) for digits).

    Raises:
        DatasetUnavailable: missing or unreadable file, missing columns, unknown split
            values, an empty split, out-of-range labels, undecodable or mismatched images;
            the message names the file and the problem.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    problem = table_problem(path)
    if problem:
        raise DatasetUnavailable(problem)
    try:
        table = pq.read_table(path, columns=list(REQUIRED_COLUMNS))
    except (OSError, pa.ArrowException) as error:
        raise DatasetUnavailable(f"data_file {path}: not a readable Parquet file "
                                 f"({type(error).__name__}: {error})") from error

    label_type = table.schema.field("label").type
    if not pa.types.is_integer(label_type) or table.column("label").null_count:
        raise DatasetUnavailable(f"data_file {path}: column label must hold integers without "
                                 f"nulls (type {label_type}, "
                                 f"{table.column('label').null_count} nulls)")
    splits = table.column("split").cast(pa.string()).to_numpy(zero_copy_only=False)
    labels = table.column("label").to_numpy().astype(np.int64)
    blobs = table.column("image").to_pylist()

    unknown = sorted({str(s) for s in set(splits) if s not in SPLITS})
    if unknown:
        raise DatasetUnavailable(f"data_file {path}: column split has value(s) "
                                 f"{', '.join(unknown)}; expected only {' and '.join(SPLITS)}")
    num_classes = NUM_CLASSES[dataset]
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DatasetUnavailable(f"data_file {path}: {bad.size} label(s) outside "
                                 f"0..{num_classes - 1} of dataset {dataset} (e.g. "
                                 f"{int(bad[0])}); is it a {dataset} table?")

    mode = "L" if dataset == "digits" else "RGB"
    parts = []
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        if rows.size == 0:
            raise DatasetUnavailable(f"data_file {path}: no rows with split == '{split}'")
        parts += [decode_images([blobs[i] for i in rows], mode, rows, path), labels[rows]]
    return ImageArrays(*parts, num_classes)


def decode_images(blobs: list[bytes | None], mode: str, rows: np.ndarray,
                  path: Path) -> np.ndarray:
    """Decode encoded images (PNG/JPEG bytes) into one (N, H, W, C) uint8 array.

    Serial on purpose: on these 2-core machines a thread pool decoded 32x32 JPEGs 2x slower
    and a process pool no faster (the decoded arrays are cached anyway).

    Args:
        blobs: N encoded images, all of the same size once decoded.
        mode: Pillow mode to convert to, "RGB" (C=3) or "L" (C=1).
        rows: (N,) table row of each blob, for error messages.
        path: the table, for error messages.
    """
    first = decode_image(blobs[0], mode, int(rows[0]), path)
    out = np.empty((len(blobs), *first.shape), dtype=np.uint8)
    out[0] = first
    for i in range(1, len(blobs)):
        image = decode_image(blobs[i], mode, int(rows[i]), path)
        if image.shape != first.shape:
            raise DatasetUnavailable(
                f"data_file {path}: row {rows[i]} decodes to an image of shape {image.shape} "
                f"(H, W, C) but row {rows[0]} to {first.shape}; all images must have one size")
        out[i] = image
    return out


def decode_image(blob: bytes | None, mode: str, row: int, path: Path) -> np.ndarray:
    """One encoded image -> (H, W, C) uint8, C=3 for mode "RGB", 1 for "L"."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as image:
            pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    except Exception as error:  # None, truncated or unknown formats: all unusable rows
        raise DatasetUnavailable(f"data_file {path}: row {row}: cannot decode the image bytes "
                                 f"({type(error).__name__}: {error})") from error
    return pixels if pixels.ndim == 3 else pixels[..., None]
