"""User MapReduce jobs against sequential references: job files and notebook functions, the combiner and its
check, partitioners, secondary sort, side inputs, map-only and batch jobs; user code that raises, hangs or
hogs memory fails its job and the cluster serves the next one."""
from __future__ import annotations

import re
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import JobTimeout, UsageError
from shardstats.settings import Settings
from shardstats.testing import in_process_cluster

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LINES = ["Deer Bear River", "Car Car River", "Deer Car Bear", "the quick brown fox", "über Über ÜBER straße"]


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(0, len(LINES), 2):
        (d / f"d{i}.txt").write_text("\n".join(LINES[i:i + 2]) + "\n")
    return d


def job_file(tmp_path, body: str) -> str:
    p = tmp_path / "job.py"
    p.write_text(textwrap.dedent(body))
    return str(p)


async def mr(c, inp, **params):
    return await run_job(c.addrs, c.token, job_spec("mapreduce", str(inp), {"limit": 0, **params}))


def pairs(rep) -> dict:
    return {k: v for k, v in rep.result["data"]}


async def test_wordcount_job_with_and_without_combiner(tmp_path, docs):
    want = Counter(w for line in LINES for w in re.findall(r"\w+", line.lower()))
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, docs, job=str(EXAMPLES / "wordcount.py"))
        raw = await mr(c, docs, job=str(EXAMPLES / "wordcount.py"), combine=False)
    assert pairs(rep) == dict(want) == pairs(raw)
    assert [k for k, _ in rep.result["data"]] == sorted(want)        # keys in sorted order
    total = sum(want.values())
    assert sum(w["map_pairs"] for w in rep.workers) == total
    assert sum(w["combined_pairs"] for w in raw.workers) == total     # every pair travels without it
    assert sum(w["combined_pairs"] for w in rep.workers) < total


async def test_functions_from_a_notebook_average_and_the_naive_combiner_caught(tmp_path):
    rows = [{"k": f"k{i % 7}", "v": (i * 37) % 101} for i in range(2000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    sums = defaultdict(list)
    for r in rows:
        sums[r["k"]].append(r["v"])
    offset = 1000                          # a closure: cloudpickle carries it

    def mapper(rec):
        yield rec["k"], (rec["v"] + offset, 1)

    def combiner(k, vs):
        yield k, (sum(s for s, _ in vs), sum(n for _, n in vs))

    def reducer(k, vs):
        s, n = sum(s for s, _ in vs), sum(n for _, n in vs)
        yield k, s / n - offset

    def naive(k, vs):                      # the average of averages
        yield k, (sum(s / n for s, n in vs) / len(vs), 1)

    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, tmp_path / "t.parquet", mapper=mapper, combiner=combiner, reducer=reducer,
                       check_combiner=True)
        assert pairs(rep) == pytest.approx({k: sum(v) / len(v) for k, v in sums.items()})
        with pytest.raises(UsageError, match=r"--check-combiner: the combiner changes the answer for key 'k\d'"):
            await mr(c, tmp_path / "t.parquet", mapper=mapper, combiner=naive, reducer=reducer,
                     check_combiner=True)


async def test_partitioner_secondary_sort_side_input_and_map_only(tmp_path):
    events = [{"user": f"u{i % 5}", "ts": (i * 7919) % 1000, "item": i % 3} for i in range(500)]
    pq.write_table(pa.Table.from_pylist(events[:250]), tmp_path / "e1.parquet")
    pq.write_table(pa.Table.from_pylist(events[250:]), tmp_path / "e2.parquet")
    d = tmp_path / "ev"
    d.mkdir()
    for f in ("e1.parquet", "e2.parquet"):
        (tmp_path / f).rename(d / f)
    (tmp_path / "items.csv").write_text("item,name\n0,apple\n1,pear\n2,fig\n")
    job = job_file(tmp_path, '''
        def mapper(rec):
            names = {r["item"]: r["name"] for r in sides["items"]}
            yield rec["user"], (rec["ts"], names[rec["item"]])

        def partitioner(key, n):
            return int(key[1:]) % n

        def sort_values(v):
            return v[0]

        def reducer(user, vs):
            yield user, [name for _, name in vs]
    ''')
    names = {0: "apple", 1: "pear", 2: "fig"}
    want = {}
    for e in sorted(events, key=lambda e: (e["user"], e["ts"])):
        want.setdefault(e["user"], []).append(names[e["item"]])
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, d, job=job, side=[f"items={tmp_path / 'items.csv'}"], out=str(tmp_path / "o"))
        mapped = await mr(c, d, job=job_file(tmp_path, '''
            def mapper(rec):
                if rec["item"] == 2:
                    yield rec["user"], rec["ts"]
        '''))
    for j in range(3):                     # each user on the reducer the partitioner named
        part = pq.read_table(tmp_path / "o" / f"part-{j:05d}.parquet").to_pylist()
        assert all(int(r["key"][1:]) % 3 == j for r in part)
        for r in part:
            assert r["value"] == want[r["key"]]          # each user's events in timestamp order
    assert sum(w["shuffled_pairs"] for w in mapped.workers) == 0 and mapped.result["rows"] == \
        sum(1 for e in events if e["item"] == 2)


