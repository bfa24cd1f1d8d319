"""Vectorised counting on sorted arrays: the local combiner of the mode and its merge step."""
from __future__ import annotations

import numpy as np


def run_lengths(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs (np.unique without its overhead)."""
    n = len(sorted_values)
    if n == 0:
        return sorted_values[:0], np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    counts = np.diff(np.append(starts, n))
    return sorted_values[starts], counts


def count_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, counts) of any int64 array."""
    return run_lengths(np.sort(values))


def sum_by_value(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds up the counts of equal values: (distinct values ascending, summed counts)."""
    if len(values) == 0:
        return values[:0], counts[:0].astype(np.int64)
    order = np.argsort(values, kind="stable")
    v = values[order]
    starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    return v[starts], np.add.reduceat(counts[order].astype(np.int64), starts)
