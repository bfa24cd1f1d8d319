"""join: two datasets by key -- broadcast, shuffle hash or skew join, chosen by a planner that says why.

* **broadcast**: the smaller side (when the join allows it and it is under
  ``--broadcast-limit``) reaches every worker through the credit shuffle -- each worker
  streams its own part of that side to the others, one receiver at a time, so no
  worker fans out to all at once and no receiver takes more than ``fan_in`` streams --
  and each worker joins its share of the big side locally: zero big-side rows move.
* **shuffle**: both sides go through the one credit shuffle by the stable key hash
  (``worker.data.hashing``: both sides' keys are cast to common types first, so equal
  keys hash alike) and each reducer joins what it owns.
* **skew** (``--salt``): a key holding more than half a reducer's mean load (both
  sides' rows over the workers) is split over several reducers on the side it is hot on,
  and the other side's rows of that key are copied to each of them -- the same output rows, every pair once.
  A hot key is split on whichever side it is hot on, but for a semi or an anti join (whose left rows are the
  answer: only the left is split). The copied side may be one whose unmatched rows the join keeps (an outer
  join's): a copy of a hot key's row always has a partner somewhere -- the key is on the split side, not NULL --
  so a copy found unmatched on a reducer (that got none of the split side's rows of its key) is dropped there
  (``_local_join``'s ``hot_copies``), not emitted once per copy. (Only the side whose unmatched rows were not kept
  was copied before: a right join's key hot on the left stayed whole, its reducer at 2.03x the mean.)

The local join is DuckDB's hash join (one thread per worker) of the keys and row numbers alone; every
answer column is then an Arrow take of its side's rows (``_local_join``). Output: every left
column, then the right side's non-key columns (a clashing name gets ``_right``); with
the key columns named as the left's: a right-only row of a right or full join shows its key there (SQL
``USING`` for ``--on``; with ``--left-on/--right-on`` too, as Polars' ``coalesce=True``: DuckDB's ``ON`` keeps
both sides' key columns, whose ``COALESCE`` this is -- dropping the right key left such a row's key NULL, lost).
NULL keys never match. Semi and anti joins return left columns only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.errors import UsageError
from shardstats.worker.comm.collectives import allreduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.comm.shuffle import ShuffleConfig
from shardstats.worker.engine import counter
from shardstats.worker.data.schema import canonical, decimal_meet, type_name
from shardstats.worker.engine.hot import find_hot, hot_rows, shown
from shardstats.worker.ops.contract import KeyedParams, Op, column_list, option, parse_salt

HOWS = ("inner", "left", "right", "full", "semi", "anti")
SALT_ABOVE = 0.5        # a key is hot above this fraction of a reducer's mean rows (both sides)


def _size(text) -> int:
    from shardstats.worker.memory import parse_size
    return parse_size(str(text))


@dataclass(frozen=True)
class JoinParams(KeyedParams):
    left: str | None = option(None, "The left side: a directory, file or glob of table shards (or --input).",
                              metavar="PATH")
    right: str | None = option(None, "The right side: a directory, file or glob of table shards.", metavar="PATH")
    on: str | None = option(None, "Key columns both sides share, comma-separated.", metavar="COLS")
    left_on: str | None = option(None, "The left side's key columns (with --right-on, when the names differ); "
                                 "the answer's key columns, holding a right-only row's key in a right or full join "
                                 "(as --on does; the right key columns are not repeated).", metavar="COLS")
    right_on: str | None = option(None, "The right side's key columns, in the order of --left-on.", metavar="COLS")
    how: str = option("inner", "inner, left, right, full (outer), semi (left rows with a partner) or anti "
                      "(left rows without).", choices=HOWS)
    strategy: str = option("auto", "auto (broadcast a side under --broadcast-limit the join allows, else "
                           "shuffle), broadcast or shuffle.", choices=("auto", "broadcast", "shuffle"))
    broadcast_limit: int = option(64 << 20, "The largest side (in memory, all workers' shares) auto broadcasts; "
                                  "sizes like 64MiB.", parse=_size, metavar="SIZE")
    salt: str = option("auto", "Hot keys of a shuffle join: auto (split a key over half a reducer's mean rows), "
                       "off, or N reducers per hot key.", parse=parse_salt, metavar="auto|off|N")
    bloom: bool = option(True, "Before a shuffle join, drop the rows of a side that cannot have a partner, by a "
                         "Bloom filter of the other side's keys (when those rows are not part of the answer).")

    def check(self) -> None:
        super().check()
        if not self.right:
            raise UsageError("--right: name the right side's shards, e.g. --right customers/")
        on, lo, ro = column_list(self.on), column_list(self.left_on), column_list(self.right_on)
        if on and (lo or ro):
            raise UsageError("--on: give either --on or --left-on with --right-on, not both")
        if not on and not (lo and ro):
            raise UsageError("--on: name the key columns, e.g. --on id (or --left-on a --right-on b)")
        if len(lo) != len(ro):
            raise UsageError(f"--left-on names {len(lo)} columns but --right-on {len(ro)}")

    @property
    def keys(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        on = column_list(self.on)
        return (on, on) if on else (column_list(self.left_on), column_list(self.right_on))


def reads(p: JoinParams) -> dict:
    lk, rk = p.keys
    return {"kind": "table", "columns": None, "cache": None, "sides": {"right": [p.right]},
            "slice_on": {"main": list(lk), "right": list(rk)}}   # beyond memory: one key slice a pass


# -- types and output ---------------------------------------------------------------------------------------
def _common_keys(left, right, lk, rk):
    """Both sides' key columns cast to one type per pair (int32 with int64, ints with floats); a pair that
    cannot meet (a number and text) is the user's to fix, named with both columns. Text meets text however it
    is held (plain, large or a dictionary of either: DuckDB compares them as VARCHAR, and a shuffle decodes
    both sides first); a dictionary of numbers is decoded to be cast."""
    import pyarrow as pa
    for side, names, t in (("left", lk, left), ("right", rk, right)):
        for c in names:
            if c not in t.column_names:
                raise UsageError(f"--{'left-on' if side == 'left' else 'right-on'}: the {side} side has no column "
                                 f"{c!r} (it has: {', '.join(t.column_names)})")

    def value(t):
        return t.value_type if pa.types.is_dictionary(t) else t
    text = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)    # noqa: E731
    for a, b in zip(lk, rk):
        ta, tb = value(left.schema.field(a).type), value(right.schema.field(b).type)
        if ta == tb or text(ta) and text(tb):
            continue
        num = lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)
        if num(ta) and num(tb):
            target = pa.float64() if pa.types.is_floating(ta) or pa.types.is_floating(tb) else pa.int64()
        elif pa.types.is_null(ta) or pa.types.is_null(tb):
            target = tb if pa.types.is_null(ta) else ta
        elif (pa.types.is_decimal(ta) or pa.types.is_decimal(tb)) and \
                decimal_meet(canonical(str(ta)), canonical(str(tb))) is not None:     # exact: never as doubles
            p, s = decimal_meet(canonical(str(ta)), canonical(str(tb)))[len("decimal128("):-1].split(",")
            target = pa.decimal128(int(p), int(s))
        else:
            raise UsageError(f"join keys of incompatible types: left {a!r} is {type_name(ta)}, "
                             f"right {b!r} is {type_name(tb)}")
        left = left.set_column(left.schema.get_field_index(a), a, left.column(a).cast(target))
        right = right.set_column(right.schema.get_field_index(b), b, right.column(b).cast(target))
    return left, right


def _plain_bytes(table) -> int:
    """``table``'s bytes with its dictionaries decoded (as a broadcast sends it and every worker then holds it):
    a dictionary column's values weighed by how often each is used, its rows by their offsets."""
    import pyarrow as pa
    import pyarrow.compute as pc
    total = 0
    for col in table.columns:
        if not pa.types.is_dictionary(col.type):
            total += col.nbytes
            continue
        for chunk in col.chunks:
            d = chunk.dictionary
            text = pa.types.is_string(d.type) or pa.types.is_large_string(d.type) or pa.types.is_binary(d.type) \
                or pa.types.is_large_binary(d.type)
            sizes = np.asarray(pc.binary_length(d).fill_null(0).to_numpy(zero_copy_only=False)) if text else \
                np.full(len(d), max(1, d.type.bit_width // 8))
            idx = chunk.indices.fill_null(0).to_numpy(zero_copy_only=False)
            total += int(sizes[idx].sum()) + 8 * len(chunk) * text + (len(chunk) + 7) // 8
    return total


def _columns(how: str, lk, rk, lcols, rcols) -> list[tuple[str, str, str | None]]:
    """The answer's columns as (output name, left column or "", right column or None): every left column (a right
    or full join's key is the left's or else the right's -- SQL ``USING``, for ``--left-on/--right-on`` too: the
    right key is not in the answer, so a right-only row's key would be lost), then the right's
    non-key columns, a name the answer holds already suffixed ``_right``. Semi and anti joins: the left's only."""
    if how in ("semi", "anti"):
        return [(c, c, None) for c in lcols]
    taken = set(lcols)
    out = [(c, c, rk[lk.index(c)] if c in lk and how in ("right", "full") else None) for c in lcols]
    for c in rcols:
        if c in rk:
            continue
        name = c if c not in taken else f"{c}_right"
        while name in taken:
            name += "_right"
        taken.add(name)
        out.append((name, "", c))
    return out


def _pairs_sql(how: str, nkeys: int) -> str:
    """The local join on the keys alone: each answer row as (left row number, right row number), NULL for the
    side a row of an outer join lacks (``i``, ``j``); semi and anti joins the left rows only."""
    cond = " AND ".join(f"l.k{n} = r.k{n}" for n in range(nkeys))
    if how in ("semi", "anti"):
        return f"SELECT l.i FROM l {how.upper()} JOIN r ON {cond}"
    kind = {"inner": "INNER", "left": "LEFT", "right": "RIGHT", "full": "FULL OUTER"}[how]
    return f"SELECT l.i, r.j FROM l {kind} JOIN r ON {cond}"


def _local_join(how: str, lk, rk, left, right, hot_copies: tuple | None = None):
    """DuckDB's hash join of the key columns and row numbers only, then every answer column an Arrow take of its
    side's rows: the columns that are not keys never pass through DuckDB, and a dictionary column is taken as its
    indices and decoded once at the end (``exchange.wire``: text as ``string``, as DuckDB returned it). Its
    VARCHAR results were most of the old join's cost: q1-q4 of db-benchmark at 1e7, 1M rows of x a worker,
    171-180 ms of CPU the whole rows through DuckDB against 14-47 ms for the pairs and ~45 ms for the takes and
    the decode. NULL keys never match and equal keys pair alike, since the pairs are DuckDB's join of the keys."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from shardstats.worker.engine.aggregate import run_sql
    from shardstats.worker.engine.exchange import wire

    def keyed(t, keys, idx):
        cols = {f"k{n}": t.column(k) for n, k in enumerate(keys)}
        cols[idx] = pa.array(np.arange(t.num_rows, dtype=np.int64))
        return pa.table(cols)
    def take(col, idx):
        """``col``'s rows at ``idx``; text or bytes in 64-bit offsets when 32 overflow (a many-to-many join's
        column over 2 GiB on one worker: Arrow refuses the take in the received ``string``)."""
        try:
            return col.take(idx)
        except pa.ArrowInvalid as exc:
            wide = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary()}.get(col.type)
            if wide is None or "overflow" not in str(exc):
                raise
            return col.cast(wide).take(idx)
    pairs = run_sql(_pairs_sql(how, len(lk)), l=keyed(left, lk, "i"), r=keyed(right, rk, "j"))
    if hot_copies is not None and pairs.num_rows:
        # (copied side, hot keys): a copied row of a hot key unmatched here has its partners on another reducer
        copied, hot = hot_copies
        own, other = ("j", "i") if copied == "right" else ("i", "j")
        flags = hot_rows(right if copied == "right" else left, rk if copied == "right" else lk, hot)
        idx = pairs.column(own)
        lone = pairs.column(other).is_null().to_numpy(zero_copy_only=False) & ~idx.is_null().to_numpy(
            zero_copy_only=False)
        if lone.any():
            at = idx.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            pairs = pairs.filter(pa.array(~(lone & flags[at])))
    i = pairs.column("i")
    j = pairs.column("j") if "j" in pairs.column_names else None
    names, cols = [], []
    for name, lc, rc in _columns(how, lk, rk, left.column_names, right.column_names):
        if lc and rc is not None:        # USING's key of a right or full join: the left's, else the right's
            a, b = wire(pa.table({"a": take(left.column(lc), i), "b": take(right.column(rc), j)})).columns
            col = pc.coalesce(a, b.cast(a.type))
        else:
            col = take(left.column(lc), i) if lc else take(right.column(rc), j)
        names.append(name)
        cols.append(col)
    return wire(pa.Table.from_arrays(cols, names=names))


# -- the plan ---------------------------------------------------------------------------------------------------
async def _semi_join_reduction(comm, how: str, left, right, lk, rk, sizes: dict, stats: dict):
    """The rows of one side with no partner, dropped before the shuffle by a Bloom filter of the other side's
    keys: built from the side with fewer rows, applied to the other when its unmatched rows are not kept."""
    import pyarrow as pa
    from shardstats.worker.comm.collectives import allreduce
    from shardstats.worker.data.hashing import hash_columns
    from shardstats.worker.engine import bloom
    from shardstats.worker.steps import numpy_step
    prunable = {"inner": ("left", "right"), "left": ("right",), "right": ("left",), "semi": ("left",)}.get(how, ())
    build = "left" if sizes["left_rows"] <= sizes["right_rows"] else "right"
    target = "right" if build == "left" else "left"
    if target not in prunable or sizes[f"{target}_rows"] <= sizes[f"{build}_rows"]:
        return left, right
    nbytes = bloom.size_for(sizes[f"{build}_rows"])
    if not nbytes:
        return left, right
    src, skeys = (left, lk) if build == "left" else (right, rk)

    def mine():
        keyed = src.filter(pa.array(_no_null_keys(src, skeys))) if src.num_rows else src
        return bloom.build(hash_columns(keyed, list(skeys)), nbytes)
    filt = await numpy_step(src.num_rows, mine)
    merged = await allreduce(comm, {"f": filt}, lambda a, b: {"f": np.bitwise_or(a["f"], b["f"])}, "join.bloom")
    t, tkeys = (right, rk) if target == "right" else (left, lk)
    keep = await numpy_step(t.num_rows, lambda: bloom.contains(merged["f"], hash_columns(t, list(tkeys)))
                            & _no_null_keys(t, tkeys))
    pruned = int(t.num_rows - keep.sum())
    t = t.filter(pa.array(keep))
    total = await allreduce(comm, {"n": pruned}, lambda a, b: {"n": a["n"] + b["n"]}, "join.pruned")
    stats.update({"bloom_side": build, "bloom_pruned_side": target, "bloom_pruned_rows": total["n"],
                  "bloom_bytes": nbytes, "bloom_false_positive_rate": round(bloom.false_positive_rate(merged["f"]), 5)})
    return (left, t) if target == "right" else (t, right)


def _no_null_keys(table, keys) -> "np.ndarray":
    """Rows whose key columns are all non-null (a NULL key matches nothing)."""
    import pyarrow.compute as pc
    m = np.ones(table.num_rows, dtype=bool)
    for k in keys:
        m &= np.asarray(pc.is_valid(table.column(k)).to_numpy(zero_copy_only=False), dtype=bool)
    return m


def _plan(p: JoinParams, sizes: dict, workers: int = 1) -> tuple[str, str | None, str]:
    """(strategy, the side broadcast or None, why) from both sides' sizes over every worker.

    auto broadcasts a side under ``--broadcast-limit`` that is also small beside the other: broadcasting S to
    W workers moves S x (W - 1), a shuffle (S + O) x (W - 1) / W, so broadcast only while S x (W - 1) <= O
    (db-benchmark's q5 joins two sides of 1e7 rows: at 1e6 rows its right side fell under the limit once
    its int32 columns stayed 4 bytes, and a broadcast would have moved 3x what the shuffle does)."""
    from shardstats.cluster.progress import human_bytes
    can = {"inner": ("right", "left"), "left": ("right",), "semi": ("right",), "anti": ("right",),
           "right": ("left",), "full": ()}[p.how]
    if p.strategy == "shuffle":
        return "shuffle", None, "shuffle: asked for (--strategy shuffle)"
    small = min(can, key=lambda s: sizes[s]) if can else None
    if p.strategy == "broadcast":
        if small is None:
            raise UsageError("--strategy broadcast: a full outer join keeps both sides' unmatched rows and "
                             "cannot broadcast either; use shuffle")
        return "broadcast", small, f"broadcast: asked for (--strategy broadcast); {small} side " \
                                   f"{human_bytes(sizes[small])}"
    if small is None:
        return "shuffle", None, "shuffle: a full outer join broadcasts neither side"
    other = "left" if small == "right" else "right"
    if sizes[small] <= p.broadcast_limit and sizes[small] * (workers - 1) <= sizes[other]:
        return "broadcast", small, (f"broadcast: {small} side {human_bytes(sizes[small])} <= "
                                    f"{human_bytes(p.broadcast_limit)} limit")
    if sizes[small] <= p.broadcast_limit:
        return "shuffle", None, (f"shuffle: the {small} side ({human_bytes(sizes[small])}) sent to {workers - 1} "
                                 f"other workers would move more than shuffling both sides "
                                 f"({human_bytes(sizes[small] + sizes[other])})")
    return "shuffle", None, (f"shuffle: the smaller side it may broadcast ({small}) is "
                             f"{human_bytes(sizes[small])} > {human_bytes(p.broadcast_limit)} limit")


async def join(comm: Communicator, sides, params: JoinParams) -> tuple[dict | None, dict]:
    import pyarrow as pa
    from shardstats.worker.data.hashing import owners_by_key
    from shardstats.worker.engine.answer import rows_answer
    from shardstats.worker.engine.exchange import broadcast_table, exchange_to, plain
    from shardstats.worker.steps import numpy_step
    # Text columns stay as the reader holds them (Arrow dictionaries, worker.data.readers) until a side moves:
    # the broadcast sends the small side plain, the shuffle both; the side that stays is joined as it is
    # (DuckDB reads a dictionary as VARCHAR and returns plain strings either way: x of J1 1e7, 1M rows a
    # worker, joined with small in 79 ms against 130 ms plain, and no 15 ms decode first).
    left, right = sides["main"], sides["right"]
    lk, rk = params.keys
    left, right = _common_keys(left, right, lk, rk)
    loaded_rows = left.num_rows + right.num_rows
    cfg = ShuffleConfig.from_params(params, None)
    sizes = await allreduce(comm, {"left": _plain_bytes(left), "right": _plain_bytes(right),
                                   "left_rows": left.num_rows, "right_rows": right.num_rows},
                            lambda a, b: {k: a[k] + b[k] for k in a}, "join.sizes")
    strategy, small, why = _plan(params, sizes, comm.size)
    if strategy == "shuffle":     # both sides go through the shuffle: keys of one type, hashed alike
        left, right = _common_keys(plain(left), plain(right), lk, rk)
    stats: dict = {"strategy": strategy, "why": why, "left_rows": sizes["left_rows"],
                   "right_rows": sizes["right_rows"], "left_bytes": sizes["left"], "right_bytes": sizes["right"]}
    counters = {"shuffled_pairs": 0, "shuffled_bytes": 0}
    phases: dict = {}
    if strategy == "broadcast":
        comm.progress.set("broadcast")
        whole, ex = await broadcast_table(comm, left if small == "left" else right, cfg,
                                          compression=params.compression)
        if small == "left":
            left = whole
        else:
            right = whole
        counters["shuffled_pairs"] = ex["counters"]["shuffled_pairs"]
        counters["shuffled_bytes"] = ex["counters"]["shuffled_bytes"]
        stats.update({"broadcast_side": small, "broadcast_rows_x_workers": ex["counters"]["shuffled_pairs"],
                      "shuffled_left_rows": ex["counters"]["shuffled_pairs"] if small == "left" else 0,
                      "shuffled_right_rows": ex["counters"]["shuffled_pairs"] if small == "right" else 0})
        phases.update(ex["phases"])
        reducer_rows = (right if small == "left" else left).num_rows + whole.num_rows
    else:
        salt_side = None
        hot: list = []
        if params.salt != "off":
            may = ("left",) if params.how in ("semi", "anti") else ("left", "right")
            # A reducer takes both sides: a key of n rows lifts its owner to about mean + n, so a key over half a
            # reducer's mean load (both sides' rows / W) is split -- the busiest then stays near 1.5x the mean.
            # (Over 2x one side's share, the group-by's rule, left Zipf(1.2)'s top key, 18% of big's rows, whole:
            # its reducer took 2.03x the mean on db-benchmark's q5 keys, 10 workers.)
            above = SALT_ABOVE * (sizes["left_rows"] + sizes["right_rows"]) / comm.size
            for side in may:
                hot = await find_hot(comm, left if side == "left" else right, lk if side == "left" else rk,
                                     skip_nulls=True, above=above)
                if hot:
                    salt_side = side
                    break
        if params.bloom:
            left, right = await _semi_join_reduction(comm, params.how, left, right, lk, rk, sizes, stats)
        W = comm.size
        ways = W if params.salt in ("auto", "off") else min(W, int(params.salt))
        before = []
        for side, t, keys in (("left", left, lk), ("right", right, rk)):
            o = await numpy_step(t.num_rows, lambda t=t, keys=keys: owners_by_key(t, list(keys), W))
            before.append(np.bincount(o, minlength=W) if t.num_rows else np.zeros(W, np.int64))
            if salt_side is None:
                moved, ex = await exchange_to(comm, t, o, cfg, compression=params.compression)
            else:
                flags = hot_rows(t, keys, hot)
                if side == salt_side:      # hot rows spread over `ways` ranks after the key's owner
                    spread = (np.arange(t.num_rows) % ways) + 1
                    dest = np.where(flags, (o.astype(np.int64) + spread) % W, o.astype(np.int64))
                    moved, ex = await exchange_to(comm, t, dest, cfg, compression=params.compression)
                else:                       # the other side's hot rows copied to each of those ranks
                    copies = [t.filter(pa.array(~flags))] + [t.filter(pa.array(flags))] * ways
                    dest = np.concatenate([o[~flags].astype(np.int64)] + [
                        (o[flags].astype(np.int64) + s) % W for s in range(1, ways + 1)])
                    moved, ex = await exchange_to(comm, pa.concat_tables(copies), dest, cfg,
                                                  compression=params.compression)
            counters["shuffled_pairs"] += ex["counters"]["shuffled_pairs"]
            counters["shuffled_bytes"] += ex["counters"]["shuffled_bytes"]
            stats[f"shuffled_{side}_rows"] = ex["counters"]["shuffled_pairs"]
            phases = counter.sum_phases([phases, ex["phases"]])
            if side == "left":
                left = moved
            else:
                right = moved
        reducer_rows = left.num_rows + right.num_rows
        # the busiest reducer had nothing been salted: every rank's own count of what the hash sends each rank
        total_before = await allreduce(comm, {"b": (before[0] + before[1]).tolist()},
                                       lambda a, b: {"b": [x + y for x, y in zip(a["b"], b["b"])]}, "join.before")
        # with its counts: a job taken in key-slice passes adds each pass's counts and takes the share of the
        # sums (passes.add_stats; the shares themselves, added, read 2.00 on uniform keys)
        stats["unsalted_reducer_pairs"] = total_before["b"]
        stats["busiest_reducer_share_unsalted"] = counter.share(total_before["b"])
        if hot:
            stats.update({"hot_keys": shown(hot), "salted_side": salt_side, "salt": ways})
    t1 = time.perf_counter()
    comm.progress.set("join")
    copies = None
    if strategy != "broadcast" and hot and params.how in ("left", "right", "full"):
        copies = ("right" if salt_side == "left" else "left", hot)
    out = await numpy_step(left.num_rows + right.num_rows, _local_join, params.how, lk, rk, left, right, copies)
    t2 = time.perf_counter()
    phases["join"] = t2 - t1
    stats.update({"map_pairs": loaded_rows, "combined_pairs": loaded_rows,
                  **counters, "reducer_pairs": reducer_rows, "output_rows": out.num_rows, "rounds": 1,
                  "phases": phases})
    result = await rows_answer(comm, out, [(c, "ascending") for c in out.column_names], params, stats)
    if result is not None:
        result.update({"strategy": strategy, "why": why})
    return result, stats


def summarize(workers: list[dict]) -> dict:
    out = counter.summarize(workers)
    w0 = min(workers, key=lambda w: w.get("rank", 0)) if workers else {}
    for k in ("strategy", "why", "left_rows", "right_rows", "left_bytes", "right_bytes", "broadcast_side",
              "busiest_reducer_share_unsalted", "hot_keys", "salted_side", "salt", "bloom_side", "bloom_pruned_side",
              "bloom_pruned_rows", "bloom_bytes", "bloom_false_positive_rate"):
        if k in w0:
            out[k] = w0[k]
    for k in ("shuffled_left_rows", "shuffled_right_rows", "broadcast_rows_x_workers", "output_rows"):
        out[k] = sum(w.get(k, 0) for w in workers)
    return out


def render(r: dict) -> list[str]:
    from shardstats.worker.engine.answer import render_rows
    return [r["why"], *render_rows(r)]


OP = Op(
    name="join",
    summary="Joins two datasets by key: broadcast, shuffle or skew join, chosen by a planner that says why.",
    params=JoinParams,
    run=join,
    render=render,
    phases=("load", "broadcast", "partition", "shuffle", "join"),
    examples=("cluster submit join --left orders/ --right customers/ --on customer_id",
              "cluster submit join --left x/ --right big/ --left-on id1 --right-on id --how left --out joined/"),
    summarize=summarize,
    reads=reads,
)
