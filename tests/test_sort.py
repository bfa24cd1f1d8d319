"""sort against DuckDB's ORDER BY on the same files: the global order of the parts read in name order, every input
row exactly once, equal keys in input order, the balance on skewed keys, and the secondary-sort pattern."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError, UsageError
from shardstats.testing import in_process_cluster
from tests.keyed_ref import duck


def dataset(kind: str, rng, n: int) -> pa.Table:
    if kind == "uniform":
        k = rng.integers(-10**12, 10**12, n)
    elif kind.startswith("zipf"):
        k = rng.zipf(float(kind[4:]), n)
    elif kind == "sixty":
        k = rng.integers(0, 10**6, n)
        k[rng.random(n) < 0.6] = 42
    else:
        raise AssertionError(kind)
    f = rng.normal(size=n)
    f[rng.random(n) < 0.03] = np.nan
    fmask = rng.random(n) < 0.03
    s = np.array([f"s{x:04d}" for x in rng.integers(0, 3000, n)], dtype=object)
    s[rng.random(n) < 0.02] = None
    return pa.table({"k": k, "f": pa.array(f, mask=fmask), "s": pa.array(s, pa.string()),
                     "p": rng.integers(0, 10**9, n)})


def write_parts(tmp_path, parts):
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for i, t in enumerate(parts):
        pq.write_table(t, d / f"part{i:02d}.parquet")
    return d


async def run_sort(c, d, out, **params):
    return await run_job(c.addrs, c.token, job_spec("sort", str(d), {"out": str(out), **params}))


def read_parts(out):
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))]
    return pa.concat_tables([pq.read_table(out / n) for n in names]), [pq.read_metadata(out / n).num_rows
                                                                      for n in names]


def check_against_duckdb(d, got: pa.Table, order_sql: str, keys: list[str]):
    src = f"read_parquet('{d}/*.parquet')"
    _, want = duck(f"SELECT {', '.join(keys)} FROM {src} ORDER BY {order_sql}")
    have = [tuple(r.values()) for r in got.select(keys).to_pylist()]
    same = lambda a, b: a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    assert len(have) == len(want)
    bad = next((i for i, (x, y) in enumerate(zip(have, want)) if not all(map(same, x, y))), None)
    assert bad is None, f"row {bad}: {have[bad]} where DuckDB has {want[bad]}"
    # every row exactly once: the multiset of whole rows
    got_path = d.parent / "got.parquet"
    pq.write_table(got, got_path)
    _, diff = duck(f"SELECT count(*) FROM ((SELECT * FROM {src} EXCEPT ALL SELECT * FROM '{got_path}') UNION ALL "
                   f"(SELECT * FROM '{got_path}' EXCEPT ALL SELECT * FROM {src}))")
    assert diff == [(0,)]


@pytest.mark.parametrize("kind", ["uniform", "zipf1.1", "zipf1.5", "sixty"])
async def test_balanced_and_totally_ordered_on_skew(tmp_path, kind):
    rng = np.random.default_rng(5)
    parts = [dataset(kind, rng, n) for n in (30_000, 0, 25_000, 35_000)]
    d = write_parts(tmp_path, parts)
    async with in_process_cluster(5, root=str(tmp_path)) as c:
        rep = await run_sort(c, d, tmp_path / "o", by="k")
    got, sizes = read_parts(tmp_path / "o")
    check_against_duckdb(d, got, "k", ["k"])
    assert max(sizes) <= 1.1 * (sum(sizes) / len(sizes)), sizes
    st = rep.workers
    assert sorted(w["part_rows"] for w in st) == sorted(sizes)
    assert 20_000 <= rep.result["sample"] <= 20_005 and len(rep.result["splits"]) == 4


async def test_several_keys_desc_nulls_nan_strings_and_stable_ties(tmp_path):
    rng = np.random.default_rng(8)
    parts = [dataset("zipf1.5", rng, 4000) for _ in range(3)]
    d = write_parts(tmp_path, parts)
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        await run_sort(c, d, tmp_path / "a", by="s,f", desc="f", nulls="first")
        await run_sort(c, d, tmp_path / "b", by="k")
    got, _ = read_parts(tmp_path / "a")
    check_against_duckdb(d, got, "s ASC NULLS FIRST, f DESC NULLS FIRST", ["s", "f"])
    # ties keep the input's order: within one k, rows in (file, row) order of the listing
    got, _ = read_parts(tmp_path / "b")
    src = pa.concat_tables(parts)
    pos = {p: i for i, p in enumerate(src.column("p").to_pylist())}     # p is (almost surely) unique
    ks, ps = got.column("k").to_pylist(), got.column("p").to_pylist()
    assert all(pos[ps[i]] < pos[ps[i + 1]] for i in range(len(ks) - 1) if ks[i] == ks[i + 1])


async def test_partition_by_keeps_each_user_in_one_part(tmp_path):
    rng = np.random.default_rng(2)
    n = 20_000
    users = rng.zipf(1.3, n) % 500
    t = pa.table({"user": users, "ts": rng.integers(0, 10**6, n), "v": rng.random(n)})
    d = write_parts(tmp_path, [t.slice(0, n // 2), t.slice(n // 2)])
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await run_sort(c, d, tmp_path / "o", by="user,ts", partition_by="user")
    seen = {}
    for i, name in enumerate(sorted(p.name for p in (tmp_path / "o").iterdir())):
        part = pq.read_table(tmp_path / "o" / name)
        for u in set(part.column("user").to_pylist()):
            assert seen.setdefault(u, i) == i, f"user {u} in parts {seen[u]} and {i}"
    got, _ = read_parts(tmp_path / "o")
    check_against_duckdb(d, got, "user, ts", ["user", "ts"])
    s = rep.workers
    big = max(s, key=lambda w: w["part_rows"])
    assert big["heaviest"][0][0] == 1                    # zipf: user 1 is the heaviest, and says so


async def test_bad_sort_input(tmp_path):
    rng = np.random.default_rng(1)
    d = write_parts(tmp_path, [dataset("uniform", rng, 100)])
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        with pytest.raises(UsageError, match=r"--by: no column 'nope' \(the input has: k, f, s, p\)"):
            await run_sort(c, d, tmp_path / "o", by="nope")
        with pytest.raises(UsageError, match="--partition-by: p must be the first columns of --by"):
            await run_sort(c, d, tmp_path / "o", by="k", partition_by="p")
        await run_sort(c, d, tmp_path / "o", by="k")
        with pytest.raises(InputError, match="already holds part-00000.parquet.*--overwrite"):
            await run_sort(c, d, tmp_path / "o", by="k")
        await run_sort(c, d, tmp_path / "o", by="k", desc="k", overwrite=True)
    got, _ = read_parts(tmp_path / "o")
    assert got.column("k").to_pylist() == sorted(got.column("k").to_pylist(), reverse=True)
    with pytest.raises(UsageError, match="--out: a sort writes Parquet parts"):
        job_spec("sort", str(d), {"by": "k"})


def test_range_samples_larger_than_a_frame_are_thinned_alike_and_still_split_evenly():
    """The ranks' samples reach rank 0 up a tree in frames of at most 4 MiB: samples of 1e8 rows (72 MB)
    failed the sort ("refusing to send a 7245116-byte frame").  Each rank now thins its sample by one stride;
    the ranges still cut the rows evenly (within 25% of an equal share; numpy's sort as the reference) and
    in order, with one rank holding three times the others' rows."""
    import asyncio
    from shardstats.worker.comm.inmemory import InMemoryNetwork
    from shardstats.worker.ops.sort import FILE_COL, ROW_COL, SortParams, plan_ranges
    rng = np.random.default_rng(8)
    sizes = [150_000, 150_000, 150_000, 450_000]      # 8 bytes x 3 columns: 21.6 MB of samples in all
    samples = [pa.table({"k": rng.integers(-10**9, 10**9, n), FILE_COL: np.full(n, r, np.int64),
                         ROW_COL: np.arange(n, dtype=np.int64)}) for r, n in enumerate(sizes)]
    net = InMemoryNetwork(len(sizes), timeout=60)
    params = SortParams.from_wire({"by": "k", "out": "unused"})      # the routing only: nothing is written
    passes = 8

    async def main():
        return await asyncio.gather(*(plan_ranges(net.comms[r], samples[r], params, passes) for r in range(len(sizes))))
    slots = asyncio.run(main())
    rows = pa.concat_tables(samples)
    got = np.asarray(slots[1](rows, "main", passes))
    assert all(np.array_equal(np.asarray(s(rows, "main", passes)), got) for s in slots)   # every rank routes alike
    counts = np.bincount(got, minlength=passes)
    assert counts.sum() == rows.num_rows and counts.min() > 0.75 * rows.num_rows / passes, counts
    k = rows.column("k").to_numpy()
    assert all(k[got == p].max() <= k[got == p + 1].min() for p in range(passes - 1))  # ranges in key order


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("direction", ["ascending", "descending"])
def test_routing_by_binary_search_equals_routing_by_the_whole_order(kind, direction):
    """The binary search of the split points by the first key (ties with a split point go the whole order's way)
    gives every row the range the sort of rows and split points together gives it -- the reference here."""
    import pyarrow.compute as pc
    from shardstats.worker.ops.sort import FILE_COL, ROW_COL, _route, _route_all
    rng = np.random.default_rng(3 if kind == "int" else 4)
    n = 30_000
    if kind == "int":
        k = pa.array(rng.integers(-50, 50, n))                      # many rows tie with each split point
    else:
        words = np.array(["", "a", "ab", "abc", "b", "é", "éa", "z\u00ff", "Z", "\u4e2d", "a\u0000"], dtype=object)
        k = pa.array(words[rng.integers(0, len(words), n)].tolist(), pa.string())
    t = pa.table({"k": k, FILE_COL: rng.integers(0, 3, n), ROW_COL: rng.integers(0, 10**6, n)})
    order = [("k", direction, "at_end"), (FILE_COL, "ascending", "at_end"), (ROW_COL, "ascending", "at_end")]
    ordered = t.take(pc.sort_indices(t, sort_keys=order))
    splits = ordered.take(pa.array([n // 7 * j for j in range(1, 7)]))
    assert np.array_equal(_route(t, splits, order), _route_all(t, splits, order))
    part = [order[0]]                                                # --partition-by: the key alone, no tiebreak
    assert np.array_equal(_route(t, splits.select(["k"]), part), _route_all(t, splits.select(["k"]), part))


@pytest.mark.parametrize("desc", [False, True])
@pytest.mark.parametrize("nulls", ["first", "last"])
async def test_nan_sorts_above_every_number_in_either_direction_wherever_nulls_go(tmp_path, desc, nulls):
    """NaN is the greatest float (DuckDB, Spark): last ascending, first descending, whatever --nulls says.
    Arrow ties NaN to the null placement, which put NaN first ascending with nulls first and last descending
    with nulls last -- in the sample, the routing and the reducers' sorts alike."""
    rng = np.random.default_rng(31)
    parts = []
    for _ in range(3):
        f = rng.choice([-2.5, -0.0, 0.0, 1.0, 7.25, np.nan], 400)
        parts.append(pa.table({"f": pa.array(f, mask=rng.random(400) < 0.1), "g": rng.integers(0, 3, 400),
                               "p": rng.integers(0, 10**9, 400)}))
    d = write_parts(tmp_path, parts)
    params = {"by": "f,g", "nulls": nulls, **({"desc": "f"} if desc else {})}
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        await run_sort(c, d, tmp_path / "o", **params)
    got, _ = read_parts(tmp_path / "o")
    check_against_duckdb(d, got, f"f {'DESC' if desc else 'ASC'} NULLS {nulls.upper()}, g ASC NULLS {nulls.upper()}",
                         ["f", "g"])


@pytest.mark.parametrize("compression", [None, "none", "zstd"])
async def test_every_wire_compression_sorts_the_same_rows(tmp_path, compression):
    """A sort's exchange compresses with lz4 unless told otherwise (every column travels): each choice gives the
    same whole rows, nulls, NaN and strings included, in DuckDB's order; the stats give each phase's CPU."""
    rng = np.random.default_rng(11)
    d = write_parts(tmp_path, [dataset("zipf1.1", rng, 6000) for _ in range(3)])
    params = {} if compression is None else {"compression": compression}
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_sort(c, d, tmp_path / "o", by="s,k", **params)
    got, _ = read_parts(tmp_path / "o")
    check_against_duckdb(d, got, "s NULLS LAST, k", ["s", "k"])
    assert all(set(w["phase_cpu"]) == {"sample", "route", "exchange", "sort", "write"} for w in rep.workers)


async def test_partition_by_closes_a_part_after_a_heavy_value_when_that_is_nearer_the_even_split(tmp_path):
    """--partition-by keeps a value's rows in one part, so a split point can only fall between values.  User 1
    holds 30% of the rows and sits where the first of four parts should end (25%): the old split point, the
    value at that rank, opened a part with it, after the 1% of user 0 -- 0.01, then 0.30 + ~0.2 = 2x the mean.
    The boundary now goes to the nearer end of the value: user 1 closes the first part (1.24x)."""
    rng = np.random.default_rng(6)
    n = 40_000
    users = rng.integers(2, 2000, n)
    pick = rng.random(n)
    users[pick < 0.30] = 1
    users[pick > 0.99] = 0
    t = pa.table({"user": users, "ts": rng.integers(0, 10**6, n), "v": rng.random(n)})
    d = write_parts(tmp_path, [t.slice(0, n // 2), t.slice(n // 2)])
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await run_sort(c, d, tmp_path / "o", by="user,ts", partition_by="user")
    got, sizes = read_parts(tmp_path / "o")
    check_against_duckdb(d, got, "user, ts", ["user", "ts"])
    users_of = [set(pq.read_table(tmp_path / "o" / f"part-{i:05d}.parquet").column("user").to_pylist())
                for i in range(4)]
    assert all(not (a & b) for i, a in enumerate(users_of) for b in users_of[i + 1:])
    assert {0, 1} <= users_of[0]
    assert max(sizes) <= 1.3 * (n / 4), sizes
    assert sorted(w["part_rows"] for w in rep.workers) == sorted(sizes)


@pytest.mark.parametrize("kind", ["uniform", "zipf1.5", "sixty"])
async def test_parts_in_passes_hold_their_share_within_the_stated_bound(tmp_path, kind):
    """Beyond memory (a 64 MiB budget: several passes) with a small sample (``sample=400``: 100 rows a part),
    every part holds its share of the rows give or take the rows between two neighbouring candidate split
    points -- under 1.1x the mean on uniform keys, Zipf 1.5 and one value in 60% of the rows.  The old split
    points were the sample's quantiles, each part off by its sampling error (+-10% at one sigma here; at 1e8
    rows in 11 passes the largest of 110 parts was 1.11x the mean); they are now chosen from the rows' exact
    counts between 64 candidates a part (a pass's boundaries likewise), and the stats give the parts' planned
    rows, which are the parts written.  Global order and every row once: numpy's stable argsort the reference."""
    import dataclasses
    from shardstats.settings import DEFAULTS
    rng = np.random.default_rng(11)
    n = 400_000
    k = {"uniform": lambda: rng.integers(-10**12, 10**12, n), "zipf1.5": lambda: rng.zipf(1.5, n),
         "sixty": lambda: np.where(rng.random(n) < 0.6, 42, rng.integers(0, 10**6, n))}[kind]()
    t = pa.table({"k": k, "p": np.arange(n), "x": rng.random(n), "y": rng.random(n)})
    d = write_parts(tmp_path, [t.slice(i * n // 4, n // 4) for i in range(4)])
    settings = dataclasses.replace(DEFAULTS, memory_limit=64 << 20, spill_dir=str(tmp_path / "spill"),
                                   keyed_overhead=0)
    async with in_process_cluster(4, root=str(tmp_path), settings=settings) as c:
        rep = await run_sort(c, d, tmp_path / "o", by="k", sample=400)
    assert max(w.get("passes", 1) for w in rep.workers) > 1
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    parts = [pq.read_table(tmp_path / "o" / name) for name in names]
    sizes = [p.num_rows for p in parts]
    assert max(sizes) <= 1.1 * n / len(sizes), sizes
    assert rep.result["planned_part_rows"] == sizes and sum(rep.result["pass_rows"]) == n
    got = pa.concat_tables(parts).column("p").to_numpy()
    assert np.array_equal(got, np.argsort(k, kind="stable"))      # in order, ties in input order, every row once


def test_a_sorts_runs_write_an_empty_slot_in_a_few_bytes(tmp_path):
    """A sort's runs hold a compressed batch a slot (candidate boundary): Arrow's IPC writer wrote a zero-row slice
    with its whole batch's buffers, so a flush whose rows fell in a few of hundreds of slots (skewed keys, or files
    in key order) wrote the flush once an empty slot: Zipf 1.5 at 1e7 rows spilled 26 GB for 0.3.  The run is now
    about the size of its one full slot; reading it back gives the rows (pyarrow's IPC reader the reference)."""
    from shardstats.worker.engine.runs import Runs
    from shardstats.worker.spill import SpillDir
    n, slots = 50_000, 300
    t = pa.table({"k": np.arange(n), "s": pa.array(np.char.add("v", np.arange(n).astype(str)))})
    box = SpillDir(tmp_path / "spill", "j1", 0)
    runs = Runs(box, slots, lambda tb, side, m: np.full(tb.num_rows, 7, np.int64), 1 << 30, compression="lz4")
    runs.keep(t, "main")
    runs.finish()
    one = pa.BufferOutputStream()
    with pa.ipc.new_file(one, t.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(t)
    assert runs.disk_bytes < one.getvalue().size + 400 * slots, (runs.disk_bytes, one.getvalue().size)
    got = runs.read(7, slots, lambda piece, side: piece)["main"]
    assert pa.concat_tables(got).equals(t)
