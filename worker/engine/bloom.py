"""A Bloom filter of join keys, built from the engine's stable key hashes and merged by OR: a semi-join reduction.

Before a shuffle join, the side whose keys are fewer is summarised as a bit array
(``BITS_PER_KEY`` bits a key, ``HASHES`` probes by double hashing of the 64-bit key
hash), the ranks' arrays are OR-ed up and down the tree, and the other side drops every
row whose key the filter has never seen -- when that side's unmatched rows are not part
of the answer. No false negatives (a row with a partner is never dropped); a false
positive only costs a row shuffled for nothing. Hand-written because every piece is
already here: the keys' 64-bit hashes (``worker.data.hashing``), numpy for the bits;
a per-key library call would be a Python loop over the rows.
"""
from __future__ import annotations

from shardstats.lazy import numpy as np

BITS_PER_KEY = 10                 # ~1% false positives with 7 probes
HASHES = 7
MAX_BYTES = 1 << 20               # the filter travels up and down the tree: at most one shuffle chunk a message
MIN_BITS_PER_KEY = 4              # fewer (a side too big for MAX_BYTES) lets through too much to pay


def size_for(keys: int) -> int:
    """Bytes of a filter for ``keys`` keys (a power of two of bits, at least 64, at most ``MAX_BYTES``), or 0
    when that many keys would get fewer than ``MIN_BITS_PER_KEY`` bits."""
    bits = min(max(64, 1 << int(np.ceil(np.log2(max(1, keys) * BITS_PER_KEY)))), MAX_BYTES * 8)
    return bits // 8 if bits >= MIN_BITS_PER_KEY * keys else 0


def _probes(h: "np.ndarray", bits: int) -> "np.ndarray":
    mask = np.uint64(bits - 1)
    h1 = h & mask
    h2 = (h >> np.uint64(32)) | np.uint64(1)
    with np.errstate(over="ignore"):
        return np.stack([(h1 + np.uint64(i) * h2) & mask for i in range(HASHES)])


def build(h: "np.ndarray", nbytes: int) -> "np.ndarray":
    """A filter of the hashes ``h`` as a uint8 bit array of ``nbytes``."""
    bits = np.zeros(nbytes * 8, dtype=bool)
    if len(h):
        bits[_probes(h, nbytes * 8).ravel()] = True
    return np.packbits(bits)


def contains(filt: "np.ndarray", h: "np.ndarray") -> "np.ndarray":
    """For each hash, whether the filter may hold it (False: certainly not)."""
    if not len(h):
        return np.zeros(0, dtype=bool)
    bits = np.unpackbits(filt).astype(bool)
    return bits[_probes(h, len(bits))].all(axis=0)


def false_positive_rate(filt: "np.ndarray") -> float:
    """The chance a key never added passes: (share of bits set) ** HASHES."""
    return float((np.unpackbits(filt).mean()) ** HASHES)
