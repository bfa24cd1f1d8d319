"""A seeded sweep of group-by, join and sort over random nasty tables, each answer against DuckDB on the same files.

Every case draws its own tables: key columns of random types (text with empty strings and non-ASCII, int64 with
its extremes, int32, floats with -0.0/NaN/inf, bools, timestamps), nulls at random rates, 1-5 shards of which
some are empty or a single row, dictionary-encoded or plain text in the files, 1-5 workers (often more than
shards), a random aggregate list, join type, strategy and salt, sort keys, directions and null placement. The
fixed tests each hold one shape still; this sweep is where shapes meet (it found a hot timestamp key crashing
the salted group-by and join, and NaN placed with the nulls by the sort).
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import UsageError
from shardstats.testing import in_process_cluster
from tests.keyed_ref import _key, _same, duck
from tests.test_groupby import duck_expr

I64 = np.iinfo(np.int64)
CASES = 15          # per op (~20 s in all); the sweep ran ~130 cases per op while it was written


def column(rng, kind: str, n: int, card: int) -> pa.Array:
    mask = rng.random(n) < rng.choice([0, 0, 0.1, 0.5])
    pick = lambda pool: pool[rng.integers(0, len(pool), n)]
    if kind == "str":
        pool = ["", "a", "é", "日本", "ab", "Z", "zz", "ß", "k" * 40, "A"][:card] + [f"s{i}" for i in range(card - 10)]
        return pa.array(pick(np.array(pool, dtype=object)), pa.string(), mask=mask)
    if kind == "int":
        pool = [0, 1, -1, I64.max, I64.min, I64.max - 1, I64.min + 1, 7, 2**53 + 1, -(2**53) - 1]
        return pa.array(pick(np.array(pool[:card] + list(range(100, 100 + card - 10)), np.int64)), mask=mask)
    if kind == "int32":
        return pa.array(rng.integers(-card, card + 1, n).astype(np.int32), mask=mask)
    if kind == "float":   # moderate magnitudes: sums of 1e300 overflow in an order-dependent way in any engine
        pool = [0.0, -0.0, np.nan, np.inf, -np.inf, 1.5, -2.25, 1e15, -1e-300, 3.0][:card]
        return pa.array(pick(np.array(pool + [i / 3 for i in range(card)])), pa.float64(), mask=mask)
    if kind == "bool":
        return pa.array(rng.random(n) < 0.5, mask=mask)
    if kind == "ts":
        return pa.array(rng.integers(0, card + 1, n) * 1_000_000_007, pa.timestamp("us"), mask=mask)
    assert kind == "small"
    return pa.array(rng.integers(-3, 3, n), mask=mask)


def write(rng, d, schema: dict, shards: int, n: int, dictionary: bool):
    d.mkdir(parents=True)
    for i in range(shards):
        m = int(rng.choice([0, 1, n, n // 3, 2 * n])) if shards > 1 else n
        t = pa.table({name: column(rng, kind, m, card) for name, (kind, card) in schema.items()})
        pq.write_table(t, d / f"part{i:02d}.parquet", use_dictionary=dictionary)
    return f"read_parquet('{d}/*.parquet', union_by_name=true)"


def plain(v):
    """DuckDB's value as our answers carry it (times as ISO text), NaN and zero of either sign as one key."""
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, float) and v != v:
        return "NaN"
    return 0.0 if isinstance(v, float) and v == 0 else v


def close(a, b) -> bool:
    from decimal import Decimal
    b = int(b) if isinstance(b, Decimal) else b
    if _same(a, b):
        return True
    if isinstance(a, float) and isinstance(b, float) and not (math.isinf(a) or math.isinf(b)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(close, a, b))


def same_multiset(got: list, want: list, what: str):
    g, w = sorted(map(tuple, got), key=_key), sorted(map(tuple, want), key=_key)
    assert len(g) == len(w), f"{what}: {len(g)} rows, DuckDB has {len(w)}"
    for x, y in zip(g, w):
        assert all(map(_same, x, y)), f"{what}: {x} where DuckDB has {y}"


