"""Typed values and the sketches beyond KLL / frequent items / HLL: t-digest, theta, CPC, count-min, Bloom.

``shardstats.sketches`` holds the file format and the first three kinds; this module adds

* **value types**: a sketch is of ``int64``, ``float64`` or ``string`` values (its header's
  ``params["values"]``, ``int64`` when absent: files written before types existed).  Sketches
  of different types never merge (their items hash differently).  The library's ``ints``
  variants are 32-bit, so nothing here feeds them: int64 goes to ``double`` sketches (KLL,
  t-digest) or, as a 64-bit hash, to the hashing sketches.
* **the hashing sketches** (HLL registers of floats and strings, theta, CPC, count-min, Bloom)
  see every value as its stable 64-bit hash (``worker.data.hashing``: the keyed engine's,
  defined by us, vectorised, the same in every process and release).  The library then hashes
  that int64 again; for int64 values the hash is splitmix64 of the value, as the HLL registers
  of ``distinct --approx`` use.  A question (``--count VALUE``, ``--contains VALUE``) hashes
  its value the same way.  One loop iteration per *distinct* value feeds the per-item library
  calls (theta, CPC, count-min: their bindings take one item at a time); rows are counted
  vectorised first.
* **the kinds**: ``tdigest_double`` (DataSketches' t-digest; no stated bound, reported as such),
  ``theta`` (DataSketches' theta: distinct with union, intersection and a-not-b), ``cpc``
  (DataSketches' CPC: the smallest distinct sketch for its accuracy), ``count_min``
  (DataSketches' count-min: a point frequency never below the truth for non-negative weights;
  above it by at most eps * N with probability 1 - e**-hashes), ``bloom`` (the join's Bloom filter,
  ``worker.engine.bloom``: DataSketches 5.2 has none; membership with no false negatives),
  ``frequent_items_f64`` and ``frequent_strings`` (frequent items of floats, strings).
"""
from __future__ import annotations

import math

VALUE_TYPES = ("int64", "float64", "string")
# the value types each kind takes (the others take all three)
KIND_TYPES = {"kll_doubles": ("int64", "float64"), "tdigest_double": ("int64", "float64"),
              "frequent_items_i64": ("int64",), "frequent_items_f64": ("float64",), "frequent_strings": ("string",)}
TDIGEST_K = (10, 65535)
THETA_LG_K = (5, 26)
CPC_LG_K = (4, 26)
CM_HASHES = (1, 32)
CM_BUCKETS = (2, 1 << 24)
BLOOM_BYTES = (8, 1 << 28)
CM_SEED = 9001                  # DataSketches' default: its Python deserialize takes no seed, so the only one
STD_DEVS = 3                    # theta / CPC bounds: 3 standard deviations (99.7%)


def ds():
    import datasketches
    return datasketches


def values_type(params: dict) -> str:
    return params.get("values", "int64") if isinstance(params, dict) else "int64"


# ---- typed values ---------------------------------------------------------------------------------------

def hash64(values, vtype: str):
    """The stable 64-bit hash of each value as int64 (numpy int64/float64 arrays, or an Arrow string array)."""
    import numpy as np
    import pyarrow as pa
    from shardstats.worker.data.hashing import hash_array
    if vtype == "int64":
        from shardstats.worker.data.partition import splitmix64
        return splitmix64(np.asarray(values, dtype=np.int64)).view(np.int64)
    arr = pa.array(values, type=pa.float64()) if vtype == "float64" else values
    return hash_array(arr).view(np.int64)


def parse_value(text: str, vtype: str):
    """A question's value (``--count V``, ``--contains V``) as the sketch's type; ValueError if it is not one."""
    if vtype == "int64":
        v = int(str(text).strip())
        if not -(1 << 63) <= v < (1 << 63):
            raise ValueError(f"{text!r} is outside int64")
        return v
    if vtype == "float64":
        return float(str(text).strip())
    return str(text)


