"""The live top-K on a worker's HTTP port (worker/httpd.py) and in its Prometheus metrics.

* ``POST /events?key=FIELD[&time=FIELD]`` (the cluster token as a bearer token): a body of
  JSON lines or one JSON array of events; all or nothing -- a malformed event is a 400 naming
  it and nothing is counted; a body over the limit is refused by the server (413) before
  it is read, more than ``live_max_batch`` events is a 413 too.  200: ``{"accepted", "late", "early"}``.
* ``GET /top?k=10&last=5m``: this worker asks every owner over its peer links and merges
  (worker.live.query); owners that do not answer within ``live_query_timeout`` are named.
* metrics (read when scraped): events received, late and early events, pairs flushed and
  received (the pre-aggregation's saving), flush lag, bucket memory, checkpoint age, the event
  loop's lag and garbage-collection pauses (worker.live.watch).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shardstats.worker.httpd import Request, Response
from shardstats.worker.live.events import EventError, parse_body


def _json(status: int, doc: Any) -> Response:
    return Response(status, (json.dumps(doc) + "\n").encode(), "application/json")


def _bad(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


def attach(live, http) -> None:
    """Adds the routes to ``http`` (an HttpServer); ``live`` is the worker's LiveService."""

    async def events(request: Request) -> Response:
        st = live.settings
        key = request.query.get("key", [None])[0]
        if not key:
            return _bad(400, "POST /events needs ?key=FIELD: the field holding each event's key")
        time_field = request.query.get("time", [None])[0] or None
        try:
            keys, times = parse_body(request.body, key, time_field, st.live_max_key_bytes)
        except EventError as exc:
            live.refused += 1
            return _bad(400, f"{exc} (nothing was counted)")
        if len(keys) > st.live_max_batch:
            live.refused += 1
            return _bad(413, f"{len(keys)} events in one request (limit {st.live_max_batch}); nothing was counted")
        got = live.count(keys, times if time_field else None)
        return _json(200, {"accepted": got.accepted, "late": got.late, "early": got.early})

    async def top(request: Request) -> Response:
        from shardstats.worker.live.buckets import parse_last
        from shardstats.worker.live.service import MAX_K
        k_text = request.query.get("k", ["10"])[0]
        last = request.query.get("last", ["5m"])[0]
        try:
            k = int(k_text)
            if not 1 <= k <= MAX_K:
                raise ValueError
        except ValueError:
            return _bad(400, f"k={k_text[:20]!r} is not a whole number in 1..{MAX_K}")
        try:
            parse_last(last)
        except ValueError as exc:
            return _bad(400, f"last: {exc}")
        return _json(200, await live.whole_top(k, last))

    http.route("POST", "/events", events, auth=True)
    http.route("GET", "/top", top, auth=True)


class LiveCollector:
    """A prometheus_client collector read at scrape time: no second count on the ingest path."""

    def __init__(self, live) -> None:
        self.live = live

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        s = self.live.stats()
        yield CounterMetricFamily("shardstats_live_events", "Live top-K events this worker accepted (rate(): the "
                                  "ingest rate).", value=s["received"])
        late = CounterMetricFamily("shardstats_live_late_events", "Events not counted because their time was "
                                   "outside the allowance: at ingest (late or early), or at the owner (their bucket "
                                   "had rolled over, per level).", labels=["where"])
        late.add_metric(["ingest_late"], s["late"])
        late.add_metric(["ingest_early"], s["early"])
        for level, n in zip(("1m", "5m", "1h"), s["owner_late"]):
            late.add_metric([f"owner_{level}"], n)
        yield late
        yield CounterMetricFamily("shardstats_live_pairs_flushed", "(key, minute) pairs this worker flushed to "
                                  "owners (events / pairs: the pre-aggregation's saving).", value=s["pairs_flushed"])
        yield CounterMetricFamily("shardstats_live_pairs_received", "Pairs this worker received as an owner, from "
                                  "peers and itself.", value=s["pairs_received"] + s["pairs_own"])
        yield CounterMetricFamily("shardstats_live_pairs_dropped", "Flushed pairs an unreachable owner never got.",
                                  value=s["pairs_dropped"])
        yield GaugeMetricFamily("shardstats_live_flush_lag_seconds", "Age of the oldest event in the last flush "
                                "when it was flushed.", value=s["last_flush_lag_ms"] / 1000)
        yield GaugeMetricFamily("shardstats_live_pending_pairs", "Pairs counted locally, not flushed yet.",
                                value=s["pending_pairs"])
        yield GaugeMetricFamily("shardstats_live_bucket_bytes", "Memory of this owner's time buckets (exact: keys "
                                "plus a per-entry price; --live-approx: the sketches' sizes).", value=s["bucket_bytes"])
        yield GaugeMetricFamily("shardstats_live_bucket_entries", "(key, bucket) counts this owner holds (exact).",
                                value=s["bucket_entries"])
        if s["checkpoint_ms"]:
            yield GaugeMetricFamily("shardstats_live_checkpoint_age_seconds", "Seconds since the last checkpoint "
                                    "of the buckets.", value=(self.live.clock() - s["checkpoint_ms"]) / 1000)
        yield CounterMetricFamily("shardstats_live_queries", "Top-K queries this owner answered.", value=s["queries"])
        watch = self.live.watch
        lag = GaugeMetricFamily("shardstats_live_loop_lag_seconds", "How late the worker's event loop ran (a "
                                "request arriving then waited as long): over its recent samples.", labels=["q"])
        got = watch.lag.summary()
        lag.add_metric(["0.99"], got["p99_ms"] / 1000)
        lag.add_metric(["1"], max(watch.lag.recent, default=0.0))
        yield lag
        pauses = CounterMetricFamily("shardstats_live_gc_pause_seconds", "Time the worker's loop stood still in "
                                     "garbage collections, by generation.", labels=["generation"])
        for g, t in enumerate(watch.gc):
            pauses.add_metric([str(g)], t.total)
        yield pauses
