"""Shards in object storage, against a real S3-compatible server (moto's) on 127.0.0.1.

The coordinator lists, real worker processes read the objects over HTTP with their own
environment (the job message carries paths, sizes and ETags only).  Every answer is
checked against numpy / collections.Counter; every bad object is one line naming it.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from shardstats.cluster import launcher
from shardstats.coordinator.job import run_job
from shardstats.coordinator.liveness import Liveness
from shardstats.coordinator.spec import job_spec
from shardstats.errors import EmptyDataset, InputError, ShardstatsError, StoreUnavailable
from shardstats.settings import Settings
from shardstats import reference
from tests.conftest import cli, nasty_datasets

pytest.importorskip("s3fs", reason="s3:// input needs s3fs (pip install -e '.[test]')")
moto_server = pytest.importorskip("moto.server",
                                  reason="the S3 test server needs moto[server] (pip install -e '.[test]')")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

LIVE = Liveness(heartbeat=0.5, dead_after=3.0)
DEADLINE = 60.0


class Store:
    """The test server, a boto3 client on it, and the environment that points processes at it."""

    def __init__(self, endpoint: str, env: dict[str, str]) -> None:
        import boto3
        self.endpoint, self.env = endpoint, env
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        self.buckets: set[str] = set()

    def put(self, bucket: str, key: str, body: bytes) -> str:
        if bucket not in self.buckets:
            self.client.create_bucket(Bucket=bucket)
            self.buckets.add(bucket)
        self.client.put_object(Bucket=bucket, Key=key, Body=body)
        return f"s3://{bucket}/{key}"


def _env(endpoint: str, key: str = "testing", secret: str = "testing") -> dict[str, str]:
    """A process environment that sees only this store: no host config files, no instance metadata."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_store():
    """A moto S3 server on a free port, and this process's environment seeing only it (processes started
    inside inherit it): yields that environment. Skips the test where the server cannot start."""
    try:
        srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        srv.start()
    except OSError as exc:
        pytest.skip(f"the S3 test server (moto) cannot start on 127.0.0.1: {exc}")
    _, port = srv.get_host_and_port()
    env = _env(f"http://127.0.0.1:{port}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                mp.delenv(k, raising=False)
            for k, v in env.items():
                mp.setenv(k, v)
            yield env
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def s3():
    with moto_store() as env:
        yield Store(env["AWS_ENDPOINT_URL"], env)


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    info = launcher.start(3, "127.0.0.1", None, str(tmp_path_factory.mktemp("s3logs")), "info")
    try:
        yield info
    finally:
        launcher.stop(info)


def _spec(op: str, url: str):
    return job_spec(op, url, timeout=DEADLINE, heartbeat=LIVE.heartbeat, dead_after=LIVE.dead_after)


def _job(info, op: str, url: str):
    return asyncio.run(run_job(info.workers, info.token.encode(), _spec(op, url)))


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a))
    return buf.getvalue()


def _txt(a) -> bytes:
    return "".join(f"{int(v)}\n" for v in a).encode()


def _parquet(table, row_group_size: int = 1000) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def _mode(values) -> tuple[int, int]:
    ref = reference.mode(np.asarray(values))
    return ref["value"], ref["count"]


def _median(values) -> tuple[int, int]:
    ref = reference.median(np.asarray(values))
    return ref["lower"], ref["upper"]


