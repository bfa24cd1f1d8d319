"""Short hash fingerprints, sorted and Rice-coded: ~2.2 bytes a value on the wire instead of 8, vectorised.

Why fingerprints, not deltas of the values: a sorted partition of full-range
int64 values still has gaps of ~2**44 (5-6 bytes each); fingerprints of
``log2(values per owner) + FP_MARGIN`` bits have gaps of ~2**FP_MARGIN / W
whatever the values are, so the code costs the same on every dataset.

A fingerprint collision can only make two different values look like a repeat;
the mode then asks for the candidates' full values in one more small round, so a
collision costs bytes, never exactness (see ``worker/ops/mode.py``).

The code: a chunk of ascending fingerprints is stored as its first value
(``base``), then every gap split into a ``k``-bit remainder (packed bits) and a
quotient in unary (``q`` ones and a zero).  ``k`` is chosen per chunk from the
mean gap, so quotients average about one bit.  Encoding and decoding are whole-
array numpy operations (``packbits``/``unpackbits``, ``cumsum``, ``flatnonzero``).
"""
from __future__ import annotations

import math

from shardstats.lazy import numpy as np

from shardstats.worker.data.partition import splitmix64

FP_MARGIN = 13              # bits beyond log2(values per owner): ~n / 2**14 false candidates per owner
_SALT = 0x5851F42D4C957F2D   # fingerprints independent of the partitioning hash (an int: no numpy at import)


def fingerprint_bits(total_values: int, workers: int) -> int:
    """Bits per fingerprint for a job: the same on every rank (it depends on job-wide figures only)."""
    per_owner = max(2, -(-total_values // max(1, workers)))
    return min(64, math.ceil(math.log2(per_owner)) + FP_MARGIN)


def fingerprints(values: np.ndarray, bits: int) -> np.ndarray:
    """A ``bits``-bit hash of each value (uint64), from a second splitmix64 round."""
    h = splitmix64(values)
    h ^= _SALT
    h = splitmix64(h.view(np.int64))
    return h >> np.uint64(64 - bits) if bits < 64 else h


def encode(fps: np.ndarray) -> dict:
    """One chunk of ascending uint64 fingerprints as a piece: {"fb": base, "fk": k, "fn": n, "fq": unary, "fr": bits}."""
    n = len(fps)
    base = fps[:1].copy()
    gaps = np.diff(fps)                                # n - 1 gaps, all >= 0 (ascending input)
    mean = float(gaps.mean()) if len(gaps) else 0.0
    k = max(0, int(math.floor(math.log2(mean * 0.69 + 1))))    # Rice parameter ~ log2(mean * ln 2)
    k = min(k, 63)
    q = (gaps >> np.uint64(k)).astype(np.int64)
    # unary quotients: q ones then a zero, for every gap; the zeros sit at cumsum(q + 1) - 1
    unary = np.ones(int(q.sum()) + len(q), dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    if k:
        r = (gaps & np.uint64((1 << k) - 1)).astype("<u8")
        # only the bytes that hold the k low bits are spread into bits (a byte per bit: all eight would be
        # 64 bytes a value, the encoder's peak)
        low = r.view(np.uint8).reshape(-1, 8)[:, :-(-k // 8)]
        bits = np.unpackbits(low, axis=1, bitorder="little")[:, :k]
        rbytes = np.packbits(bits.reshape(-1), bitorder="little")
    else:
        rbytes = np.zeros(0, dtype=np.uint8)
    return {"fb": base, "fk": k, "fn": n, "fq": np.packbits(unary, bitorder="little"), "fr": rbytes}


def decode(piece: dict) -> np.ndarray:
    """The ascending uint64 fingerprints of a piece made by ``encode``; ValueError when it is malformed."""
    n, k, base = int(piece["fn"]), int(piece["fk"]), np.asarray(piece["fb"]).view(np.uint64)
    if n < 0 or not 0 <= k <= 63 or len(base) != (1 if n else 0):
        raise ValueError("bad fingerprint chunk header")
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    m = n - 1
    unary = np.unpackbits(np.asarray(piece["fq"], dtype=np.uint8), bitorder="little")
    zeros = np.flatnonzero(unary == 0)[:m]
    if len(zeros) < m:
        raise ValueError("truncated fingerprint chunk")
    q = np.diff(zeros, prepend=-1) - 1
    gaps = q.astype(np.uint64) << np.uint64(k)
    if k:
        rb = np.unpackbits(np.asarray(piece["fr"], dtype=np.uint8), bitorder="little")
        if len(rb) < m * k:
            raise ValueError("truncated fingerprint chunk")
        rbytes = np.zeros((m, 8), dtype=np.uint8)
        packed = np.packbits(rb[:m * k].reshape(m, k), axis=1, bitorder="little")
        rbytes[:, :packed.shape[1]] = packed
        gaps |= rbytes.view("<u8").reshape(m).astype(np.uint64)
    out = np.empty(n, dtype=np.uint64)
    out[0] = base[0]
    np.cumsum(gaps, out=out[1:])
    out[1:] += base[0]
    return out


def encode_chunks(fps: np.ndarray, chunk_bytes: int) -> list[dict]:
    """Ascending fingerprints cut into pieces that each encode to about ``chunk_bytes`` at most.

    A value costs k + 1 + q bits, and the quotients sum to at most (last - first) >> k,
    under 1.5 bits a value; the step is sized from the k the whole run will use.
    """
    if len(fps) == 0:
        return []
    mean = float(fps[-1] - fps[0]) / max(1, len(fps) - 1)
    k = max(0, int(math.floor(math.log2(mean * 0.69 + 1))))
    step = max(1, (chunk_bytes * 8) // (k + 4))
    return [encode(fps[i:i + step]) for i in range(0, len(fps), step)]


def is_fingerprint_piece(piece: dict) -> bool:
    return "fn" in piece