def hash_one(text: str, vtype: str) -> int:
    import numpy as np
    import pyarrow as pa
    v = parse_value(text, vtype)
    arr = np.array([v], dtype=np.int64 if vtype == "int64" else np.float64) if vtype != "string" \
        else pa.array([v], pa.string())
    return int(hash64(arr, vtype)[0])


def distinct_counts(h):
    """(distinct hashes, rows each) of an int64 hash array: one sort, no Python loop."""
    import numpy as np
    return np.unique(h, return_counts=True)


# ---- builds (one rank's values -> serialized sketch) ----------------------------------------------------

def build(kind: str, params: dict, values) -> bytes:
    """The serialized sketch of ``kind`` over one rank's values (already of ``params['values']`` type)."""
    d, vtype = ds(), values_type(params)
    if kind in ("kll_doubles", "frequent_items_i64", "hll_registers"):
        from shardstats import sketches as sk
        if kind == "kll_doubles":
            return sk.kll_build(values, params["k"], offset=params.get("offset", 0))
        if kind == "frequent_items_i64":
            return sk.fi_build(values, params["lg_max_k"])
        from shardstats.worker.ops.distinct import hll_registers
        return hll_registers(values if vtype == "int64" else hash64(values, vtype), params["precision"]).tobytes()
    if kind == "tdigest_double":
        import numpy as np
        s = d.tdigest_double(params["k"])
        for start in range(0, len(values), 1 << 22):
            s.update(np.asarray(values[start:start + (1 << 22)], dtype=np.float64))
        return s.serialize()
    if kind == "frequent_items_f64":
        import numpy as np
        s = d.frequent_items_sketch(params["lg_max_k"])
        if len(values):
            v, c = np.unique(np.asarray(values, np.float64), return_counts=True)
            for item, w in zip(v.tolist(), c.tolist()):
                s.update(item, w)
        return s.serialize(d.PyDoublesSerDe())
    if kind == "frequent_strings":
        s = d.frequent_strings_sketch(params["lg_max_k"])
        if len(values):
            vc = values.value_counts()
            for item, w in zip(vc.field(0).to_pylist(), vc.field(1).to_pylist()):
                s.update(item, w)
        return s.serialize()
    if kind == "bloom":
        from shardstats.worker.engine import bloom
        h = hash64(values, vtype).view("uint64")
        return bloom.build(h, params["bytes"]).tobytes()
    h = hash64(values, vtype)
    if kind == "count_min":
        s = d.count_min_sketch(params["hashes"], params["buckets"], params["seed"])
        if len(h):
            v, c = distinct_counts(h)
            update = s.update
            for item, w in zip(v.tolist(), c.tolist()):
                update(item, float(w))
        return s.serialize()
    if kind == "theta":
        s = d.update_theta_sketch(params["lg_k"])
    elif kind == "cpc":
        s = d.cpc_sketch(params["lg_k"])
    else:
        raise ValueError(f"no builder for {kind}")
    if len(h):
        import numpy as np
        update = s.update
        for item in np.unique(h).tolist():
            update(item)
    if kind == "theta":
        s.trim()            # down to its nominal 2**lg_k entries: at most 8 B each on the wire (32 KiB at lg_k 12)
        return s.compact().serialize()
    return s.serialize()


# ---- load, merge, set operations ------------------------------------------------------------------------

def load(kind: str, data: bytes):
    d = ds()
    data = bytes(data)
    if kind == "tdigest_double":
        return d.tdigest_double.deserialize(data)
    if kind == "frequent_items_f64":
        return d.frequent_items_sketch.deserialize(data, d.PyDoublesSerDe())
    if kind == "frequent_strings":
        return d.frequent_strings_sketch.deserialize(data)
    if kind == "theta":
        return d.compact_theta_sketch.deserialize(data)
    if kind == "cpc":
        return d.cpc_sketch.deserialize(data)
    if kind == "count_min":
        return d.count_min_sketch.deserialize(data)
    raise ValueError(f"no reader for {kind}")


