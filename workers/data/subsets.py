"""Seeded index selections: stratified subsets, label shuffles, alignment probes.

Each function draws from its own random stream of ``seed`` (``numpy.random.default_rng(
[stream, seed])``), so one ``data_seed`` can drive all three without the label shuffle
repeating the subset's random numbers.
"""

from __future__ import annotations

import numpy as np

from workers.errors import ConfigError

_STREAM_SUBSET = 0
_STREAM_SHUFFLE = 1
_STREAM_PROBE = 2


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed])


def class_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """How many examples of each class a subset of ``size`` takes.

    Proportional to ``counts`` with largest-remainder rounding (ties to the lower class
    id), then, when ``size >= len(counts)``, every class with examples gets at least one
    (taken from the class with the largest quota).

    Args:
        counts: (K,) int, examples available per class.
        size: total to take, 0 <= size <= counts.sum().

    Returns:
        (K,) int64 quotas summing to ``size``, each <= its count.
    """
    counts = np.asarray(counts, dtype=np.int64)
    exact = size * counts / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    remainder = size - int(quotas.sum())
    # Stable sort on -fraction: equal fractions keep class order.
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:remainder]] += 1
    if size >= len(counts):
        for k in np.flatnonzero((quotas == 0) & (counts > 0)):
            # Pigeonhole: some class has >= 2 here, so taking one keeps it >= 1.
            quotas[np.argmax(quotas)] -= 1
            quotas[k] += 1
    return quotas


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A class-stratified random subset of ``size`` examples.

    Args:
        labels: (N,) int class ids.
        size: number of indices to return, 1..N.
        seed: the same seed gives the same indices.

    Returns:
        (size,) int64 sorted indices into ``labels``; per-class counts as ``class_quotas``.

    Raises:
        ConfigError: when ``size`` is not in 1..N.
    """
    labels = np.asarray(labels)
    if not 1 <= size <= len(labels):
        raise ConfigError([f"a subset of {size} examples was asked for (train_size/test_size) "
                           f"but only {len(labels)} are available; use 1..{len(labels)} "
                           "or null for all"], source="data subset")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = class_quotas(counts, size)
    rng = _rng(seed, _STREAM_SUBSET)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q]
              for c, q in zip(classes, quotas)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def shuffled_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """A fixed random permutation of ``labels`` (the paper's random-label runs).

    Args:
        labels: (N,) int class ids.
        seed: the same seed gives the same permutation.

    Returns:
        (N,) array of the same dtype with the same class counts, in shuffled order.
    """
    return _rng(seed, _STREAM_SHUFFLE).permutation(np.asarray(labels))


def probe_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Fixed examples of every class on which alignment is measured.

    Args:
        labels: (N,) int class ids.
        per_class: examples to take per class; a class with fewer gives all of its own.
        seed: the same seed gives the same indices.

    Returns:
        (P,) int64 indices into ``labels``: those of the lowest class id first, then the
        next, ...; ascending within a class.
    """
    labels = np.asarray(labels)
    rng = _rng(seed, _STREAM_PROBE)
    groups = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class])
              for c in np.unique(labels)]
    return np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, np.int64)
