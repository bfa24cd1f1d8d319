"""Mergeable sketches: Apache DataSketches' KLL and frequent items, our HyperLogLog registers, and a file format.

Workers build a sketch of their values, sketches merge up the binomial tree as the
library's own serialized bytes, rank 0 answers (and may save the merged sketch);
``cluster sketch merge|show`` merges and answers from saved files alone.  Everything
here imports numpy and datasketches lazily: the ``cluster`` client parses options
without them.

Kinds
  ``kll_doubles``        DataSketches ``kll_doubles_sketch(k)``: quantiles with a normalized rank error
                         bound (``normalized_rank_error(False)``: the single-sided error the library fits
                         to the 99th percentile of measured errors, so a bound at 99% confidence).  int64
                         values go in as float64 (DataSketches' ``kll_ints_sketch`` is 32-bit): exact for
                         |v| <= 2**53, and beyond it when the job's values lie within 2**53 of one another
                         (less an ``offset`` parameter, ``kll_offset``); values spread wider and beyond are
                         rounded to the nearest double (at most 1024 away near 2**63), their answers'
                         intervals widened by that, and clamped back into int64.
  ``frequent_items_i64`` DataSketches ``frequent_items_sketch(lg_max_k)`` over Python ints (serde
                         ``PyLongsSerDe``, 8 bytes per item): every listed item has lower <= true count <=
                         upper, upper - lower = the sketch's maximum error, and every value whose count
                         exceeds the maximum error is listed (deterministic, no confidence level).
  ``hll_registers``      the registers of ``worker/ops/distinct.py`` (2**precision bytes): an estimate with
                         relative standard error 1.04/sqrt(2**precision).

File format (``--save-sketch FILE``): one line of JSON (the header: magic, format version, kind,
parameters, column, input fingerprint, time, library version, payload length and SHA-256), a
newline, then the payload (the library's serialized bytes) and nothing else.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import time

from shardstats.errors import InputError

MAGIC = "shardstats-sketch"
FORMAT_VERSION = 1
KINDS = ("kll_doubles", "frequent_items_i64", "hll_registers", "frequent_items_f64", "frequent_strings",
         "tdigest_double", "theta", "cpc", "count_min", "bloom")     # the last seven: shardstats.sketchkinds
MAX_HEADER = 1 << 16
MAX_PAYLOAD = 256 << 20
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
KLL_K = (8, 65535)                  # DataSketches' range for k (a uint16)
LG_MAX_K = (3, 26)                  # frequent items: map size 2**lg_max_k
KLL_BLOCK = 1 << 22                 # values converted to float64 per step: temporaries stay at 32 MiB


class SketchFileError(InputError):
    """A sketch file that cannot be used: missing, corrupt, truncated, of another kind, incompatible."""


def ds():
    import datasketches
    return datasketches


def library_version() -> str:
    try:
        from importlib.metadata import version
        return "datasketches " + version("datasketches")
    except Exception:  # noqa: BLE001 - a version is a note, not a requirement
        return "datasketches"


# ---- KLL quantiles --------------------------------------------------------------------------------

def kll_build(values, k: int, sample_rate: float = 1.0, rng=None, offset: int = 0) -> bytes:
    """The serialized KLL sketch of an int64 (or float64) array; one vectorised update per block (no per-value
    loop).  ``sample_rate`` < 1: of a Bernoulli sample of the values at that rate (``bernoulli_sample``).
    ``offset`` (int64 values, ``kll_offset``): the sketch holds ``value - offset``, exact as a double."""
    import numpy as np
    if sample_rate < 1:
        values = bernoulli_sample(values, sample_rate, rng if rng is not None else np.random.default_rng())
    s = ds().kll_doubles_sketch(k)
    for start in range(0, len(values), KLL_BLOCK):
        block = values[start:start + KLL_BLOCK]
        if offset:
            block = np.asarray(block, dtype=np.int64) - np.int64(offset)      # in [0, 2**53]: no overflow
        s.update(np.asarray(block, dtype=np.float64))
    return s.serialize()


# ---- int64 beyond 2**53 --------------------------------------------------------------------------------------
#
# The sketch orders doubles; an int64 beyond +-2**53 is rounded to one (up to 1024 away near 2**63), so values
# that differ there tie in the sketch, and a cluster of them (all near 2**62, or near INT64_MAX) was answered
# with a rank error of 9% against a 1.3% bound, a minimum and maximum that are not in the data, and a --check
# that counted in the same rounded order and reported 0.  When every value of the job lies within 2**53 of
# one another the sketch holds ``value - offset`` instead, exact as a double: answers, minimum and maximum
# are exact again.  The offset is on a grid of 2**52 where it can be (two days of values near one place
# choose the same offset and merge); it is a parameter of the sketch (sketches of other offsets do not merge).
# Only values spread wider than 2**53 and beyond it still round: their answers' intervals are widened by the
# rounding (``kll_answer``), and --check counts in the int64 order, so it reports what the rounding costs.

EXACT_SPAN = 1 << 53                # doubles hold every integer in [-2**53, 2**53]
OFFSET_GRID = 1 << 52


def kll_offset(lo: int | None, hi: int | None) -> int:
    """The offset a KLL sketch of int64 values in [lo, hi] holds them from: 0 when they are exact as doubles
    already (or cannot be made so: spread wider than 2**53), else a multiple of 2**52 at or below ``lo`` if the
    values fit above it, else ``lo``."""
    if lo is None or hi is None or (lo >= -EXACT_SPAN and hi <= EXACT_SPAN) or hi - lo > EXACT_SPAN:
        return 0
    grid = (lo // OFFSET_GRID) * OFFSET_GRID
    return grid if hi - grid <= EXACT_SPAN else lo


# ---- sampling: a KLL sketch of a uniform sample -------------------------------------------------------
#
# DataSketches' KLL costs ~29 ns a value; a sketch of a Bernoulli sample at rate p costs ~29p ns a value plus
# the draw, which touches only the sampled positions (the gaps between them are geometric, so the draw costs
# O(pN), not O(N)).  The price is a second, stated error term.  Given its size m the sample is uniform without
# replacement, so for any fixed value x the share of the sample below x is off the population's by more than t
# with probability <= exp(-2 m t**2 / (1 - (m - 1)/N)) (Hoeffding 1963, Serfling 1974).  A quantile answer is
# wrong only if the sketch's own rank error is exceeded or, at the two fixed population values rank +- (eps + t)
# away, the sample's share is off by t: so the answer's rank error is <= eps + t with probability
# >= 1 - P(sketch) - SAMPLE_DELTA, per quantile, where t = sqrt(ln(2 / SAMPLE_DELTA) (1 - (m - 1)/N) / (2 m)).
# The sample must be one rate for all the values: every rank of a job samples at the same p, and sketches of
# different rates (or a sample and a full sketch) do not merge (``compatible``).

SAMPLE_DELTA = 1e-6                 # the sampling term's failure probability, per quantile
SAMPLE_MIN = 1 << 20                # an automatic sample holds at least this many values (expected)
SAMPLE_SHARE = 0.25                 # ... and its own error is at most this share of the sketch's


def sample_error(m: int, population: int | None = None, delta: float = SAMPLE_DELTA) -> float:
    """The sampling term t of a sample of ``m`` of ``population`` values (None: unknown, no finite correction)."""
    if m <= 0:
        return 1.0
    f = (m - 1) / population if population else 0.0
    return math.sqrt(math.log(2 / delta) * max(0.0, 1 - f) / (2 * m))


def auto_sample_rate(total: int, k: int) -> float:
    """A power of two 2**-j, the smallest whose expected sample of ``total`` values holds max(SAMPLE_MIN, the size
    at which the sampling term is SAMPLE_SHARE of the k-sketch's rank error) values; 1 (no sampling) below it."""
    eps = ds().kll_doubles_sketch.get_normalized_rank_error(k, False)
    want = max(SAMPLE_MIN, math.log(2 / SAMPLE_DELTA) / (2 * (SAMPLE_SHARE * eps) ** 2))
    if total <= 2 * want:
        return 1.0
    return 2.0 ** -math.floor(math.log2(total / want))


def parse_sample_rate(text: object) -> str:
    """``auto``, ``1`` or a rate in (0, 1] as ``1/N`` or a decimal; kept as text, checked here."""
    t = str(text).strip().lower()
    if t == "auto":
        return t
    sample_rate_value(t)
    return t


def sample_rate_value(text: str) -> float:
    t = str(text).strip()
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            r = float(int(a)) / int(b)
        else:
            r = float(t)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{t[:40]!r} is not a rate: auto, 1, 1/N or a number in (0, 1]") from None
    if not 0 < r <= 1 or r != r:
        raise ValueError(f"{t[:40]!r} is not a rate in (0, 1]")
    return r


def rate_text(p: float) -> str:
    """1/64 for a power of two's reciprocal, else the decimal."""
    inv = 1 / p
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{p:g}"


def sample_text(a: dict) -> str:
    """A sampled answer's bound for people: which sample, and the two terms."""
    n = f"~{a['n']:,}" if a.get("n_estimated") else f"{a['n']:,}"
    return (f"from a {rate_text(a['sample_rate'])} sample ({a['sampled']:,} of {n} values): rank error <= "
            f"{a['rank_error_bound']:.4%} = the sketch's {a['sketch_rank_error']:.4%} (99% confidence) + the "
            f"sample's {a['sample_error']:.4%} (probability {1 - a['sample_confidence']:.0e} of more)")


def bernoulli_sample(values, p: float, rng):
    """Each value kept independently with probability ``p``: positions from geometric gaps, drawn a block of
    ~pN at a time (a few rounds at most, no per-value loop); a copy of the kept values (a memory map is read
    at those positions only)."""
    import numpy as np
    n = len(values)
    if p >= 1 or n == 0:
        return values
    parts, pos = [], -1
    while True:
        want = int(max(n - pos, 0) * p * 1.05) + 64
        at = pos + np.cumsum(rng.geometric(p, size=want))
        inside = at[at < n]
        parts.append(inside)
        if len(inside) < len(at) or len(at) == 0:
            break
        pos = int(at[-1])
    idx = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return values[idx]


def kll_load(data: bytes):
    return ds().kll_doubles_sketch.deserialize(bytes(data))


def kll_merge_bytes(a: bytes, b: bytes) -> bytes:
    s = kll_load(a)
    s.merge(kll_load(b))
    return s.serialize()


def to_int64(x: float) -> int:
    """A sketch's float64 answer as the int64 it stands for (clamped: 2**63 - 1 is 2**63 as a double)."""
    return max(I64_MIN, min(I64_MAX, int(x)))


def kll_answer(data: bytes, ranks: list[float], as_int: bool = True, sample_rate: float = 1.0,
               population: int | None = None, offset: int = 0) -> dict:
    """Quantiles at normalized ``ranks`` from a serialized sketch, each with the interval of values the
    rank bound allows: the true quantile lies in [low, high] at the bound's confidence.  ``as_int``: the
    sketch is of int64 values (answers clamped back into int64), else of float64 values (answered as such).
    ``sample_rate`` < 1: the sketch is of a Bernoulli sample of ``population`` values (None: unknown, then
    estimated as sampled / rate), and the bound adds the sample's term (``sample_error``).  ``offset``: the
    sketch holds int64 values less the offset (``kll_offset``).  int64 values the sketch rounded (beyond +-2**53,
    offset 0): each interval end moves out by half the doubles' spacing there, ``rounding`` says how far."""
    s = kll_load(data)
    rounded = as_int and s.n and max(abs(s.get_min_value()), abs(s.get_max_value())) > EXACT_SPAN

    def conv(x: float, widen: int = 0) -> int | float:
        if not as_int:
            return float(x)
        if rounded and widen:
            import numpy as np
            return to_int64(offset + int(x) + widen * int(np.spacing(abs(x))) // 2)
        return to_int64(offset + int(x))
    eps = s.normalized_rank_error(False)
    exact = not s.is_estimation_mode()
    sketch_e = 0.0 if exact else eps
    out = {"n": s.n, "k": s.k, "rank_error_bound": sketch_e, "library_rank_error": eps,
           "sketch_exact": exact, "sketch_bytes": len(data), "retained": s.num_retained,
           "min": conv(s.get_min_value()) if s.n else None, "max": conv(s.get_max_value()) if s.n else None,
           "confidence": 0.99, "quantiles": []}
    if offset:
        out["offset"] = offset
    if rounded:
        import numpy as np
        out["rounding"] = int(np.spacing(max(abs(s.get_min_value()), abs(s.get_max_value())))) // 2
    if sample_rate < 1:
        t = sample_error(s.n, population)
        out.update(n=population if population is not None else round(s.n / sample_rate),
                   n_estimated=population is None, sampled=s.n, sample_rate=sample_rate, sketch_rank_error=sketch_e,
                   sample_error=t, sample_confidence=1 - SAMPLE_DELTA, rank_error_bound=min(1.0, sketch_e + t),
                   sample_min=out.pop("min"), sample_max=out.pop("max"), min=None, max=None)
    if s.is_empty():
        return out
    e = out["rank_error_bound"]
    lo_v, hi_v = s.get_min_value(), s.get_max_value()

    def at(r: float) -> float:
        # rank 0 and 1 are the minimum and maximum the sketch keeps exactly (its retained items may not hold them;
        # of a sample: the sample's, within the bound like any answer)
        return lo_v if r <= 0 else hi_v if r >= 1 else s.get_quantile(r, True)
    sampled = sample_rate < 1
    for r in ranks:
        q, lo, hi = at(r), at(r - e), at(r + e)
        # a sample's minimum and maximum are not the data's: an interval reaching past them is open (None) there
        out["quantiles"].append({"rank": r, "value": conv(q), "low": None if sampled and r - e <= 0 else conv(lo, -1),
                                 "high": None if sampled and r + e >= 1 else conv(hi, 1), "raw": q})
    return out


def interval_text(low, high) -> str:
    """[low, high], an open end (None: below a sample's minimum or above its maximum) as -inf / +inf."""
    return f"{'(-inf' if low is None else f'[{low}'}, {'+inf)' if high is None else f'{high}]'}"


def true_rank_error(rank: float, below: int, at_or_below: int, n: int) -> float:
    """How far normalized ``rank`` is from the ranks the answered value really holds, [below/n, at_or_below/n]:
    0 when a value with that rank is the answer (ties included)."""
    lo, hi = below / n, at_or_below / n
    return 0.0 if lo <= rank <= hi else min(abs(rank - lo), abs(rank - hi))


# ---- frequent items ----------------------------------------------------------------------------------

def default_lg_max_k(k: int) -> int:
    """A map that holds about 8k items (it keeps 3/4 of 2**lg_max_k), at least 2**10."""
    return max(10, min(LG_MAX_K[1], math.ceil(math.log2(max(1, k) * 8 / 0.75))))


def fi_build(values, lg_max_k: int) -> bytes:
    """The serialized frequent-items sketch of an int64 array: exact local counts first (one sort), then one
    weighted update per distinct value (the binding updates one item at a time)."""
    import numpy as np
    s = ds().frequent_items_sketch(lg_max_k)
    if len(values):
        v, c = np.unique(values, return_counts=True)
        update = s.update
        for item, weight in zip(v.tolist(), c.tolist()):
            update(item, weight)
    return s.serialize(ds().PyLongsSerDe())


def fi_load(data: bytes):
    return ds().frequent_items_sketch.deserialize(bytes(data), ds().PyLongsSerDe())


def fi_merge_bytes(a: bytes, b: bytes) -> bytes:
    s = fi_load(a)
    s.merge(fi_load(b))
    return s.serialize(ds().PyLongsSerDe())


def fi_answer(data: bytes, top: int) -> dict:
    """The ``top`` items by estimate (then value ascending), each with its guaranteed bounds."""
    s = fi_load(data)
    rows = s.get_frequent_items(ds().frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
    rows.sort(key=lambda r: (-r[1], r[0]))
    max_error = s.get_upper_bound(_absent(s)) if not s.is_empty() else 0
    return {"total": s.total_weight, "max_error": max_error, "sketch_bytes": len(data),
            "active_items": s.num_active_items,
            "items": [{"value": int(v), "estimate": int(e), "lower": int(lo), "upper": int(hi)}
                      for v, e, lo, hi in rows[:top]]}


def _absent(s) -> int:
    """A value the sketch does not hold: its upper bound is the sketch's maximum error (its offset)."""
    held = {r[0] for r in s.get_frequent_items(ds().frequent_items_error_type.NO_FALSE_NEGATIVES, 0)}
    x = I64_MIN
    while x in held:
        x += 1
    return x


# ---- HyperLogLog registers ---------------------------------------------------------------------------

def hll_merge_bytes(a: bytes, b: bytes) -> bytes:
    import numpy as np
    return np.maximum(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()


def hll_answer(data: bytes, precision: int) -> dict:
    import numpy as np
    from shardstats.worker.ops.distinct import hll_estimate, relative_standard_error
    reg = np.frombuffer(data, np.uint8)
    return {"value": round(hll_estimate(reg)), "relative_standard_error": relative_standard_error(precision),
            "registers": len(reg), "sketch_bytes": len(data)}


# ---- the file format ---------------------------------------------------------------------------------

def header(kind: str, params: dict, payload: bytes, fingerprint: dict | None, column=None,
           population: int | None = None) -> dict:
    """``population``: of a sampled sketch (``params["sample_rate"]``), the number of values it is a sample of
    (the payload's n is the sample's): its answers state n and the sample's error term from it."""
    head = {"magic": MAGIC, "version": FORMAT_VERSION, "kind": kind, "params": params, "column": column,
            "input": fingerprint or {}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "library": library_version() if kind != "hll_registers" else "shardstats",
            "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    if population is not None:
        head["population"] = population
    return head


def sampling(head: dict) -> dict:
    """A header's sample: {"sample_rate": p, "population": N or None} ({} for a sketch of every value)."""
    rate = head["params"].get("sample_rate")
    if rate is None:
        return {}
    pop = head.get("population")
    return {"sample_rate": rate, "population": pop if isinstance(pop, int) and not isinstance(pop, bool) else None}


def dump(head: dict, payload: bytes) -> bytes:
    return json.dumps(head, sort_keys=True, separators=(",", ":")).encode() + b"\n" + payload


def write(path: str, head: dict, payload: bytes) -> None:
    """Writes the file whole or not at all: a temporary file renamed into place, or one PUT of the object
    (``s3://bucket/key``: an object appears whole or not at all)."""
    if path.startswith("s3://"):
        _put_object(path, dump(head, payload))
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(dump(head, payload))
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SketchFileError(f"{path}: cannot write the sketch ({exc.strerror or exc})") from None


def _put_object(url: str, data: bytes) -> None:
    """One object in the store, with this process's own AWS environment (``worker.io.objects``)."""
    from shardstats.worker.io import objects
    bucket, key = objects.split_url(url)
    if not key or key.endswith("/"):
        raise SketchFileError(f"{url}: name an object (s3://bucket/key), not a bucket or a prefix")
    fs = objects.shared_store()
    with objects.explained(url):
        with fs.open(url, "wb") as f:
            f.write(data)


def _get_object(url: str) -> bytes:
    from shardstats.worker.io import objects
    fs = objects.shared_store()
    with objects.explained(url):
        size = fs.info(url).get("size", 0)
        if size > MAX_HEADER + MAX_PAYLOAD:
            raise SketchFileError(f"{url}: {size:,} bytes is too large for a sketch file")
        return fs.cat_file(url)


def parse(data: bytes, name: str) -> tuple[dict, bytes]:
    """(header, payload) of a sketch file's bytes; a SketchFileError naming ``name`` for anything off."""
    nl = data.find(b"\n", 0, MAX_HEADER)
    if nl < 0 or not data.startswith(b"{"):
        raise SketchFileError(f"{name}: not a shardstats sketch file (no JSON header line)")
    try:
        head = json.loads(data[:nl])
    except (ValueError, UnicodeDecodeError):
        raise SketchFileError(f"{name}: not a shardstats sketch file (its header is not JSON)") from None
    if not isinstance(head, dict) or head.get("magic") != MAGIC:
        raise SketchFileError(f"{name}: not a shardstats sketch file (no {MAGIC!r} magic)")
    if head.get("version") != FORMAT_VERSION:
        raise SketchFileError(f"{name}: sketch file format version {head.get('version')!r}; this cluster reads "
                              f"version {FORMAT_VERSION}")
    kind = head.get("kind")
    if kind not in KINDS:
        raise SketchFileError(f"{name}: unknown sketch kind {str(kind)[:40]!r} (known: {', '.join(KINDS)})")
    check_params(kind, head.get("params"), name)
    payload = data[nl + 1:]
    size = head.get("bytes")
    if not isinstance(size, int) or size < 0:
        raise SketchFileError(f"{name}: header has no payload length")
    if len(payload) < size:
        raise SketchFileError(f"{name}: truncated ({len(payload):,} of {size:,} payload bytes)")
    if len(payload) > size:
        raise SketchFileError(f"{name}: {len(payload) - size:,} bytes after the sketch (not a sketch file)")
    pop = head.get("population")
    if "population" in head and (isinstance(pop, bool) or not isinstance(pop, int) or pop < 0):
        raise SketchFileError(f"{name}: header's population {str(pop)[:20]} is not a count of values")
    if hashlib.sha256(payload).hexdigest() != head.get("sha256"):
        raise SketchFileError(f"{name}: corrupt (the payload's SHA-256 does not match the header's)")
    if kind == "hll_registers":
        p = head["params"]["precision"]
        if size != 1 << p or max(payload, default=0) > 64 - p + 1:
            raise SketchFileError(f"{name}: corrupt (not 2**{p} HyperLogLog registers)")
    return head, payload


def check_params(kind: str, params: object, name: str) -> dict:
    from shardstats import sketchkinds as kinds

    def num(key: str, lo: int, hi: int) -> None:
        v = params.get(key) if isinstance(params, dict) else None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise SketchFileError(f"{name}: {kind} parameter {key} = {str(v)[:20]} is out of range [{lo}, {hi}]")
    if not isinstance(params, dict):
        raise SketchFileError(f"{name}: {kind} sketch without parameters")
    vtype = params.get("values", "int64")
    if vtype not in kinds.KIND_TYPES.get(kind, kinds.VALUE_TYPES):
        raise SketchFileError(f"{name}: a {kind} sketch of {str(vtype)[:20]} values (it takes "
                              f"{', '.join(kinds.KIND_TYPES.get(kind, kinds.VALUE_TYPES))})")
    if kind == "kll_doubles":
        num("k", *KLL_K)
        if "offset" in params:
            num("offset", I64_MIN, I64_MAX)
            if vtype != "int64":
                raise SketchFileError(f"{name}: a kll_doubles sketch of {vtype} values with an offset")
        rate = params.get("sample_rate", 1.0)
        if "sample_rate" in params and (isinstance(rate, bool) or not isinstance(rate, float) or not 0 < rate < 1):
            raise SketchFileError(f"{name}: kll_doubles parameter sample_rate = {str(rate)[:20]} is out of range "
                                  f"(0, 1)")
    elif kind == "frequent_items_i64":
        num("lg_max_k", *LG_MAX_K)
    elif kind == "hll_registers":
        num("precision", 4, 16)
    else:
        kinds.check_params(kind, params, num)
    return params


def read(path: str) -> tuple[dict, bytes]:
    if path.startswith("s3://"):
        return parse(_get_object(path), path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):     # a FIFO would block the read forever, a device read 256 MiB
            raise SketchFileError(f"{path}: not a regular file, so not a sketch file")
        size = st.st_size
        if size > MAX_HEADER + MAX_PAYLOAD:
            raise SketchFileError(f"{path}: {size:,} bytes is too large for a sketch file")
        with open(path, "rb") as f:
            data = f.read(MAX_HEADER + MAX_PAYLOAD + 1)
    except FileNotFoundError:
        raise SketchFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SketchFileError(f"{path}: is a directory, not a sketch file") from None
    except OSError as exc:
        raise SketchFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return parse(data, path)


def compatible(a: dict, b: dict, a_name: str, b_name: str) -> None:
    """Refuses a merge of different kinds or parameters (one line naming both files)."""
    if a["kind"] != b["kind"]:
        raise SketchFileError(f"{b_name} is a {b['kind']} sketch and {a_name} a {a['kind']} sketch: only sketches "
                              f"of one kind merge")
    ra, rb = a["params"].get("sample_rate"), b["params"].get("sample_rate")
    if ra != rb:
        say = lambda r: f"a {rate_text(r)} sample" if r else "a sketch of every value"  # noqa: E731
        raise SketchFileError(f"{b_name} is {say(rb)} and {a_name} {say(ra)}: sampled sketches merge only with "
                              f"sketches of the same --sample-rate (their ranks would weigh values unequally)")
    typed = lambda p: {"values": "int64", **p}  # noqa: E731 - files from before value types are of int64
    if typed(a["params"]) != typed(b["params"]):
        say = lambda p: ", ".join(f"{k}={v}" for k, v in sorted(typed(p).items()))  # noqa: E731
        raise SketchFileError(f"{b_name} ({b['kind']} {say(b['params'])}) does not merge with {a_name} "
                              f"({say(a['params'])}): parameters differ")


def merge_bytes(kind: str, params: dict, a: bytes, b: bytes) -> bytes:
    """Two serialized sketches of one kind and parameters as one."""
    from shardstats import sketchkinds as kinds
    merge = {"kll_doubles": kll_merge_bytes, "frequent_items_i64": fi_merge_bytes,
             "hll_registers": hll_merge_bytes}.get(kind)
    return merge(a, b) if merge else kinds.merge_bytes(kind, params, a, b)


def merge_payloads(kind: str, payloads: list[bytes], params: dict | None = None) -> bytes:
    merge = lambda a, b: merge_bytes(kind, params or {}, a, b)  # noqa: E731
    acc = payloads[0]
    for p in payloads[1:]:
        acc = merge(acc, p)
    return acc


def validate_payload(head: dict, payload: bytes) -> dict:
    """Reads a payload with the library and asks it everything the commands will: run in a child process
    (``cluster sketch``), since a crafted KLL payload can crash the library (a segfault, not an exception)."""
    kind, params = head["kind"], head["params"]
    if kind == "kll_doubles":
        s = kll_load(payload)
        if s.k != params["k"]:
            raise ValueError(f"the payload's k is {s.k}, the header's {params['k']}")
        pop = sampling(head).get("population")
        if pop is not None and s.n > pop:
            raise ValueError(f"a sample of {s.n:,} values from a population of {pop:,}")
        if not s.is_empty():
            qs = s.get_quantiles([i / 200 for i in range(201)], True)
            if any(x != x for x in qs) or any(b < a for a, b in zip(qs, qs[1:])):
                raise ValueError("its quantiles are not in order")
            s.get_rank(qs[100], True)
        s.normalized_rank_error(False)
        s.serialize()
        return {"n": s.n}
    if kind == "frequent_items_i64":
        s = fi_load(payload)
        s.get_frequent_items(ds().frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
        s.serialize(ds().PyLongsSerDe())
        return {"n": s.total_weight}
    if kind == "hll_registers":
        return {}
    from shardstats import sketchkinds as kinds
    return kinds.validate(kind, params, payload)


def fingerprint_merge(a: dict, b: dict) -> dict:
    """Two inputs' fingerprints as the fingerprint of their union (a merge of sketch files records its parts)."""
    return {"merged_from": [a, b]}
