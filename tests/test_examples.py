"""The examples/ MapReduce jobs, each run on an in-process cluster against a plain sequential reference
(Counter, dicts), with the shuffle counter asserted where the pattern makes it predictable."""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest

from shardstats.coordinator.assign import assign
from shardstats.coordinator.job import resolve_input, run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import UsageError
from shardstats.testing import in_process_cluster

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORD = re.compile(r"\w+")
VOCAB = ["apple", "Bear", "car", "deer", "river", "zebra", "x-ray", "über", "straße", "quick", "Brown",
         "fox", "42", "jump", "mango", "kiwi", "yak", "owl", "night", "sun", "_under"]


def job(name: str) -> str:
    return str(EXAMPLES / name)


async def mr(c, inp, example: str, **params):
    return await run_job(c.addrs, c.token, job_spec("mapreduce", [str(i) for i in inp] if isinstance(inp, list)
                                                    else str(inp), {"job": job(example), "limit": 0, **params}))


def total(rep, counter: str) -> int:
    return sum(w[counter] for w in rep.workers)


def per_worker(inp, n: int) -> list[list[Path]]:
    """The files each rank reads: the coordinator's own deterministic assignment."""
    return [[Path(r.path) for r in part] for part in assign(resolve_input(str(inp), True, None), n)]


def write_parquet(d: Path, rows: list[dict], parts: int) -> Path:
    d.mkdir()
    step = -(-len(rows) // parts)
    for i in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[i * step:(i + 1) * step]), d / f"part{i}.parquet")
    return d


