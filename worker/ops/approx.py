"""The approximate paths of median, topk and distinct: a sketch per rank, one tree reduction, answers with bounds.

Each rank sketches its values (``shardstats.sketches``: DataSketches KLL for quantiles,
DataSketches frequent items for the top values, our HyperLogLog registers for distinct),
the serialized sketches merge up the binomial tree (kilobytes per message), and rank 0
answers with the sketch's stated error bound and size.

``--check`` then runs the exact job on the same values in the same job and reports the
true error against the bound: for a quantile, the distance from the asked normalized rank
to the ranks the answered value really holds (counted on every rank, one tree reduction),
beside the exact quantile from the exact op; for the top values, every listed value's
exact count against its [lower, upper] bounds, and the exact top K for what the list missed.

``--save-sketch FILE``: rank 0 writes the merged sketch (``shardstats.sketches`` format) under
its data root (as keyed ops write ``--out``), with a fingerprint of the input: the values'
count, min, max and an order-independent hash of them, and the files' names, sizes and
versions when the worker knows them.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

from shardstats.lazy import numpy as np

from shardstats import sketches as sk
from shardstats.worker.comm.collectives import broadcast, tree_depth, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.errors import EmptyDataset, InputError

COUNT_BLOCK = 1 << 22


# ---- typed values: one column of a table input (--of COL) ------------------------------------------------

def typed_values(table, column: str, takes: tuple[str, ...], what: str) -> tuple[str, object, int]:
    """(value type, values, nulls skipped) of ``column``: int64 and float64 as numpy arrays (NaN skipped as a
    null: it has no rank and no count), strings as an Arrow array.  A type ``what`` cannot use: InputError."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if column not in table.column_names:
        raise InputError(f"--of {column}: no such column (the input has {', '.join(table.column_names)[:200]})")
    col = table.column(column)
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_integer(t) and not pa.types.is_uint64(t) or pa.types.is_boolean(t):
        vtype = "int64"
    elif pa.types.is_uint64(t):
        raise InputError(f"--of {column}: a uint64 column; sketches take int64, float64 or string values")
    elif pa.types.is_floating(t) or pa.types.is_null(t):      # a column of nulls only (a CSV's empty column)
        vtype = "float64"
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        vtype = "string"
    else:
        raise InputError(f"--of {column}: a {t} column; sketches take integers, floats or strings")
    if vtype not in takes:
        raise InputError(f"--of {column}: a column of {vtype} values; {what} takes {' or '.join(takes)} values")
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if vtype == "float64":
        col = col.cast(pa.float64())
        col = col.filter(pc.invert(pc.is_nan(col)).fill_null(False))
    else:
        col = col.drop_null()
    if vtype == "string":
        return vtype, col.cast(pa.large_string()), n - len(col)
    out = col.cast(pa.int64() if vtype == "int64" else pa.float64()).to_numpy(zero_copy_only=False)
    if not out.flags.writeable:      # Arrow's buffers are read-only; the library's bindings take writable arrays
        out = out.copy()
    return vtype, out, n - len(out)


async def skipped_total(comm: Communicator, skipped: int, name: str) -> int | None:
    """The nulls and NaN every rank skipped, at rank 0 (one small tree reduction; None elsewhere)."""
    got = await tree_reduce(comm, {"n": skipped}, lambda a, b: {"n": a["n"] + b["n"]}, f"{name}.skipped")
    return None if got is None else got["n"]


async def int_offset(comm: Communicator, values) -> int:
    """The job's one offset for a KLL sketch of int64 values (``sketches.kll_offset``), from every rank's minimum
    and maximum (one small tree reduction and broadcast; a scan of ~1 ns a value, against KLL's ~30)."""
    local = {"lo": int(values.min()), "hi": int(values.max())} if len(values) else {"lo": None, "hi": None}
    pick = lambda f, x, y: x if y is None else y if x is None else f(x, y)  # noqa: E731
    got = await tree_reduce(comm, local, lambda a, b: {"lo": pick(min, a["lo"], b["lo"]),
                                                       "hi": pick(max, a["hi"], b["hi"])}, "kll.range")
    got = await broadcast(comm, {"o": sk.kll_offset(got["lo"], got["hi"])} if got is not None else None,
                          "kll.offset")
    return got["o"]