async def test_batch_form_wordcount(tmp_path, docs):
    job = job_file(tmp_path, '''
        import pyarrow as pa, pyarrow.compute as pc

        def map_batch(t):
            words = pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(t["text"]), r"[^\\p{L}\\p{N}_]+"))
            words = pc.filter(words, pc.not_equal(words, ""))
            return pa.table({"key": words, "value": pa.array([1] * len(words), pa.int64())})

        def combine_batch(t):
            g = t.group_by("key").aggregate([("value", "sum")])
            return pa.table({"key": g["key"], "value": g["value_sum"]})

        reduce_batch = combine_batch
    ''')
    want = Counter(w for line in LINES for w in re.findall(r"\w+", line.lower()))
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, docs, job=job)
    assert pairs(rep) == dict(want)


async def test_user_code_that_raises_hangs_or_hogs_fails_its_job_only(tmp_path, docs):
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        boom = job_file(tmp_path, '''
            def mapper(rec):
                x = 1
                return [(rec["text"], 1 / (x - 1))]
        ''')
        with pytest.raises(UsageError, match=r"job\.py:4 in mapper: ZeroDivisionError: division by zero"):
            await mr(c, docs, job=boom)
        hog = job_file(tmp_path, '''
            def mapper(rec):
                return [(1, bytearray(1 << 45))]
        ''')
        with pytest.raises(UsageError, match=r"job\.py:3 in mapper: MemoryError|ran out of memory"):
            await mr(c, docs, job=hog)
        hang = job_file(tmp_path, '''
            def mapper(rec):
                while True:
                    pass
        ''')
        with pytest.raises(JobTimeout, match=r"within the --timeout of 3 s; .* a mapreduce job's own functions "
                           r"\(mapper, reducer...\) may loop or wait: their process on every worker was killed"):
            await run_job(c.addrs, c.token, job_spec("mapreduce", str(docs), {"job": hang}, timeout=3))
        rep = await mr(c, docs, job=str(EXAMPLES / "wordcount.py"))   # and the next job runs
        assert pairs(rep)["car"] == 3
        with pytest.raises(UsageError, match=r"--job .*nope\.py: cannot read it"):
            await mr(c, docs, job=str(tmp_path / "nope.py"))
        with pytest.raises(UsageError, match=r"job\.py:1: expected"):
            await mr(c, docs, job=job_file(tmp_path, "def mapper(rec)\n    pass\n"))


async def test_a_worker_without_user_code_refuses(tmp_path, docs):
    # refused at the load, before reading: it read the input first (an unreadable file's error came instead of
    # the refusal; beyond memory its mapper ran as the share was read), and the cluster serves the next job
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"fine\n\xff\xfe not utf-8\n")
    async with in_process_cluster(2, root=str(tmp_path), settings=Settings(user_code=False)) as c:
        for inp in (docs, bad):
            with pytest.raises(UsageError, match="started with --no-user-code"):
                await mr(c, inp, job=str(EXAMPLES / "wordcount.py"))
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", str(docs), {}))
        assert rep.result["tokens"] > 0