def _dump(kind: str, s) -> bytes:
    return s.serialize(ds().PyDoublesSerDe()) if kind == "frequent_items_f64" else s.serialize()


def merge_bytes(kind: str, params: dict, a: bytes, b: bytes) -> bytes:
    """Two serialized sketches of one kind and parameters as one (a union)."""
    if kind == "bloom":
        import numpy as np
        if len(a) != len(b):
            raise ValueError(f"Bloom filters of {len(a)} and {len(b)} bytes")
        return np.bitwise_or(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()
    d = ds()
    if kind == "theta":
        u = d.theta_union(params["lg_k"])
        u.update(load(kind, a))
        u.update(load(kind, b))
        return u.get_result().serialize()
    if kind == "cpc":
        u = d.cpc_union(params["lg_k"])
        u.update(load(kind, a))
        u.update(load(kind, b))
        return u.get_result().serialize()
    s = load(kind, a)
    s.merge(load(kind, b))
    return _dump(kind, s)


SET_OPS = ("union", "intersect", "minus")


def theta_set_op(op: str, lg_k: int, payloads: list[bytes]) -> bytes:
    """Theta sketches combined left to right: union, intersection, or the first minus the others (a-not-b)."""
    d = ds()
    sketches = [load("theta", p) for p in payloads]
    if op == "union":
        u = d.theta_union(lg_k)
        for s in sketches:
            u.update(s)
        return u.get_result().serialize()
    if op == "intersect":
        i = d.theta_intersection()
        for s in sketches:
            i.update(s)
        return i.get_result().serialize()
    acc = sketches[0]
    for s in sketches[1:]:
        acc = d.theta_a_not_b().compute(acc, s)
    return acc.serialize()


# ---- answers ---------------------------------------------------------------------------------------------

def answer(kind: str, params: dict, data: bytes, question: dict) -> dict:
    """What ``cluster sketch show`` (and the ``sketch`` op) print: the kind's estimate with its stated bound."""
    vtype = values_type(params)
    out: dict = {"kind": kind, "values": vtype, "sketch_bytes": len(data)}
    if kind in ("kll_doubles", "frequent_items_i64", "hll_registers"):
        from shardstats import sketches as sk
        if kind == "kll_doubles":
            out.update(sk.kll_answer(data, question.get("ranks", [0.5, 0.99]), vtype == "int64",
                                     params.get("sample_rate", 1.0), offset=params.get("offset", 0)))
        elif kind == "frequent_items_i64":
            out.update(sk.fi_answer(data, question.get("top", 10)))
        else:
            out.update(sk.hll_answer(data, params["precision"]))
        return out
    if kind == "tdigest_double":
        s = load(kind, data)
        n = int(s.get_total_weight())
        out.update(n=n, rank_error_bound=None, bound="none stated (t-digest: accurate at the tails, no guarantee)",
                   min=s.get_min_value() if n else None, max=s.get_max_value() if n else None, quantiles=[])
        for q in question.get("ranks", [0.5, 0.99]):
            out["quantiles"].append({"rank": q, "value": s.get_quantile(q) if n else None})
        return out
    if kind in ("frequent_items_f64", "frequent_strings"):
        s = load(kind, data)
        rows = s.get_frequent_items(ds().frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
        rows.sort(key=lambda r: (-r[1], r[0]))
        out.update(total=s.total_weight, max_error=_fi_max_error(s, rows, kind), active_items=s.num_active_items,
                   items=[{"value": v, "estimate": int(e), "lower": int(lo), "upper": int(hi)}
                          for v, e, lo, hi in rows[:question.get("top", 10)]])
        return out
    if kind in ("theta", "cpc"):
        s = load(kind, data)
        out.update(value=s.get_estimate(), lower=s.get_lower_bound(STD_DEVS), upper=s.get_upper_bound(STD_DEVS),
                   confidence=0.997, lg_k=params["lg_k"])
        if kind == "theta":
            out.update(retained=s.num_retained, estimation_mode=s.is_estimation_mode())
        return out
    if kind == "count_min":
        s = load(kind, data)
        eps = s.get_relative_error()
        out.update(total=s.total_weight, relative_error=eps, confidence=1 - math.exp(-s.num_hashes),
                   hashes=s.num_hashes, buckets=s.num_buckets, counts=[])
        for text in question.get("count", []):
            h = hash_one(text, vtype)
            est = s.get_estimate(h)
            # never below the truth (upper = the estimate); at most eps * N above it at the confidence
            out["counts"].append({"value": text, "estimate": int(round(est)), "upper": int(round(est)),
                                  "lower": max(0, math.ceil(est - eps * s.total_weight))})
        return out
    if kind == "bloom":
        import numpy as np
        from shardstats.worker.engine import bloom
        filt = np.frombuffer(data, np.uint8)
        out.update(bits=len(filt) * 8, hashes=bloom.HASHES, false_positive_rate=bloom.false_positive_rate(filt),
                   contains=[])
        for text in question.get("contains", []):
            h = np.array([hash_one(text, vtype)], np.int64).view(np.uint64)
            out["contains"].append({"value": text, "maybe": bool(bloom.contains(filt, h)[0])})
        return out
    raise ValueError(f"no answer for {kind}")


def _fi_max_error(s, rows, kind: str) -> int:
    """The sketch's maximum error: the upper bound of a value it does not hold."""
    if s.is_empty():
        return 0
    held = {r[0] for r in rows}
    if kind == "frequent_strings":
        x = ""
        while x in held:
            x += "\x00"
    else:
        x = -math.inf
        while x in held:
            x = math.nextafter(x, 0.0)
    return int(s.get_upper_bound(x))


def validate(kind: str, params: dict, data: bytes) -> dict:
    """Reads a payload and asks it everything the commands will (run in a forked child by ``cluster sketch``)."""
    if kind == "bloom":
        from shardstats.worker.engine import bloom
        if len(data) != params["bytes"] or params["bytes"] & (params["bytes"] - 1):
            raise ValueError(f"{len(data)} bytes of Bloom filter, the header says {params['bytes']} (a power of two)")
        if params["hashes"] != bloom.HASHES:
            raise ValueError(f"a Bloom filter of {params['hashes']} hashes; this version probes {bloom.HASHES}")
        return {}
    s = load(kind, data)
    if kind == "count_min":
        if (s.num_hashes, s.num_buckets) != (params["hashes"], params["buckets"]) or s.seed != params["seed"]:
            raise ValueError(f"the payload's hashes/buckets/seed are {s.num_hashes}/{s.num_buckets}/{s.seed}, the "
                             f"header's {params['hashes']}/{params['buckets']}/{params['seed']}")
        s.get_estimate(0)
    elif kind == "tdigest_double":
        if s.k != params["k"]:
            raise ValueError(f"the payload's k is {s.k}, the header's {params['k']}")
        if not s.is_empty():
            qs = [s.get_quantile(i / 100) for i in range(101)]
            if any(x != x for x in qs) or any(b < a for a, b in zip(qs, qs[1:])):
                raise ValueError("its quantiles are not in order")
    elif kind in ("theta", "cpc"):
        e = s.get_estimate()
        if e != e or e < 0:
            raise ValueError("its estimate is not a count")
        s.get_lower_bound(STD_DEVS)
        s.get_upper_bound(STD_DEVS)
    else:
        s.get_frequent_items(ds().frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
    _dump(kind, s)
    return {}


def check_params(kind: str, params: dict, num) -> None:
    """The new kinds' parameters (``num(key, lo, hi)`` raises naming the file)."""
    if kind == "tdigest_double":
        num("k", *TDIGEST_K)
    elif kind in ("frequent_items_f64", "frequent_strings"):
        from shardstats.sketches import LG_MAX_K
        num("lg_max_k", *LG_MAX_K)
    elif kind == "theta":
        num("lg_k", *THETA_LG_K)
    elif kind == "cpc":
        num("lg_k", *CPC_LG_K)
    elif kind == "count_min":
        num("hashes", *CM_HASHES)
        num("buckets", *CM_BUCKETS)
        num("seed", CM_SEED, CM_SEED)       # the Python binding reads sketches of the default seed only
    elif kind == "bloom":
        num("bytes", *BLOOM_BYTES)
        num("hashes", 1, 64)


def render_answer(kind: str, a: dict) -> list[str]:
    """An answer of ``answer`` (or of ``shardstats.sketches``' KLL, frequent-items and HLL answers) for people."""
    if kind == "tdigest_double":
        lines = [f"{a['n']:,} values, min {a['min']}, max {a['max']}; t-digest: {a['bound']}; {a['sketch_bytes']:,} B"]
        return lines + [f"  q{q}: ~{v['value']}" for q, v in a["quantiles"].items()]
    if kind in ("theta", "cpc"):
        return [f"distinct: ~{a['value']:,.0f} in [{a['lower']:,.0f}, {a['upper']:,.0f}] at 99.7% confidence "
                f"({kind}, lg_k={a['lg_k']}; {a['sketch_bytes']:,} B)"]
    if kind == "count_min":
        lines = [f"{a['total']:,.0f} values; count-min ({a['hashes']} x {a['buckets']}): a count is never below the "
                 f"truth, and above it by at most {a['relative_error']:.4%} of the values at "
                 f"{a['confidence']:.1%} confidence; {a['sketch_bytes']:,} B"]
        return lines + [f"  {c['value']}: ~{c['estimate']:,}  in [{c['lower']:,}, {c['upper']:,}]" for c in a["counts"]]
    if kind == "bloom":
        lines = [f"Bloom filter of {a['bits']:,} bits, {a['hashes']} hashes: false positive rate "
                 f"{a['false_positive_rate']:.3%}, no false negatives; {a['sketch_bytes']:,} B"]
        return lines + [f"  {c['value']}: {'maybe (in the set, or a false positive)' if c['maybe'] else 'no'}"
                        for c in a["contains"]]
    if kind in ("frequent_items_f64", "frequent_strings"):
        kind = "frequent_items_i64"
    if kind == "kll_doubles":
        from shardstats.sketches import sample_text
        e = a["rank_error_bound"]
        say = f"rank error <= {e:.4%} at 99% confidence" if e else "exact (the sketch holds every value)"
        if "sample_rate" in a:
            lines = [f"{sample_text(a)}; sample min {a['sample_min']}, max {a['sample_max']}; {a['sketch_bytes']:,} B"]
        else:
            lines = [f"{a['n']:,} values, min {a['min']}, max {a['max']}; {say}; {a['sketch_bytes']:,} B"]
        from shardstats.sketches import interval_text
        lines += [f"  q{q}: ~{v['value']}  in {interval_text(v['low'], v['high'])}" for q, v in a["quantiles"].items()]
        return lines
    if kind == "frequent_items_i64":
        lines = [f"{a['total']:,} values; each count within [lower, upper], maximum error {a['max_error']:,}; "
                 f"{a['sketch_bytes']:,} B"]
        width = max([len(str(i["value"])) for i in a["items"]] or [1])
        lines += [f"  {n:>4}. {str(i['value']):>{width}}  ~{i['estimate']:,}  [{i['lower']:,}, {i['upper']:,}]"
                  for n, i in enumerate(a["items"], 1)]
        return lines
    e = a["relative_standard_error"]
    return [f"distinct: ~{a['value']:,} (HyperLogLog, relative standard error {e:.2%}; {a['sketch_bytes']:,} B)"]