async def sketch_job(comm: Communicator, values, vtype: str, kind: str, kparams: dict, question: dict,
                     save_to: str | None, name: str, column: str | None = None) -> tuple[dict | None, dict]:
    """Any kind of ``shardstats.sketchkinds``: a sketch per rank, one tree reduction, rank 0 answers (and saves)."""
    from shardstats import sketchkinds as kinds
    params = {**kparams, "values": vtype}
    if kind == "kll_doubles" and vtype == "int64":
        offset = await int_offset(comm, values)
        if offset:
            params["offset"] = offset
    t = time.perf_counter()
    comm.progress.set("sketch")
    local = await asyncio.to_thread(kinds.build, kind, params, values)
    sketched = time.perf_counter()
    comm.progress.set("reduce")
    got = await tree_reduce(comm, {"s": local}, lambda a, b: {"s": sk.merge_bytes(kind, params, a["s"], b["s"])},
                            f"{name}.{kind}")
    stats: dict = {"sketch_bytes": len(local), "rounds": tree_depth(comm.size),
                   "phases": {"sketch": sketched - t, "reduce": time.perf_counter() - sketched}}
    result = None
    if got is not None:
        result = await asyncio.to_thread(kinds.answer, kind, params, got["s"], question)
        result.update(exact=False, approx=kind, params=params)
    if save_to:
        fp = await fingerprint(comm, values, vtype)
        if got is not None:
            result["saved"] = await asyncio.to_thread(save, comm, save_to, kind, params, got["s"], fp, column)
    return result, stats


# ---- shared: fingerprint, save ---------------------------------------------------------------------------

def _local_print(values, vtype: str = "int64") -> dict:
    from shardstats.sketchkinds import hash64
    h = 0
    for start in range(0, len(values), COUNT_BLOCK):
        part = hash64(values[start:start + COUNT_BLOCK], vtype)
        h = (h + int(part.view(np.uint64).sum(dtype=np.uint64))) % (1 << 64)
    num = (int if vtype == "int64" else float) if vtype != "string" else None
    return {"n": len(values), "lo": num(values.min()) if num and len(values) else None,
            "hi": num(values.max()) if num and len(values) else None, "h": h}


def _merge_print(a: dict, b: dict) -> dict:
    pick = lambda f, x, y: x if y is None else y if x is None else f(x, y)  # noqa: E731
    return {"n": a["n"] + b["n"], "lo": pick(min, a["lo"], b["lo"]), "hi": pick(max, a["hi"], b["hi"]),
            "h": (a["h"] + b["h"]) % (1 << 64), "f": a["f"] + b["f"]}


async def fingerprint(comm: Communicator, values, vtype: str = "int64") -> dict | None:
    """The input's fingerprint at rank 0 (None elsewhere)."""
    local = await asyncio.to_thread(_local_print, values, vtype)
    files = getattr(comm, "files", None) or []
    local["f"] = [[getattr(f, "path", str(f)), getattr(f, "size", -1), getattr(f, "version", None)] for f in files]
    got = await tree_reduce(comm, local, _merge_print, "sketch.fingerprint")
    if got is None:
        return None
    listed = sorted(got["f"], key=lambda f: f[0])
    out = {"values": got["n"], "min": got["lo"], "max": got["hi"], "values_hash": f"{got['h']:016x}"}
    if listed:
        out.update(files=len(listed), files_sha256=hashlib.sha256(json.dumps(listed).encode()).hexdigest(),
                   file_list=listed[:20])
    return out


def save(comm: Communicator, path: str, kind: str, params: dict, payload: bytes, fp: dict | None,
         column: str | None = None, population: int | None = None) -> str:
    """Writes the merged sketch at rank 0 (a file under the worker's data root, or an ``s3://`` object written
    with the worker's own AWS environment); where, as the worker resolved it.  ``population``: of a sampled
    sketch, how many values it samples."""
    from shardstats.worker.engine.answer import out_dir
    where = path if path.startswith("s3://") else out_dir(comm, path)
    sk.write(where, sk.header(kind, params, payload, fp, column or getattr(comm, "column", None), population),
             payload)
    return where


# ---- quantiles: KLL ------------------------------------------------------------------------------------

SAMPLE_KEYS = ("sampled", "sample_rate", "sketch_rank_error", "sample_error", "sample_confidence", "sample_min",
               "sample_max")


