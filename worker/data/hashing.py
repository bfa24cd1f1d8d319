"""A stable partitioner for any key: the same key reaches the same rank in every process, host, seed and release.

Python's ``hash()`` is salted per process and a library's hash (Polars', DuckDB's)
may change between releases, so neither may decide where a key lives. The hash here
is defined by this module alone, in numpy's wrapping uint64 arithmetic, vectorised:

* integers, booleans, dates, timestamps: the int64 value through the splitmix64
  finaliser -- the same function the int64 mode partitions with
  (``worker.data.partition.splitmix64``), so one engine has one hash;
* floats: the bits of the float64 (-0.0 as 0.0, every NaN as one NaN), mixed;
* strings and binary: a polynomial over the UTF-8 bytes (mod 2**64), computed with
  ``np.add.reduceat`` over each value's byte range, then mixed with the length --
  no per-row Python loop;
* nulls: one constant, so every null of a key column lands together (SQL groups
  NULLs as one key);
* several columns: ``mix(h1 * K + h2)``, in key order.

Types are canonical first (``worker.data.schema.canonical``), so an int32 key and an
int64 key holding the same number hash alike.
"""
from __future__ import annotations

from shardstats.lazy import numpy as np

from shardstats.worker.data.partition import splitmix64

NULL_HASH = 0x6A09E667F3BCC908        # any fixed constant: the fractional bits of sqrt(2)
_P = 0x100000001B3                   # FNV's 64-bit prime: odd, so powers never vanish mod 2**64
_K = 0x9E3779B97F4A7C15              # golden ratio: combining columns
FIXED_WIDTH_MAX = 64                 # strings all this long or shorter, of one length: hashed as a matrix
DICT_ABOVE = 1 << 16                 # longer string columns are dictionary-encoded first (Arrow's hash table)
STRING_BLOCK = 1 << 20               # strings hashed per block: temporaries of 8 B x bytes stay bounded

_pow_cache: list = []


def _powers(n: int) -> np.ndarray:
    """P**i mod 2**64 for i < n (grown on demand, kept: words and ids are short)."""
    if _pow_cache and len(_pow_cache[0]) >= n:
        return _pow_cache[0]
    size = max(n, 256, 2 * len(_pow_cache[0]) if _pow_cache else 0)
    p = np.empty(size, dtype=np.uint64)
    p[0] = 1
    with np.errstate(over="ignore"):
        for i in range(1, size):       # once per new maximum length, not per row
            p[i] = p[i - 1] * np.uint64(_P)
    _pow_cache[:] = [p]
    return p


def mix(h: np.ndarray) -> np.ndarray:
    return splitmix64(h.view(np.int64))


def _fixed_width_hash(offsets: np.ndarray, data: np.ndarray, width: int) -> np.ndarray:
    """``_string_hash`` of values all ``width`` bytes long (ids, codes): the bytes as an n x width matrix, one
    multiply-add per byte position over all rows -- the same sum of b_i * P**i, without the per-byte index."""
    n = len(offsets) - 1
    start = int(offsets[0])
    mat = data[start:start + n * width].reshape(n, width)
    h = np.zeros(n, dtype=np.uint64)
    powers = _powers(width + 1)
    with np.errstate(over="ignore"):
        for i in range(width):              # width passes over n rows, not a Python loop over rows
            h += mat[:, i].astype(np.uint64) * powers[i]
        h ^= np.uint64(width) * np.uint64(_K)
    return mix(h)


