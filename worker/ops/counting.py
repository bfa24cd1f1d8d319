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


def sum_by_value(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds up the counts of equal values: (distinct values ascending, summed counts)."""
    if len(values) == 0:
        return values[:0], counts[:0].astype(np.int64)
    order = np.argsort(values, kind="stable")
    v = values[order]
    starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    return v[starts], np.add.reduceat(counts[order].astype(np.int64), starts)


def repeated_runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Only the values that occur more than once (with their counts), and the number of distinct values.

    One comparison pass; the index work is proportional to the repeats, which is
    what makes the owner's merge cheap when almost every value is unique.
    """
    n = len(sorted_values)
    if n < 2:
        return sorted_values[:0], np.zeros(0, dtype=np.int64), n
    eq = np.flatnonzero(sorted_values[1:] == sorted_values[:-1])   # i: value i+1 repeats value i
    if len(eq) == 0:
        return sorted_values[:0], np.zeros(0, dtype=np.int64), n
    first = np.concatenate(([True], eq[1:] != eq[:-1] + 1))        # start of each run of repeats
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(eq))) + 1
    return sorted_values[eq[starts]], counts.astype(np.int64), n - len(eq)
