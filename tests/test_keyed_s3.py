"""Keyed jobs (group-by, join, sort, word count, the index, MapReduce) reading ``s3://`` input, against moto's
real S3 server on 127.0.0.1 (``tests.test_s3.moto_store``).

Every job runs twice, on the objects and on the same files on disk, and both equal a plain reference (DuckDB,
collections.Counter); beyond the memory budget the objects are read in batches and blocks into runs like
files; Parquet fetches only the columns a job reads; a bad object is one line naming it, exit 2, and the
cluster serves the next job.
"""
from __future__ import annotations

import dataclasses
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shardstats.coordinator import job as coordinator
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError
from shardstats.testing import in_process_cluster
from tests.conftest import cli

pytest.importorskip("s3fs", reason="s3:// input needs s3fs (pip install -e '.[test]')")
pytest.importorskip("moto.server", reason="the S3 test server needs moto[server] (pip install -e '.[test]')")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pacsv = pytest.importorskip("pyarrow.csv")
duckdb = pytest.importorskip("duckdb")
pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORD = re.compile(r"\w+")


@pytest.fixture(scope="module")
def s3():
    from tests.test_s3 import Store, moto_store
    from shardstats.worker.io import objects
    with moto_store() as env:
        objects._shared.clear()          # a client made before this environment would not see the server
        yield Store(env["AWS_ENDPOINT_URL"], env)
        objects._shared.clear()


def _upload(s3, bucket: str, root: Path) -> str:
    """Every file under ``root`` as an object of ``bucket`` at the same relative key; the bucket's URL."""
    for f in sorted(root.rglob("*")):
        if f.is_file():
            s3.put(bucket, f.relative_to(root).as_posix(), f.read_bytes())
    return f"s3://{bucket}"


def _texts(rng, sizes) -> dict[str, str]:
    vocab = np.array(["Straße", "STRASSE", "naïve", "Ωmega", "ωmega", "日本語", "x_1", "42", "the", "The",
                      "İstanbul", "über"] + [f"w{i}" for i in range(3000)])
    out = {}
    for name, n in sizes:
        toks = vocab[rng.zipf(1.3, n) % len(vocab)]
        seps = np.array([" ", ", ", "\n", " -- ", ".\n"])[rng.integers(0, 5, n)]
        out[name] = "".join(np.char.add(toks, seps).tolist())
    return out