async def test_more_reducers_than_workers_is_said_not_silent(tmp_path, docs):
    """--reducers above the worker count runs one reducer a worker, as the help says; the cap was silent (a
    partitioner's n changed unseen): the stats give reducers run and asked, the result a warning (stderr)."""
    job = job_file(tmp_path, '''
        def mapper(rec):
            for w in rec["text"].split():
                yield w, 1
        def partitioner(key, n):
            return len(key) % n
        def reducer(k, vs):
            yield k, sum(vs)
        ''')
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        from shardstats.cluster.output import summarize_stats
        rep = await mr(c, docs, job=job, reducers=5)
        st = summarize_stats(rep)
        assert st["reducers"] == 2 and st["reducers_asked"] == 5
        assert rep.result["warnings"] == ["--reducers 5: ran 2, one a worker on the 2 workers there are "
                                          "(a partitioner's n was 2)"]
        rep = await mr(c, docs, job=job, reducers=2)
        st = summarize_stats(rep)
        assert st["reducers"] == 2 and "reducers_asked" not in st and "warnings" not in rep.result


async def test_a_hot_key_with_a_combiner_is_salted(tmp_path):
    rows = [{"k": "hot" if i % 10 < 8 else f"k{i}", "v": 1} for i in range(20_000)]
    pq.write_table(pa.Table.from_pylist(rows[:10_000]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10_000:]), tmp_path / "b.parquet")
    d = tmp_path / "h"
    d.mkdir()
    for f in ("a.parquet", "b.parquet"):
        (tmp_path / f).rename(d / f)
    job = job_file(tmp_path, '''
        def mapper(rec):
            yield rec["k"], rec["v"]

        def combiner(k, vs):
            yield k, sum(vs)

        def reducer(k, vs):
            yield k, sum(vs)
    ''')
    async with in_process_cluster(4, root=str(tmp_path)) as c:
        rep = await mr(c, d, job=job, combine=False)    # without the combiner: no salting
        salted = await mr(c, d, job=job)
    assert pairs(rep)["hot"] == pairs(salted)["hot"] == 16_000 and len(pairs(salted)) == 4001
    assert "hot_keys" not in rep.workers[0]


async def test_a_chained_job_reports_each_stage(tmp_path, docs):
    want = Counter(w for line in LINES for w in re.findall(r"\w+", line.lower()))
    top = sorted(want.items(), key=lambda wc: (-wc[1], wc[0]))[:3]
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, docs, job=str(EXAMPLES / "count_then_topk.py"), check_combiner=True)
    assert rep.result["data"] == [[i + 1, {"word": w, "count": n}] for i, (w, n) in enumerate(top)]
    stages = [w["stages"] for w in rep.workers]
    assert len(stages[0]) == 2 and sum(s[0]["map_pairs"] for s in stages) == sum(want.values())
    assert sum(s[1]["map_pairs"] for s in stages) == len(want)          # stage 2 reads stage 1's pairs
    assert sum(s[1]["combined_pairs"] for s in stages) <= 3 * 3         # each mapper's top 3
    assert all(w["rounds"] >= 2 for w in rep.workers)


async def test_a_worker_with_a_memory_budget_runs_user_code_within_it(tmp_path, docs):
    """The child's address-space limit is the worker's budget on top of what its interpreter and libraries
    map: with the limit set to the bare budget, a 300 MiB worker failed every job at the child's load."""
    want = Counter(w for line in LINES for w in re.findall(r"\w+", line.lower()))
    hog = job_file(tmp_path, '''
        def mapper(rec):
            x = bytearray(700 << 20)
            yield "n", len(x)
    ''')
    settings = Settings(memory_limit=300 << 20)
    async with in_process_cluster(3, root=str(tmp_path), settings=settings) as c:
        rep = await mr(c, docs, job=str(EXAMPLES / "wordcount.py"))
        assert pairs(rep) == dict(want)
        with pytest.raises(UsageError, match=r"ran out of memory in its map \(the job's code may use 300 MiB"):
            await mr(c, docs, job=hog)


