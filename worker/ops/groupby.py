"""groupby: aggregates per key over records -- a combiner before the shuffle, one keyed exchange, a reducer.

Mergeable aggregates (count, sum, min, max, mean, var, std, corr) are combined on
each mapper into one state row per key before anything crosses the network, so the
shuffle moves at most the distinct keys of each worker; value-needing ones (median,
quantile, collect, top, ...) move the rows they need (``worker.engine.aggregate``).

Hot keys: when the rows must travel and one key would overload its reducer, ``--salt``
spreads that key's rows over several reducers. Only aggregates whose partial answers
merge exactly may be salted this way, so a value-needing job is salted when every one
of its aggregates can be finished from salted parts in a second, exact stage
(largest/smallest/min/max/distinct/collect_set/collect/top: merge the parts again);
median and quantile stay on one reducer, and the stats say which keys were hot.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.errors import UsageError
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.engine import aggregate as agg
from shardstats.worker.engine import counter
from shardstats.worker.engine.keycount import distinct_estimate
from shardstats.worker.engine.hot import find_hot, hot_rows, key_mask, shown
from shardstats.worker.ops.contract import KeyedParams, Op, column_list, option, parse_salt
from shardstats.worker.steps import numpy_step


def _keys(text: str | None) -> tuple[str, ...]:
    if text is None:
        raise ValueError("name the key columns, e.g. --by region or --by id1,id2")
    keys = column_list(text)
    if not keys:
        raise ValueError("name the key columns, e.g. --by region or --by id1,id2")
    if len(set(keys)) != len(keys):
        raise ValueError(f"a column named twice in {text!r}")
    return keys


@dataclass(frozen=True)
class GroupbyParams(KeyedParams):
    by: str | None = option(None, "Key columns, comma-separated (nulls form one group, as in SQL).", metavar="COLS")
    agg: tuple = option((), "An aggregate, [NAME=]FUNC(COLUMN): count(), sum, min, max, mean, var, std (sample), "
                        "median, quantile(c, q), distinct, largest(c, k), smallest(c, k), top(c, k), collect, "
                        "collect_set, corr(a, b); approximate, from a sketch per group with an <name>_err bound column: "
                        "approx_median(c), approx_quantile(c, q), approx_distinct(c), approx_top(c, k). Repeat it for "
                        "more.", metavar="EXPR", multiple=True)
    salt: str = option("auto", "Hot keys of a job whose rows travel: auto (split a key holding more than twice a "
                       "reducer's share over several reducers, when its aggregates merge exactly), off, or N "
                       "reducers per hot key.", parse=parse_salt, metavar="auto|off|N")

    def check(self) -> None:
        super().check()
        try:
            keys = _keys(self.by)
        except ValueError as exc:
            raise UsageError(f"--by: {exc}") from None
        if not self.agg:
            raise UsageError("--agg: name at least one aggregate, e.g. --agg 'sum(v1)' or --agg 'count()'")
        agg.parse_all(self.agg, keys)

    @property
    def keys(self) -> tuple[str, ...]:
        return _keys(self.by)


def reads(p: GroupbyParams) -> dict:
    aggs = agg.parse_all(p.agg, p.keys)
    out = {"kind": "table", "columns": None if p.cache else agg.columns_needed(p.keys, aggs), "cache": p.cache,
           "slice_on": {"main": list(p.keys)}}     # beyond memory: one key slice a pass (worker/engine/slices.py)
    if all(a.mergeable and a.func not in agg.APPROX for a in aggs):
        # combined into a state row of a few numbers per key: what the job holds beside its rows grows with the
        # share's distinct keys, which the load measures before it chooses passes (jobs._combining_share)
        out["combines"] = list(p.keys)
    return out


# A value-needing job may salt only when its parts merge exactly: each salted part is reduced as usual, then
# the parts of one key are reduced again with the same aggregate.
_RESALTABLE = frozenset({"count", "sum", "min", "max", "largest", "smallest", "collect", "collect_set",
                         "median", "quantile"})
_SELECTED = frozenset({"median", "quantile"})     # a hot key's are found by exact selection over its salted parts
PROBE_ROWS = 100_000        # the rows a mapper combines first to see whether combining pays
SKIP_ABOVE = 0.9            # ... it does not when the share holds more distinct keys than this share of its rows


def _salt_column(table, keys, hot: list, ways: int):
    """A uint64 salt per row: 0 for ordinary keys, 1 + the row's position mod ``ways`` for hot ones."""
    flags = hot_rows(table, keys, hot)
    salt = (np.arange(table.num_rows, dtype=np.uint64) % np.uint64(ways)) + np.uint64(1)
    salt[~flags] = 0
    return salt