@pytest.fixture(scope="module")
def data(s3, tmp_path_factory):
    """The same files on disk and in the bucket "keyed": Parquet (int, string and float columns, NULLs, two
    row groups a file), CSV, JSON lines, a join's right side and text documents."""
    root = tmp_path_factory.mktemp("keyed")
    rng = np.random.default_rng(8)
    for d in ("t", "c", "j", "r", "docs"):
        (root / d).mkdir()
    for i, n in enumerate((30_000, 20_000, 7)):
        k = rng.integers(-500, 500, n)
        t = pa.table({"k": pa.array(k, mask=rng.random(n) < 0.02),
                      "s": pa.array([f"g{x}" for x in rng.integers(0, 60, n)], mask=rng.random(n) < 0.02),
                      "v": rng.integers(-10**6, 10**6, n), "f": rng.normal(0, 1e3, n),
                      "pad": pa.array([f"{x:032x}" for x in rng.integers(0, 2**62, n)])})
        pq.write_table(t, root / "t" / f"p{i}.parquet", row_group_size=max(1, n // 2))
        pacsv.write_csv(t.drop_columns(["pad"]), root / "c" / f"c{i}.csv")
        pairs = zip(rng.integers(0, 30, n // 4), rng.integers(0, 99, n // 4))
        (root / "j" / f"j{i}.jsonl").write_text("".join(f'{{"s": "g{a}", "v": {b}}}\n' for a, b in pairs))
    rk = np.concatenate([np.arange(-500, 500, 3), np.arange(-500, 500, 7)])
    pq.write_table(pa.table({"k": rk, "w": np.arange(len(rk))}), root / "r" / "r.parquet")
    texts = _texts(rng, (("a.txt", 60_000), ("b.md", 40_000), ("tiny", 5), ("empty.txt", 0)))
    for name, text in texts.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    url = _upload(s3, "keyed", root)
    return root, url, texts


def _rows(rep) -> list[tuple]:
    return [tuple(r) for r in rep.result["data"]]


def _sorted_parts(d: Path):
    return pa.concat_tables([pq.read_table(f) for f in sorted(d.iterdir())])


async def test_keyed_jobs_read_s3_as_they_read_the_same_files_on_disk(data, tmp_path):
    root, url, texts = data
    con = duckdb.connect()
    src = f"read_parquet('{root}/t/*.parquet')"
    words = Counter(w for t in texts.values() for w in WORD.findall(t.lower()))
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        async def both(op: str, path: str, params: dict, out: bool = False):
            """The job on the objects and on the files: (s3's report, the local one's)."""
            reps = []
            for where in (f"{url}/{path}", str(root / path)):
                p = dict(params)
                if out:
                    p["out"] = str(tmp_path / f"{op}-{len(reps)}")
                reps.append(await run_job(c.addrs, c.token, job_spec(op, where, p)))
            return reps

        # group-by: Parquet (only k, s, v read), CSV and JSON lines
        a, b = await both("groupby", "t/", {"by": "s", "agg": ["sum(v)", "count()", "mean(f)", "max(k)"],
                                            "limit": 100})
        want = con.sql(f"select s, sum(v), count(*), avg(f), max(k) from {src} group by s "
                       f"order by s nulls last").fetchall()
        assert _rows(a) == _rows(b)
        assert [r[:3] + (r[4],) for r in _rows(a)] == [r[:3] + (r[4],) for r in want]
        assert all(r[3] == pytest.approx(w[3], rel=1e-9) for r, w in zip(_rows(a), want))
        a, b = await both("groupby", "c/", {"by": "k", "agg": ["sum(v)", "count()"], "limit": 2000})
        assert _rows(a) == _rows(b) == con.sql(f"select k, sum(v), count(*) from read_csv('{root}/c/*.csv') "
                                               f"group by k order by k nulls last").fetchall()
        a, b = await both("groupby", "j/", {"by": "s", "agg": ["sum(v)"], "limit": 100})
        assert _rows(a) == _rows(b) == con.sql(f"select s, sum(v) from read_json('{root}/j/*.jsonl') "
                                               f"group by s order by s").fetchall()
        # join: the left side in the store and the right on disk, then both in the store
        want = con.sql(f"select l.k, l.v, r.w from {src} l join '{root}/r/r.parquet' r on l.k = r.k "
                       f"order by all").fetchall()
        for right in (str(root / "r"), f"{url}/r/r.parquet"):
            out = tmp_path / f"join-{len(right)}"
            await run_job(c.addrs, c.token, job_spec("join", f"{url}/t/", {"right": right, "on": "k",
                                                                           "out": str(out)}))
            assert con.sql(f"select k, v, w from '{out}/*.parquet' order by all").fetchall() == want
        # sort from the store, parts written on local disk: their concatenation is DuckDB's order
        a, b = await both("sort", "t/", {"by": "k,v", "desc": "v"}, out=True)
        want = con.sql(f"select k, v from {src} order by k nulls last, v desc").fetchall()
        for d in ("sort-0", "sort-1"):
            got = _sorted_parts(tmp_path / d).select(["k", "v"])
            assert list(zip(*[got.column(n).to_pylist() for n in ("k", "v")])) == want
        # text documents: any object of the prefix is a document (word count, the index, MapReduce)
        a, b = await both("wordcount", "docs/", {"top": 10**6})
        assert a.result["tokens"] == b.result["tokens"] == sum(words.values())
        assert dict(map(tuple, a.result["top"])) == dict(map(tuple, b.result["top"])) == dict(words)
        rep = await run_job(c.addrs, c.token, job_spec("index", f"{url}/docs/", {"limit": 0}))
        docs: dict[str, set] = {}
        for name, t in texts.items():
            for w in set(WORD.findall(t.lower())):
                docs.setdefault(w, set()).add(f"{url}/docs/{name}")
        assert {w: sorted(ds) for w, ds in rep.result["data"]} == {w: sorted(ds) for w, ds in docs.items()}
        a, b = await both("mapreduce", "docs/", {"limit": 0, "job": str(EXAMPLES / "wordcount_batch.py")})
        assert dict(_rows(a)) == dict(_rows(b)) == dict(words)
        # a table's text column as documents, from a JSON-lines object
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", f"{url}/j/", {"text": "s", "top": 100}))
        allj = "".join((root / "j" / f).read_text() for f in sorted(x.name for x in (root / "j").iterdir()))
        assert dict(map(tuple, rep.result["top"])) == Counter(re.findall(r'"s": "(g\d+)"', allj))


def _fetched(monkeypatch) -> list[int]:
    """Counts the bytes every ranged GET of the store's reader asks for (s3fs's ``_fetch_range``)."""
    import s3fs.core
    fetch, sizes = s3fs.core.S3File._fetch_range, []

    def counted(self, start, end):
        sizes.append(end - start)
        return fetch(self, start, end)
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    return sizes


@pytest.mark.parametrize("kept", [False, True], ids=["whole", "in batches"])
def test_parquet_objects_fetch_only_the_columns_read(data, monkeypatch, kept):
    """Read whole (pyarrow's coalesced ranges) or in batches beyond memory (1 MiB ranges), a Parquet object
    sends only its footer and the chunks of the columns asked for: far fewer bytes than the object, whose
    "pad" column alone is most of it; the rows equal pyarrow's read of the file."""
    from shardstats.worker.data import readers
    from shardstats.worker.io.listing import list_refs
    root, url, _ = data
    (ref,) = list_refs(f"{url}/t/p0.parquet", readers.TABLE_SUFFIXES)
    sizes = _fetched(monkeypatch)
    keep = (lambda t: t) if kept else None
    got = readers.read_table(ref, ref.path, ["k", "v"], None, keep)
    assert got.equals(pq.read_table(root / "t" / "p0.parquet", columns=["k", "v"]))
    assert 0 < sum(sizes) < ref.size / 2, (sum(sizes), ref.size)


# -- beyond the memory budget ---------------------------------------------------------------------------------
async def test_keyed_jobs_beyond_the_budget_read_s3_in_batches_into_runs(s3, tmp_path):
    """Shares over the budget, read from the store a batch (Parquet) or a block of lines (text, CSV) at a time
    into runs on local disk, one key slice a pass: equal to DuckDB and Counter, the spill folder emptied."""
    from tests.test_beyond_memory import _corpus, _settings, _tables
    t, r = _tables(tmp_path, np.random.default_rng(5))
    texts = _corpus(tmp_path / "docs", np.random.default_rng(11))
    (tmp_path / "csv").mkdir()
    pacsv.write_csv(pq.read_table(t / "p0.parquet"), tmp_path / "csv" / "p0.csv")
    url = _upload(s3, "beyond", tmp_path)
    src = f"read_parquet('{t}/*.parquet', union_by_name=true)"
    con = duckdb.connect()
    async with in_process_cluster(3, root=str(tmp_path), settings=_settings(tmp_path)) as c:
        rep = await run_job(c.addrs, c.token, job_spec("groupby", f"{url}/t/", {"by": "s", "agg": ["sum(v)", "count()"],
                                                                               "limit": 1000}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert sum(w.get("spill_bytes_written", 0) for w in rep.workers) > 0
        assert _rows(rep) == con.sql(f"select s, sum(v), count(*) from {src} group by s "
                                     f"order by s nulls last").fetchall()
        rep = await run_job(c.addrs, c.token, job_spec("groupby", f"{url}/csv/", {"by": "k", "agg": ["count()"],
                                                                                 "limit": 10**4}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert _rows(rep) == con.sql(f"select k, count(*) from '{t}/p0.parquet' group by k "
                                     f"order by k nulls last").fetchall()
        out = tmp_path / "j"
        rep = await run_job(c.addrs, c.token, job_spec("join", f"{url}/t/", {"right": f"{url}/r/", "on": "k",
                                                                            "out": str(out)}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert con.sql(f"select k, v, w from '{out}/*.parquet' order by all").fetchall() == con.sql(
            f"select l.k, l.v, r.w from {src} l join '{r}/r.parquet' r on l.k = r.k order by all").fetchall()
        rep = await run_job(c.addrs, c.token, job_spec("wordcount", f"{url}/docs/", {"top": 10**6}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert dict(map(tuple, rep.result["top"])) == Counter(w for x in texts.values() for w in WORD.findall(x.lower()))
    assert list((tmp_path / "spill").iterdir()) == []


# -- bad objects ----------------------------------------------------------------------------------------------
async def test_bad_objects_are_one_line_naming_them_and_the_cluster_serves_the_next_job(data, s3, tmp_path,
                                                                                        monkeypatch):
    _, url, _ = data
    s3.put("keyed", "bad/corrupt.parquet", b"PAR1 but not Parquet")
    s3.put("keyed", "ragged/r.csv", b"a,b\n1,2\n3,4,5\n")
    s3.put("keyed", "npy/x.npy", b"\x93NUMPY")
    listed = coordinator.list_refs

    def with_a_ghost(path, suffixes=None):
        """The listing plus an object deleted since (or never there): the worker's GET finds nothing."""
        refs = listed(path, suffixes)
        return refs + [dataclasses.replace(refs[0], path=f"{url}/t/ghost.parquet")]

    async with in_process_cluster(2, root=str(tmp_path)) as c:
        async def fails(path: str, params: dict | None = None, **kw) -> str:
            with pytest.raises(InputError) as err:
                await run_job(c.addrs, c.token, job_spec(kw.get("op", "groupby"), path,
                                                         params or {"by": "s", "agg": ["count()"]}))
            assert "\n" not in str(err.value)
            return str(err.value)
        assert await fails("s3://nobucket-here/t/") == "s3://nobucket-here/t/: no such bucket 'nobucket-here'"
        assert await fails(f"{url}/nothing/") == f"{url}/nothing/: no such object or prefix"
        assert await fails(f"{url}/npy/") == (f"{url}/npy/: prefix holds no shard objects (.csv, .tsv, .parquet, "
                                              f".jsonl or .ndjson)")
        assert (await fails(f"{url}/bad/")).startswith(f"{url}/bad/corrupt.parquet: not a readable Parquet file")
        assert await fails(f"{url}/ragged/", {"by": "a", "agg": ["count()"]}) == (
            f"{url}/ragged/r.csv:3: a row of 3 fields where the header has 2")
        monkeypatch.setattr(coordinator, "list_refs", with_a_ghost)
        assert await fails(f"{url}/t/p2.parquet") == f"{url}/t/ghost.parquet: no such object"
        monkeypatch.setattr(coordinator, "list_refs", listed)
        rep = await run_job(c.addrs, c.token, job_spec("groupby", f"{url}/t/p2.parquet",
                                                       {"by": "k", "agg": ["count()"]}))
        assert sum(n for *_, n in _rows(rep)) == 7


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("kept", [False, True], ids=["whole", "in batches"])
def test_an_object_rewritten_while_a_keyed_reader_reads_it_is_refused(s3, monkeypatch, fmt, kept):
    """Between the open (the listed ETag) and a GET, the object is rewritten: the GET's If-Match fails and the
    reader says the object changed -- never "not a readable file", never a mix of versions."""
    import s3fs.core
    from shardstats.worker.data import readers
    from shardstats.worker.io.listing import list_refs
    t = pa.table({"k": np.arange(50_000), "s": pa.array([f"x{i % 7}" for i in range(50_000)])})
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(t, buf, row_group_size=10_000)
    else:
        pacsv.write_csv(t, buf)
    url = s3.put("midread", f"k.{fmt}", buf.getvalue())
    (ref,) = list_refs(url, readers.TABLE_SUFFIXES)
    fetch, calls = s3fs.core.S3File._fetch_range, []

    def rewrite_then_fetch(self, start, end):
        if not calls:
            s3.put("midread", f"k.{fmt}", buf.getvalue() + b"\n")
        calls.append((start, end))
        return fetch(self, start, end)
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", rewrite_then_fetch)
    with pytest.raises(InputError, match=rf"^s3://midread/k\.{fmt}: changed since the job listed it"):
        readers.read_table(ref, ref.path, ["k"], None, (lambda x: x) if kept else None)
    assert calls


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """An authenticating store (``tests.test_s3.authenticating_store``) holding a Parquet object that its
    "lister" may list but not get."""
    from tests.test_s3 import authenticating_store
    buf = io.BytesIO()
    pq.write_table(pa.table({"s": ["a", "b", "a"]}), buf)
    with authenticating_store(tmp_path_factory, {"p/a.parquet": buf.getvalue()}) as found:
        yield found


def test_access_denied_exits_2_naming_the_object(locked, tmp_path):
    """The CLI, its workers real processes: the listing is allowed, each worker's read refused."""
    from tests.test_s3 import _env
    endpoint, key, secret = locked
    args = ("submit", "groupby", "--input", "s3://locked/p/", "--by", "s", "--agg", "count()", "--local", "2")
    out = cli(*args, cwd=tmp_path, env=_env(endpoint, key, secret))
    assert out.returncode == 2, out.stderr
    assert re.fullmatch(r"error: s3://locked/p/a\.parquet: access denied \(.+\)\n", out.stderr), out.stderr


async def test_wrong_credentials_are_the_users_at_the_listing_and_the_clusters_on_a_worker(locked, monkeypatch,
                                                                                           tmp_path):
    """Wrong keys where the job is submitted: one line naming the input, exit 2. The coordinator lists with good
    keys and the workers' own client carries wrong ones: one line naming the object and saying whose
    credentials, exit 1 (StoreUnavailable: the cluster, not the input)."""
    import s3fs
    from shardstats.errors import StoreUnavailable
    from shardstats.settings import DEFAULTS
    from shardstats.worker.io import objects
    from tests.test_s3 import _env
    endpoint, key, secret = locked
    for k, v in _env(endpoint, "AKIAWRONGWRONGWRONG0", "nope").items():
        monkeypatch.setenv(k, v)
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        with pytest.raises(InputError) as err:
            await run_job(c.addrs, c.token, job_spec("groupby", "s3://locked/p/", {"by": "s", "agg": ["count()"]}))
    assert str(err.value).startswith("s3://locked/p/: the store refused the credentials (InvalidAccessKeyId); "
                                     "check AWS_ACCESS_KEY_ID") and err.value.exit_code == 2
    for k, v in _env(endpoint, key, secret).items():
        monkeypatch.setenv(k, v)
    wrong = s3fs.S3FileSystem(key="AKIAWRONGWRONGWRONG0", secret="nope", endpoint_url=endpoint,
                              skip_instance_cache=True, client_kwargs={"region_name": "us-east-1"})
    refs = objects.list_objects("s3://locked/p/", suffixes=None)        # listed with the environment's keys
    monkeypatch.setattr(coordinator, "list_refs", lambda path, suffixes=None: refs)
    monkeypatch.setattr(objects, "shared_store", lambda settings=DEFAULTS: wrong)    # what the workers read with
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        with pytest.raises(StoreUnavailable) as err:
            await run_job(c.addrs, c.token, job_spec("groupby", "s3://locked/p/", {"by": "s", "agg": ["count()"]}))
    assert str(err.value) == ("s3://locked/p/a.parquet: the store refused this worker's credentials "
                              "(InvalidAccessKeyId); workers read with their own AWS environment")
    assert err.value.exit_code == 1
