"""The workers' Prometheus metrics (worker/metrics.py): scraped during and after real jobs, they agree
with the jobs' own stats.

A ten-worker cluster in the test's loop (real TCP, the real codec, each worker's HTTP port on a
free port), scraped over HTTP and parsed with prometheus_client's own parser, the way a
Prometheus server reads it.
"""
from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import ShardstatsError
from shardstats.settings import DEFAULTS
from shardstats.testing import in_process_cluster
from shardstats.worker import metrics as metrics_mod
from shardstats.worker.metrics import WorkerMetrics, spilled
from shardstats.worker.server import WorkerServer

pytestmark = pytest.mark.timeout(120)


def get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(scrape: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in scrape.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


async def scrape_all(servers) -> list[dict]:
    async def one(s):
        status, ctype, body = await asyncio.to_thread(get, f"http://127.0.0.1:{s.http_port}/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        return samples(body)
    return list(await asyncio.gather(*(one(s) for s in servers)))


def job_totals(rep) -> dict[str, int]:
    return {"sent": sum(sum(w["bytes_sent"]) for w in rep.workers),
            "received": sum(sum(w["bytes_received"]) for w in rep.workers),
            "messages": sum(w["messages_sent"] for w in rep.workers),
            "messages_received": sum(w["messages_received"] for w in rep.workers)}


def scraped_totals(scrapes: list[dict]) -> dict[str, float]:
    return {"sent": sum(total(s, "shardstats_bytes_sent_total") for s in scrapes),
            "received": sum(total(s, "shardstats_bytes_received_total") for s in scrapes),
            "messages": sum(total(s, "shardstats_messages_sent_total") for s in scrapes),
            "messages_received": sum(total(s, "shardstats_messages_received_total") for s in scrapes)}


async def test_ten_workers_scraped_during_and_after_jobs_agree_with_the_jobs_stats(tmp_path):
    rng = np.random.default_rng(25)
    values = []
    for i in range(10):     # unique-dup-like: 4M values in all, most distinct, so the mode's shuffle moves MBs
        v = rng.integers(-(2 ** 40), 2 ** 40, 400_000)
        v[:50] = 7 + i % 3
        values.append(v)
        np.save(tmp_path / f"s{i}.npy", v)
    async with in_process_cluster(10, root=str(tmp_path), http=True) as c:
        before = await scrape_all(c.servers)
        assert scraped_totals(before) == {"sent": 0, "received": 0, "messages": 0, "messages_received": 0}
        for s in before:    # every peer present from the start at 0 (rate() needs a first sample)
            assert len([k for k in s if k[0] == "shardstats_bytes_sent_total"]) == 9

        during: list[list[dict]] = []
        seen_run = asyncio.Event()

        def on_progress(worker_id: int, msg: dict) -> None:
            if msg.get("phase") not in (None, "load", "start"):
                seen_run.set()

        async def scrape_while_running() -> None:
            await seen_run.wait()
            while not job.done():
                during.append(await scrape_all(c.servers))
                await asyncio.sleep(0.05)

        job = asyncio.create_task(run_job(c.addrs, c.token, job_spec("mode", str(tmp_path)), on_progress=on_progress))
        scraper = asyncio.create_task(scrape_while_running())
        rep = await job
        await scraper
        want = job_totals(rep)
        assert want["sent"] > 1_000_000 and want["sent"] == want["received"]
        after = await scrape_all(c.servers)
        assert scraped_totals(after) == want
        # Per peer: worker i's bytes to j are j's bytes from i (the W x W matrix from both ends).
        for i, s in enumerate(after):
            for j, t in enumerate(after):
                if i != j:
                    assert total(s, "shardstats_bytes_sent_total", peer=str(j)) == \
                        total(t, "shardstats_bytes_received_total", peer=str(i))
        assert during, "no scrape happened while the job ran"
        running = [sc for sc in during if sum(total(s, "shardstats_active_jobs") for s in sc) > 0]
        assert running, "every scrape came after the job"
        for sc in during:            # counters only grow, and never pass what the job reported
            got = scraped_totals(sc)
            assert all(got[k] <= want[k] for k in want)
        assert any(0 < scraped_totals(sc)["sent"] for sc in running)
        for s in after:
            assert total(s, "shardstats_jobs_total", op="mode", outcome="ok") == 1
            assert total(s, "shardstats_job_duration_seconds_count", op="mode") == 1
            assert total(s, "shardstats_active_jobs") == 0
            assert total(s, "shardstats_memory_bytes") > 10 << 20
            assert total(s, "shardstats_memory_budget_bytes") > 0
            assert total(s, "shardstats_inbound_streams") == 0
            assert total(s, "shardstats_spill_bytes_total", direction="written") == 0

        # A second job adds its own stats; a failing job counts as an error, its traffic (if any) still counted.
        rep2 = await run_job(c.addrs, c.token, job_spec("median", str(tmp_path)))
        want2 = {k: want[k] + v for k, v in job_totals(rep2).items()}
        assert scraped_totals(await scrape_all(c.servers)) == want2
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "x.txt").write_text("1\n2\nnot a number\n")
        with pytest.raises(ShardstatsError):
            await run_job(c.addrs, c.token, job_spec("mode", str(tmp_path / "bad")))
        final = await scrape_all(c.servers)
        assert sum(total(s, "shardstats_jobs_total", outcome="error") for s in final) >= 1
        assert sum(total(s, "shardstats_jobs_total", op="median", outcome="ok") for s in final) == 10


async def test_spill_counters_agree_with_the_jobs_spill_stats(tmp_path):
    """Values over a worker's memory budget go to its spill folder (worker/spill.py): the bytes written and
    read back that the job's stats report are what the workers' counters say; no spill file is left."""
    rng = np.random.default_rng(11)
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):          # 4.8 MB a worker, over what a pass may hold under a 16 MiB budget
        np.save(d / f"s{i}.npy", rng.integers(-10 ** 12, 10 ** 12, 600_000))
    st = replace(DEFAULTS, memory_limit=16 << 20, spill_dir=str(tmp_path / "spill"))
    async with in_process_cluster(3, root=str(tmp_path), settings=st, http=True) as c:
        rep = await run_job(c.addrs, c.token, job_spec("mode", str(d)))
        written = sum(w.get("spill_bytes_written", 0) for w in rep.workers)
        read = sum(w.get("spill_bytes_read", 0) for w in rep.workers)
        assert written > 0 and read > 0
        after = await scrape_all(c.servers)
        assert sum(total(s, "shardstats_spill_bytes_total", direction="written") for s in after) == written
        assert sum(total(s, "shardstats_spill_bytes_total", direction="read") for s in after) == read
        assert sum(total(s, "shardstats_spill_files") for s in after) == 0
        assert sum(s.info()["spill_written_bytes"] for s in c.servers) == written
        assert scraped_totals(after) == job_totals(rep)