def sample_rate(params, total: int) -> float:
    """The job's one sample rate (every rank computes it from the same total): the asked one; with auto, none
    when the sketch is saved (saved sketches then merge with any other full one), else ``auto_sample_rate``."""
    if params.sample_rate != "auto":
        return sk.sample_rate_value(params.sample_rate)
    return 1.0 if params.save_sketch else sk.auto_sample_rate(total, params.k)


def _rank_counts(values: np.ndarray, points: list) -> list[list[int]]:
    """For each point: how many values are below it and at or below it, in the values' own order (int64 points
    and values compared as int64: as float64 the values beyond 2**53 that round together would tie)."""
    ints = values.dtype.kind == "i" and all(isinstance(p, int) for p in points)
    dt = np.int64 if ints else np.float64
    pts = np.asarray(points, dtype=dt)
    below = np.zeros(len(pts), np.int64)
    at = np.zeros(len(pts), np.int64)
    for start in range(0, len(values), COUNT_BLOCK):
        x = np.sort(values[start:start + COUNT_BLOCK].astype(dt))
        below += np.searchsorted(x, pts, "left")
        at += np.searchsorted(x, pts, "right")
    return [below.tolist(), at.tolist()]


def _sum_lists(a: dict, b: dict) -> dict:
    return {"c": [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(a["c"], b["c"])]}


