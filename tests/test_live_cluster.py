"""Live top-K through a cluster: an in-process one (the protocol, the flushes over peer links, bad requests)
and real processes (a worker killed and restarted: its keys missing with a warning, then its checkpoint back).

Every answer is compared with a brute-force Counter over the same timestamped events.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from shardstats.cluster.live import IngestTotals, LiveClient
from shardstats.coordinator.client import WorkerClient
from shardstats.errors import UsageError
from shardstats.protocol.errors import ProtocolError
from shardstats.protocol.messages import make
from shardstats.settings import DEFAULTS
from shardstats.testing import in_process_cluster
from shardstats.worker.live.buckets import MINUTE_MS, parse_last
from shardstats.worker.live.events import ARRIVAL

pytestmark = pytest.mark.timeout(120)


def ref(events, k, start, end):
    c = Counter(key for key, t in events if start <= t < end)
    return [{"key": key, "count": n} for key, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


async def settle(servers) -> None:
    """Every worker flushes now, waits until each owner holds every pair flushed to it, then every owner pushes
    its answers and every worker has them (what the flush and push loops do within two intervals)."""
    await asyncio.gather(*(s.live.flush() for s in servers))
    async with asyncio.timeout(10):
        while sum(s.live.pairs_received + s.live.pairs_own for s in servers) < \
                sum(s.live.counters.pairs_flushed for s in servers):
            await asyncio.sleep(0.01)
        t = int(time.time() * 1000)
        for s in servers:
            s.live._push(t)
        while not all(len(s.live._tops) == len(servers) and min(e["at_ms"] for e in s.live._tops.values()) >= t
                      for s in servers):
            await asyncio.sleep(0.01)


def batches(events, size):
    async def gen():
        for i in range(0, len(events), size):
            part = events[i:i + size]
            yield [k for k, _ in part], np.asarray([t for _, t in part], dtype=np.int64)
    return gen()


def test_in_process_cluster_answers_equal_brute_force_with_hot_late_and_out_of_order_events(tmp_path):
    rng = random.Random(27)
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0,
                             live_checkpoint_interval=3600.0)

    async def main():
        async with in_process_cluster(5, settings=st) as c:
            async with LiveClient(c.addrs, c.token, settings=st) as cl:
                now = int(time.time() * 1000)
                events = [("hot", now - rng.randrange(50_000)) for _ in range(6000)]          # half of everything
                events += [(f"u{int(rng.paretovariate(1.1))}", now - rng.randrange(55_000)) for _ in range(5000)]
                events += [(f"t{i}", now - 1000) for i in range(20) for _ in range(7)]       # ties
                events += [(str(v), now - 2000) for v in (-1, 0, 2 ** 63 - 1, -2 ** 63) for _ in range(3)]
                rng.shuffle(events)                                                             # out of order
                late = [("late", now - 200_000)] * 9 + [("early", now + 200_000)] * 4
                totals = await cl.ingest(batches(events + late, 700))
                assert (totals.accepted, totals.late, totals.early) == (len(events), 9, 4)
                assert len(totals.per_worker) == 5                                  # spread over every worker
                await settle(c.servers)
                for last in ("5m", "1h", "24h"):
                    for k in (1, 10, 40):
                        ans = await cl.top(k, last)
                        w = ans["window"]
                        assert ans["items"] == ref(events, k, w["from_ms"], w["to_ms"]), (last, k)
                        assert ans["complete"] and not ans["warnings"] and ans["late"] == 9 and ans["early"] == 4
                        assert (w["from_ms"], w["to_ms"]) == parse_last(last).span(w["to_ms"] - 1)
                        assert ans["source"] == "pushed"                   # one worker answered alone
                # beyond what the owners push (k > live_push_k, another window): the owners are asked
                for last, k in (("5m", 150), ("7m", 10), ("90s", 3)):
                    ans = await cl.top(k, last)
                    w = ans["window"]
                    assert ans["source"] == "asked" and ans["items"] == ref(events, k, w["from_ms"], w["to_ms"])
                live0 = c.servers[0].live
                assert live0.cached_top(10, "5m") is not None
                assert live0.cached_top(10, "5m", at=now + 120_000) is None     # a minute later: other buckets
                live0._tops[3]["received"] -= 4 * int(st.live_flush_interval * 1000)   # not heard from for 3 intervals
                assert live0.cached_top(10, "5m") is None
                ans = await live0.whole_top(10, "5m")
                w = ans["window"]
                assert ans["source"] == "asked" and ans["items"] == ref(events, 10, w["from_ms"], w["to_ms"])
                rows = await cl.stats()
                # the hot key's saving: 6,000 events became at most a pair per worker and minute
                assert sum(r["received"] for r in rows) == len(events)
                assert sum(r["pairs_flushed"] for r in rows) < len(events) / 2
                hot_owner = rows[[s.live.buckets.top(1, parse_last("5m"))["items"][:1] == [["hot", 6000]]
                                  for s in c.servers].index(True)]
                assert hot_owner["max_frame_pairs"] < 2000
    asyncio.run(main())


def test_bad_requests_get_a_clear_refusal_and_change_nothing(tmp_path):
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0, live_max_batch=100,
                             live_max_key_bytes=16)

    async def main():
        async with in_process_cluster(2, settings=st) as c:
            w = await WorkerClient.connect(c.addrs[0], c.token)
            try:
                bad = [dict(keys=[1, 2]), dict(keys=["a"] * 101), dict(keys=["x" * 17]),
                       dict(keys=["a", "b"], times=np.asarray([1], dtype=np.int64)),
                       dict(keys=["a"], times=np.asarray([1.5])),
                       dict(keys=["a"], times=np.asarray([-5], dtype=np.int64))]
                for i, fields in enumerate(bad):
                    await w.send(make("live_events", seq=i, **fields))
                    reply = await w.recv(5)
                    assert reply["t"] == "live_ack" and reply["seq"] == i and "error" in reply, fields
                for i, fields in enumerate([dict(k=0, last="5m"), dict(k=5, last="30h"), dict(k=5, last="soon")]):
                    await w.send(make("live_top", seq=100 + i, **fields))
                    reply = await w.recv(5)
                    assert "error" in reply and reply["error"].startswith("top:"), reply
                await w.send(make("live_events", seq=7, keys=["ok"], times=np.asarray([ARRIVAL], dtype=np.int64)))
                assert (await w.recv(5))["accepted"] == 1           # the connection still serves
            finally:
                await w.close()
            assert c.servers[0].live.counters.received == 1 and c.servers[0].live.refused == 9
            # a client without the token never gets to send an event
            with pytest.raises((ProtocolError, ConnectionError)):
                cl = await WorkerClient.connect(c.addrs[1], b"0" * 64)
                await cl.send(make("live_events", seq=1, keys=["x"]))
                await cl.recv(2)
            assert c.servers[1].live.counters.received == 0
            async with LiveClient(c.addrs, c.token, settings=st) as cl:
                with pytest.raises(UsageError, match="refused a batch"):      # one error, not a group
                    await cl.ingest(batches([("x" * 17, ARRIVAL)], 10))
    asyncio.run(main())


# -- real processes: a worker killed and restarted ------------------------------------------------------------

def _cli(*args, stdin: bytes = b"", env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "shardstats.cluster.cli", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env)


def test_killed_worker_is_named_missing_then_restored_from_its_checkpoint(tmp_path, monkeypatch):
    from shardstats.cluster import launcher
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))      # the workers' checkpoints (inherited)
    info = launcher.start(3, log_dir=str(tmp_path / "logs"), extra_args=[
        "--live-flush-interval", "0.2", "--live-checkpoint-interval", "0.3"])
    cf = tmp_path / "cluster.json"
    info.save(cf)
    env = {**os.environ, "CLUSTER_FILE": str(cf)}
    try:
        rng = random.Random(9)
        now = time.time()
        events = [{"q": f"k{int(rng.paretovariate(1.2))}", "ts": round(now - rng.uniform(0, 50), 3)}
                  for _ in range(3000)] + [{"q": "hot", "ts": now - 1}] * 1500
        lines = "\n".join(json.dumps(e) for e in events).encode()
        # a malformed line: exit 2 naming it, nothing ingested
        r = _cli("ingest", "--key", "q", "--time", "ts", stdin=lines + b'\n{"q": [1]}\n', env=env)
        assert r.returncode == 2 and b"line 4501" in r.stderr and b"nothing was ingested" in r.stderr, r.stderr
        r = _cli("ingest", "--key", "q", "--time", "ts", "--batch", "400", "--json", stdin=lines, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["accepted"] == len(events)
        truth = [(e["q"], int(round(e["ts"] * 1000))) for e in events]

        def top(k=10):
            r = _cli("top", "--k", str(k), "--last", "5m", "--json", env=env)
            assert r.returncode == 0, r.stderr
            ans = json.loads(r.stdout)
            return ans, ref(truth, k, ans["window"]["from_ms"], ans["window"]["to_ms"]), r.stderr.decode()
        deadline = time.monotonic() + 20
        while True:
            ans, want, err = top()
            if ans["items"] == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ans["items"] == want and ans["complete"] and not err
        async def stats():
            async with LiveClient(info.workers, info.token.encode()) as cl:
                return await cl.stats()
        rows = asyncio.run(stats())
        assert sum(w["received"] for w in rows) == len(events)
        assert sum(w["pairs_flushed"] for w in rows) < len(events) / 2        # the hot key's 1,500 events: few pairs
        time.sleep(1.0)                                   # a checkpoint after the last flush
        os.kill(info.pids[1], signal.SIGKILL)
        while launcher.alive(info.pids[1]):
            time.sleep(0.05)
        ans, _, err = top(1000)
        from shardstats.worker.live.ingest import owners
        keys = sorted({k for k, _ in truth})
        lost = {k for k, o in zip(keys, owners(keys, 3).tolist()) if o == 1}
        assert lost, "worker 1 owns no key: the test would prove nothing"
        kept = [(k, t) for k, t in truth if k not in lost]
        assert ans["items"] == ref(kept, 1000, ans["window"]["from_ms"], ans["window"]["to_ms"])
        assert not ans["complete"] and [m["worker"] for m in ans["missing"]] == [1]
        assert "warning: worker 1" in err and "missing" in err
        launcher.restart(info, 1)
        ans, want, err = top()
        assert ans["items"] == want                       # its flushed counts are back from the checkpoint
        assert [g["worker"] for g in ans["gaps"]] == [1] and "worker 1 restarted" in err   # the gap is stated
    finally:
        launcher.stop(info)


# -- HTTP: POST /events and GET /top on the workers' HTTP port ------------------------------------------------

def _http(port: int, method: str, path: str, body: bytes | None = None, token: str | None = None):
    import urllib.error
    import urllib.request
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                               headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_events_and_top_equal_brute_force_and_bad_requests_change_nothing(tmp_path):
    rng = random.Random(4)
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0, http_max_body=256 << 10,
                             live_query_timeout=1.0)

    async def main():
        async with in_process_cluster(3, settings=st, http=True) as c:
            tok = c.token.decode()
            ports = [s.http_port for s in c.servers]
            now = time.time()
            events = [{"q": f"k{int(rng.paretovariate(1.3))}", "ts": now - rng.uniform(0, 40)} for _ in range(2000)]
            events += [{"q": "hot"}] * 800                      # no time: stamped on arrival
            truth = [(e["q"], int(round(e["ts"] * 1000)) if "ts" in e else int(now * 1000)) for e in events]
            rng.shuffle(events)
            half = len(events) // 2
            lines = "\n".join(json.dumps(e) for e in events[:half]).encode()
            array = json.dumps(events[half:]).encode()

            def call(*a, **kw):
                return asyncio.to_thread(_http, *a, **kw)
            refused = [
                (await call(ports[0], "POST", "/events?key=q&time=ts", lines), 401),                   # no token
                (await call(ports[0], "POST", "/events?key=q&time=ts", lines, "f" * 64), 401),         # wrong token
                (await call(ports[0], "POST", "/events?key=q", lines + b'\n{"q": null}', tok), 400),
                (await call(ports[0], "POST", "/events?key=q", b'[{"q": "a"}, 5]', tok), 400),
                (await call(ports[0], "POST", "/events", lines, tok), 400),                          # no ?key=
                (await call(ports[0], "POST", "/events?key=q", b"x" * (257 << 10), tok), 413),
                (await call(ports[0], "GET", "/top?k=abc", None, tok), 400),
                (await call(ports[0], "GET", "/top?last=99h", None, tok), 400),
                (await call(ports[0], "GET", "/top", None, None), 401),
            ]
            for (status, text), want in refused:
                assert status == want and text.strip(), (status, text, want)
            assert f"line {half + 1}:" in refused[2][0][1] and "element 1" in refused[3][0][1]
            assert sum(s.live.counters.received for s in c.servers) == 0          # nothing was counted
            for port, body in ((ports[0], lines), (ports[1], array)):
                status, text = await call(port, "POST", "/events?key=q&time=ts", body, tok)
                assert status == 200 and json.loads(text)["accepted"] > 0, text
            await settle(c.servers)
            for last in ("5m", "1h"):
                status, text = await call(ports[2], "GET", f"/top?k=10&last={last}", None, tok)
                ans = json.loads(text)
                w = ans["window"]
                assert status == 200 and ans["complete"] and ans["items"] == ref(truth, 10, w["from_ms"], w["to_ms"])
            c.servers[1].stop()                               # an owner gone: named, its keys missing, not lower
            await asyncio.sleep(0.2)
            status, text = await call(ports[0], "GET", "/top?k=1000&last=5m", None, tok)
            ans = json.loads(text)
            from shardstats.worker.live.ingest import owners
            keys = sorted({k for k, _ in truth})
            gone = {k for k, o in zip(keys, owners(keys, 3).tolist()) if o == 1}
            w = ans["window"]
            assert status == 200 and not ans["complete"] and [m["worker"] for m in ans["missing"]] == [1]
            assert ans["source"] == "asked"           # its pushed answers went with its link
            assert ans["items"] == ref([e for e in truth if e[0] not in gone], 1000, w["from_ms"], w["to_ms"])
            assert any("worker 1" in x for x in ans["warnings"])
            status, text = await call(ports[0], "GET", "/metrics", None, None)
            assert 'shardstats_live_events_total' in text and "shardstats_live_bucket_bytes" in text
            assert 'shardstats_live_loop_lag_seconds{q="0.99"}' in text and "shardstats_live_gc_pause_seconds_total" in text
    asyncio.run(main())


def test_approximate_owners_bound_every_listed_count(tmp_path):
    rng = random.Random(12)
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0, live_approx=True,
                             live_cm_buckets=256, live_hh_lg_k=6)

    async def main():
        async with in_process_cluster(3, settings=st) as c:
            async with LiveClient(c.addrs, c.token, settings=st) as cl:
                now = int(time.time() * 1000)
                events = [(f"k{int(rng.paretovariate(1.05))}", now - rng.randrange(50_000)) for _ in range(20_000)]
                await cl.ingest(batches(events, 1000))
                await settle(c.servers)
                ans = await cl.top(10, "5m")
                w = ans["window"]
                truth = Counter(k for k, t in events if w["from_ms"] <= t < w["to_ms"])
                assert ans["approx"] and ans["total"] == sum(truth.values()) and len(ans["items"]) == 10
                for it in ans["items"]:
                    assert it["lower"] <= truth[it["key"]] <= it["upper"], it
                for key, n in truth.most_common(3):      # far above the error bound: listed
                    assert n > ans["max_error"] and key in [it["key"] for it in ans["items"]]
    asyncio.run(main())


def test_follow_reads_until_the_pipe_ends_and_ships_partial_batches():
    from shardstats.cluster.livecli import _BadLine, _follow
    r, w = os.pipe()
    os.write(w, b'{"q": "a"}\n{"q": "b"}\n\n{"q": "a"}\n{"q": ')      # the last line is not whole yet
    sent = []

    async def send(keys, times):
        sent.append((keys, times))
        totals.sent += len(keys)

    async def main():
        async def later():
            await asyncio.sleep(0.3)
            os.write(w, b'"c"}\n')
            os.close(w)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(later())
            tg.create_task(_follow(r, "q", None, 2, totals, send))
    totals = IngestTotals()
    asyncio.run(main())
    os.close(r)
    # the lone "a" went when the pipe paused, before "c" came
    assert [k for k, _ in sent] == [["a", "b"], ["a"], ["c"]] and all(t is None for _, t in sent)
    r, w = os.pipe()
    os.write(w, b'{"q": "a"}\n{"q": 1}\n{"q": true}\n')
    os.close(w)
    sent.clear()
    totals = IngestTotals()
    with pytest.raises(_BadLine, match="stdin line 3.*the 2 events before it were ingested"):
        asyncio.run(_follow(r, "q", None, 100, totals, send))
    os.close(r)
    assert sent == [(["a", "1"], None)]


def test_a_worker_killed_before_its_first_checkpoint_still_states_its_gap(tmp_path):
    """The first counts a worker holds write an (empty) checkpoint at once: a restart finds it and says what
    it lost, instead of a silent fresh start."""
    from shardstats.worker.live.service import LiveService
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0,
                             live_checkpoint_interval=3600.0)

    async def main():
        async with in_process_cluster(2, settings=st) as c:
            live = c.servers[0].live
            assert not live.path.exists()                       # no events, no file
            t0 = int(time.time() * 1000)
            live.ingest(["a", "b"])
            assert live.path.exists() and live.checkpoints == 0
            again = LiveService(c.servers[0])                   # what a restart of worker 0 reads
            assert again.restored is not None and len(again.gaps) == 1
            g0, g1 = again.gaps[0]
            assert t0 <= g0 <= g1 and again.buckets.added == 0
            ans = again.top(5, "5m")
            assert ans["gaps"] == again.gaps
            live.path.write_bytes(b"\x00 not a checkpoint")          # damaged: all it held is gone, and said so
            damaged = LiveService(c.servers[0])
            assert damaged.restored["unusable"] and damaged.buckets.added == 0
            (g0, g1), = damaged.gaps
            assert g1 - g0 >= 25 * 3600_000 and damaged.top(5, "24h")["gaps"] == damaged.gaps
    asyncio.run(main())


def test_a_stalled_owner_delays_only_its_own_counts_which_merge_while_they_wait(tmp_path):
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0)

    async def main():
        async with in_process_cluster(3, settings=st) as c:
            from shardstats.worker.live.ingest import owners
            keys = [f"k{i}" for i in range(300)]
            own = dict(zip(keys, owners(keys, 3).tolist()))
            w0 = c.servers[0].live
            stalled = asyncio.Event()

            async def never(frame, job=None):         # worker 2's link accepts nothing
                stalled.set()
                await asyncio.Event().wait()
            c.servers[0].links[2].send = never
            for i in range(3):                        # three flushes of the same pairs
                w0.ingest(keys * 2)
                await w0.flush()
                if i == 0:                            # the sender for worker 2 took the first and is stuck
                    async with asyncio.timeout(10):
                        await stalled.wait()
            async with asyncio.timeout(10):
                while c.servers[1].live.top(1, "5m")["top"]["total"] < 6 * sum(1 for k in keys if own[k] == 1):
                    await asyncio.sleep(0.01)
            top = c.servers[1].live.top(1000, "5m")["top"]["items"]
            assert sorted(top) == sorted([k, 6] for k in keys if own[k] == 1)     # every count, all flushes
            unsent = w0.stats()["unsent_pairs"]
            # what waits for worker 2 is one count per pair, merged, not three flushes' worth
            assert 0 < unsent <= sum(1 for k in keys if own[k] == 2)
    asyncio.run(main())


def test_a_worker_slow_to_answer_is_hedged_by_the_next(tmp_path):
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0, live_query_timeout=5.0)

    async def main():
        async with in_process_cluster(3, settings=st) as c:
            async with LiveClient(c.addrs, c.token, settings=st) as cl:
                await cl.ingest(batches([("a", int(time.time() * 1000))] * 5, 5))
                await settle(c.servers)
                c.servers[1].live.request = lambda msg, reply: None        # worker 1 never answers
                cl._asked = 1
                t = time.perf_counter()
                ans = await cl.top(3, "5m")
                assert ans["items"] == [{"key": "a", "count": 5}] and time.perf_counter() - t < 2.0
                assert cl._asked == 2                                       # the next one answered first
    asyncio.run(main())


def test_a_fresh_pushed_answer_asks_no_owner_and_is_merged_once(tmp_path, monkeypatch):
    """``cluster top`` within what the owners pushed: no owner is asked (no round trip on the peer links, so
    no wait for the slowest of them), and the merge of the pushed answers is made once per push, not per query."""
    from shardstats.worker.live import query
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0)
    merges = []
    real_merge = query.merge
    monkeypatch.setattr(query, "merge", lambda *a, **kw: merges.append(a[3]) or real_merge(*a, **kw))

    async def main():
        async with in_process_cluster(3, settings=st) as c:
            asked = []
            for s in c.servers:
                s.live._answer_peer = lambda peer, msg, real=s.live._answer_peer: asked.append(peer) or real(peer, msg)
            async with LiveClient(c.addrs, c.token, settings=st) as cl:
                now = int(time.time() * 1000)
                events = [(f"k{i % 37}", now - 1000 * (i % 50)) for i in range(3000)]
                await cl.ingest(batches(events, 300))
                await settle(c.servers)
                merges.clear()
                for _ in range(20):
                    ans = await cl.top(10, "5m")
                    w = ans["window"]
                    assert ans["source"] == "pushed" and ans["items"] == ref(events, 10, w["from_ms"], w["to_ms"])
                assert asked == []
                assert 1 <= len(merges) <= 2          # 2: a minute began meanwhile, and the owners pushed again
                ans = await cl.top(150, "5m")         # beyond what the owners push: each peer owner is asked once
                assert ans["source"] == "asked" and len(asked) == 2
    asyncio.run(main())


def test_owners_push_as_a_minute_begins(tmp_path, monkeypatch):
    """A pushed answer names its buckets, so after a minute begins only new pushes can answer: every owner
    pushes at once then (before, nothing pushed until the next half-interval tick; here an hour away)."""
    from shardstats.worker.live import service
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0)
    real = time.time()
    boundary = (int(real * 1000) // MINUTE_MS + 1) * MINUTE_MS      # where the next minute begins, on a clock
    offset = boundary - 4000 - int(real * 1000)                      # that reaches it 4 s from now
    monkeypatch.setattr(service, "now_ms", lambda: int(time.time() * 1000) + offset)

    async def main():
        async with in_process_cluster(3, settings=st) as c:
            for s in c.servers:
                s.live.ingest(["a", "b"])                      # in use: the service pushes
            async with asyncio.timeout(30):
                while not all(len(s.live._tops) == 3 and min(e["at_ms"] for e in s.live._tops.values()) >= boundary
                              for s in c.servers):
                    await asyncio.sleep(0.05)
            assert all(s.live.cached_top(10, "5m") is not None for s in c.servers)
    asyncio.run(main())


def test_periodic_work_is_spread_over_the_workers(tmp_path):
    """Workers started together flush, push and checkpoint at their own phase of each interval, not all at once."""
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0)

    async def main():
        async with in_process_cluster(4, settings=st) as c:
            assert sorted(s.live._phase(2.0) for s in c.servers) == [0.0, 0.5, 1.0, 1.5]
    asyncio.run(main())


def test_flushes_cut_into_small_frames_arrive_whole(tmp_path):
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0, live_flush_frame_bytes=100)

    async def main():
        async with in_process_cluster(3, settings=st) as c:
            async with LiveClient(c.addrs, c.token, settings=st) as cl:
                now = int(time.time() * 1000)
                events = [(f"key{i % 700}", now - 1000 * (i % 40)) for i in range(5000)]
                await cl.ingest(batches(events, 1000))
                await settle(c.servers)
                ans = await cl.top(100, "5m")
                w = ans["window"]
                assert ans["items"] == ref(events, 100, w["from_ms"], w["to_ms"]) and ans["total"] == len(events)
                assert 0 < max(s.live.max_frame_pairs for s in c.servers) <= 100 // (len("key000") + 24) + 1
    asyncio.run(main())


def test_a_worker_daemon_freezes_what_it_holds_at_start(tmp_path, monkeypatch):
    """Its modules and server are out of every full garbage collection's walk (each walk paused its loop)."""
    from shardstats.cluster import launcher
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    info = launcher.start(1, log_dir=str(tmp_path / "logs"))
    try:
        async def stats():
            async with LiveClient(info.workers, info.token.encode()) as cl:
                return await cl.stats()
        row, = asyncio.run(stats())
        assert row["loop"]["gc_frozen"] > 10_000
    finally:
        launcher.stop(info)


def test_a_cluster_stopping_just_after_a_flush_stops(tmp_path):
    """A worker told to stop while a flush's frame is being handed to its peer link stops (the hand-over's
    wait_for swallowed the cancellation on Python 3.11: the sender waited for the next flush forever, the
    worker never ended and never wrote its last checkpoint)."""
    st = dataclasses.replace(DEFAULTS, live_dir=str(tmp_path), live_flush_interval=3600.0)

    async def main():
        async with asyncio.timeout(30):
            async with in_process_cluster(2, settings=st) as c:
                c.servers[0].live.ingest([f"k{i}" for i in range(100)])
                await c.servers[0].live.flush()
        assert c.servers[0].live.path.exists()          # the last checkpoint was written
    asyncio.run(main())