async def test_a_job_that_prints_more_than_a_pipe_holds_finishes(tmp_path, docs):
    """The user's prints go to the child's stderr; in a pipe nobody read before the child died, 64 KiB of them
    blocked the child (and its job) until the deadline."""
    chatty = job_file(tmp_path, '''
        def mapper(rec):
            print("x" * 200_000)
            for w in rec["text"].lower().split():
                yield w, 1

        def reducer(w, ones):
            yield w, sum(ones)
    ''')
    want = Counter(w for line in LINES for w in line.lower().split())
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("mapreduce", str(docs), {"limit": 0, "job": chatty}, timeout=60))
    assert pairs(rep) == dict(want)


async def test_mixed_type_keys_leave_the_values_column_alone(tmp_path):
    """Keys of several types (ints and strs) become JSON text, encoded once on every reducer, and the counts
    stay ints: with one reducer's keys all str and another's mixed, every column became JSON text (counts as
    "3") and the mixed reducer's keys were encoded twice ('"\\\\"a\\\\""')."""
    keys = [1, "a", "a", "b", 1, 1, "b", 2]
    pq.write_table(pa.table({"i": list(range(len(keys)))}), tmp_path / "t.parquet")

    def mapper(rec):
        yield keys[rec["i"]], 1

    def partitioner(k, n):
        return 1 if k == "b" else 0

    def reducer(k, vs):
        yield k, sum(vs)
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        rep = await mr(c, tmp_path / "t.parquet", mapper=mapper, partitioner=partitioner, reducer=reducer,
                       out=str(tmp_path / "o"))
    import json
    got = {r["key"]: r["value"] for r in pq.read_table(tmp_path / "o").to_pylist()}
    want = {json.dumps(k): n for k, n in Counter(keys).items()}
    assert got == want and rep.result["rows"] == 4


def test_a_function_that_does_not_pickle_is_named():
    """A notebook function capturing a lock: a UsageError naming it (exit 2), not cloudpickle's bare
    TypeError."""
    import threading
    from shardstats.worker.ops.mapreduce import MapreduceParams, prepare
    lock = threading.Lock()
    params = MapreduceParams(mapper=lambda r: [(r["k"], 1)], reducer=lambda k, vs: [(k, str(lock))])
    with pytest.raises(UsageError, match=r"^reducer: cannot be shipped to the workers \(TypeError: cannot pickle "):
        prepare(params)


def test_functions_capturing_more_than_a_message_holds_are_refused_in_one_line(tmp_path):
    """A closure over 12 MB of data: a UsageError naming the function and what to do, not the protocol's
    "FrameTooLarge refusing to send a 15055563-byte frame"; a job file over the limit likewise."""
    from shardstats.worker.ops.mapreduce import MapreduceParams, prepare
    big = {f"k{i}": f"{i:0100d}" for i in range(100_000)}
    params = MapreduceParams(mapper=lambda r: [(r["k"], 1)], reducer=lambda k, vs: [(k, len(big))])
    with pytest.raises(UsageError, match=r"^reducer: pickles to 1\d\.\d\d MiB with what it captures; .* at most 3 MiB"):
        prepare(params)
    job = job_file(tmp_path, "DATA = " + repr("x" * (4 << 20)) + "\ndef mapper(r):\n    yield 1, 1\n")
    with pytest.raises(UsageError, match=r"job\.py: 4\.00 MiB of code; a job file may be at most 3 MiB"):
        prepare(MapreduceParams(job=job))


def test_a_side_name_given_twice_is_refused(tmp_path):
    """`--side u=a.csv --side u=b.csv`: the last table silently won; now one line, exit 2, before any worker."""
    from tests.conftest import cli
    (tmp_path / "in.csv").write_text("k\na\n")
    (tmp_path / "u.csv").write_text("k\nb\n")
    job = job_file(tmp_path, "def mapper(r):\n    yield r['k'], 1\n")
    r = cli("submit", "mapreduce", "--job", str(job), "--input", str(tmp_path / "in.csv"),
            "--side", f"u={tmp_path / 'u.csv'}", "--side", f"u={tmp_path / 'in.csv'}", "--local", "1")
    assert r.returncode == 2 and r.stderr.strip() == "error: --side: 'u' names two tables: give each its own NAME"
