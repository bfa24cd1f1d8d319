"""The Python API as a notebook user meets it (cluster/api.py): typed Arrow answers, the rows ``out=`` wrote,
Python spellings of the CLI's options, one error hierarchy with the CLI's lines, a closed handle, and Ctrl-C
(inside a running event loop, as in Jupyter, and while workers start) leaving no job or process behind.
References: pyarrow's own group_by and sort, DuckDB, the CLI's stderr."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import threading
import time
from decimal import Decimal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shardstats.cluster import launcher
from shardstats.cluster.api import Cluster
from shardstats.errors import ClusterClosed, ShardstatsError, UserError
from tests.conftest import cli


def _typed_table() -> pa.Table:
    """Decimals (integral and not: they travel as an int and as text), timestamps, dates, a group whose
    integer sum is NULL, a NULL key."""
    D = Decimal
    return pa.table({
        "k": ["a", "b", "a", "c", "c", None, "b"],
        "d": pa.array([D("5.00"), D("-1.25"), D("7.50"), None, D("3.10"), D("2.00"), D("-8.00")], pa.decimal128(18, 2)),
        "ts": pa.array([dt.datetime(2024, 1, 1, 1, 2, 3, 456789), dt.datetime(2023, 5, 5), None,
                        dt.datetime(2020, 1, 1), dt.datetime(2021, 1, 1), dt.datetime(1999, 12, 31, 23, 59, 59),
                        dt.datetime(2023, 5, 6)], pa.timestamp("us")),
        "day": pa.array([dt.date(2024, 1, 1), dt.date(2023, 1, 2), dt.date(2022, 3, 4), None, dt.date(2020, 2, 2),
                         dt.date(1970, 1, 1), None], pa.date32()),
        "vn": pa.array([None, 2, None, None, None, 5, 3], pa.int64()),
        "v": pa.array([1, 2, 3, 4, 5, 6, 7], pa.int64()),
    })


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    d = tmp_path_factory.mktemp("typed")
    t = _typed_table()
    pq.write_table(t.slice(0, 4), d / "a.parquet")
    pq.write_table(t.slice(4), d / "b.parquet")
    return d, t


@pytest.fixture(scope="module")
def c2():
    with Cluster.local(2) as c:
        yield c


def test_to_arrow_gives_decimal_timestamp_and_date_columns_their_types(c2, typed):
    """The answer's rows travel as JSON-able values (a decimal as text or an int, a time as ISO text); the
    table comes back typed as pyarrow's own group_by types it, value for value (it came back as text, or
    raised on a decimal column holding both an integral and a fractional value)."""
    path, t = typed
    r = c2.groupby(path, by="k", agg=["min(d)", "max(d)", "max(ts)", "min(day)", "sum(vn)", "count()"])
    got = r.to_arrow().sort_by([("k", "ascending")])
    want = t.group_by("k").aggregate([("d", "min"), ("d", "max"), ("ts", "max"), ("day", "min"),
                                      ("vn", "sum"), ([], "count_all")]).sort_by([("k", "ascending")])
    assert got.schema.types == [pa.string(), pa.decimal128(18, 2), pa.decimal128(18, 2), pa.timestamp("us"),
                                pa.date32(), pa.int64(), pa.int64()]
    for mine, theirs in zip(got.columns, want.select(["k", "d_min", "d_max", "ts_max", "day_min", "vn_sum",
                                                      "count_all"]).columns):
        assert mine.to_pylist() == theirs.to_pylist()
    import importlib.util
    if importlib.util.find_spec("pandas") is not None:      # the bench extra has it; the test extra does not
        assert r.to_pandas()["min_d"].tolist() == [Decimal(x) if x is not None else None
                                                   for x in got["min_d"].to_pylist()]
    else:
        from shardstats.errors import UsageError
        with pytest.raises(UsageError, match=r"to_pandas\(\) needs pandas"):
            r.to_pandas()
    assert repr(r).endswith(f"| {len(t)} rows on 2 workers in {r.stats['seconds']:.3f} s>")  # as the CLI says it
    # a join passes the columns through: the table has the sides' own types
    j = c2.join(path, path, on="v").to_arrow()
    assert j.schema == pa.schema([*t.schema, *(pa.field(f"{f.name}_right", f.type) for f in t.schema
                                              if f.name != "v")])
    assert sorted(j["d"].to_pylist(), key=str) == sorted(t["d"].to_pylist(), key=str)
    # the --json document does not carry the schema (the CLI's document is unchanged)
    assert "_schema" not in json.loads(r.json())["result"] and "_schema" not in r.result


def test_to_arrow_of_a_job_that_wrote_out_reads_every_part(c2, typed, tmp_path, monkeypatch):
    """``out=DIR`` (relative to the notebook's folder): to_arrow is the rows written, not an empty table of
    NULL columns; a sort's parts in name order are its order."""
    path, t = typed
    monkeypatch.chdir(tmp_path)
    r = c2.groupby(path, by="k", agg=["sum(v)", "max(d)"], out="g")
    assert r.result["out"] == str(tmp_path / "g")
    got = r.to_arrow().sort_by([("k", "ascending")])
    want = duckdb.sql(f"SELECT k, sum(v) AS sum_v, max(d) AS max_d FROM '{path}/*.parquet' GROUP BY k "
                      f"ORDER BY k NULLS LAST").to_arrow_table()
    assert got["k"].to_pylist() == want["k"].to_pylist()
    assert got["sum_v"].to_pylist() == want["sum_v"].to_pylist()
    assert got["max_d"].type == pa.decimal128(18, 2) and got["max_d"].to_pylist() == want["max_d"].to_pylist()
    s = c2.sort(path, by=["d", "v"], desc="d", out="sorted").to_arrow()
    assert s.num_rows == len(t)
    order = pc.sort_indices(t, sort_keys=[("d", "descending", "at_end"), ("v", "ascending", "at_end")])
    assert s.select(["d", "v"]).to_pylist() == t.take(order).select(["d", "v"]).to_pylist()


def test_python_spellings_of_the_cli_options(c2, typed, tmp_path):
    """A repeatable option given once (agg="count()", contains=3), columns as a list (by=["k", "b"]),
    quantiles as a list, header="yes", and a job option passed as None (its default): each was refused."""
    path, t = typed
    r = c2.groupby(path, by=["k"], agg="count()", column=None, limit=0)
    assert sorted(map(tuple, r.result["data"]), key=str) == sorted(
        duckdb.sql(f"SELECT k, count(*) FROM '{path}/*.parquet' GROUP BY k").fetchall(), key=str)
    assert c2.sort(path, by=["k", "v"], desc=["v"], out=str(tmp_path / "s")).result["parts"] >= 1
    assert [x["maybe"] for x in c2.sketch(path, column="v", kind="bloom", contains=3).result["contains"]] == [True]
    q = c2.sketch(path, column="v", kind="kll", quantiles=[0.5, 0.9]).result["quantiles"]
    assert list(q) == ["0.5", "0.9"]
    (tmp_path / "h.csv").write_text("1\n2\n10\n")
    assert c2.stats(tmp_path / "h.csv", header="yes").count == 2       # the first line is a header
    assert c2.stats(tmp_path / "h.csv", header=False).count == 3


@pytest.mark.parametrize("call,argv", [
    (lambda c, p: c.groupby(p, by="nope", agg="sum(v)"), ["groupby", "--by", "nope", "--agg", "sum(v)"]),
    (lambda c, p: c.groupby(p, by="k", agg="frob(v)"), ["groupby", "--by", "k", "--agg", "frob(v)"]),
    (lambda c, p: c.groupby(p, by="k", agg="sum(k)"), ["groupby", "--by", "k", "--agg", "sum(k)"]),
    (lambda c, p: c.stats(os.path.join(p, "missing")), ["stats", "--input-missing"]),
])
def test_errors_are_the_clis_lines_and_the_cluster_serves_on(c2, typed, tmp_path, call, argv):
    path, t = typed
    with pytest.raises(UserError) as exc:
        call(c2, str(path))
    assert isinstance(exc.value, ShardstatsError) and exc.value.exit_code == 2
    cf = tmp_path / "cluster.json"
    c2.info.save(cf)
    args = ["submit", argv[0], "--input", str(path / "missing") if argv[1] == "--input-missing" else str(path),
            *[a for a in argv[1:] if a != "--input-missing"], "--cluster-file", str(cf)]
    out = cli(*args, env={"CLUSTER_WORKERS": ""})
    def same(line: str) -> str:     # which file a worker names first varies from run to run
        return re.sub(r"/[ab]\.parquet:", "/X.parquet:", line)
    assert out.returncode == 2 and list(map(same, out.stderr.strip().splitlines())) == [same(f"error: {exc.value}")]
    assert c2.stats(path, column="v").count == len(t)


def test_a_closed_cluster_raises_the_packages_error():
    with Cluster.local(1) as c:
        pass
    for call in (lambda: c.mode("."), lambda: c.status(), lambda: c.submit("stats", ".")):
        with pytest.raises(ClusterClosed, match="this cluster was closed") as exc:
            call()
        assert isinstance(exc.value, ShardstatsError) and isinstance(exc.value, RuntimeError)
        assert exc.value.exit_code == 2


def _interrupt_when_the_job_runs(delay: float) -> threading.Thread:
    """SIGINT to this process ``delay`` s after the API's helper thread (a job inside a running loop) exists."""
    def send() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(t.name == "cluster-api" for t in threading.enumerate()):
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def test_ctrl_c_in_a_running_loop_aborts_the_job(c2, typed):
    """In Jupyter a job runs on a helper thread (a loop is running); Ctrl-C raised KeyboardInterrupt in the
    waiting thread only and the job went on, on the cluster and in the notebook's process. Now it is
    cancelled there and aborted on every worker before the KeyboardInterrupt reaches the user."""
    path, t = typed

    def slow(record):
        time.sleep(2)       # 7 records: seconds of work, where the interrupt comes after half of one
        yield record["k"], 1

    async def notebook_cell():
        c2.mapreduce(path, mapper=slow, reducer=lambda k, vs: [(k, sum(vs))])

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    loop = asyncio.new_event_loop()
    try:
        sender = _interrupt_when_the_job_runs(0.5)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(notebook_cell())
        sender.join(5)
    finally:
        loop.close()
        signal.signal(signal.SIGINT, old)
    assert not any(t.name == "cluster-api" for t in threading.enumerate())
    deadline = time.monotonic() + 10
    while any(w["active_jobs"] for w in c2.status()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [w["active_jobs"] for w in c2.status()] == [0, 0]
    assert c2.stats(path, column="v").count == len(t)                    # and it serves the next job


def test_ctrl_c_while_workers_start_leaves_none_running(monkeypatch):
    """An interrupt between two workers' spawns left the first running (in a session of its own)."""
    started = []
    real = launcher._spawn

    def spawn(i, *args, **kw):
        if i == 1:
            raise KeyboardInterrupt
        p = real(i, *args, **kw)
        started.append(p)
        return p
    monkeypatch.setattr(launcher, "_spawn", spawn)
    try:
        with pytest.raises(KeyboardInterrupt):
            Cluster.local(3)
        assert len(started) == 1 and not launcher.alive(started[0].pid)
    finally:
        for p in started:
            if launcher.alive(p.pid):
                p.kill()
                p.wait(10)


def test_workers_of_a_killed_notebook_stop(tmp_path):
    """A kernel killed (SIGKILL: no atexit, no finalizer) left its Cluster.local workers running for good, in
    sessions of their own; they now see their parent gone and stop (the polling's second, plus shutdown)."""
    import subprocess
    import sys
    script = ("import json, sys, time\nfrom shardstats import Cluster\nc = Cluster.local(2)\n"
              "print(json.dumps(c.info.pids), flush=True)\ntime.sleep(120)\n")
    kernel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    pids: list[int] = []
    try:
        pids = json.loads(kernel.stdout.readline())
        assert len(pids) == 2 and all(launcher.alive(p) for p in pids)
        kernel.kill()
        kernel.wait(10)
        deadline = time.monotonic() + 15
        while any(launcher.alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(launcher.alive(p) for p in pids)
    finally:
        kernel.kill()
        kernel.wait(10)
        for p in pids:
            if launcher.ours(p):
                os.kill(p, signal.SIGKILL)


def test_progress_line_when_asked(c2, typed):
    """progress= draws the CLI's progress line on the stream given (a notebook is not a terminal: never unasked)."""
    import io
    path, t = typed

    def slow(record):
        time.sleep(0.15)
        yield record["k"], 1
    shown = io.StringIO()
    r = c2.mapreduce(path, mapper=slow, reducer=lambda k, vs: [(k, sum(vs))], progress=shown)
    assert sorted(r.result["data"], key=str) == sorted(
        [[k, n] for k, n in duckdb.sql(f"SELECT k, count(*) FROM '{path}/*.parquet' GROUP BY k").fetchall()], key=str)
    drawn = shown.getvalue()
    assert drawn.startswith("\rmapreduce ") and "s | map" in drawn
    assert drawn.endswith("\r") and drawn.rstrip("\r ").count("\r") >= 1     # drawn, then erased


def test_saved_sketches_are_shown_and_merged_from_python(c2, tmp_path):
    """`cluster sketch show|merge` had no Python spelling: show_sketch and merge_sketches answer as the CLI's
    --json does (the same document), within the sketch's bound of numpy's answer, and refuse as it refuses."""
    import numpy as np
    from shardstats import merge_sketches, show_sketch
    rng = np.random.default_rng(5)
    days = [rng.zipf(1.3, 20_000).astype(np.int64) % 1000 for _ in range(2)]
    for i, d in enumerate(days):
        np.save(tmp_path / f"d{i}.npy", d)
        c2.median(tmp_path / f"d{i}.npy", approx=True, save_sketch=str(tmp_path / f"d{i}.kll"))
    c2.sketch(tmp_path / "d0.npy", kind="count_min", save_sketch=str(tmp_path / "d0.cm"))
    head = merge_sketches([tmp_path / "d0.kll", tmp_path / "d1.kll"], tmp_path / "week.kll")
    assert head["kind"] == "kll_doubles" and len(head["input"]["merged_from"]) == 2
    doc = show_sketch(tmp_path / "week.kll", quantiles=[0.5, 0.9])
    out = cli("sketch", "show", str(tmp_path / "week.kll"), "--quantiles", "0.5,0.9", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == json.loads(json.dumps(doc))
    both = np.sort(np.concatenate(days))
    for q, a in doc["answer"]["quantiles"].items():
        assert a["low"] <= np.quantile(both, float(q), method="lower") <= a["high"]
    counts = show_sketch(tmp_path / "d0.cm", count=[3, 999])["answer"]["counts"]
    assert [c["lower"] <= int((days[0] == int(c["value"])).sum()) <= c["upper"] for c in counts] == [True, True]
    with pytest.raises(UserError, match="it answers --count, not --top"):
        show_sketch(tmp_path / "d0.cm", top=3)
    with pytest.raises(UserError, match="only sketches of one kind merge"):
        merge_sketches([tmp_path / "d0.kll", tmp_path / "d0.cm"], tmp_path / "x")