@pytest.fixture
def docs(tmp_path):
    """Five text files of random lines, uneven in size, so three workers read unequal shares."""
    rng = random.Random(5)
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(5):
        lines = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 9))) for _ in range(20 + 30 * i)]
        (d / f"doc{i}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def words_of(path: Path) -> list[str]:
    return WORD.findall(path.read_text(encoding="utf-8").lower())


async def test_wordcount_with_and_without_a_combiner(docs):
    files = sorted(docs.iterdir())
    want = Counter(w for f in files for w in words_of(f))
    async with in_process_cluster(3) as c:
        rep = await mr(c, docs, "wordcount.py")
        raw = await mr(c, docs, "wordcount_nocombiner.py")
    assert rep.result["data"] == raw.result["data"] == sorted(map(list, want.items()))
    plan = per_worker(docs, 3)
    assert [w["map_pairs"] for w in rep.workers] == [sum(len(words_of(f)) for f in p) for p in plan]
    # with the combiner: each worker sends each distinct word of its files once; without: every token
    assert [w["combined_pairs"] for w in rep.workers] == [len({w for f in p for w in words_of(f)}) for p in plan]
    assert [w["combined_pairs"] for w in raw.workers] == [w["map_pairs"] for w in raw.workers]
    assert total(raw, "combined_pairs") == total(raw, "reducer_pairs") == sum(want.values())
    assert total(rep, "reducer_pairs") == total(rep, "combined_pairs") < sum(want.values())


async def test_sum_by_key(tmp_path):
    rng = random.Random(2)
    rows = [{"store": f"s{rng.randint(0, 60)}", "amount": rng.randint(-50, 500)} for _ in range(12_000)]
    rows += [{"store": "s1", "amount": None}]
    d = write_parquet(tmp_path / "sales", rows, 4)
    want = defaultdict(int)
    for r in rows:
        if r["amount"] is not None:
            want[r["store"]] += r["amount"]
    async with in_process_cluster(3) as c:
        rep = await mr(c, d, "sum_by_key.py")
    assert rep.result["data"] == sorted(map(list, want.items()))
    plan = per_worker(d, 3)
    stores = [{r["store"] for f in p for r in pq.read_table(f).to_pylist()} for p in plan]
    assert [w["combined_pairs"] for w in rep.workers] == [len(s) for s in stores]


async def test_first_letter_partitioner_sends_each_key_to_one_reducer(tmp_path, docs):
    ns: dict = {}
    exec((EXAMPLES / "first_letter_partitioner.py").read_text(), ns)
    want = Counter(w for f in docs.iterdir() for w in words_of(f))
    async with in_process_cluster(3) as c:
        rep = await mr(c, docs, "first_letter_partitioner.py", out=str(tmp_path / "o"))
    assert rep.result["rows"] == len(want)
    got, keys = {}, []
    for j in range(3):
        part = pq.read_table(tmp_path / "o" / f"part-{j:05d}.parquet").to_pylist()
        # exactly the keys the partitioner sends to reducer j, each once
        assert {r["key"] for r in part} == {w for w in want if ns["partitioner"](w, 3) == j}
        assert [r["key"] for r in part] == sorted(r["key"] for r in part)
        keys += [r["key"] for r in part]
        got.update((r["key"], r["value"]) for r in part)
    assert got == dict(want) and len(keys) == len(want)
    assert keys == sorted(keys)            # a range partitioner: the parts in order are sorted as a whole
    # reducer j receives each worker's distinct words that the partitioner sends to j
    sent = [{w for f in p for w in words_of(f)} for p in per_worker(docs, 3)]
    assert [w["reducer_pairs"] for w in rep.workers] == [
        sum(sum(ns["partitioner"](w, 3) == j for w in words) for words in sent) for j in range(3)]


async def test_inverted_index(docs):
    want = defaultdict(set)
    for f in docs.iterdir():
        for w in words_of(f):
            want[w].add(str(f.resolve()))
    async with in_process_cluster(3) as c:
        rep = await mr(c, docs, "inverted_index.py")
    assert rep.result["data"] == [[w, sorted(ds)] for w, ds in sorted(want.items())]
    plan = per_worker(docs, 3)                # the combiner: one pair per (word, doc) of each worker
    assert [w["combined_pairs"] for w in rep.workers] == [sum(len(set(words_of(f))) for f in p) for p in plan]


def readings(tmp_path) -> tuple[Path, list[dict]]:
    """Integer values (a float sum may round differently in another grouping), keys of very unequal sizes."""
    rng = random.Random(3)
    rows = [{"key": f"k{min(int(rng.expovariate(0.4)), 12)}", "value": rng.randint(0, 1000)} for _ in range(6000)]
    d = write_parquet(tmp_path / "readings", rows, 3)
    return d, rows


async def test_average_by_key_and_the_naive_combiner_caught(tmp_path):
    d, rows = readings(tmp_path)
    vals = defaultdict(list)
    for r in rows:
        vals[r["key"]].append(r["value"])
    async with in_process_cluster(3) as c:
        rep = await mr(c, d, "average_by_key.py", check_combiner=True)
        with pytest.raises(UsageError, match=r"--check-combiner: the combiner changes the answer for key 'k\d+'"):
            await mr(c, d, "average_naive.py", check_combiner=True)
    assert [k for k, _ in rep.result["data"]] == sorted(vals)
    assert dict(rep.result["data"]) == pytest.approx({k: sum(v) / len(v) for k, v in vals.items()}, rel=1e-12)
    assert total(rep, "combined_pairs") <= 3 * len(vals)      # one (sum, count) per key per worker


async def test_topk_per_key(tmp_path):
    rng = random.Random(4)
    rows = [{"key": f"k{rng.randint(0, 199)}", "value": rng.randint(-10**6, 10**6)} for _ in range(30_000)]
    rows += [{"key": "rare", "value": 7}, {"key": "rare", "value": 7}]          # fewer than K values, a tie
    d = write_parquet(tmp_path / "scores", rows, 5)
    vals = defaultdict(list)
    for r in rows:
        vals[r["key"]].append(r["value"])
    async with in_process_cluster(4) as c:
        rep = await mr(c, d, "topk_per_key.py")
    assert rep.result["data"] == [[k, sorted(v, reverse=True)[:3]] for k, v in sorted(vals.items())]
    per_key = []                               # the combiner: at most 3 pairs per key leave each worker
    for p in per_worker(d, 4):
        mine = Counter(r["key"] for f in p for r in pq.read_table(f).to_pylist())
        per_key.append(sum(min(n, 3) for n in mine.values()))
    assert [w["combined_pairs"] for w in rep.workers] == per_key
    assert total(rep, "map_pairs") == len(rows)


def shop(tmp_path):
    rng = random.Random(6)
    users = [{"user_id": i, "name": f"user{i}"} for i in range(0, 80)]
    orders = [{"order_id": 1000 + i, "user_id": rng.randint(0, 99), "amount": rng.randint(1, 9999) / 100}
              for i in range(600)]                                  # users 80..99 unknown: dropped
    d = tmp_path / "shop"
    d.mkdir()
    pa.csv.write_csv(pa.Table.from_pylist(users), d / "users.csv")
    pa.csv.write_csv(pa.Table.from_pylist(orders[:300]), d / "orders1.csv")
    pa.csv.write_csv(pa.Table.from_pylist(orders[300:]), d / "orders2.csv")
    names = {u["user_id"]: u["name"] for u in users}
    joined = sorted((o["user_id"], names[o["user_id"]], o["order_id"], o["amount"]) for o in orders
                    if o["user_id"] in names)
    return d, users, orders, joined


async def test_reduce_side_join(tmp_path):
    d, users, orders, joined = shop(tmp_path)
    async with in_process_cluster(3) as c:
        rep = await mr(c, d, "reduce_side_join.py")
    got = sorted((k, v["name"], v["order_id"], v["amount"]) for k, v in rep.result["data"])
    assert got == joined
    n = len(users) + len(orders)               # |L| + |R|: every row of both sides is a pair and travels
    assert total(rep, "map_pairs") == total(rep, "combined_pairs") == total(rep, "reducer_pairs") == n
    assert 0 < total(rep, "shuffled_pairs") <= n


def map_side(tmp_path):
    d, users, orders, joined = shop(tmp_path)
    (d / "users.csv").rename(tmp_path / "users.csv")
    return d, tmp_path / "users.csv", orders, joined


async def test_map_side_join_moves_nothing(tmp_path):
    d, side, orders, joined = map_side(tmp_path)
    async with in_process_cluster(3) as c:
        rep = await mr(c, d, "map_side_join.py", side=[f"users={side}"])
    assert total(rep, "shuffled_pairs") == 0 and total(rep, "shuffled_bytes") == 0
    assert rep.result["rows"] == total(rep, "map_pairs") == len(joined)


async def test_map_side_join_rows(tmp_path):
    d, side, orders, joined = map_side(tmp_path)
    async with in_process_cluster(3) as c:
        rep = await mr(c, d, "map_side_join.py", side=[f"users={side}"])
    data = rep.result["data"]
    assert all(isinstance(k, int) and isinstance(v, dict) for k, v in data), data[:2]
    assert sorted((v["user_id"], v["name"], k, v["amount"]) for k, v in data) == joined


async def test_salting_a_hot_key_in_two_stages(tmp_path):
    rng = random.Random(8)
    rows = [{"page": "home" if rng.random() < 0.8 else f"p{rng.randint(0, 300)}"} for _ in range(20_000)]
    d = write_parquet(tmp_path / "views", rows, 3)
    want = Counter(r["page"] for r in rows)
    async with in_process_cluster(3) as c:
        one = await mr(c, d, "salting_two_stage.py", out=str(tmp_path / "stage1"))
        two = await mr(c, tmp_path / "stage1", "salting_two_stage.py")
    assert two.result["data"] == sorted(map(list, want.items()))
    # stage 1: the hot page's rows spread over every reducer, not 80% of them on one
    assert total(one, "reducer_pairs") == len(rows)
    assert max(w["reducer_pairs"] for w in one.workers) < 0.5 * len(rows)
    partials = [r for f in sorted((tmp_path / "stage1").glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sum(r["value"] for r in partials if r["key"] == "home") == want["home"]
    assert sum(r["key"] == "home" for r in partials) == 8          # one partial per salt of the hot page
    assert total(two, "map_pairs") == len(partials)


async def test_secondary_sort_orders_each_users_events(tmp_path):
    rng = random.Random(9)
    events = [{"user": f"u{rng.randint(0, 9)}", "ts": rng.randint(0, 30), "event": i} for i in range(3000)]
    rng.shuffle(events)                         # many equal timestamps, out of order in the files
    d = write_parquet(tmp_path / "events", events, 4)
    want = defaultdict(list)
    for e in sorted(events, key=lambda e: (e["ts"], e["event"])):
        want[e["user"]].append([e["ts"], e["event"]])
    async with in_process_cluster(3) as c:
        rep = await mr(c, d, "secondary_sort.py")
    assert rep.result["data"] == [[u, evs] for u, evs in sorted(want.items())]