def random_aggs(rng) -> list[str]:
    aggs = ["count()"]
    for _ in range(int(rng.integers(1, 5))):
        c = str(rng.choice(["v", "f"]))
        a = str(rng.choice(["sum", "min", "max", "mean", "var", "std", "median", "distinct", "count", "quantile",
                            "largest", "smallest", "corr", "collect_set", "min_s", "max_s"]))
        aggs.append({"quantile": f"quantile({c}, {rng.choice([0.0, 0.1, 0.5, 0.99, 1.0])})",
                     "largest": f"largest({c}, {rng.integers(1, 4)})", "smallest": f"smallest({c}, {rng.integers(1, 4)})",
                     "corr": "corr(v, f)", "collect_set": "collect_set(s)", "min_s": "min(s)",
                     "max_s": "max(s)"}.get(a, f"{a}({c})"))
    return list(dict.fromkeys(aggs))


async def groupby_case(c, rng, d):
    kinds = rng.choice(["str", "int", "float", "bool", "ts", "int32", "small"], int(rng.integers(1, 3)), replace=False)
    schema = {f"k{i}": (str(k), int(rng.choice([1, 3, 50, 2000]))) for i, k in enumerate(kinds)}
    keys = list(schema)
    schema.update(v=("int", 20), f=("float", 20), s=("str", 12))
    src = write(rng, d, schema, int(rng.integers(1, 6)), int(rng.choice([5, 200, 3000])), rng.random() < 0.7)
    aggs, salt = random_aggs(rng), str(rng.choice(["auto", "off", "3"]))
    what = f"groupby by {[schema[k] for k in keys]} {aggs} salt {salt}"
    rep = await run_job(c.addrs, c.token, job_spec("groupby", str(d), {"by": ",".join(keys), "agg": aggs,
                                                                      "limit": 0, "salt": salt}))
    k = ", ".join(keys)
    _, want = duck(f"SELECT {k}, {', '.join(map(duck_expr, aggs))} FROM {src} GROUP BY {k}")
    ours = {tuple(map(plain, r[:len(keys)])): r[len(keys):] for r in rep.result["data"]}
    assert len(rep.result["data"]) == rep.result["rows"] == len(want), what
    for row in want:
        key = tuple(map(plain, row[:len(keys)]))
        assert key in ours, f"{what}: no group {key}"
        for e, a, b in zip(aggs, ours[key], row[len(keys):]):
            assert close(a, b), f"{what}: group {key} {e}: {a!r} where DuckDB has {b!r}"


HOWS = {"inner": "INNER JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL OUTER JOIN",
        "semi": "SEMI JOIN", "anti": "ANTI JOIN"}


