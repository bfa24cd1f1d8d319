"""The live top-K service inside every worker: the asyncio glue around the pure parts.

It is not a batch job: it lives as long as the worker.  What it does, and where:

* ingest (``events``): a batch of events -> the local counters (worker.live.ingest);
* flush (every ``live_flush_interval``): the local counts, split by owner, go to each
  owner's outbox, and one sender task per owner sends it as ``live`` messages over the
  worker's own peer links (authenticated, bounded queues): a slow or unreachable owner
  delays only its own counts, which meanwhile merge in its outbox (bounded by distinct
  (key, minute) pairs, not by events); an owner adds what it receives to its buckets
  (worker.live.buckets) at once;
* queries: each owner pushes its top ``live_push_k`` of 5m, 1h and 24h to every worker when
  its counts changed, and as each minute begins (the windows moved), so the one worker a
  client asks merges those at once (worker.live.query; the merge made once per push); any
  other query, or one an owner's push cannot answer (stale, another window), makes that
  worker ask every owner over its links (``top``: one owner's top-K);
* checkpoints (every ``live_checkpoint_interval``, and at shutdown): the buckets to
  local disk (worker.live.store), restored at start with the gap stated.

Requests are answered inline (no task per request): each is a bounded amount of work
(``live_max_batch`` events, ``k`` keys); only a query that must ask the owners waits, in a task.

Why the loop matters: a query's latency is the time the loop was busy with something else when
it arrived, plus the time the process waited for a core.  So everything on the loop is short
and vectorised (no Python loop per event or pair), each worker's periodic work runs at its own
phase of the interval (``_phase``: ten workers no longer flush, push, checkpoint and collect
garbage at the same instants), and ``watch`` (worker.live.watch) records the loop's lag, each
step's wall and CPU time and the garbage collector's pauses (``stats()["loop"]``).
"""
from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from itertools import compress

from shardstats import logs
from shardstats.errors import PeerFailure
from shardstats.protocol.errors import ProtocolError
from shardstats.protocol.frames import encode_frame
from shardstats.protocol.messages import make
from shardstats.worker.live import store
from shardstats.worker.live.buckets import MINUTE_MS, ApproxParams, TimeBuckets, parse_last
from shardstats.worker.live.events import ARRIVAL, MAX_TIME_MS
from shardstats.worker.live.ingest import LocalCounters, merge_pairs
from shardstats.worker.live.watch import LoopWatch

MAX_K = 10_000
PUSHED = ("5m", "1h", "24h")          # the windows each owner pushes its top of (settings.live_push_k)
GAP_KEEP_MS = 26 * 3600 * 1000       # a gap older than the coarsest level's window can no longer matter


def now_ms() -> int:
    return int(time.time() * 1000)


def _warm() -> None:
    """The owners' hash once (pyarrow and pyarrow.compute imported, the hash's tables made): ~1 s, off the loop."""
    from shardstats.worker.live.ingest import owners
    owners(["warm", "up"], 2)


class LiveError(ValueError):
    """A request the service refuses (the message says what and where); nothing was changed.  ``kind`` is the
    error family the client raises (shardstats.errors.from_kind): the request's fault, or the worker's."""

    def __init__(self, message: str, kind: str = "usage") -> None:
        super().__init__(message)
        self.kind = kind


