#!/usr/bin/env python3
"""Live top-K under load: issue 27's goals, measured in one run on this machine.

    python scripts/bench_live.py [--rate 50000] [--seconds 120] [--workers 10] [--keys 100000] [--hot 0.5]
                                 [--approx] [--json out.json] [--base-port P] [--code DIR]

``--code DIR`` runs the workers from another checkout of the project (``git worktree add DIR REV``): an
A/B of two versions of the worker under the same load and harness.

What it does:

1. starts ``--workers`` local workers (``cluster up``'s launcher; checkpoints under a temporary
   $XDG_STATE_HOME, flush interval and allowance at their defaults unless given);
2. a load generator (a process of its own, so its CPU does not sit in the prober's event loop)
   sends ``--rate`` events a second for ``--seconds`` over the cluster protocol, batches of
   ``--batch`` spread over every worker: a fraction ``--hot`` of all events is one key ("hot"),
   the rest Zipf(1.1) over ``--keys`` keys; event times are the send time minus up to 30 s
   (out of order), and 0.1% are late (allowance + 30 s old: counted late, never kept).  It
   records every event (key id, time) for the brute force;
3. meanwhile the prober asks ``top --k 10 --last 5m`` (the client's fan-out over persistent
   connections, as ``cluster top``) every 0.25 s and records the latency (and, from the answer's ``served``, which worker answered, when the
   request reached it and how long it held it), while a sampler process reads every worker's live
   stats (pairs received by the hot key's owner, its largest flush, pending pairs, bucket memory)
   and RSS every 5 s;
4. after the load, waits two flush intervals, asks top-10 for 5m, 1h and 24h and compares each
   with a brute-force count (numpy over the recorded events in the answer's window);
5. matches every query slower than ``--slow-ms`` with what the worker that answered it was doing
   then (its ``loop`` stats: loop lag, the live service's steps and GC pauses over 5 ms).

Exit status 1 when an answer differs from the brute force or the rate fell short by more than 5%.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HOT = "hot"


def key_names(n: int) -> list[str]:
    return [HOT] + [f"q{i:06d}" for i in range(1, n + 1)]


def draw_ids(rng: np.random.Generator, n: int, keys: int, hot: float) -> np.ndarray:
    z = rng.zipf(1.1, n)
    z = np.where(z > keys, rng.integers(1, keys + 1, n), z)
    return np.where(rng.random(n) < hot, 0, z).astype(np.int32)


def generator(addrs: list[str], token: str, args: dict, out: str, allowance_ms: int, started) -> None:
    """The load: ``rate`` events a second in ticks of 0.1 s; every event recorded to ``out`` (npz)."""
    from shardstats.cluster.live import IngestTotals, LiveClient
    rng = np.random.default_rng(args["seed"])
    names = key_names(args["keys"])
    rate, seconds, batch = args["rate"], args["seconds"], args["batch"]
    tick = 0.1
    per_tick = int(rate * tick)
    ids_all, times_all = [], []
    lag = []

    async def run() -> IngestTotals:
        totals = IngestTotals()
        async with LiveClient(addrs, token.encode()) as cl:
            queue: asyncio.Queue = asyncio.Queue(maxsize=4 * len(addrs))

            async def producer():
                t0 = time.perf_counter()
                started.set()
                for n in range(int(seconds / tick)):
                    due = t0 + n * tick
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    else:
                        lag.append(-wait)
                    now = int(time.time() * 1000)
                    ids = draw_ids(rng, per_tick, args["keys"], args["hot"])
                    times = now - rng.integers(0, 30_000, per_tick)
                    late = rng.random(per_tick) < 0.001
                    times[late] = now - allowance_ms - 30_000
                    ids_all.append(ids)
                    times_all.append(np.where(late, -1, times))      # -1: late, not in any answer
                    for i in range(0, per_tick, batch):
                        await queue.put(([names[j] for j in ids[i:i + batch].tolist()],
                                         times[i:i + batch].astype(np.int64)))
                for _ in range(len(addrs)):
                    await queue.put(None)

            async def batches():
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    yield item

            async with asyncio.TaskGroup() as tg:
                tg.create_task(producer())
                tg.create_task(cl.ingest(batches(), totals, parallel=len(addrs)))
        return totals

    t = time.perf_counter()
    totals = asyncio.run(run())
    elapsed = time.perf_counter() - t
    np.savez(out, ids=np.concatenate(ids_all), times=np.concatenate(times_all),
             meta=np.array([totals.sent, totals.accepted, totals.late, elapsed, max(lag, default=0.0),
                            sum(os.times()[:2])]))


def brute(ids: np.ndarray, times: np.ndarray, names: list[str], k: int, start: int, end: int) -> list[dict]:
    sel = ids[(times >= start) & (times < end)]
    counts = np.bincount(sel, minlength=len(names))
    order = sorted(np.nonzero(counts)[0].tolist(), key=lambda i: (-counts[i], names[i]))[:k]
    return [{"key": names[i], "count": int(counts[i])} for i in order]


async def probe(addrs, token, stop: asyncio.Event, lat: list, detail: list, watch, settings) -> None:
    """``cluster top --k 10 --last 5m`` every 0.25 s; nothing else runs in this loop (the stats sampler is a
    process of its own) but ``watch`` (a LoopWatch: when this process itself waited for a core, a query's
    latency is the prober's, not the cluster's)."""
    from shardstats.cluster.live import LiveClient
    async with LiveClient(addrs, token.encode(), settings=settings) as cl, asyncio.TaskGroup() as tg:
        sampling = tg.create_task(watch.run())
        while not stop.is_set():
            t0 = time.time()
            t = time.perf_counter()
            ans = await cl.top(10, "5m")
            took = time.perf_counter() - t
            lat.append(took)
            served = ans.get("served") or {}
            detail.append({"t0": t0, "ms": round(took * 1000, 2), "source": ans.get("source"),
                           "worker": served.get("worker"),
                           "to_worker_ms": round((served["at"] - t0) * 1000, 2) if "at" in served else None,
                           "in_worker_ms": served.get("ms")})
            await asyncio.sleep(0.25)
        sampling.cancel()


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time used: by process ``pid`` (user + system), or by the whole machine (every core's busy time)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        if pid is None:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            return (sum(f[:8]) - f[3] - f[4]) / tick           # all but idle and iowait
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick
    except (OSError, IndexError, ValueError):
        return 0.0


def sampler(addrs: list[str], token: str, pids: list[int], out: str, stop, others: dict) -> None:
    """Every worker's live stats and RSS every 5 s until ``stop`` (a process of its own: see ``probe``), and the
    CPU time the workers, ``others`` (name -> pid) and the whole machine used meanwhile."""
    from shardstats.cluster.live import LiveClient

    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def cpu() -> dict:
        return {"workers": sum(cpu_seconds(p) for p in pids), "machine": cpu_seconds(),
                **{name: cpu_seconds(pid) for name, pid in others.items()}, "t": time.perf_counter()}

    async def run() -> list:
        samples = []
        first = cpu()
        async with LiveClient(addrs, token.encode()) as cl:
            while not stop.is_set():
                rows = await cl.stats()
                for r in rows:
                    r.pop("loop", None)
                samples.append({"t": time.time(), "rows": rows, "rss": [rss(p) for p in pids]})
                await asyncio.to_thread(stop.wait, 5.0)
        last = cpu()
        samples.append({"cpu": {k: round(last[k] - first[k], 1) for k in first}})
        return samples
    Path(out).write_text(json.dumps(asyncio.run(run())))


def slow_report(detail: list[dict], rows: list[dict], slow_ms: float, prober: list) -> list[dict]:
    """Each query over ``slow_ms``: where its time went (to the worker, in it, back), the answering worker's
    slow events (loop lag, steps, GC pauses over 5 ms) and the prober's own loop lag during it."""
    events = {r["worker"]: r.get("loop", {}).get("slow", []) for r in rows if r.get("up")}
    events["prober"] = prober
    out = []
    for d in detail:
        if d["ms"] < slow_ms:
            continue
        t0, t1 = d["t0"], d["t0"] + d["ms"] / 1000
        w = d["worker"]
        during = [e for e in events.get(w, []) if e[0] + e[2] / 1000 >= t0 - 0.005 and e[0] <= t1]
        back = None if d["to_worker_ms"] is None else round(d["ms"] - d["to_worker_ms"] - (d["in_worker_ms"] or 0), 2)
        mine = [e for e in prober if e[0] + e[2] / 1000 >= t0 - 0.005 and e[0] <= t1]
        out.append({**d, "back_ms": back, "worker_events": during, "prober_lag": mine})
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--hot", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--approx", action="store_true")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--keep", action="store_true", help="keep the worker logs, checkpoints and recorded events")
    ap.add_argument("--base-port", type=int, help="worker i listens on BASE_PORT + i (default: free ports)")
    ap.add_argument("--code", help="run the workers from this checkout of the project (an A/B of two versions)")
    ap.add_argument("--slow-ms", type=float, default=50.0, help="queries slower than this are explained")
    ap.add_argument("--hedge", type=float, help="the prober's live_query_hedge in seconds (default: the setting's)")
    a = ap.parse_args()
    if a.code:
        # A worker runs ``python -m``: its first import path is its working directory, then PYTHONPATH.
        os.environ["PYTHONPATH"] = os.path.abspath(a.code) + (":" + os.environ["PYTHONPATH"]
                                                               if os.environ.get("PYTHONPATH") else "")
        os.chdir(a.code)
    from shardstats.cluster import launcher
    from shardstats.cluster.live import LiveClient
    from shardstats.settings import DEFAULTS
    from shardstats.worker.live.ingest import owners
    state = tempfile.mkdtemp(prefix="bench-live-")
    os.environ["XDG_STATE_HOME"] = state
    extra = ["--live-approx"] if a.approx else []
    info = launcher.start(a.workers, base_port=a.base_port, log_dir=os.path.join(state, "logs"), extra_args=extra)
    load_before = loadavg()
    names = key_names(a.keys)
    hot_owner = int(owners([HOT], a.workers)[0])
    allowance_ms = int(DEFAULTS.live_allowance * 1000)
    out = os.path.join(state, "events.npz")
    try:
        async def warm():
            # Every worker warm before the load: one event each ("warm-up", far from the top 10) makes its next
            # flush import pyarrow for the owners' hash, which a worker does only once it has events.
            from shardstats.cluster.live import IngestTotals
            async with LiveClient(info.workers, info.token.encode()) as cl:
                for i in range(a.workers):
                    await cl.send_batch(["warm-up"], None, IngestTotals(), i)
                while not all(r["up"] and r["pairs_flushed"] > 0 for r in await cl.stats()):
                    await asyncio.sleep(0.2)
        asyncio.run(warm())
        ctx = mp.get_context("spawn")
        started = ctx.Event()
        gen = ctx.Process(target=generator, args=(info.workers, info.token, {
            "rate": a.rate, "seconds": a.seconds, "batch": a.batch, "keys": a.keys, "hot": a.hot, "seed": a.seed},
            out, allowance_ms, started))
        gen.start()
        started.wait(60)
        from shardstats.worker.live.watch import LoopWatch
        lat: list[float] = []
        detail: list[dict] = []
        prober_watch = LoopWatch(interval=0.005)
        stop_sampling = ctx.Event()
        samples_out = os.path.join(state, "samples.json")
        samp = ctx.Process(target=sampler, args=(info.workers, info.token, info.pids, samples_out, stop_sampling,
                                                 {"prober": os.getpid()}))
        samp.start()

        async def during():
            stop = asyncio.Event()
            async def watch():
                while gen.is_alive():
                    await asyncio.sleep(0.2)
                stop.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(watch())
                import dataclasses
                st = DEFAULTS if a.hedge is None else dataclasses.replace(DEFAULTS, live_query_hedge=a.hedge)
                tg.create_task(probe(info.workers, info.token, stop, lat, detail, prober_watch, st))
        asyncio.run(during())
        load_during = loadavg()
        gen.join()
        stop_sampling.set()
        samp.join(30)
        samples = json.loads(Path(samples_out).read_text()) if samp.exitcode == 0 else [{}]
        cpu_used = samples.pop().get("cpu", {})
        if gen.exitcode != 0:
            print(f"the load generator failed (exit {gen.exitcode})", file=sys.stderr)
            return 1
        ev = np.load(out)
        ids, times = ev["ids"], ev["times"]
        sent, accepted, late, elapsed, max_lag, cpu_used["generator"] = ev["meta"].tolist()
        time.sleep(3 * DEFAULTS.live_flush_interval + 1)       # the last flush, then the owners' pushes

        async def final():
            async with LiveClient(info.workers, info.token.encode()) as cl:
                answers = {last: await cl.top(10, last) for last in ("5m", "1h", "24h")}
                return answers, await cl.stats(detail=True)
        answers, rows = asyncio.run(final())
        checks = {}
        for last, ans in answers.items():
            w = ans["window"]
            want = brute(ids, times, names, 10, w["from_ms"], w["to_ms"])
            if a.approx:
                truth = {d["key"]: d["count"] for d in brute(ids, times, names, 10_000_000, w["from_ms"], w["to_ms"])}
                checks[last] = all(i["lower"] <= truth.get(i["key"], 0) <= i["upper"] for i in ans["items"])
            else:
                checks[last] = ans["items"] == want and ans["complete"]
        hot_events = int((ids == 0).sum())
        ho = rows[hot_owner]
        peak_rss = max((max(s["rss"]) for s in samples), default=0)
        result = {
            "workers": a.workers, "target_rate": a.rate, "seconds": round(elapsed, 1),
            "events_sent": int(sent), "accepted": int(accepted), "late": int(late),
            "rate": round(sent / elapsed), "generator_max_lag_s": round(max_lag, 3),
            "query_ms": {"n": len(lat), "p50": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1),
                         "p99": round(pct(lat, 99), 1), "max": round(pct(lat, 100), 1)},
            "exact": checks, "windows": {k: v["window"] for k, v in answers.items()},
            "top5_5m": answers["5m"]["items"][:5], "latencies_ms": [round(x * 1000, 1) for x in lat],
            "pairs_flushed": sum(r["pairs_flushed"] for r in rows),
            "hot_key": {"events": hot_events, "owner": hot_owner,
                        "owner_pairs_received": ho["pairs_received"] + ho["pairs_own"],
                        "owner_frames_received": ho["frames_received"], "owner_max_frame_pairs": ho["max_frame_pairs"],
                        "owner_max_pending_pairs": max((s["rows"][hot_owner].get("pending_pairs", 0)
                                                        for s in samples if s["rows"][hot_owner]["up"]), default=0),
                        "owner_rss_over_time_mb": [round(s["rss"][hot_owner] / 2 ** 20) for s in samples]},
            "owner_query_ms": {"p50_max": max(r["query_ms_p50"] for r in rows), "p99_max": max(r["query_ms_p99"] for r in rows),
                               "max": max(r["query_ms_max"] for r in rows)},
            "max_flush_lag_ms": max(r["max_flush_lag_ms"] for r in rows),
            "bucket_bytes": {"max": max(r["bucket_bytes"] for r in rows), "sum": sum(r["bucket_bytes"] for r in rows)},
            "peak_worker_rss_mb": round(peak_rss / 2 ** 20),
            "checkpoint_bytes_max": max(r["checkpoint_bytes"] for r in rows),
            "approx": a.approx, "code": a.code or "this checkout",
            "hedge_s": DEFAULTS.live_query_hedge if a.hedge is None else a.hedge,
            "loadavg": {"before": load_before, "end_of_load": load_during, "after": loadavg()},
            # CPU seconds used during the load (of 2 cores x "t" seconds): the workers, the generator, the
            # prober, and the whole machine (everyone's, this run's included)
            "cpu_s": cpu_used,
            "sources": {s: sum(d["source"] == s for d in detail) for s in {d["source"] for d in detail}},
            "loop": {r["worker"]: {k: v for k, v in r["loop"].items() if k != "slow"} for r in rows if "loop" in r},
            "prober_loop_lag": prober_watch.summary()["lag_bins_ms"],
            "slow_queries": slow_report(detail, rows, a.slow_ms, list(prober_watch.slow)),
        }
        print(json.dumps(result, indent=1))
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(result))
        ok = all(checks.values()) and result["rate"] >= 0.95 * a.rate
        print(f"\n{'OK' if ok else 'FAILED'}: {result['rate']:,} events/s for {elapsed:.0f} s into {a.workers} workers; "
              f"top-10 exact {checks}; query p99 {result['query_ms']['p99']} ms; hot key: {hot_events:,} events -> "
              f"{result['hot_key']['owner_pairs_received']:,} pairs at its owner")
        return 0 if ok else 1
    finally:
        launcher.stop(info)
        if not a.keep:
            import shutil
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