# -- listing ------------------------------------------------------------------------------------------------
def test_listing_gives_each_object_its_size_and_etag(s3):
    from shardstats.worker.io.listing import list_refs
    for i, body in enumerate([_npy([1, 2, 3]), _txt([4, 5]), b""]):
        s3.put("listing", f"p/s{i}.{('npy', 'txt', 'txt')[i]}", body)
    s3.put("listing", "p/README.md", b"not a shard")            # skipped in a prefix, like in a directory
    s3.put("listing", "p/deeper/s9.npy", _npy([9]))              # a sub-prefix is not descended into
    refs = list_refs("s3://listing/p/")
    assert [r.path for r in refs] == ["s3://listing/p/s0.npy", "s3://listing/p/s1.txt", "s3://listing/p/s2.txt"]
    for r in refs:
        head = s3.client.head_object(Bucket="listing", Key=r.path.split("/", 3)[3])
        assert (r.size, r.version) == (head["ContentLength"], head["ETag"])
    assert [r.path for r in list_refs("s3://listing/p/s1.txt")] == ["s3://listing/p/s1.txt"]
    assert [r.path for r in list_refs("s3://listing/p")] == [r.path for r in refs]     # a prefix without "/"
    assert [r.path for r in list_refs("s3://listing/p/*.npy")] == ["s3://listing/p/s0.npy"]
    assert [r.path for r in list_refs("s3://listing/p/**/*.npy")] == ["s3://listing/p/deeper/s9.npy",
                                                                        "s3://listing/p/s0.npy"]


# -- exactness ----------------------------------------------------------------------------------------------
def test_mode_and_median_are_exact_on_the_nasty_datasets(s3, cluster):
    """Every dataset of the developers' list, its shards spread over .npy, .txt and .parquet objects."""
    writers = (lambda a: ("npy", _npy(a)), lambda a: ("txt", _txt(a)),
               lambda a: ("parquet", _parquet(pa.table({"v": pa.array(a, pa.int64())}), 300)))
    for d, (name, shards) in enumerate(nasty_datasets().items()):
        for i, shard in enumerate(shards):
            suffix, body = writers[(d + i) % 3](shard)
            s3.put("nasty", f"d{d}/s{i:02d}.{suffix}", body)
        allv = np.concatenate(shards)
        mode = _job(cluster, "mode", f"s3://nasty/d{d}/").result
        assert (mode["value"], mode["count"]) == _mode(allv), name
        med = _job(cluster, "median", f"s3://nasty/d{d}/").result
        assert (med["lower"], med["upper"]) == _median(allv), name