class LiveService:
    def __init__(self, server) -> None:     # a WorkerServer; not imported: arrows run one way
        st = server.settings
        self.server = server
        self.settings = st
        self.id = server.id
        self.workers = len(server.peers)
        self.approx = ApproxParams(st.live_cm_hashes, st.live_cm_buckets, st.live_hh_lg_k) if st.live_approx else None
        self.allowance_ms = int(st.live_allowance * 1000)
        self.buckets = TimeBuckets(approx=self.approx)
        self.counters = LocalCounters(self.workers, self.allowance_ms)
        self.path = store.checkpoint_path(st.live_dir, server.token, self.id)
        self.started_ms = now_ms()
        self.gaps: list[list[int]] = []
        self.restored: dict | None = None
        self.pairs_received = 0
        self.pairs_own = 0                  # flushed pairs this worker owns itself (no frame)
        self.frames_received = 0
        self.max_frame_pairs = 0            # the largest flush an owner received: bounded by distinct pairs
        self.pairs_dropped = 0              # flushed pairs an unreachable owner never got
        self.flushes = 0
        self.last_flush_ms = self.started_ms
        self._outbox: dict[int, tuple] = {}   # owner -> (keys, minutes, counts) flushed, not yet sent (merged)
        self._outbox_since: dict[int, int] = {}              # owner -> arrival (ms) of its oldest unsent event
        self._outbox_ready: dict[int, asyncio.Event] = {}
        self.last_flush_lag_ms = 0
        self.max_flush_lag_ms = 0
        self.checkpoints = 0
        self.checkpoint_bytes = 0
        self.checkpoint_ms = 0              # time of the last checkpoint written
        self.checkpoint_seconds = 0.0
        self.queries = 0
        self.refused = 0
        self.query_seconds: collections.deque = collections.deque(maxlen=1000)   # this owner's part of each query
        self._queries: dict[int, list] = {}   # GET /top fan-outs waiting for owners: [answers, done, need]
        self._tops: dict[int, dict] = {}      # worker -> its last pushed answers {"at_ms", "received", "answers"}
        self._tops_version = 0                # bumped whenever _tops changes: the merged answers below are then old
        self._merged: dict[tuple, tuple] = {}   # (k, last, span) -> (_tops_version, the merged answer)
        self._pushing: set[int] = set()       # peers whose last push is still on its way
        self._dirty = False                   # the buckets took counts since the last push
        self._active = False                  # events came here, or a peer pushed: this worker pushes too
        self._pushed_minute = 0
        self._tg: asyncio.TaskGroup | None = None
        self._warm = False                    # the owners' hash (pyarrow) imported
        self._qids = 0
        self.watch = LoopWatch()                # loop lag, the service's steps and GC pauses (stats)
        self._restore()
        self._marked = self.restored is not None     # a checkpoint of this worker is on disk
        self._active = self.restored is not None
        from shardstats.worker.live import http
        if getattr(server, "http", None) is not None:
            http.attach(self, server.http)
        if getattr(server, "metrics", None) is not None:
            server.metrics.registry.register(http.LiveCollector(self))

    @staticmethod
    def clock() -> int:
        return now_ms()

    # -- checkpoints ---------------------------------------------------------------------------
    def _restore(self) -> None:
        try:
            state = store.read(self.path)
        except (OSError, ValueError) as exc:
            logs.event("live_checkpoint_unreadable", logging.WARNING, path=str(self.path), error=exc)
            self._lost_everything()
            return
        if state is None:
            return
        try:
            if (state.get("worker"), state.get("workers")) != (self.id, self.workers):
                raise ValueError(f"written by worker {state.get('worker')} of {state.get('workers')}")
            buckets = TimeBuckets.load(state["buckets"], self.approx)
            saved = int(state["saved_ms"])
            gaps = [[int(a), int(b)] for a, b in state.get("gaps", [])]
        except (KeyError, TypeError, ValueError) as exc:
            logs.event("live_checkpoint_ignored", logging.WARNING, path=str(self.path), error=exc)
            self._lost_everything()
            return
        self.buckets = buckets
        self.buckets.advance(self.started_ms)
        self.gaps = gaps + [[saved, self.started_ms]]
        self.restored = {"saved_ms": saved, "restarted_ms": self.started_ms, "path": str(self.path)}
        logs.event("live_restored", path=str(self.path), saved_ms=saved, gap_seconds=round((self.started_ms - saved) / 1e3, 1))

    def _lost_everything(self) -> None:
        """A previous life left a checkpoint that cannot be used: whatever it held is gone, and said so (a gap
        over everything the buckets could hold) rather than answered as lower counts."""
        self.gaps = [[self.started_ms - GAP_KEEP_MS, self.started_ms]]
        self.restored = {"saved_ms": None, "restarted_ms": self.started_ms, "path": str(self.path), "unusable": True}

    def _state(self, saved_ms: int) -> dict:
        """A consistent snapshot (the buckets' dicts copied, on the loop); encoding it may happen elsewhere."""
        now = now_ms()
        self.gaps = [g for g in self.gaps if g[1] > now - GAP_KEEP_MS]
        return {"worker": self.id, "workers": self.workers, "saved_ms": saved_ms, "gaps": list(self.gaps),
                "buckets": self.buckets.dump()}

    def _vouched(self, now: int) -> int:
        """What a checkpoint taken now vouches for: events that arrived before the oldest one still held here
        (not yet flushed, or flushed and not yet sent); a restart states the gap from there."""
        held = [t for t in (self.counters.pending_since, *self._outbox_since.values()) if t is not None]
        return min([now, *held])

    async def checkpoint(self) -> None:
        """Writes the buckets: a snapshot (dict copies, C speed), packed a bucket at a time on the loop and
        written on a thread, so a checkpoint of a million counts does not stall queries and flushes."""
        if not (self.buckets.added or self.counters.received or self.restored):
            return
        t = time.perf_counter()
        saved = now_ms()
        with self.watch.step("checkpoint_state"):
            state = self._state(self._vouched(saved))
        data = await store.encode_async(state, self.watch.step)
        await asyncio.to_thread(store.write, self.path, data)
        self.checkpoints += 1
        self.checkpoint_bytes = len(data)
        self.checkpoint_ms = saved
        self.checkpoint_seconds = time.perf_counter() - t

    def _final_checkpoint(self) -> None:
        if not (self.buckets.added or self.counters.received or self.restored):
            return              # a worker that never saw an event leaves no file behind
        try:
            _encode_and_write(self.path, self._state(self._vouched(now_ms())))
        except OSError as exc:
            logs.event("live_checkpoint_failed", logging.WARNING, path=str(self.path), error=exc)

    # -- the service's tasks -------------------------------------------------------------------
    async def run(self) -> None:
        """The flush and checkpoint loops and a sender per peer; owned by the worker's task group (cancelled at
        shutdown, when a last checkpoint is written)."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.watch.run())
                tg.create_task(self._every(self.settings.live_flush_interval, self.flush))
                tg.create_task(self._every(self.settings.live_flush_interval / 2, self._push_if_changed))
                tg.create_task(self._push_at_minutes())
                for owner in self.server.links:
                    tg.create_task(self._sender(owner))
                tg.create_task(self._every(self.settings.live_checkpoint_interval, self.checkpoint))
        finally:
            self._tg = None
            self._final_checkpoint()

    def _phase(self, seconds: float) -> float:
        """Where in a period of ``seconds`` this worker's periodic work falls: worker i of n at i/n of it.

        Why: workers started together would otherwise flush (and push, and checkpoint, and so collect
        garbage) at the same instants, all ten wanting the machine's cores at once; a query arriving then
        waits for all of them, and its hedge to the next worker finds that one busy too."""
        return seconds * (self.id % max(1, self.workers)) / max(1, self.workers)

    async def _every(self, seconds: float, step) -> None:
        await asyncio.sleep(self._phase(seconds))
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except OSError as exc:          # a full disk: say so and keep serving; the next try may work
                logs.event("live_step_failed", logging.WARNING, step=step.__name__, error=exc)

    async def flush(self) -> None:
        """Hands every pending count to its owner: this worker's own into its buckets, the rest as frames."""
        if self.counters.pending and not self._warm:
            # The owners' hash needs pyarrow: imported on a thread (~1 s), not on the loop, and only by a
            # worker that gets events (a worker that never does never pays for it).
            await asyncio.to_thread(_warm)
            self._warm = True
            if gc.get_freeze_count():
                # The process froze what it had at start (the worker daemon does: cluster.cli); pyarrow's
                # import joins it, so no full collection walks those objects again (they were tens of
                # milliseconds of every full collection, each a pause of every query on this worker).
                gc.freeze()
        with self.watch.step("flush"):
            self._flush()

    def _flush(self) -> None:
        now = now_ms()
        self.buckets.advance(now)
        since = self.counters.pending_since
        parts = self.counters.drain()
        self.flushes += 1
        self.last_flush_ms = now
        self.last_flush_lag_ms = now - since if since is not None else 0
        self.max_flush_lag_ms = max(self.max_flush_lag_ms, self.last_flush_lag_ms)
        mine = parts.pop(self.id, None)
        if mine is not None:
            keys, minutes, counts = mine
            self.buckets.add(keys, minutes.tolist(), counts.tolist())
            self.pairs_own += len(keys)
        for owner, part in parts.items():
            box = self._outbox.get(owner)
            if box is None:
                self._outbox[owner] = part
                self._outbox_since[owner] = since if since is not None else now
            else:
                self._outbox[owner] = merge_pairs([box, part])     # its sender is still busy with the last one
            self._outbox_ready.setdefault(owner, asyncio.Event()).set()
        if mine is not None:
            self._dirty = True

    async def _sender(self, owner: int) -> None:
        """Sends what the flushes left for ``owner``, one owner per task: a slow or unreachable owner delays
        only its own counts, which meanwhile merge in its outbox (bounded by distinct pairs, not events)."""
        ready = self._outbox_ready.setdefault(owner, asyncio.Event())
        while True:
            await ready.wait()
            ready.clear()
            box = self._outbox.pop(owner, None)
            if not box or not box[0]:
                continue
            await self._send(owner, *box)
            if owner not in self._outbox:
                self._outbox_since.pop(owner, None)

    async def _send(self, owner: int, keys: list[str], minutes, counts) -> None:
        """``minutes``, ``counts``: int64 arrays; cut into frames of about ``live_flush_frame_bytes``."""
        import numpy as np
        link = self.server.links.get(owner)
        budget = self.settings.live_flush_frame_bytes
        size = np.cumsum(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)) + 24)
        ends = np.searchsorted(size, np.arange(budget, int(size[-1]) + budget, budget), side="left") + 1
        ends = np.unique(np.minimum(ends, len(keys))).tolist()
        start = 0
        for end in ends:
            with self.watch.step("send_encode"):
                frame = encode_frame(make("live", kind="flush", src=self.id, keys=keys[start:end],
                                          minutes=minutes[start:end], counts=counts[start:end]),
                                     self.settings.max_frame)
            try:
                if link is None:
                    raise PeerFailure(f"no link to worker {owner}")
                await link.send(frame)
            except PeerFailure as exc:
                self.pairs_dropped += len(keys) - start
                logs.event("live_flush_dropped", logging.WARNING, owner=owner, pairs=len(keys) - start, error=exc)
                return
            start = end

    # -- peers: flushes in ----------------------------------------------------------------------
    def deliver(self, peer_id: int, msg: dict) -> None:
        """A ``live`` message from a peer; a malformed one is the peer's protocol error (its link is closed)."""
        kind = msg["kind"]
        if kind not in ("flush", "query", "answer", "tops") or msg["src"] != peer_id:
            raise ProtocolError(f"worker {peer_id} sent a live {kind!r} message as worker {msg['src']}")
        with self.watch.step(f"peer_{kind}"):
            self._deliver(peer_id, kind, msg)

    def _deliver(self, peer_id: int, kind: str, msg: dict) -> None:
        if kind == "query":
            self._answer_peer(peer_id, msg)
            return
        if kind == "answer":
            self._answered(peer_id, msg)
            return
        if kind == "tops":
            self._pushed(peer_id, msg)
            return
        import numpy as np
        keys, minutes, counts = msg.get("keys"), msg.get("minutes"), msg.get("counts")
        if not (isinstance(keys, list) and isinstance(minutes, np.ndarray) and isinstance(counts, np.ndarray)
                and minutes.dtype == np.int64 and counts.dtype == np.int64 and len(keys) == len(minutes) == len(counts)
                and all(type(k) is str for k in keys) and (counts > 0).all()
                and ((minutes >= 0) & (minutes <= MAX_TIME_MS // MINUTE_MS)).all()):
            raise ProtocolError(f"worker {peer_id} sent a malformed live flush")
        now = now_ms()
        self._first_data(now)
        self.buckets.advance(now)
        self.buckets.add(keys, minutes.tolist(), counts.tolist())
        self.pairs_received += len(keys)
        self.frames_received += 1
        self._dirty = True
        self.max_frame_pairs = max(self.max_frame_pairs, len(keys))

    # -- pushed answers: a query one worker answers alone ------------------------------------------------
    async def _push_if_changed(self) -> None:
        """Pushes when the buckets took counts since the last push, or a minute began (the windows moved); only
        once the live service is in use here (events, or a peer's push), so an idle cluster stays silent."""
        now = now_ms()
        if self._active and (self._dirty or now // MINUTE_MS != self._pushed_minute):
            self._push(now)

    async def _push_at_minutes(self) -> None:
        """A push just after every minute begins: a pushed answer names its buckets, so until each owner has
        pushed for the new minute every query must ask all the owners (a fan-out that waits for the slowest
        of them); the half-interval tick alone left up to a second of those after each boundary."""
        while True:
            now = now_ms()
            await asyncio.sleep((MINUTE_MS - now % MINUTE_MS) / 1000 + 0.002 * (1 + self.id % 8))
            await self._push_if_changed()

    def _push(self, now: int) -> None:
        """This owner's top ``live_push_k`` of the usual windows, to every worker (itself included); a peer
        whose previous push is still queued is skipped (the next one supersedes it)."""
        k = self.settings.live_push_k
        if k <= 0:
            return
        with self.watch.step("push"):
            self._push_now(k, now)

    def _push_now(self, k: int, now: int) -> None:
        self._dirty = False
        self._pushed_minute = now // MINUTE_MS
        answers = {last: self.top(k, last, now) for last in PUSHED}
        self._tops[self.id] = {"at_ms": now, "received": now, "answers": answers}
        self._tops_version += 1
        if self._tg is None:
            return
        frame = encode_frame(make("live", kind="tops", src=self.id, at_ms=now, answers=answers), self.settings.max_frame)
        for pid, link in self.server.links.items():
            if pid not in self._pushing:
                self._pushing.add(pid)
                self._tg.create_task(self._push_one(pid, link, frame))

    async def _push_one(self, pid: int, link, frame: bytes) -> None:
        try:
            async with asyncio.timeout(self.settings.live_flush_interval):
                await link.send(frame)
        except (PeerFailure, TimeoutError):
            pass                      # a slow or lost peer: it answers by asking the owners instead
        finally:
            self._pushing.discard(pid)

    def _pushed(self, peer_id: int, msg: dict) -> None:
        answers = msg.get("answers")
        if not (isinstance(answers, dict) and isinstance(msg.get("at_ms"), int)
                and all(last in answers for last in PUSHED)):
            raise ProtocolError(f"worker {peer_id} pushed malformed answers")
        for last in PUSHED:
            self._check_answer(peer_id, answers[last])
        self._tops[peer_id] = {"at_ms": msg["at_ms"], "received": now_ms(), "answers": answers}
        self._tops_version += 1
        self._active = True

    def peer_lost(self, peer_id: int) -> None:
        """A link to ``peer_id`` broke: its pushed answers no longer stand for it (queries ask the owners)."""
        self._tops.pop(peer_id, None)
        self._tops_version += 1

    def cached_top(self, k: int, last: str, at: int | None = None) -> dict | None:
        """The whole cluster's answer from the owners' pushed answers, or None when they cannot give it exactly
        as asked: k beyond what was pushed, another window, an owner not heard from for three flush
        intervals, or a bucket boundary passed since an owner's push."""
        from shardstats.worker.live.query import merge
        if last not in PUSHED or not 1 <= k <= self.settings.live_push_k:
            return None
        now = now_ms()
        at = now if at is None else at
        span = parse_last(last).span(at)
        stale = now - 3 * int(self.settings.live_flush_interval * 1000)
        answers = []
        for i in range(self.workers):
            entry = self._tops.get(i)
            if entry is None or entry["received"] < stale:
                return None
            ans = entry["answers"][last]
            if (ans["top"]["from_ms"], ans["top"]["to_ms"]) != span:
                return None
            answers.append(ans)
        # The same question since the last push came: the same merge (a copy: callers add to it).
        memo = self._merged.get((k, last, span))
        if memo is not None and memo[0] == self._tops_version:
            return dict(memo[1])
        answers = [{**ans, "top": {**ans["top"], "items": ans["top"]["items"][:k]}} for ans in answers]
        out = merge(answers, [], k, last, self.allowance_ms)
        out.update(source="pushed", as_of=min(self._tops[i]["at_ms"] for i in range(self.workers)))
        if len(self._merged) >= 64:
            self._merged.clear()
        self._merged[(k, last, span)] = (self._tops_version, out)
        return dict(out)

    async def whole_top(self, k: int, last: str) -> dict:
        """The cluster's answer: from the pushed answers when they hold it, else by asking every owner."""
        return self.cached_top(k, last) or {**await self.ask_owners(k, last), "source": "asked"}

    # -- GET /top: this worker asks every owner over its peer links -------------------------------------
    async def ask_owners(self, k: int, last: str) -> dict:
        """Every owner's answer for the same window (its own at once, the peers' over the links), merged;
        owners silent past ``live_query_timeout`` are named as missing."""
        from shardstats.worker.live.query import merge
        at = now_ms()
        self._qids += 1
        qid = self._qids
        answers: dict[int, dict] = {self.id: self.top(k, last, at)}
        done = asyncio.get_running_loop().create_future()
        waiting = self._queries[qid] = [answers, done, self.workers]    # need: the owners that may answer
        frame = encode_frame(make("live", kind="query", src=self.id, qid=qid, k=k, last=last, at_ms=at))
        errors: dict[int, str] = {}
        try:
            for pid, link in self.server.links.items():
                try:
                    async with asyncio.timeout(self.settings.live_query_timeout):
                        await link.send(frame)
                except (PeerFailure, TimeoutError) as exc:
                    errors[pid] = str(exc) or "its link is full"
            waiting[2] = self.workers - len(errors)
            if len(answers) < waiting[2]:
                try:
                    async with asyncio.timeout(self.settings.live_query_timeout):
                        await done
                except TimeoutError:
                    pass
        finally:
            self._queries.pop(qid, None)
        missing = [{"worker": i, "addr": self.server.peers[i],
                    "error": errors.get(i, f"no answer within {self.settings.live_query_timeout:g}s")}
                   for i in range(self.workers) if i not in answers]
        return merge([answers[i] for i in sorted(answers)], missing, k, last, self.allowance_ms)

    def _answer_peer(self, peer_id: int, msg: dict) -> None:
        try:
            body = self.top(msg.get("k"), msg.get("last"), msg.get("at_ms"))
        except LiveError as exc:
            raise ProtocolError(f"worker {peer_id} sent a bad live query: {exc}") from None
        link = self.server.links.get(peer_id)
        if link is not None and self._tg is not None:       # None: this worker is stopping
            frame = encode_frame(make("live", kind="answer", src=self.id, qid=msg.get("qid"), answer=body),
                                 self.settings.max_frame)
            self._tg.create_task(self._send_answer(link, frame))

    async def _send_answer(self, link, frame: bytes) -> None:
        try:
            await link.send(frame)
        except PeerFailure as exc:
            logs.event("live_answer_dropped", logging.WARNING, peer=link.peer_id, error=exc)

    @staticmethod
    def _check_answer(peer_id: int, ans: object) -> None:
        top = ans.get("top") if isinstance(ans, dict) else None
        if not (isinstance(top, dict) and isinstance(top.get("items"), list) and isinstance(top.get("total"), int)
                and isinstance(top.get("from_ms"), int) and isinstance(top.get("to_ms"), int)
                and ans.get("worker") == peer_id and isinstance(ans.get("gaps"), list)):
            raise ProtocolError(f"worker {peer_id} sent a malformed live answer")

    def _answered(self, peer_id: int, msg: dict) -> None:
        ans = msg.get("answer")
        self._check_answer(peer_id, ans)
        waiting = self._queries.get(msg.get("qid"))
        if waiting is None:
            return                   # answered after the asker gave up
        answers, done, need = waiting
        answers[peer_id] = ans
        if len(answers) >= need and not done.done():
            done.set_result(None)

    # -- clients: ingest, top, stats -------------------------------------------------------------
    def request(self, msg: dict, reply) -> None:
        """``live_events`` / ``live_top`` / ``live_stats`` from an authenticated client, answered inline."""
        t, seq = msg["t"], msg["seq"]
        with self.watch.step(t):
            self._request(t, seq, msg, reply)

    def _request(self, t: str, seq: int, msg: dict, reply) -> None:
        try:
            if t == "live_events":
                got = self.ingest(msg["keys"], msg.get("times"))
                reply(make("live_ack", seq=seq, accepted=got.accepted, late=got.late, early=got.early))
            elif t == "live_top" and msg.get("whole"):
                # the whole cluster's answer from this one worker: at once when pushed answers hold it
                self._check_query(msg["k"], msg["last"])
                at = time.time()
                cached = self.cached_top(msg["k"], msg["last"])
                if cached is not None:
                    cached["served"] = {"worker": self.id, "at": at, "ms": round((time.time() - at) * 1000, 3)}
                    reply(make("live_answer", seq=seq, whole=cached))
                elif self._tg is None:
                    raise LiveError(f"worker {self.id} is stopping", kind="job")
                else:
                    self._tg.create_task(self._reply_whole(msg["k"], msg["last"], seq, reply, at))
            elif t == "live_top":
                reply(make("live_answer", seq=seq, **self.top(msg["k"], msg["last"], msg.get("at_ms"))))
            else:
                reply(make("live_answer", seq=seq, **self.stats(detail=msg.get("detail") is True)))
        except LiveError as exc:
            self.refused += 1
            reply(make("live_ack" if t == "live_events" else "live_answer", seq=seq, error=str(exc), kind=exc.kind))

    def ingest(self, keys: object, times: object = None, arrival_ms: int | None = None):
        """Checks a whole batch first (a bad one changes nothing: LiveError), then counts it."""
        import numpy as np
        st = self.settings
        if not isinstance(keys, list):
            raise LiveError(f"events: keys is a {type(keys).__name__}, not a list")
        if len(keys) > st.live_max_batch:
            raise LiveError(f"events: {len(keys)} events in one batch (limit {st.live_max_batch})")
        limit = st.live_max_key_bytes
        # C loops over the batch (map, set, max); the Python one below runs only to name a bad key.
        if keys and (set(map(type, keys)) != {str} or max(map(len, keys)) > limit // 4):
            for i in compress(range(len(keys)), map(lambda k: type(k) is not str or len(k) > limit // 4, keys)):
                k = keys[i]
                if type(k) is not str or len(k.encode("utf-8", "surrogatepass")) > limit:
                    raise LiveError(f"events: key {i} is " + (f"a {type(k).__name__}, not a string"
                                                             if type(k) is not str else f"longer than {limit} bytes"))
        if times is not None:
            if not isinstance(times, np.ndarray) or times.dtype != np.int64 or len(times) != len(keys):
                raise LiveError("events: times is not an int64 array of one time per key")
            if ((times != ARRIVAL) & ((times < 0) | (times > MAX_TIME_MS))).any():
                raise LiveError("events: a time is outside 1970 .. 9999")
            times = None if (times == ARRIVAL).all() else times
        return self.count(keys, times, arrival_ms)

    def count(self, keys: list[str], times, arrival_ms: int | None = None):
        """Counts checked events locally (``times``: epoch ms or ``ARRIVAL`` each, a list or an int64 array, or
        None: all arrive now)."""
        arrival = now_ms() if arrival_ms is None else arrival_ms
        self._first_data(arrival)
        return self.counters.add(keys, times, arrival)

    def _first_data(self, now: int) -> None:
        """The first counts this worker holds: a checkpoint (empty) goes to disk at once, so a worker killed
        before its first scheduled checkpoint still finds one at restart and states the gap since."""
        self._active = True
        if self._marked:
            return
        self._marked = True
        try:
            _encode_and_write(self.path, self._state(now))
        except OSError as exc:
            logs.event("live_checkpoint_failed", logging.WARNING, path=str(self.path), error=exc)

    async def _reply_whole(self, k: int, last: str, seq: int, reply, at: float) -> None:
        try:
            answer = await self.whole_top(k, last)
            answer["served"] = {"worker": self.id, "at": at, "ms": round((time.time() - at) * 1000, 3)}
        except Exception as exc:  # noqa: BLE001 - the request's boundary: its client hears it, the service goes on
            logs.event("live_query_failed", logging.ERROR, error=repr(exc))
            reply(make("live_answer", seq=seq, error=f"worker {self.id}: {exc!r}", kind="job"))
            return
        reply(make("live_answer", seq=seq, whole=answer))

    @staticmethod
    def _check_query(k: object, last: object):
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise LiveError(f"top: k = {k!r} is not a whole number in 1..{MAX_K}")
        try:
            return parse_last(str(last))
        except ValueError as exc:
            raise LiveError(f"top: last: {exc}") from None

    def top(self, k: object, last: object, at_ms: object = None) -> dict:
        window = self._check_query(k, last)
        now = now_ms()
        self.buckets.advance(now)
        at = now
        if isinstance(at_ms, int) and not isinstance(at_ms, bool) and abs(at_ms - now) <= self.allowance_ms:
            at = at_ms          # the asker's time: every owner answers for the same window
        self.queries += 1
        t = time.perf_counter()
        top = self.buckets.top(k, window, at)
        self.query_seconds.append(time.perf_counter() - t)
        return {"worker": self.id, "approx": self.approx is not None, "top": top,
                "gaps": self.gaps, "late": self.counters.late, "early": self.counters.early, "as_of_ms": now,
                "last_flush_ms": self.last_flush_ms}

    def stats(self, detail: bool = False) -> dict:
        """``detail``: the loop's recent slow events and every step's percentiles too (LoopWatch.summary)."""
        return {"worker": self.id, "received": self.counters.received, "late": self.counters.late,
                "early": self.counters.early, "pending_pairs": len(self.counters.pending),
                "unsent_pairs": sum(len(b[0]) for b in self._outbox.values()),
                "pairs_flushed": self.counters.pairs_flushed, "pairs_received": self.pairs_received,
                "pairs_own": self.pairs_own,
                "frames_received": self.frames_received, "max_frame_pairs": self.max_frame_pairs,
                "pairs_dropped": self.pairs_dropped, "owner_late": list(self.buckets.late),
                "flushes": self.flushes, "last_flush_lag_ms": self.last_flush_lag_ms,
                "max_flush_lag_ms": self.max_flush_lag_ms, "bucket_bytes": self.buckets.memory(),
                "bucket_entries": self.buckets.entries(), "approx": self.approx is not None,
                "checkpoints": self.checkpoints, "checkpoint_bytes": self.checkpoint_bytes,
                "checkpoint_ms": self.checkpoint_ms, "checkpoint_seconds": round(self.checkpoint_seconds, 4),
                "checkpoint_path": str(self.path), "restored": self.restored, "gaps": self.gaps,
                "queries": self.queries, "refused": self.refused,
                "query_ms_p50": _ms(self.query_seconds, 50), "query_ms_p99": _ms(self.query_seconds, 99),
                "query_ms_max": _ms(self.query_seconds, 100), "loop": self.watch.summary(slow=detail)}


def _encode_and_write(path, state: dict) -> bytes:
    data = store.encode(state)
    store.write(path, data)
    return data


def _ms(xs, q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(len(s) * q / 100))] * 1000, 2)