async def median(comm: Communicator, values: np.ndarray, params) -> tuple[dict | None, dict]:
    from shardstats.worker.ops import median as exact_op
    vtype, skipped = "int64", 0
    if params.of:
        vtype, values, skipped = await asyncio.to_thread(typed_values, values, params.of, ("int64", "float64"),
                                                         "a quantile sketch")
        skipped = await skipped_total(comm, skipped, "median")
    if params.sketch == "tdigest":
        ranks = [0.5] + [float(exact_op.parse_quantile(q)) for q in params.quantiles]
        result, stats = await sketch_job(comm, values, vtype, "tdigest_double", {"k": params.k}, {"ranks": ranks},
                                         params.save_sketch, "median", params.of)
        if result is not None:
            if result["n"] == 0:
                raise EmptyDataset("the dataset holds no values")
            qs = result.pop("quantiles")
            result.update(value=qs[0]["value"], skipped=skipped,
                          quantiles={q: {"value": a["value"]} for q, a in zip(params.quantiles, qs[1:])})
        return result, stats
    t = time.perf_counter()
    total = comm.total if not params.of else None        # --of: the coordinator counted rows, nulls among them
    if total is None:
        got = await tree_reduce(comm, {"n": len(values)}, lambda a, b: {"n": a["n"] + b["n"]}, "median.kll.n")
        total = (await broadcast(comm, got, "median.kll.nb"))["n"]
    if total == 0:
        raise EmptyDataset("the dataset holds no values")
    rate = sample_rate(params, total)
    comm.progress.set("sketch")
    rng = np.random.default_rng(None if params.seed is None else [params.seed, comm.rank])
    # the sample first: the offset is of the values the sketch holds, so its range scan reads only those
    sketched_values = await asyncio.to_thread(sk.bernoulli_sample, values, rate, rng) if rate < 1 else values
    offset = await int_offset(comm, sketched_values) if vtype == "int64" else 0
    local = await asyncio.to_thread(sk.kll_build, sketched_values, params.k, 1.0, None, offset)
    sketched = time.perf_counter()
    comm.progress.set("reduce")
    got = await tree_reduce(comm, {"s": local}, lambda a, b: {"s": sk.kll_merge_bytes(a["s"], b["s"])},
                            "median.kll")
    reduced = time.perf_counter()
    stats: dict = {"sketch_bytes": len(local), "rounds": tree_depth(comm.size), "sample_rate": rate,
                   "phases": {"sketch": sketched - t, "reduce": reduced - sketched}}
    qs = list(params.quantiles)
    ranks = [0.5] + [float(exact_op.parse_quantile(q)) for q in qs]
    result = None
    if got is not None:
        ans = await asyncio.to_thread(sk.kll_answer, got["s"], ranks, vtype == "int64", rate, total, offset)
        if ans.get("sampled") == 0:
            raise InputError(f"--sample-rate {params.sample_rate}: the sample of {total:,} values is empty; "
                             f"ask a higher rate (or auto)")
        m, rest = ans["quantiles"][0], ans["quantiles"][1:]
        result = {"value": m["value"], "low": m["low"], "high": m["high"], "exact": False, "approx": "kll",
                  "n": ans["n"], "k": ans["k"], "rank_error_bound": ans["rank_error_bound"], "confidence": 0.99,
                  "sketch_bytes": ans["sketch_bytes"], "retained": ans["retained"],
                  "min": ans["min"], "max": ans["max"], "values": vtype}
        result.update({key: ans[key] for key in SAMPLE_KEYS + ("offset", "rounding") if key in ans})
        if params.of:
            result.update(column=params.of, skipped=skipped)
        if qs:
            result["quantiles"] = {q: {"value": a["value"], "low": a["low"], "high": a["high"]}
                                   for q, a in zip(qs, rest)}
        # --check counts ranks in the values' own order: int64 answers as int64 (not as the sketch's doubles)
        raw = [a["value"] if vtype == "int64" else float(a["raw"]) for a in ans["quantiles"]]
    if params.save_sketch:
        fp = await fingerprint(comm, values, vtype)
        if got is not None:
            kp = {"k": params.k} if vtype == "int64" else {"k": params.k, "values": vtype}
            if offset:
                kp["offset"] = offset
            if rate < 1:
                kp["sample_rate"] = rate
            result["saved"] = await asyncio.to_thread(save, comm, params.save_sketch, "kll_doubles", kp, got["s"], fp,
                                                      params.of, total if rate < 1 else None)
    if params.check:
        c0 = time.perf_counter()
        comm.progress.set("check")
        points = (await broadcast(comm, {"p": raw} if got is not None else None, "median.check.p"))["p"]
        counts = await asyncio.to_thread(_rank_counts, values, points)
        summed = await tree_reduce(comm, {"c": counts}, _sum_lists, "median.check.c")
        if vtype == "int64":
            exact, st = await exact_op.median(comm, values, exact_op.MedianParams(
                even=params.even, quantiles=params.quantiles, samples=params.samples,
                gather_limit=params.gather_limit, first_samples=params.first_samples))
            stats["check_rounds"] = st["rounds"]
        else:             # the exact selection is of int64 values: floats are checked by their counted ranks
            exact = None
        stats["phases"]["check"] = time.perf_counter() - c0
        if result is not None:
            n = result["n"]
            rows = []
            exact_values = [exact["value"]] + [exact["quantiles"][q]["value"] for q in qs] if exact \
                else [None] * (1 + len(qs))
            for name, r, est, ev, below, at in zip(["median", *qs], ranks, [result["value"]] +
                                                   [result["quantiles"][q]["value"] for q in qs], exact_values,
                                                   summed["c"][0], summed["c"][1]):
                err = sk.true_rank_error(r, below, at, n)
                rows.append({"q": name, "rank": r, "estimate": est, "exact": ev, "rank_error": err,
                             "bound": result["rank_error_bound"], "within": err <= result["rank_error_bound"]})
            result["check"] = {"rows": rows, "max_rank_error": max(x["rank_error"] for x in rows),
                               "all_within": all(x["within"] for x in rows)}
    return result, stats