async def test_metrics_need_the_token_only_when_asked_and_ping_reports_the_port(tmp_path):
    st = replace(DEFAULTS, metrics_auth=True)
    async with in_process_cluster(2, root=str(tmp_path), http=True, settings=st) as c:
        url = f"http://127.0.0.1:{c.servers[0].http_port}/metrics"
        status, _, body = await asyncio.to_thread(get, url)
        assert status == 401 and "Bearer" in body
        status, _, body = await asyncio.to_thread(get, url, {"Authorization": "Bearer " + c.token.decode()})
        assert status == 200 and "shardstats_memory_bytes" in body
        info = c.servers[1].info()
        assert info["http_port"] == c.servers[1].http_port and info["spill_written_bytes"] == 0
    async with in_process_cluster(1, root=str(tmp_path)) as c:      # no HTTP port unless asked
        assert c.servers[0].http is None and c.servers[0].info()["http_port"] is None


async def test_https_with_the_workers_certificate(tmp_path):
    from shardstats.cluster import certs
    from shardstats.tls import TLSFiles
    certs.init(tmp_path / "pki", 1)
    tls = TLSFiles.in_dir(tmp_path / "pki", "worker0")
    token = b"metrics-tls-token-0123456789abcdef-0123456789"
    server = WorkerServer(0, "127.0.0.1:0", ["127.0.0.1:0"], token, tls=tls, http_port=0)
    ready = asyncio.Event()
    task = asyncio.create_task(server.serve(ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        ctx = ssl.create_default_context(cafile=tls.ca)         # the cluster CA; no client certificate
        status, _, body = await asyncio.to_thread(get, f"https://127.0.0.1:{server.http_port}/metrics", None, ctx)
        assert status == 200 and "shardstats_memory_bytes" in body
        with pytest.raises((urllib.error.URLError, ConnectionError)):     # plain HTTP to the HTTPS port
            await asyncio.to_thread(get, f"http://127.0.0.1:{server.http_port}/metrics")
    finally:
        server.stop()
        async with asyncio.timeout(10):
            await task


def test_spilled_reaches_the_worker_from_what_a_job_holds():
    m = WorkerMetrics()

    class Holder:                    # a server, or an Access carrying the metrics
        metrics = m

    class Comm:                      # a communicator: through its access
        access = Holder()
    spilled(m, written=10)
    spilled(Holder(), read=4, files=2)       # files counted by hand (the running jobs' folders are read live)
    spilled(Comm(), written=1, files=-1)
    spilled(object(), written=1000)          # an in-memory test's communicator: nothing to count, no error
    spilled(None, read=1000)
    s = samples(m.exposition()[0].decode())
    assert total(s, "shardstats_spill_bytes_total", direction="written") == 11
    assert total(s, "shardstats_spill_bytes_total", direction="read") == 4
    assert total(s, "shardstats_spill_files") == 1
    assert m.spill_totals() == {"spill_written_bytes": 11, "spill_read_bytes": 4, "spill_files": 1}
    m.job("mode", "refused")
    m.job(None, "cancelled", 2.0)
    s = samples(m.exposition()[0].decode())
    assert total(s, "shardstats_jobs_total", op="mode", outcome="refused") == 1
    assert total(s, "shardstats_job_duration_seconds_sum", op="unknown") == 2.0
    assert set(metrics_mod.OUTCOMES) == {"ok", "error", "cancelled", "refused"}


def test_worker_http_port_rule_and_a_busy_port_is_one_line():
    """`cluster worker`: the HTTP port is --listen's + http_port_offset unless --http-port says; a port it
    cannot bind stops the worker at start with one line naming it (exit 1); a default past 65535 is exit 2."""
    import secrets
    import socket
    from shardstats.cluster.httpflags import default_port
    from tests.conftest import cli
    assert default_port(7000) == 7000 + DEFAULTS.http_port_offset and default_port(0) is None
    env = {"CLUSTER_TOKEN": secrets.token_hex(32), "CLUSTER_WORKERS": ""}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("worker", "--id", "0", "--listen", "127.0.0.1:0", "--peers", "127.0.0.1:0", "--http-port", str(port),
                env=env, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"HTTP port 127.0.0.1:{port}" in r.stderr and "--http-port" in r.stderr
    r = cli("worker", "--id", "0", "--listen", "127.0.0.1:65000", "--peers", "127.0.0.1:65000", env=env, timeout=60)
    assert r.returncode == 2 and "past 65535" in r.stderr and len(r.stderr.strip().splitlines()) == 1