def test_cli_answers_exactly_and_names_the_object_and_line_of_a_bad_value(s3, tmp_path):
    rng = np.random.default_rng(5)
    parts = [rng.integers(-10**6, 10**6, 20_000) for _ in range(4)] + [np.array([123_456_789])] * 2
    for i, a in enumerate(parts):
        s3.put("clib", f"good/s{i}.npy", _npy(a))
    allv = np.concatenate(parts)
    out = cli("submit", "mode", "--input", "s3://clib/good/", "--local", "2", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["result"]
    assert (got["value"], got["count"]) == _mode(allv)
    # Objects and local files in one job, and the --column of a parquet object read by row groups.
    local = np.array([123_456_789, 5, 5, 5, 5], dtype=np.int64)
    np.save(tmp_path / "local.npy", local)
    s3.put("clib", "cols/a.parquet", _parquet(pa.table({"a": np.zeros(3, np.int64), "b": np.array([5, 6, 6])}), 2))
    out = cli("submit", "mode", "--input", "s3://clib/good/*.npy", "--input", str(tmp_path / "local.npy"),
              "--input", "s3://clib/cols/", "--column", "b", "--local", "2", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    mixed = np.concatenate([allv, local, [5, 6, 6]])
    assert (got["result"]["value"], got["result"]["count"]) == _mode(mixed)
    assert got["stats"]["values"] == len(mixed)
    s3.put("clib", "bad/a.txt", b"1\n2\nthree\n4\n")
    out = cli("submit", "median", "--input", "s3://clib/bad/", "--local", "2", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: s3://clib/bad/a.txt:3: not an integer (column 1: a letter)"   # the kind, never the text


# -- bad input ----------------------------------------------------------------------------------------------
def _bad_cases(s3) -> list[tuple[str, str, type]]:
    """(input, the start of the one-line error, error class) for the hostile objects local files also get."""
    b = "hostile"
    s3.put(b, "line/a.txt", _txt([1, 2]) + b"1 2\n")
    s3.put(b, "big/a.txt", b"5\n99999999999999999999\n")
    s3.put(b, "float/a.npy", _npy(np.array([1.5, 2.0])))
    s3.put(b, "emptynpy/a.npy", b"")
    s3.put(b, "truncnpy/a.npy", _npy(np.arange(100))[:-9])
    s3.put(b, "emptytxt/a.txt", b"")
    s3.put(b, "emptytxt/b.txt", b"\n  \r\n")
    s3.put(b, "wrong/a.json", b"[1]")
    s3.put(b, "strcol/a.parquet", _parquet(pa.table({"v": ["1", "2"]})))
    s3.put(b, "nullcol/a.parquet", _parquet(pa.table({"v": pa.array([1, None, 3], pa.int64())})))
    s3.put(b, "notparquet/a.parquet", b"PAR1 but not really")
    return [
        (f"s3://{b}/line/", f"s3://{b}/line/a.txt:3: more than one value on a line", InputError),
        (f"s3://{b}/big/", f"s3://{b}/big/a.txt:2: value beyond the int64 range", InputError),
        (f"s3://{b}/float/", f"s3://{b}/float/a.npy: .npy holds float64 values", InputError),
        (f"s3://{b}/emptynpy/", f"s3://{b}/emptynpy/a.npy: not a readable .npy file", InputError),
        (f"s3://{b}/truncnpy/", f"s3://{b}/truncnpy/a.npy: not a readable .npy file", InputError),
        (f"s3://{b}/emptytxt/", f"s3://{b}/emptytxt/: the input holds no values", EmptyDataset),
        (f"s3://{b}/wrong/a.json", f"s3://{b}/wrong/a.json: unsupported file type", InputError),
        (f"s3://{b}/wrong/", f"s3://{b}/wrong/: prefix holds no shard objects", InputError),
        (f"s3://{b}/strcol/", f"s3://{b}/strcol/a.parquet: column 'v' holds string values", InputError),
        (f"s3://{b}/nullcol/", f"s3://{b}/nullcol/a.parquet: row 1 of column 'v' is null", InputError),
        (f"s3://{b}/notparquet/", f"s3://{b}/notparquet/a.parquet: not a readable .parquet file", InputError),
        (f"s3://{b}/nothing/", f"s3://{b}/nothing/: no such object or prefix", InputError),
        (f"s3://{b}/line/*.npy", f"s3://{b}/line/*.npy: the pattern matches no objects", InputError),
        ("s3://no-such-bucket/p/", "s3://no-such-bucket/p/: no such bucket 'no-such-bucket'", InputError),
        ("s3://no-such-bucket/p/*.npy", "s3://no-such-bucket/p/*.npy: no such bucket", InputError),
        ("s3:///p/", "s3:///p/: no bucket named", InputError),
    ]


def test_bad_objects_are_one_line_errors_naming_them_and_the_cluster_serves_the_next_job(s3, cluster, monkeypatch):
    for url, start, cls in _bad_cases(s3):
        with pytest.raises(ShardstatsError) as err:
            _job(cluster, "mode", url)
        msg = str(err.value)
        assert type(err.value) is cls and err.value.exit_code == 2, (url, msg)
        assert msg.startswith(start) and "\n" not in msg, (url, msg)
    import shardstats.coordinator.job as coordinator
    sent, make = [], coordinator.make
    monkeypatch.setattr(coordinator, "make", lambda t, **kw: sent.append(make(t, **kw)) or sent[-1])
    url = s3.put("hostile", "fine/a.npy", _npy([7, 7, 1]))
    assert _job(cluster, "mode", "s3://hostile/fine/").result["value"] == 7
    (load,) = [m for m in sent if m["t"] == "load" and m["files"]]
    head = s3.client.head_object(Bucket="hostile", Key="fine/a.npy")
    assert load["files"] == [[url, head["ContentLength"], head["ETag"]]]
    words = repr(sent)                  # the endpoint and the credentials stay in each process's environment
    assert s3.endpoint.split("//")[1] not in words and s3.env["AWS_SECRET_ACCESS_KEY"] not in words


# -- integrity ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rewrite", ["same size, new content", "new size"])
def test_an_object_rewritten_after_the_listing_fails_the_job_naming_it(s3, cluster, monkeypatch, rewrite):
    import shardstats.coordinator.job as coordinator
    b = "rewrite-" + ("same" if rewrite.startswith("same") else "size")
    for i in range(4):
        s3.put(b, f"p/s{i}.npy", _npy(np.arange(i * 1000, i * 1000 + 1000)))
    listed = coordinator.list_refs

    def list_then_rewrite(path, *rest):
        refs = listed(path, *rest)
        s3.put(b, "p/s2.npy", _npy(np.arange(1000) if rewrite.startswith("same") else np.arange(1001)))
        return refs

    monkeypatch.setattr(coordinator, "list_refs", list_then_rewrite)
    with pytest.raises(InputError) as err:
        _job(cluster, "mode", f"s3://{b}/p/")
    assert str(err.value).startswith(f"s3://{b}/p/s2.npy: changed since the job listed it ("), str(err.value)
    monkeypatch.setattr(coordinator, "list_refs", listed)
    assert _job(cluster, "median", f"s3://{b}/p/").result["n"] == 4000 + (rewrite == "new size")


@pytest.mark.parametrize("suffix", ["txt", "parquet"])
def test_an_object_rewritten_while_it_is_read_is_refused_by_if_match(s3, monkeypatch, suffix):
    """Between the reader's HEAD (ETag still the listed one) and its GET: the GET's If-Match fails."""
    import s3fs.core
    from shardstats.worker.io.listing import list_refs
    from shardstats.worker.io.objects import ObjectReader
    body = _txt(range(5000)) if suffix == "txt" else _parquet(pa.table({"v": np.arange(5000)}), 1000)
    url = s3.put("midread", f"k.{suffix}", body)
    (ref,) = list_refs(url)
    assert ObjectReader().read(ref).tolist() == list(range(5000))
    fetch = s3fs.core.S3File._fetch_range
    calls = []

    def rewrite_then_fetch(self, start, end):
        if not calls:
            s3.put("midread", f"k.{suffix}", body.replace(b"1", b"2") if suffix == "txt" else _parquet(
                pa.table({"v": np.arange(5000) + 1}), 1000))
        calls.append((start, end))
        return fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", rewrite_then_fetch)
    with pytest.raises(InputError, match=rf"^s3://midread/k\.{suffix}: changed since the job listed it"):
        ObjectReader().read(ref)
    assert calls


# -- the store's failures -----------------------------------------------------------------------------------
def test_no_credentials_is_one_line_naming_the_object(s3, monkeypatch):
    from shardstats.worker.io.objects import list_objects
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(InputError, match=r"^s3://listing/p/: no S3 credentials found \(set AWS_ACCESS_KEY_ID"):
        list_objects("s3://listing/p/")


class _Throttling(BaseHTTPRequestHandler):
    """A store that answers every request with 503 SlowDown, and counts them."""
    count = 0

    def _slow_down(self) -> None:
        type(self).count += 1
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                b"<Message>Please reduce your request rate.</Message></Error>")
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _slow_down

    def log_message(self, *args) -> None:
        pass


def test_throttling_is_retried_a_bounded_number_of_times_then_names_the_object(monkeypatch):
    from shardstats.worker.io.objects import list_objects
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        for k, v in _env(f"http://127.0.0.1:{srv.server_address[1]}").items():
            monkeypatch.setenv(k, v)
        _Throttling.count = 0
        with pytest.raises(StoreUnavailable) as err:
            list_objects("s3://busy/p/", Settings(s3_max_attempts=3))
        assert str(err.value) == ("s3://busy/p/: the store is throttling requests (SlowDown) and still was after "
                                  "3 attempts")
        assert err.value.exit_code == 1 and _Throttling.count == 3
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_endpoint_that_does_not_answer_fails_within_the_bounded_timeouts(monkeypatch):
    from shardstats.worker.io.objects import list_objects
    with socket.socket() as silent:                # accepts connections (the kernel's backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        for k, v in _env(f"http://127.0.0.1:{silent.getsockname()[1]}").items():
            monkeypatch.setenv(k, v)
        t = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"^s3://quiet/p/: the store does not answer \(Read timeout"):
            list_objects("s3://quiet/p/", Settings(s3_connect_timeout=0.5, s3_read_timeout=0.5, s3_max_attempts=2))
        assert time.monotonic() - t < 2 * 0.5 + 3.0       # two attempts and one backoff, not a hang


def test_cli_with_an_endpoint_nobody_listens_on_exits_1_naming_the_input(s3, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                 # closed again: connections are refused
    out = cli("submit", "mode", "--input", "s3://clib/good/", "--local", "2", cwd=tmp_path,
              env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    assert out.returncode == 1
    assert out.stderr.startswith("error: s3://clib/good/: the store does not answer (Could not connect to the "
                                 f"endpoint URL: \"http://127.0.0.1:{port}/"), out.stderr
    assert out.stderr.count("\n") == 1


@contextlib.contextmanager
def authenticating_store(tmp_path_factory, objects: dict[str, bytes]):
    """A second server that checks signatures and IAM policies, holding ``objects`` (keys) in the bucket
    "locked", and a reader that may list but not get: yields (endpoint, its key id, its secret)."""
    import boto3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The first actions (bucket, objects, user, key, policy) run before authentication is enforced.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(4 + len(objects))}
    log = open(tmp_path_factory.mktemp("authlog") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"the authenticating S3 test server did not start (see {log.name})")
                time.sleep(0.1)
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="admin",
                  aws_secret_access_key="admin")
        s3c, iam = boto3.client("s3", **kw), boto3.client("iam", **kw)
        s3c.create_bucket(Bucket="locked")
        for k, body in objects.items():
            s3c.put_object(Bucket="locked", Key=k, Body=body)
        iam.create_user(UserName="lister")
        key = iam.create_access_key(UserName="lister")["AccessKey"]
        # AWS names the listing's permission s3:ListBucket; moto 5.2 checks ListObjectsV2 against
        # s3:ListObjectsV2 (moto 5.1 used s3:ListBucket). Granting both keeps "may list, may not get" on either.
        iam.put_user_policy(UserName="lister", PolicyName="list-only", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
            '"Action": ["s3:ListBucket", "s3:ListObjectsV2"], "Resource": "*"}]}'))
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        launcher.terminate([proc.pid], 5.0)
        proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def auth_store(tmp_path_factory):
    with authenticating_store(tmp_path_factory, {"p/a.npy": _npy([1, 2, 2])}) as found:
        yield found