def _resaltable(a, schema) -> bool:
    """Whether a hot key's aggregate ``a`` can be salted: its second stage merges the parts, or (a median or a
    quantile) selects over them -- of integers and floats only (``_order_key``): of times, dates and decimals
    DuckDB interpolates in the column's own type, which the selection's doubles would not give back exactly, so
    such a key stays whole on its reducer (said in the stats' hot_keys, unsalted)."""
    import pyarrow as pa
    if a.func not in _RESALTABLE:
        return False
    if a.func not in _SELECTED:
        return True
    t = schema.field(a.cols[0]).type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _order_key(col) -> "np.ndarray":
    """Non-null values as int64 in the same order (floats by their bits: negatives flipped), for select_ranks."""
    import pyarrow as pa
    import pyarrow.compute as pc
    col = pc.drop_null(col)
    if pa.types.is_floating(col.type):
        bits = col.cast(pa.float64()).to_numpy(zero_copy_only=False).view(np.int64).copy()
        neg = bits < 0
        bits[neg] ^= np.int64(0x7FFFFFFFFFFFFFFF)
        return bits
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False)


def _from_order(v: int, floating: bool) -> float:
    if not floating:
        return float(v)
    x = np.int64(v)
    if x < 0:
        x ^= np.int64(0x7FFFFFFFFFFFFFFF)
    return float(np.array([x], dtype=np.int64).view(np.float64)[0])


def _interpolate(lo: float, hi: float, d: float) -> float:
    """quantile_cont between two order statistics as DuckDB answers it, ``lo * (1 - d) + hi * d`` (-5 and 0 at
    0.9: -0.4999999999999999, where lo + (hi - lo) * d gives -0.5), infinities included: one value (or two
    equal) is itself (-inf + (-inf - -inf) * 0 was NaN), -inf and 5 halfway -inf, -inf and inf NaN."""
    if d == 0 or lo == hi:
        return lo
    return lo * (1 - d) + hi * d


async def _hot_quantiles(comm: Communicator, mine, keys, hot: list, aggs) -> list[tuple[tuple, dict]]:
    """Every hot key's medians and quantiles, exact, from its salted parts on every rank: the engine's rank
    selection (``worker.engine.select``) over the parts, two order statistics per quantile, interpolated as
    DuckDB's ``quantile_cont`` does. Every rank calls in the same order (the hot list is agreed)."""
    import pyarrow as pa
    from shardstats.worker.comm.collectives import allreduce, broadcast, sum_ints
    from shardstats.worker.engine.select import select_ranks
    out = []
    for key, _ in hot:
        rows = mine.filter(pa.array(key_mask(mine, keys, key)))
        values = {}
        for a in aggs:
            if a.func not in _SELECTED:
                continue
            col = rows.column(a.cols[0])
            floating = pa.types.is_floating(col.type)
            v = _order_key(col)
            n = (await allreduce(comm, {"n": len(v)}, sum_ints, "groupby.hotn"))["n"]
            if n == 0:
                values[a.name] = None
                continue
            h = (0.5 if a.func == "median" else float(a.arg)) * (n - 1)
            lo, hi = int(np.floor(h)), int(np.ceil(h))
            found, _ = await select_ranks(comm, v, sorted({lo, hi}), n)
            found = (await broadcast(comm, {"f": {str(k): x for k, x in found.items()}} if found is not None
                                     else None, "groupby.hotq"))["f"]
            x_lo, x_hi = _from_order(found[str(lo)], floating), _from_order(found[str(hi)], floating)
            values[a.name] = _interpolate(x_lo, x_hi, h - lo)
        out.append((tuple(key), values))
    return out