def _string_hash(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The hash of each value whose bytes are data[offsets[i]:offsets[i+1]]."""
    n = len(offsets) - 1
    if n > 0:
        lengths = np.diff(offsets)
        width = int(lengths[0])
        if 0 < width <= FIXED_WIDTH_MAX and (lengths == width).all():
            return _fixed_width_hash(offsets, data, width)
    out = np.empty(n, dtype=np.uint64)
    for b0 in range(0, n, STRING_BLOCK):
        b1 = min(n, b0 + STRING_BLOCK)
        starts = offsets[b0:b1].astype(np.int64)
        ends = offsets[b0 + 1:b1 + 1].astype(np.int64)
        lengths = ends - starts
        lo, hi = int(starts[0]), int(ends[-1])
        h = np.zeros(b1 - b0, dtype=np.uint64)
        if hi > lo:
            raw = data[lo:hi].astype(np.uint64)
            pos = np.arange(hi - lo, dtype=np.int64) - np.repeat(starts - lo, lengths)
            with np.errstate(over="ignore"):
                raw *= _powers(int(lengths.max()) + 1)[pos]
            nonempty = lengths > 0
            if nonempty.any():
                h[nonempty] = np.add.reduceat(raw, (starts - lo)[nonempty])
        with np.errstate(over="ignore"):
            h ^= lengths.astype(np.uint64) * np.uint64(_K)
        out[b0:b1] = mix(h)
    return out


def _one_width(arr) -> bool:
    """Whether every value of a string array has the same byte length (the matrix path beats a dictionary)."""
    import pyarrow.compute as pc
    lengths = pc.binary_length(arr)
    lo, hi = pc.min_max(lengths).values()
    return lo.as_py() is not None and lo.as_py() == hi.as_py() and 0 < lo.as_py() <= FIXED_WIDTH_MAX \
        and arr.null_count == 0


def hash_array(arr) -> np.ndarray:
    """uint64 hashes of one Arrow array (or chunked array), nulls as ``NULL_HASH``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 0:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate([hash_array(c) for c in arr.chunks]) if arr.num_chunks > 1 else hash_array(arr.chunk(0))
    t = arr.type
    if pa.types.is_dictionary(t):
        codes = arr.indices.to_numpy(zero_copy_only=False)
        h = hash_array(arr.dictionary)[np.where(arr.indices.is_null().to_numpy(zero_copy_only=False), 0, codes)
                                      .astype(np.int64)] if len(arr.dictionary) else np.zeros(len(arr), np.uint64)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)):          # views: to offsets and bytes
            arr = arr.cast(pa.large_binary() if "binary" in str(t) else pa.large_string())
        if len(arr) >= DICT_ABOVE and not _one_width(arr):
            enc = pc.dictionary_encode(arr)
            if len(enc.dictionary) * 2 <= len(arr):      # repeats: hash each distinct value once
                return hash_array(enc)
        bufs = arr.buffers()
        wide = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
        offsets = np.frombuffer(bufs[1], dtype=np.int64 if wide else np.int32)[arr.offset:arr.offset + len(arr) + 1]
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        h = _string_hash(offsets, data)
    elif pa.types.is_floating(t):
        f = arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False).copy()
        f[f == 0] = 0.0                       # -0.0 == 0.0 as a key
        f[np.isnan(f)] = np.nan               # one NaN
        h = mix(f.view(np.uint64) ^ np.uint64(_K))
    elif pa.types.is_null(t):
        return np.full(len(arr), NULL_HASH, dtype=np.uint64)
    elif pa.types.is_decimal(t):              # the unscaled value's 128 (256) bits, low word first: equal in one type
        words = t.bit_width // 64
        width = t.bit_width // 8              # a buffer's size need not be a multiple of 8 (an IPC body's slice)
        raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * width:(arr.offset + len(arr)) * width]
        w = raw.view(np.uint64).reshape(-1, words)
        h = np.zeros(len(arr), dtype=np.uint64)
        for i in range(words - 1, -1, -1):    # a loop over the words (2 or 4), not the values
            h = mix(h ^ w[:, i] ^ np.uint64(_K))
    else:
        if pa.types.is_boolean(t) or pa.types.is_integer(t):
            ints = arr.cast(pa.int64()) if not pa.types.is_uint64(t) else arr.view(pa.int64())
        else:                                 # dates, times, timestamps, durations: their integer value
            ints = pc.cast(arr, pa.int64()) if pa.types.is_integer(t) else arr.view(
                pa.int64() if t.bit_width == 64 else pa.int32()).cast(pa.int64())
        h = splitmix64(ints.fill_null(0).to_numpy(zero_copy_only=False))
    if arr.null_count:
        h = h.copy() if not h.flags.writeable else h
        h[arr.is_null().to_numpy(zero_copy_only=False)] = np.uint64(NULL_HASH)
    return h


def hash_columns(table, keys: list[str] | tuple[str, ...], hash_one=None) -> np.ndarray:
    """One uint64 per row for the composite key ``keys`` of an Arrow table (``hash_one``: a column's
    hashes, ``hash_array`` unless given)."""
    h = None
    for k in keys:
        hk = (hash_one or hash_array)(table.column(k))
        if h is None:
            h = hk
        else:
            with np.errstate(over="ignore"):
                h = mix(h * np.uint64(_K) + hk)
    if h is None:
        return np.zeros(table.num_rows, dtype=np.uint64)
    return h


def owners_of(h: np.ndarray, workers: int) -> np.ndarray:
    """The rank owning each hash: the high 32 bits scaled to [0, workers) (as the int64 mode's ``owners``)."""
    dtype = np.uint8 if workers <= 256 else np.uint16 if workers <= 65536 else np.uint32
    if workers == 1:
        return np.zeros(len(h), dtype=dtype)
    x = h >> np.uint64(32)
    x *= np.uint64(workers)
    x >>= np.uint64(32)
    return x.astype(dtype)



GRID_MOST = 1 << 20        # distinct key combinations hashed once, then looked up (a row gathers one byte)


def owners_by_key(table, keys: list[str] | tuple[str, ...], workers: int) -> np.ndarray:
    """``owners_of(hash_columns(table, keys), workers)``, the same ranks, cheaper where every key column is a
    small code (``worker.data.codes``: db-benchmark's id4..id6, a dictionary-encoded id1): each combination of
    the keys' values that can occur is hashed once (at most ``GRID_MOST``, at most half the rows) and every row
    looks its owner up.  The combinations are the keys' own values, so their hashes are the rows' hashes by
    definition (tests/test_hashing.py checks it)."""
    import pyarrow as pa
    from shardstats.worker.data.codes import key_codes, key_plan, key_values
    n = table.num_rows
    most = min(GRID_MOST, n // 2)
    coded: list = []
    size = 1
    for k in keys if n and workers > 1 and len(set(keys)) == len(keys) else ():
        plan = key_plan(table.column(k), most, n)
        if plan is None or size * plan[1] > most:
            return owners_of(hash_columns(table, keys), workers)
        coded.append(key_codes(table.column(k), plan[0]))
        size *= coded[-1][1]
    if not coded:
        return owners_of(hash_columns(table, keys), workers)
    code = coded[0][0].astype(np.int64)          # mixed radix, the first key the most significant
    for codes, card, _ in coded[1:]:
        code = code * card + codes
    columns = {}
    inner = size
    for (_, card, kind), k in zip(coded, keys):
        inner //= card
        grid = np.tile(np.repeat(np.arange(card), inner), size // (inner * card))
        columns[k] = key_values(kind, grid)
    return owners_of(hash_columns(pa.table(columns), keys), workers)[code]