async def join_case(c, rng, d):
    kind, card = str(rng.choice(["str", "int", "small", "float", "bool", "ts"])), int(rng.choice([1, 3, 50, 500]))
    on = ["k", "k2"] if rng.random() < 0.3 else ["k"]
    extra = {"k2": ("small", 0)} if len(on) == 2 else {}
    left = write(rng, d / "L", {"k": (kind, card), "v": ("int", 5), "name": ("str", 5), **extra},
                 int(rng.integers(1, 5)), int(rng.choice([3, 300, 2000])), True)
    right = write(rng, d / "R", {"k": (kind, card), "v": ("float", 5), "label": ("str", 5), **extra},
                  int(rng.integers(1, 3)), int(rng.choice([0, 2, 50, 400])), rng.random() < 0.5)
    how, strategy = str(rng.choice(list(HOWS))), str(rng.choice(["auto", "broadcast", "shuffle"]))
    salt = str(rng.choice(["auto", "off", "4"]))
    what = f"join {kind} x{card} on {on} {how} {strategy} salt {salt}"
    params = {"right": str(d / "R"), "on": ",".join(on), "how": how, "strategy": strategy, "salt": salt, "limit": 0}
    if how == "full" and strategy == "broadcast":
        with pytest.raises(UsageError, match="full outer join"):
            await run_job(c.addrs, c.token, job_spec("join", str(d / "L"), params))
        return
    rep = await run_job(c.addrs, c.token, job_spec("join", str(d / "L"), params))
    cond = " AND ".join(f"l.{x} = r.{x}" for x in on)
    if how in ("semi", "anti"):
        cols = ["k", "v", "name", *on[1:]]
        _, want = duck(f"SELECT {', '.join('l.' + x for x in cols)} FROM {left} l {HOWS[how]} {right} r ON {cond}")
    else:
        cols = [*on, "v", "name", "v_right", "label"]
        keys = ", ".join(f"coalesce(l.{x}, r.{x})" if how in ("right", "full") else f"l.{x}" for x in on)
        _, want = duck(f"SELECT {keys}, l.v, l.name, r.v, r.label FROM {left} l {HOWS[how]} {right} r ON {cond}")
    assert rep.result["rows"] == len(want), f"{what}: {rep.result['rows']} rows, DuckDB has {len(want)}"
    at = [rep.result["columns"].index(x) for x in cols]
    got = [[r[i] for i in at] for r in rep.result["data"]]
    if len(got) == len(want):           # an answer too big for one message is cut (its rows still counted)
        same_multiset(got, [[v.isoformat() if hasattr(v, "isoformat") else v for v in r] for r in want], what)


async def sort_case(c, rng, d):
    kinds = rng.choice(["str", "int", "float", "bool", "ts", "small"], int(rng.integers(1, 3)), replace=False)
    schema = {f"k{i}": (str(k), int(rng.choice([1, 3, 50, 2000]))) for i, k in enumerate(kinds)}
    keys = list(schema)
    schema["p"] = ("int", 30)
    src = write(rng, d / "in", schema, int(rng.integers(1, 5)), int(rng.choice([1, 100, 3000])), rng.random() < 0.5)
    desc, nulls = [k for k in keys if rng.random() < 0.4], str(rng.choice(["first", "last"]))
    what = f"sort by {[schema[k] for k in keys]} desc {desc} nulls {nulls}"
    params = {"by": ",".join(keys), "nulls": nulls, "out": str(d / "out"), **({"desc": ",".join(desc)} if desc else {})}
    await run_job(c.addrs, c.token, job_spec("sort", str(d / "in"), params))
    got = pa.concat_tables([pq.read_table(p) for p in sorted((d / "out").iterdir())])
    order = ", ".join(f"{k} {'DESC' if k in desc else 'ASC'} NULLS {nulls.upper()}" for k in keys)
    _, want = duck(f"SELECT {', '.join(keys)} FROM {src} ORDER BY {order}")
    have = [tuple(r[k] for k in keys) for r in got.to_pylist()]
    assert len(have) == len(want), what
    bad = next((i for i, (x, y) in enumerate(zip(have, want)) if not all(map(_same, x, y))), None)
    assert bad is None, f"{what}: row {bad} is {have[bad]} where DuckDB has {want[bad]}"
    same_multiset([list(r.values()) for r in got.select(list(schema)).to_pylist()],
                  duck(f"SELECT {', '.join(schema)} FROM {src}")[1], what + " (the rows)")


@pytest.mark.parametrize("op", ["groupby", "join", "sort"])
async def test_random_tables_against_duckdb(tmp_path, op):
    case = {"groupby": groupby_case, "join": join_case, "sort": sort_case}[op]
    for seed in range(CASES):
        rng = np.random.default_rng([29, seed])
        async with in_process_cluster(int(rng.integers(1, 6)), root=str(tmp_path)) as c:
            await case(c, rng, tmp_path / f"case{seed}")