def render_median(r: dict) -> list[str]:
    from shardstats.exact import exact_text
    if r["approx"] == "tdigest_double":
        lines = [f"median: ~{r['value']}  (t-digest, k={r['params']['k']}, {r['n']:,} values; {r['bound']}; "
                 f"sketch {r['sketch_bytes']:,} B)"]
        lines += [f"  q{q}: ~{v['value']}" for q, v in (r.get("quantiles") or {}).items()]
        return lines + ([f"sketch saved to {r['saved']}"] if "saved" in r else [])
    e = r["rank_error_bound"]
    say = (f"rank error <= {e:.4%} at {r['confidence']:.0%} confidence" if e else "exact: the sketch holds every value")
    if "sample_rate" in r:
        lines = [f"median: ~{r['value']}  (KLL sketch, k={r['k']}, {sk.sample_text(r)}: the median lies in "
                 f"{sk.interval_text(r['low'], r['high'])}; sketch {r['sketch_bytes']:,} B)"]
    else:
        lines = [f"median: ~{r['value']}  (KLL sketch, k={r['k']}, {r['n']:,} values; {say}: "
                 f"the median lies in [{r['low']}, {r['high']}]; sketch {r['sketch_bytes']:,} B)"]
    if r.get("column"):
        lines.append(f"  column {r['column']} ({r['values']}), {r.get('skipped') or 0:,} nulls/NaN skipped")
    if r.get("rounding"):
        lines.append(f"  the values span more than 2**53 and lie beyond it: the sketch rounds them to doubles (up to "
                     f"{r['rounding']:,} away), so values that close rank as ties; the intervals allow for it")
    for q, v in (r.get("quantiles") or {}).items():
        lines.append(f"  q{q}: ~{v['value']}  in {sk.interval_text(v['low'], v['high'])}")
    if "check" in r:
        c = r["check"]
        lines.append(f"check against the exact job: max rank error {c['max_rank_error']:.4%} vs bound {e:.4%} "
                     f"({'within' if c['all_within'] else 'NOT within'})")
        for row in c["rows"]:
            exact = exact_text(row["exact"]) if row["exact"] is not None else "(float64: by its counted rank)"
            lines.append(f"  {row['q']}: estimate {row['estimate']}, exact {exact}, "
                         f"rank error {row['rank_error']:.4%}")
    if "saved" in r:
        lines.append(f"sketch saved to {r['saved']}")
    return lines


# ---- top values: frequent items -------------------------------------------------------------------------

def _item_counts(values: np.ndarray, wanted: list[int]) -> list[int]:
    w = np.asarray(sorted(set(wanted)), dtype=np.int64)
    counts = np.zeros(len(w), np.int64)
    if len(w):
        for start in range(0, len(values), COUNT_BLOCK):
            x = values[start:start + COUNT_BLOCK]
            pos = np.minimum(np.searchsorted(w, x), len(w) - 1)
            hit = w[pos] == x
            counts += np.bincount(pos[hit], minlength=len(w))
    by = dict(zip(w.tolist(), counts.tolist()))
    return [by[v] for v in wanted]


def _typed_counts(values, vtype: str, wanted: list) -> list[int]:
    """Exact local counts of ``wanted`` float64 or string values (Arrow's hash kernels, no per-row loop).  Floats
    are counted as they compare: -0.0 is 0.0 (adding 0.0 makes it so), as the sketch and the hashes count it;
    Arrow's kernels would count the two signs apart."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if not wanted:
        return []
    arr = pa.array(np.asarray(values, np.float64) + 0.0) if vtype == "float64" else values
    want = pa.array([w + 0.0 for w in wanted] if vtype == "float64" else wanted, type=arr.type)
    hit = arr.filter(pc.is_in(arr, value_set=want))
    vc = hit.value_counts()
    by = dict(zip(vc.field(0).to_pylist(), vc.field(1).to_pylist()))
    return [by.get(v, 0) for v in wanted]


async def _typed_topk(comm: Communicator, values, vtype: str, skipped: int, params) -> tuple[dict | None, dict]:
    """topk --approx over a float64 or string column: frequent items of floats or strings, and --check by exact
    counts of the listed values and the exact top K of the values' 64-bit hashes (what the sketch missed)."""
    from shardstats.worker.ops import topk as exact_op
    lg = params.lg_max_k or sk.default_lg_max_k(params.k)
    kind = "frequent_items_f64" if vtype == "float64" else "frequent_strings"
    ans, stats = await sketch_job(comm, values, vtype, kind, {"lg_max_k": lg}, {"top": params.k},
                                  params.save_sketch, "topk", params.of)
    stats["strategy"] = "sketch"
    result = None
    if ans is not None:
        result = {"k": params.k, "exact": False, "approx": "frequent_items", "lg_max_k": lg, "values": vtype,
                  "column": params.of, "skipped": skipped, "n": ans["total"], "max_error": ans["max_error"],
                  "sketch_bytes": ans["sketch_bytes"], "items": [[i["value"], i["estimate"]] for i in ans["items"]],
                  "bounds": [[i["lower"], i["upper"]] for i in ans["items"]]}
        if "saved" in ans:
            result["saved"] = ans["saved"]
    if params.check:
        c0 = time.perf_counter()
        comm.progress.set("check")
        listed = (await broadcast(comm, {"v": [v for v, _ in result["items"]]} if ans is not None else None,
                                  "topk.check.v"))["v"]
        counts = await asyncio.to_thread(_typed_counts, values, vtype, listed)
        summed = await tree_reduce(comm, {"c": counts}, lambda a, b: {"c": [x + y for x, y in zip(a["c"], b["c"])]},
                                   "topk.check.c")
        from shardstats.sketchkinds import hash64
        hashes = await asyncio.to_thread(hash64, values, vtype)
        listed_h = await asyncio.to_thread(lambda: hash64(np.asarray(listed, np.float64) if vtype == "float64"
                                                          else _string_array(listed), vtype).tolist())
        exact, _ = await exact_op.topk(comm, hashes, exact_op.TopkParams(
            k=params.k, strategy=params.strategy, candidate_limit=params.candidate_limit, shuffle=params.shuffle,
            fan_in=params.fan_in, credits=params.credits, chunk_bytes=params.chunk_bytes))
        stats["phases"]["check"] = time.perf_counter() - c0
        if result is not None:
            _check_rows(result, summed["c"], exact["items"], listed_h)
    return result, stats