def test_wrong_credentials_and_access_denied_name_the_object_and_exit_2(auth_store, tmp_path):
    endpoint, key, secret = auth_store
    out = cli("submit", "mode", "--input", "s3://locked/p/", "--local", "2", cwd=tmp_path,
              env=_env(endpoint, "AKIAWRONGWRONGWRONG0", "nope"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: s3://locked/p/: the store refused the credentials (InvalidAccessKeyId)")
    out = cli("submit", "mode", "--input", "s3://locked/p/", "--local", "2", cwd=tmp_path,
              env=_env(endpoint, key, secret))
    assert out.returncode == 2, out.stderr
    # The listing is allowed, the worker's read is refused: one line naming the object and the refusal
    # (the store's own wording after it varies with the client library: a HEAD answer has no body).
    assert re.fullmatch(r"error: s3://locked/p/a\.npy: access denied \(.+\)\n", out.stderr), out.stderr


# -- recovery -----------------------------------------------------------------------------------------------
def test_sigkill_mid_job_the_survivors_reread_the_lost_workers_objects(s3, cluster):
    """No shared filesystem: the objects exist only in the store, and every worker can read every one."""
    rng = np.random.default_rng(21)
    parts = [rng.integers(0, 400_000, 150_000) for _ in range(9)]
    for i, a in enumerate(parts):
        s3.put("faults", f"p/s{i}.npy", _npy(a))
    allv = np.concatenate(parts)
    ref = {"mode": _mode(allv), "median": _median(allv)}
    url = "s3://faults/p/"
    span = {}
    for op in ("mode", "median"):
        t = time.perf_counter()
        _job(cluster, op, url)
        span[op] = time.perf_counter() - t
    pick = random.Random(2026)
    retried = []
    for run in range(8):
        op = ("mode", "median")[run % 2]
        victim = pick.randrange(len(cluster.pids))
        delay = pick.uniform(0, span[op])

        async def one():
            task = asyncio.create_task(run_job(cluster.workers, cluster.token.encode(), _spec(op, url)))
            await asyncio.sleep(delay)
            os.kill(cluster.pids[victim], signal.SIGKILL)
            return await asyncio.wait_for(task, DEADLINE)

        rep = asyncio.run(one())
        got = (rep.result["value"], rep.result["count"]) if op == "mode" else (rep.result["lower"],
                                                                              rep.result["upper"])
        assert got == ref[op], (op, victim, delay)
        while launcher.alive(cluster.pids[victim]):
            time.sleep(0.01)
        if rep.attempts == 2:
            assert [w["id"] for w in rep.lost_workers] == [victim]
            assert len(rep.workers) == 2 and sum(w["values"] for w in rep.workers) == len(allv)
            assert sum(w["files"] for w in rep.workers) == len(parts)
            retried.append((op, victim, round(delay, 3)))
        launcher.restart(cluster, victim)
        if len(retried) >= 3:
            break
    assert retried, "no kill landed during a job: recovery was not exercised"


async def test_objects_beyond_the_budget_are_kept_on_disk_and_answered_exactly(s3, tmp_path):
    """A worker whose s3:// shards together exceed its budget appends them, one object at a time, to its
    spill file, and the mode and the median run in passes from there: equal to numpy; the spill goes with
    the job."""
    import dataclasses
    from shardstats.settings import DEFAULTS
    from shardstats.testing import in_process_cluster
    rng = np.random.default_rng(31)
    shards = [rng.integers(-10**6, 10**6, 900_000), rng.integers(-10**6, 10**6, 700_000), np.array([7, 7, 7])]
    for i, a in enumerate(shards):
        s3.put("big", f"v/s{i}.{'npy' if i % 2 == 0 else 'txt'}", _npy(a) if i % 2 == 0 else _txt(a))
    allv = np.concatenate(shards)
    settings = dataclasses.replace(DEFAULTS, memory_limit=64 << 20, spill_dir=str(tmp_path / "spill"),
                                   keyed_overhead=0)
    async with in_process_cluster(2, root=str(tmp_path), settings=settings) as c:
        rep = await run_job(c.addrs, c.token, _spec("mode", "s3://big/v/"))
        assert (rep.result["value"], rep.result["count"]) == _mode(allv)
        assert max(w.get("passes", 1) for w in rep.workers) > 1
        assert sum(w.get("spill_bytes_written", 0) for w in rep.workers) >= 8 * 400_000
        rep = await run_job(c.addrs, c.token, _spec("median", "s3://big/v/"))
        assert (rep.result["lower"], rep.result["upper"]) == _median(allv)
    assert list((tmp_path / "spill").iterdir()) == []
