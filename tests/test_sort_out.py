"""Where a sort's parts go: streamed in row groups of bounded size, to a folder or to ``s3://`` (a moto server),
committed only when every worker -- and, beyond memory, every pass -- has written its part; a disk that fills
fails the job naming the worker and the path and leaves no part behind.  Orders are checked against DuckDB's."""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import os
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import InputError, JobError
from shardstats.settings import DEFAULTS
from shardstats.testing import in_process_cluster
from shardstats.worker.engine import answer

_REAL_WRITE = answer._Parts.write

def _data(tmp_path, n: int = 40_000, files: int = 3, seed: int = 4):
    """``files`` Parquet files: an int64 key with ties, a random 90-byte payload (so parts do not compress away)
    and the row's place in the input ``p``."""
    rng = np.random.default_rng(seed)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(files):
        pay = rng.integers(0, 256, (n, 45), dtype=np.uint8)
        p = pa.array([bytes(r).hex() for r in pay])          # test data only: 90 hex characters a row
        pq.write_table(pa.table({"k": rng.integers(0, n // 4, n), "pay": p, "p": np.arange(i * n, (i + 1) * n)}),
                       d / f"f{i}.parquet")
    return d


def _want(d) -> list[int]:
    return [r[0] for r in duckdb.sql(f"select p from read_parquet('{d}/*.parquet') order by k, p").fetchall()]


def _left(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


async def test_parts_are_written_in_bounded_row_groups_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(answer, "ROW_GROUP_ROWS", 5000)
    d = _data(tmp_path)
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": str(tmp_path / "o")}))
    names = _left(tmp_path / "o")
    assert names == [f"part-{i:05d}.parquet" for i in range(3)]
    for n in names:
        md = pq.read_metadata(tmp_path / "o" / n)
        assert md.num_row_groups > 1 and all(md.row_group(i).num_rows <= 5000 for i in range(md.num_row_groups))
    got = pa.concat_tables([pq.read_table(tmp_path / "o" / n) for n in names])
    assert got.column("p").to_pylist() == _want(d)


def _fail_on(monkeypatch, prefix: str):
    """Every part whose name starts with ``prefix`` fails after its first row group, as a full disk fails it."""
    real = answer._Parts.write

    def write(self, name, pieces):
        if not name.startswith(prefix):
            return real(self, name, pieces)
        make = pieces.make

        def failing():
            it = iter(make())
            yield next(it)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, answer.Pieces(pieces.schema, pieces.num_rows, failing))
    monkeypatch.setattr(answer._Parts, "write", write)


async def test_a_failed_part_in_a_later_pass_leaves_no_part_of_any_pass(tmp_path, monkeypatch):
    """Beyond memory a sort writes one part a pass: parts of earlier passes used to go into place at once, so a
    job that failed at its second pass left the first pass's parts, which look like a whole result."""
    d = _data(tmp_path, n=150_000, files=2)
    settings = dataclasses.replace(DEFAULTS, memory_limit=64 << 20, spill_dir=str(tmp_path / "spill"), keyed_overhead=0)
    _fail_on(monkeypatch, "part-0001-00001")
    async with in_process_cluster(3, root=str(tmp_path), settings=settings) as c:
        with pytest.raises(InputError, match=r"^worker \d: --out .*: cannot write .*/part-0001-00001\.parquet \(the disk is "
                                             r"full\); nothing was committed$"):
            await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": str(tmp_path / "o")}))
        assert _left(tmp_path / "o") == []
        monkeypatch.undo()
        rep = await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": str(tmp_path / "o")}))
        assert max(w.get("passes", 1) for w in rep.workers) > 1
    names = _left(tmp_path / "o")
    assert names[0] == "part-0000-00000.parquet" and all(n.startswith("part-") for n in names)
    got = pa.concat_tables([pq.read_table(tmp_path / "o" / n) for n in names])
    assert got.column("p").to_pylist() == _want(d)


async def test_a_full_output_disk_fails_naming_the_worker_and_path_and_leaves_no_part(tmp_path, small_disk):
    d = _data(tmp_path)                      # ~11 MB of parts on a 4 MiB disk
    out = small_disk / "sorted"
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        with pytest.raises(InputError, match=rf"^worker \d: --out {out}: cannot write {out}/part-0000\d\.parquet "
                                             rf"\(the disk is full\); nothing was committed$"):
            await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": str(out)}))
        assert _left(out) == []              # neither a part nor the job's hidden folder
        small = tmp_path / "small-in"
        small.mkdir()
        pq.write_table(pa.table({"k": [3, 1, 2], "p": [0, 1, 2]}), small / "s.parquet")
        await run_job(c.addrs, c.token, job_spec("sort", str(small), {"by": "k", "out": str(out)}))
    got = pa.concat_tables([pq.read_table(out / n) for n in _left(out)])
    assert got.column("k").to_pylist() == [1, 2, 3]


# -- s3:// ------------------------------------------------------------------------------------------------------
@pytest.fixture
def s3():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from tests.test_s3 import Store, moto_store
    from shardstats.worker.io import objects
    with moto_store() as env:
        objects._shared.clear()              # the in-process workers' client must see this server
        yield Store(env["AWS_ENDPOINT_URL"], env)
        objects._shared.clear()


def _objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    got = s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in got}


async def test_parts_go_to_s3_and_only_when_every_worker_has_written(tmp_path, s3, monkeypatch):
    monkeypatch.setattr(answer, "ROW_GROUP_ROWS", 20_000)
    d = _data(tmp_path)
    s3.client.create_bucket(Bucket="out")
    url = "s3://out/sorted/"
    async with in_process_cluster(3, root=str(tmp_path)) as c:
        _fail_on(monkeypatch, "part-00002")
        with pytest.raises(InputError, match=r"^worker \d: --out s3://out/sorted/: cannot write "
                                             r"s3://out/sorted/part-00002\.parquet \(the disk is full\)"):
            await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": url}))
        assert _objects(s3, "out", "sorted/") == {}
        # the other workers' uploads are aborted, not left open (they may still be ending when the job's error is in)
        deadline = time.monotonic() + 20
        while s3.client.list_multipart_uploads(Bucket="out").get("Uploads") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not s3.client.list_multipart_uploads(Bucket="out").get("Uploads")
        monkeypatch.setattr(answer._Parts, "write", _REAL_WRITE)
        await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": url}))
        with pytest.raises(InputError, match=r"--out s3://out/sorted/: already holds part-00000\.parquet"):
            await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": url}))
        s3.put("out", "sorted/part-00007.parquet", b"stale")                 # a longer earlier job's part
        await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "k", "out": url, "overwrite": True}))
    parts = _objects(s3, "out", "sorted/")
    assert sorted(parts) == [f"sorted/part-{i:05d}.parquet" for i in range(3)]
    tables = [pq.read_table(io.BytesIO(parts[k])) for k in sorted(parts)]
    assert all(pq.ParquetFile(io.BytesIO(parts[k])).metadata.num_row_groups > 1 for k in parts)
    assert pa.concat_tables(tables).column("p").to_pylist() == _want(d)


async def test_a_dictionary_only_for_columns_that_repeat(tmp_path):
    """pyarrow tried a dictionary on every column (near-unique keys and payloads too, for nothing); parts now keep
    one for the columns with few distinct values, as DuckDB does, and read back the same rows."""
    d = _data(tmp_path)
    async with in_process_cluster(2, root=str(tmp_path)) as c:
        await run_job(c.addrs, c.token, job_spec("sort", str(d), {"by": "pay", "out": str(tmp_path / "o")}))
    md = pq.read_metadata(tmp_path / "o" / "part-00000.parquet")
    enc = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i).has_dictionary_page
           for i in range(md.num_columns)}
    assert enc == {"k": True, "pay": False, "p": False}
    got = pa.concat_tables([pq.read_table(tmp_path / "o" / n) for n in _left(tmp_path / "o")])
    want = duckdb.sql(f"select p from read_parquet('{d}/*.parquet') order by pay, p").fetchall()
    assert got.column("p").to_pylist() == [r[0] for r in want]