def _string_array(items: list):
    import pyarrow as pa
    return pa.array(items, pa.large_string())


def _check_rows(result: dict, true_counts: list[int], exact_items: list, keys: list | None = None) -> None:
    """--check of a top-values answer: each listed count against its bounds and the truth, and what the exact top K
    holds that the list missed (``keys``: the listed values as the exact job names them, when it names hashes)."""
    rows = []
    for (v, est), (lo, hi), true in zip(result["items"], result["bounds"], true_counts):
        rows.append({"value": v, "estimate": est, "lower": lo, "upper": hi, "true": true,
                     "count_error": est - true, "within": lo <= true <= hi})
    got = set(keys if keys is not None else [v for v, _ in result["items"]])
    missed = [[v if keys is None else f"hash:{v & 0xFFFFFFFFFFFFFFFF:016x}", c] for v, c in exact_items if v not in got]
    result["check"] = {
        "rows": rows, "max_count_error": max((abs(r["count_error"]) for r in rows), default=0),
        "bound": result["max_error"], "all_within": all(r["within"] for r in rows),
        "exact_items": exact_items if keys is None else [[c] for _, c in exact_items],
        "recall": (len(exact_items) - len(missed)) / len(exact_items) if exact_items else 1.0, "missed": missed,
        # the guarantee: a value more frequent than max_error is in the sketch (it may rank below k)
        "missed_above_bound": [m for m in missed if m[1] > result["max_error"]]}


async def topk(comm: Communicator, values: np.ndarray, params) -> tuple[dict | None, dict]:
    from shardstats.worker.ops import topk as exact_op
    if params.of:
        vtype, values, skipped = await asyncio.to_thread(typed_values, values, params.of,
                                                         ("int64", "float64", "string"), "frequent items")
        skipped = await skipped_total(comm, skipped, "topk")
        if vtype != "int64":
            return await _typed_topk(comm, values, vtype, skipped, params)
    t = time.perf_counter()
    lg = params.lg_max_k or sk.default_lg_max_k(params.k)
    comm.progress.set("sketch")
    local = await asyncio.to_thread(sk.fi_build, values, lg)
    sketched = time.perf_counter()
    comm.progress.set("reduce")
    got = await tree_reduce(comm, {"s": local}, lambda a, b: {"s": sk.fi_merge_bytes(a["s"], b["s"])}, "topk.fi")
    stats: dict = {"sketch_bytes": len(local), "rounds": tree_depth(comm.size), "strategy": "sketch",
                   "phases": {"sketch": sketched - t, "reduce": time.perf_counter() - sketched}}
    result = None
    if got is not None:
        ans = await asyncio.to_thread(sk.fi_answer, got["s"], params.k)
        result = {"k": params.k, "exact": False, "approx": "frequent_items", "lg_max_k": lg,
                  "n": ans["total"], "max_error": ans["max_error"], "sketch_bytes": ans["sketch_bytes"],
                  "items": [[i["value"], i["estimate"]] for i in ans["items"]],
                  "bounds": [[i["lower"], i["upper"]] for i in ans["items"]]}
        if params.of:
            result.update(values="int64", column=params.of, skipped=skipped)
    if params.save_sketch:
        fp = await fingerprint(comm, values)
        if got is not None:
            result["saved"] = await asyncio.to_thread(save, comm, params.save_sketch, "frequent_items_i64",
                                                      {"lg_max_k": lg}, got["s"], fp, params.of)
    if params.check:
        c0 = time.perf_counter()
        comm.progress.set("check")
        listed = (await broadcast(comm, {"v": [v for v, _ in result["items"]]} if got is not None else None,
                                  "topk.check.v"))["v"]
        counts = await asyncio.to_thread(_item_counts, values, listed)
        summed = await tree_reduce(comm, {"c": counts}, lambda a, b: {"c": [x + y for x, y in zip(a["c"], b["c"])]},
                                   "topk.check.c")
        exact, st = await exact_op.topk(comm, values, exact_op.TopkParams(
            k=params.k, strategy=params.strategy, candidate_limit=params.candidate_limit, shuffle=params.shuffle,
            fan_in=params.fan_in, credits=params.credits, chunk_bytes=params.chunk_bytes))
        stats["phases"]["check"] = time.perf_counter() - c0
        stats["check_strategy"] = st.get("strategy")
        if result is not None:
            _check_rows(result, summed["c"], exact["items"])
    return result, stats