def _patch(table, keys, exact: list[tuple[tuple, dict]]):
    """``table`` with each hot key's exact order statistics written over what its row holds."""
    import pyarrow as pa
    import pyarrow.compute as pc
    for key, values in exact:
        mask = key_mask(table, keys, key)
        if not mask.any():
            continue
        for name, value in values.items():
            i = table.column_names.index(name)
            col = table.column(name)
            table = table.set_column(i, name, pc.if_else(pa.array(mask), pa.scalar(value, col.type), col))
    return table


async def groupby(comm: Communicator, table, params: GroupbyParams) -> tuple[dict | None, dict]:
    from shardstats.worker.comm.collectives import allreduce
    from shardstats.worker.engine.answer import rows_answer
    from shardstats.worker.engine.exchange import exchange
    keys = list(params.keys)
    aggs = agg.parse_all(params.agg, keys)
    # every file read was checked for these columns; only a job whose files are all empty has none of them
    missing = [c for c in agg.columns_needed(keys, aggs) if c not in table.column_names]
    if missing:
        raise UsageError(f"no column {missing[0]!r} in the input (it has: "
                         f"{', '.join(table.column_names) or 'none: every file of it is empty'})")
    agg.check_types(aggs, table.schema)
    cfg = ShuffleConfig.from_params(params, None)
    t0 = time.perf_counter()
    map_pairs = table.num_rows
    table = table.select(agg.columns_needed(keys, aggs))
    approx = [a for a in aggs if a.func in agg.APPROX]
    extra: dict = {}
    if approx:
        from shardstats.worker.engine import sketchagg
        value_types = {a.name: table.schema.field(a.cols[0]).type for a in approx}
        kinds = {a.name: sketchagg.quantile_kind(value_types[a.name]) for a in approx if a.func in sketchagg.QUANTILES}
    comm.progress.set("combine")
    mergeable = all(a.mergeable for a in aggs)
    salt = None
    hot: list = []
    combined_states = mergeable
    if mergeable:
        # A combiner that cannot shrink the rows (every key unique, db-benchmark's q10) only costs: probe the
        # first rows, and when every rank finds them nearly all distinct, send the rows and let the reducers
        # aggregate them (Spark's partial-aggregation skipping).
        probe, kernel = await numpy_step(min(map_pairs, PROBE_ROWS), agg.combine, keys, aggs,
                                         table.slice(0, PROBE_ROWS))
        useless = map_pairs >= PROBE_ROWS and distinct_estimate(probe.num_rows, PROBE_ROWS) > SKIP_ABOVE * map_pairs
        vote = await allreduce(comm, {"skip": int(useless), "n": 1}, lambda a, b: {"skip": a["skip"] + b["skip"],
                                                                                 "n": a["n"] + b["n"]},
                               "groupby.combine")
        if vote["skip"] == vote["n"]:
            from shardstats.worker.engine.exchange import plain
            combined_states = False
            sent = plain(table)
            extra["combiner"] = f"skipped: the first {PROBE_ROWS:,} rows of every worker held over " \
                                f"{SKIP_ABOVE:.0%} distinct keys"
        elif map_pairs <= PROBE_ROWS:
            sent = probe
        else:
            sent, kernel = await numpy_step(map_pairs, agg.combine, keys, aggs, table)
        if combined_states:
            extra["combine_kernel"] = kernel      # dense (numpy over group codes) or duckdb: see engine/dense.py
        if combined_states and approx:        # each key's gathered values as one sketch (a binary state)
            sent = await numpy_step(map_pairs, sketchagg.states, sent, aggs, agg._s, kinds)
    else:
        from shardstats.worker.engine.exchange import plain
        drop = agg.drop_sql(keys, aggs)
        sent = await numpy_step(map_pairs, agg.run_sql, drop, table) if drop else plain(table)
        if params.salt != "off" and comm.size > 1:
            hot = await find_hot(comm, sent, keys)
            if hot:
                extra["hot_keys"] = shown(hot)
                if all(_resaltable(a, sent.schema) for a in aggs):
                    ways = comm.size if params.salt == "auto" else int(params.salt)
                    salt = _salt_column(sent, keys, hot, ways)
                    extra["salted_keys"] = len(hot)
                    extra["salt"] = ways
    del table
    combined = sent.num_rows
    t1 = time.perf_counter()
    mine, ex = await exchange(comm, sent, keys, cfg, compression=params.compression, salt=salt)
    del sent
    comm.progress.set("reduce")
    sql = agg.merge_sql(keys, aggs) if combined_states else agg.reduce_sql(keys, aggs)
    result = await numpy_step(mine.num_rows, agg.run_sql, sql, mine)
    phases = {"combine": t1 - t0, **ex["phases"]}
    if salt is not None:
        # second stage: the salted parts of each hot key meet on its owner and are reduced again, exactly;
        # its medians and quantiles come from a selection over the parts, not from the parts' own answers
        exact = await _hot_quantiles(comm, mine, keys, hot, aggs) if any(a.func in _SELECTED for a in aggs) else []
        result, ex2 = await exchange(comm, result, keys, cfg, compression=params.compression)
        result = await numpy_step(result.num_rows, agg.run_sql, _resalt_sql(keys, aggs), result)
        result = _patch(result, keys, exact)
        ex["counters"]["shuffled_pairs"] += ex2["counters"]["shuffled_pairs"]
        ex["counters"]["shuffled_bytes"] += ex2["counters"]["shuffled_bytes"]
    if approx:
        rounded: dict = {}
        result = await numpy_step(mine.num_rows, sketchagg.finish, result, aggs, agg._s, value_types, rounded)
        if rounded:                 # groups of integers spread wider than 2**53 beyond it: their _err is widened
            extra["approx_rounded_groups"] = rounded
    from shardstats.worker.comm.collectives import allreduce
    wide = await allreduce(comm, {"w": agg.wide_sums(result)}, lambda a, b: {"w": sorted(set(a["w"]) | set(b["w"]))},
                           "groupby.wide")
    result = agg.tidy(result, wide["w"])
    t2 = time.perf_counter()
    phases["reduce"] = t2 - t1 - sum(ex["phases"].values())
    stats = {"map_pairs": map_pairs, "combined_pairs": combined, **ex["counters"], **extra, "phases": phases,
             "rounds": 1 + (salt is not None), "groups": result.num_rows}
    result = await rows_answer(comm, result, [(k, "ascending") for k in keys], params, stats)
    return result, stats