def render_topk(r: dict) -> list[str]:
    items = r["items"]
    lines = [f"top {len(items)} of k={r['k']} (frequent-items sketch, lg_max_k={r['lg_max_k']}, {r['n']:,} values; "
             f"each count within [lower, upper], maximum error {r['max_error']:,}; sketch {r['sketch_bytes']:,} B)"]
    if items:
        width = max(len(str(v)) for v, _ in items)
        lines += [f"  {i:>4}. {v:>{width}}  ~{c:,}  [{lo:,}, {hi:,}]"
                  for i, ((v, c), (lo, hi)) in enumerate(zip(items, r["bounds"]), 1)]
    if "check" in r:
        c = r["check"]
        lines.append(f"check against the exact job: max count error {c['max_count_error']:,} vs bound {c['bound']:,} "
                     f"({'every count within its bounds' if c['all_within'] else 'NOT within'}); "
                     f"recall of the exact top {len(c['exact_items'])}: {c['recall']:.0%}")
    if "saved" in r:
        lines.append(f"sketch saved to {r['saved']}")
    return lines


# ---- distinct: the HyperLogLog registers of worker/ops/distinct.py ---------------------------------------

def distinct_values(table, column: str) -> tuple[str, np.ndarray, int]:
    """``distinct --approx --of COL``: (value type, int64 values, nulls skipped).  Integers stay themselves (their
    registers are those of int64 shards); floats and strings become their stable 64-bit hashes, which the
    registers hash again and the exact --check counts (two distinct values share a 64-bit hash with probability
    about n**2 / 2**65: 3e-6 for 10**7 distinct values)."""
    from shardstats.sketchkinds import hash64
    vtype, values, skipped = typed_values(table, column, ("int64", "float64", "string"), "distinct")
    return vtype, (values if vtype == "int64" else hash64(values, vtype)), skipped


async def distinct_extras(comm: Communicator, values: np.ndarray, params, result: dict | None,
                          registers: bytes | None, stats: dict, vtype: str = "int64") -> None:
    """--save-sketch and --check of ``distinct --approx`` (the estimate itself is distinct.py's)."""
    from shardstats.worker.ops import distinct as exact_op
    if params.save_sketch:
        fp = await fingerprint(comm, values)       # of the values' hashes when they are floats or strings
        if result is not None:
            kp = {"precision": params.precision} if vtype == "int64" else {"precision": params.precision,
                                                                           "values": vtype}
            result["saved"] = await asyncio.to_thread(save, comm, params.save_sketch, "hll_registers", kp, registers,
                                                      fp, params.of)
    if params.check:
        c0 = time.perf_counter()
        comm.progress.set("check")
        exact, _ = await exact_op.distinct(comm, values, exact_op.DistinctParams(
            shuffle=params.shuffle, fan_in=params.fan_in, credits=params.credits, chunk_bytes=params.chunk_bytes))
        stats["phases"]["check"] = time.perf_counter() - c0
        if result is not None:
            n = exact["value"]
            rel = (result["value"] - n) / n if n else 0.0
            result["check"] = {"exact": n, "relative_error": rel,
                               "standard_errors": abs(rel) / result["relative_standard_error"]}