def _resalt_sql(keys, aggs) -> str:
    """The second stage of a salted job: each aggregate of the salted parts' answers, merged once more."""
    from shardstats.worker.engine.aggregate import q
    k = ", ".join(q(x) for x in keys)
    sel = [k]
    for a in aggs:
        c = q(a.name)
        sel.append({
            "count": f"sum({c})::BIGINT", "sum": f"sum({c})", "min": f"min({c})", "max": f"max({c})",
            "largest": f"list_slice(list_sort(flatten(list({c})), 'DESC'), 1, {a.arg})",
            "smallest": f"list_slice(list_sort(flatten(list({c})), 'ASC'), 1, {a.arg})",
            "collect": f"list_sort(flatten(list({c})))",
            # list_distinct drops NULL, which list(DISTINCT c ORDER BY c) keeps last: put back where a part had it
            "collect_set": f"CASE WHEN list_count(flatten(list({c}))) < len(flatten(list({c}))) THEN "
                           f"list_append(list_sort(list_distinct(flatten(list({c})))), NULL) "
                           f"ELSE list_sort(list_distinct(flatten(list({c})))) END",
            "median": f"any_value({c})", "quantile": f"any_value({c})",      # written over: _patch
        }[a.func] + f" AS {c}")
    return f"SELECT {', '.join(sel)} FROM t GROUP BY {k}"


def render(r: dict) -> list[str]:
    from shardstats.worker.engine.answer import render_rows
    return render_rows(r, "group")


OP = Op(
    name="groupby",
    summary="Aggregates per key over records (csv/tsv/parquet/jsonl): a combiner, one keyed shuffle, a reducer.",
    params=GroupbyParams,
    run=groupby,
    render=render,
    phases=("load", "combine", "partition", "shuffle", "reduce"),
    examples=("cluster submit groupby --input sales/ --by region --agg 'sum(revenue)' --agg 'count()'",
              "cluster submit groupby --input g1/ --by id1,id2 --agg 'v=sum(v1)' --agg 'median(v3)' --out result/"),
    summarize=counter.summarize,
    reads=reads,
)
