"""Live top-K (worker/live/): buckets, pre-aggregation, parsing and checkpoints against a brute-force Counter.

Pure parts only (explicit times, no sockets): the in-process cluster and the real
processes are in test_live_cluster.py.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from shardstats.worker.live import store
from shardstats.worker.live.buckets import LEVELS, MINUTE_MS, ApproxParams, TimeBuckets, Window, parse_last
from shardstats.worker.live.events import ARRIVAL, EventError, parse_body, parse_line
from shardstats.worker.live.ingest import LocalCounters, owners
from shardstats.worker.live.query import merge

pytestmark = pytest.mark.timeout(60)

T0 = 1_796_650_000_000 - 1_796_650_000_000 % (3600 * 1000) + 17 * MINUTE_MS + 12_345   # mid-hour, mid-minute


def ref_top(events, k, start, end):
    """The brute force: count every event whose time is in [start, end), order by count desc then key."""
    c = Counter(key for key, t in events if start <= t < end)
    return [[key, n] for key, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:k]], sum(c.values())


def add_events(tb: TimeBuckets, events, rng=None, chunk=97):
    """Events to buckets the way an owner gets them: pre-aggregated per (key, minute), in shuffled chunks."""
    events = list(events)
    if rng is not None:
        rng.shuffle(events)
    for i in range(0, len(events), chunk):
        c = Counter((key, t // MINUTE_MS) for key, t in events[i:i + chunk])
        tb.add([k for k, _ in c], [m for _, m in c], list(c.values()))


def datasets(rng):
    yield "empty", []
    yield "single", [("a", T0)]
    yield "ties", [(f"k{i}", T0 - i * 1000) for i in range(30) for _ in range(3)]
    yield "hot key", [("hot", T0 - rng.randrange(3600_000)) for _ in range(3000)] + \
        [(f"c{rng.randrange(500)}", T0 - rng.randrange(3600_000)) for _ in range(3000)]
    yield "numbers and unicode", [(rng.choice(["-1", "0", "9223372036854775807", "-9223372036854775808", "é", "日本",
                                               "", " "]), T0 - rng.randrange(25 * 3600_000)) for _ in range(2000)]
    yield "zipf over a day", [(f"q{int(rng.paretovariate(1.2))}", T0 - rng.randrange(24 * 3600_000))
                              for _ in range(5000)]
    yield "bucket edges", [(f"e{i % 7}", (T0 // MINUTE_MS - i) * MINUTE_MS + d) for i in range(70)
                           for d in (0, MINUTE_MS - 1)]


@pytest.mark.parametrize("last", ["1m", "5m", "7m", "1h", "65m", "24h", "25h", "90s"])
def test_exact_top_equals_brute_force(last):
    rng = random.Random(27)
    w = parse_last(last)
    for name, events in datasets(rng):
        tb = TimeBuckets()
        tb.advance(T0)
        # Only events still inside every level's retention (older ones are late: another test).
        oldest = max(tb._oldest(lv) * LEVELS[lv][0] for lv in range(len(LEVELS)))
        kept = [(k, t) for k, t in events if t >= oldest]
        add_events(tb, kept, rng)
        start, end = w.span(T0)
        for k in (1, 3, 10, 1000):
            got = tb.top(k, w)
            want, total = ref_top(events, k, start, end)
            assert (got["from_ms"], got["to_ms"]) == (start, end)
            if start >= oldest:
                assert got["items"] == want, (name, last, k)
                assert got["total"] == total, (name, last)


def test_windows_are_the_seeds_buckets():
    assert parse_last("5m") == Window(0, MINUTE_MS, 5)
    assert parse_last("1h") == Window(1, 5 * MINUTE_MS, 12)
    assert parse_last("24h") == Window(2, 60 * MINUTE_MS, 24)
    assert parse_last("7m") == Window(1, 5 * MINUTE_MS, 2)       # rounded up to whole buckets
    assert parse_last("90s") == Window(0, MINUTE_MS, 2)
    assert parse_last("25h") == Window(2, 60 * MINUTE_MS, 25)
    start, end = parse_last("5m").span(T0)
    assert end - start == 5 * MINUTE_MS and start % MINUTE_MS == 0 and start <= T0 < end
    for bad in ("0m", "26h", "5", "m", "-5m", "5 years", "", "1e3m"):
        with pytest.raises(ValueError):
            parse_last(bad)


def test_roll_over_drops_buckets_per_level_and_late_counts_are_reported():
    tb = TimeBuckets()
    tb.advance(T0)
    add_events(tb, [("a", T0)] * 5)
    tb.advance(T0 + 6 * MINUTE_MS)                  # the minute bucket of T0 rolled out of the 1-minute level
    assert tb.top(10, parse_last("5m"))["items"] == []
    assert tb.top(10, parse_last("1h"))["items"] == [["a", 5]]
    assert tb.top(10, parse_last("24h"))["items"] == [["a", 5]]
    lost = tb.add(["b"], [T0 // MINUTE_MS], [3])    # late for the minute level only
    assert lost == 0 and tb.late == [3, 0, 0]
    tb.advance(T0 + 26 * 3600 * 1000)
    assert tb.top(10, parse_last("24h"))["items"] == [] and tb.memory() == 0
    assert tb.add(["c"], [T0 // MINUTE_MS], [2]) == 2 and tb.late == [5, 2, 2]
    before = tb.advance(T0)                         # time never runs back
    assert before == 0 and tb.now_ms == T0 + 26 * 3600 * 1000


def test_time_advancing_through_a_day_matches_brute_force_at_every_step():
    rng = random.Random(5)
    tb = TimeBuckets()
    events = []
    now = T0
    for step in range(300):
        now += rng.choice([1000, 17_000, 60_000, 290_000])
        tb.advance(now)
        batch = [(f"k{rng.randrange(40)}", now - rng.randrange(60_000)) for _ in range(rng.randrange(20))]
        add_events(tb, batch, rng)
        events += batch
        if step % 7 == 0:
            for last in ("5m", "1h", "24h"):
                w = parse_last(last)
                start, end = w.span(now)
                want, total = ref_top(events, 5, start, end)
                got = tb.top(5, w)
                assert got["items"] == want and got["total"] == total, (step, last)


def test_local_counters_late_early_and_the_hot_key_saving():
    lc = LocalCounters(workers=4, allowance_ms=60_000)
    arrival = T0
    keys = ["hot"] * 50_000 + ["a", "b", "c", "d"]
    got = lc.add(keys, None, arrival)
    assert (got.accepted, got.late, got.early) == (50_004, 0, 0)
    times = [T0 - 59_999, T0 - 60_001, T0 + 60_001, ARRIVAL, T0 + 1]
    got = lc.add(["x", "late", "early", "y", "z"], times, arrival)
    assert (got.accepted, got.late, got.early) == (3, 1, 1)
    parts = lc.drain()
    pairs = {(k, m): n for o, (ks, ms, ns) in parts.items() for k, m, n in zip(ks, ms, ns)}
    assert pairs[("hot", T0 // MINUTE_MS)] == 50_000              # one pair for 50,000 events
    assert pairs[("x", (T0 - 59_999) // MINUTE_MS)] == 1 and ("late", (T0 - 60_001) // MINUTE_MS) not in pairs
    assert lc.pairs_flushed == len(pairs) == 8 and lc.received == 50_007
    own = owners([k for k, _ in pairs], 4).tolist()
    for (k, _), o in zip(pairs, own):
        assert k in parts[o][0]
    assert lc.drain() == {}


def test_counting_and_draining_in_bulk_equal_one_event_at_a_time():
    """Times as an int64 array or a list, late and early among them: the pending pairs, the split by owner and
    a merge of several drains equal a Counter over the events one at a time (what the vectorised code replaced)."""
    import numpy as np
    from shardstats.worker.live.ingest import merge_pairs
    rng = random.Random(5)
    allowance = 60_000
    lc = LocalCounters(workers=7, allowance_ms=allowance)
    want, late, early = Counter(), 0, 0
    drains = []
    for batch in range(30):
        n = rng.randrange(1, 400)
        keys = [rng.choice(["hot", "hot", "é", ""]) if rng.random() < 0.3 else f"k{rng.randrange(300)}"
                for _ in range(n)]
        times = [rng.choice([ARRIVAL, T0 - rng.randrange(-70_000, 70_000)]) for _ in range(n)]
        for k, t in zip(keys, times):
            if t == ARRIVAL:
                want[(k, T0 // MINUTE_MS)] += 1
            elif t < T0 - allowance:
                late += 1
            elif t > T0 + allowance:
                early += 1
            else:
                want[(k, t // MINUTE_MS)] += 1
        lc.add(keys, np.asarray(times, dtype=np.int64) if batch % 2 else times, T0)
        if batch % 10 == 9:
            drains.append(lc.drain())
    assert (lc.late, lc.early, lc.received) == (late, early, sum(want.values()))
    got = Counter()
    for parts in drains:
        for o, (ks, ms, ns) in parts.items():
            assert owners(ks, 7).tolist() == [o] * len(ks)          # each pair went to its key's owner
            assert ms.dtype == ns.dtype == np.int64
            got.update(dict(zip(zip(ks, ms.tolist()), ns.tolist())))
    assert got == want
    owner = next(iter(drains[0]))
    merged = merge_pairs([d[owner] for d in drains if owner in d])
    assert len(set(zip(*merged[:2]))) == len(merged[0])                     # each (key, minute) once
    assert Counter(dict(zip(zip(merged[0], merged[1].tolist()), merged[2].tolist()))) == \
        Counter({p: n for p, n in want.items() if owners([p[0]], 7)[0] == owner})


def test_buckets_take_repeated_pairs_in_one_batch():
    """A batch naming a (key, minute) more than once (a peer's frames never do; the code must not rely on it)
    counts every one."""
    rng = random.Random(8)
    tb = TimeBuckets()
    tb.advance(T0)
    events = [(f"r{rng.randrange(20)}", T0 - rng.randrange(600_000)) for _ in range(3000)]
    for i in range(0, len(events), 500):
        part = events[i:i + 500]
        tb.add([k for k, _ in part], [t // MINUTE_MS for _, t in part], [1] * len(part))
    for last in ("5m", "1h"):
        w = parse_last(last)
        start, end = w.span(T0)
        want, total = ref_top(events, 20, start, end)
        got = tb.top(20, w)
        assert got["items"] == want and got["total"] == total, last


def test_owner_is_the_keyed_engines_partition():
    import pyarrow as pa
    from shardstats.worker.data.hashing import hash_array, owners_of
    keys = [f"user{i}" for i in range(1000)] + ["", "é"]
    assert owners(keys, 10).tolist() == owners_of(hash_array(pa.array(keys)), 10).tolist()
    assert set(owners(keys, 10).tolist()) == set(range(10))


def test_merged_owner_answers_are_exact_when_keys_are_partitioned():
    rng = random.Random(3)
    events = [(f"k{int(rng.paretovariate(1.0))}", T0 - rng.randrange(300_000)) for _ in range(20_000)]
    events += [(f"tie{i}", T0) for i in range(50) for _ in range(40)]
    workers = 5
    own = dict(zip({k for k, _ in events}, owners(list({k for k, _ in events}), workers).tolist()))
    tbs = [TimeBuckets() for _ in range(workers)]
    for tb in tbs:
        tb.advance(T0)
    for o, tb in enumerate(tbs):
        add_events(tb, [e for e in events if own[e[0]] == o], rng)
    w = parse_last("5m")
    start, end = w.span(T0)
    for k in (1, 10, 60, 500):
        answers = [{"worker": i, "top": tb.top(k, w), "gaps": []} for i, tb in enumerate(tbs)]
        ans = merge(answers, [], k, "5m")
        want, total = ref_top(events, k, start, end)
        assert [[i["key"], i["count"]] for i in ans["items"]] == want and ans["total"] == total and ans["complete"]


def test_a_missing_owner_and_a_restart_gap_are_warned_not_hidden():
    tb = TimeBuckets()
    tb.advance(T0)
    add_events(tb, [("a", T0)] * 3)
    w = parse_last("5m")
    gap = [T0 - 120_000, T0 - 60_000]
    ans = merge([{"worker": 0, "top": tb.top(10, w), "gaps": [gap]}],
                [{"worker": 1, "addr": "127.0.0.1:1", "error": "connection refused"}], 10, "5m")
    assert not ans["complete"] and ans["items"] == [{"key": "a", "count": 3}]
    assert any("worker 1" in x and "missing" in x for x in ans["warnings"])
    assert any("worker 0 restarted" in x for x in ans["warnings"]) and ans["gaps"][0]["from_ms"] == gap[0]
    old = merge([{"worker": 0, "top": tb.top(10, w), "gaps": [[T0 - 3600_000, T0 - 3000_000]]}], [], 10, "5m")
    assert old["complete"] and not old["warnings"]            # a gap outside the window does not matter


def test_approximate_buckets_bound_the_true_counts_and_find_the_heavy_keys():
    rng = random.Random(11)
    events = [(f"k{int(rng.paretovariate(1.1))}", T0 - rng.randrange(3600_000)) for _ in range(30_000)]
    tb = TimeBuckets(approx=ApproxParams(cm_hashes=3, cm_buckets=512, hh_lg_k=6))
    tb.advance(T0)
    add_events(tb, events, rng, chunk=1000)
    for last in ("5m", "1h"):
        w = parse_last(last)
        start, end = w.span(T0)
        got = tb.top(10, w)
        truth = Counter(k for k, t in events if start <= t < end)
        assert got["total"] == sum(truth.values())
        for key, est, lo, hi in got["items"]:
            assert lo <= truth[key] <= hi, (key, lo, truth[key], hi)
        for key, n in truth.most_common(10):
            if n > got["max_error"]:                   # the guarantee: every key above the error is listed
                assert key in [i[0] for i in got["items"]] or n <= got["items"][-1][2]
    assert tb.memory() < 44 * 20_000                      # flat: fixed-size sketches per bucket, whatever the keys


@pytest.mark.parametrize("approx", [None, ApproxParams(3, 256, 6)])
def test_checkpoint_round_trip_answers_the_same(tmp_path, approx):
    rng = random.Random(1)
    tb = TimeBuckets(approx=approx)
    tb.advance(T0)
    events = [(f"k{rng.randrange(100)}", T0 - rng.randrange(20 * 3600_000)) for _ in range(3000)]
    add_events(tb, events, rng)
    path = store.checkpoint_path(tmp_path, b"token", 3)
    store.write(path, store.encode({"buckets": tb.dump(), "saved_ms": T0}))
    import asyncio
    assert asyncio.run(store.encode_async({"buckets": tb.dump(), "saved_ms": T0})) == path.read_bytes()
    back = TimeBuckets.load(store.read(path)["buckets"], approx)
    for last in ("5m", "1h", "24h"):
        a, b = back.top(20, parse_last(last)), tb.top(20, parse_last(last))
        if approx is None:
            assert a == b
        else:       # a restored sketch merges in another order: the same guarantee, not the same bytes
            start, end = parse_last(last).span(T0)
            assert a["total"] == b["total"]
            assert all(lo <= sum(1 for k, t in events if k == key and start <= t < end) <= hi
                       for key, _, lo, hi in a["items"])
    assert store.checkpoint_path(tmp_path, b"other", 3) != path          # another cluster never reads it
    with pytest.raises(ValueError):
        TimeBuckets.load(store.read(path)["buckets"], None if approx else ApproxParams())
    path.write_bytes(b"\x93garbage")
    with pytest.raises(ValueError):
        store.read(path)
    assert store.read(tmp_path / "none.ckpt") is None


def test_a_checkpoint_written_while_another_is_under_way_is_the_one_left(tmp_path, monkeypatch):
    """The last checkpoint at shutdown (on the loop) may begin while the scheduled one's thread is still writing
    the same temporary file: the later state must be the one on disk, whole."""
    import builtins
    import threading
    path = store.checkpoint_path(tmp_path, b"token", 0)
    older = store.encode({"buckets": TimeBuckets().dump(), "saved_ms": 1, "gaps": [[0, 1]] * 500})
    newer = store.encode({"buckets": TimeBuckets().dump(), "saved_ms": 2})
    opened, go = threading.Event(), threading.Event()
    real_open = builtins.open

    def held_open(file, mode="r", *args, **kwargs):        # the scheduled checkpoint's thread, paused mid-write
        f = real_open(file, mode, *args, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            opened.set()
            assert go.wait(10)
        return f
    monkeypatch.setattr(store, "open", held_open, raising=False)
    scheduled = threading.Thread(target=store.write, args=(path, older))
    scheduled.start()
    assert opened.wait(10)
    threading.Timer(0.3, go.set).start()                    # the thread goes on (while, or after, the last write)
    store.write(path, newer)
    scheduled.join(10)
    assert path.read_bytes() == newer and store.read(path)["saved_ms"] == 2


def test_json_lines_read_by_arrow_equal_the_line_by_line_parser():
    """``POST /events`` bodies: Arrow's reading (when it vouches for one) equals ``json.loads`` line by line, and
    a body it cannot vouch for gets the same answer or the same refusal from the line-by-line parser."""
    import json
    from shardstats.worker.live.events import arrow_lines, parse_lines
    edges = [b'{"q":"a","ts":1}\n{"q":"b","ts":2.5}\n', b'{"q":"a"}{"q":"b"}\n', b'{"q":"a"}\n\n{"q":"b"}',
             b'{"q":"a"}\n  \n{"q":"b"}\n', b'{"q":"a","q":"b"}\n', b'{"q":"a","ts":NaN}\n', b'{"q":"a","x":NaN}\n',
             b'{"q":"a","ts":true}\n', b'{"q":"a","ts":-1}\n', b'{"q":"a","ts":1e20}\n', b'{"q":1}\n{"q":"b"}\n',
             b'{"q":"\\u00e9"}\n', b'{"q":"\\ud800"}\n', b'{"q":"a\\"b\\n"}\n', '{"q":"\u00e9\u65e5"}\n'.encode(),
             b'{"q":"a"},\n', b'{"q":"a"} x\n', b'{"q":"a", }\n', b'{"q":"a"}\r\n{"q":"b"}\r\n',
             b'{"q":"a","ts":0.0005}\n{"q":"b","ts":0.0015}\n{"q":"c","ts":0.0025}\n', b'{"q":"' + b"x" * 70 + b'"}\n',
             b'{"q":"a","n":{"x":1}}\n{"q":"b","n":{"x":2}}\n', b'{"q":"a","ts":"2026-12-07T14:05:00Z"}\n',
             b'{"q":null}\n', b'{"r":"a"}\n', b'  {"q":"a"}\n', b'{"q":"a","ts":123456789012345678901234567890}\n',
             b'{"q":"a","ts":253402300799}\n{"q":"b","ts":253402300800}\n', b'{"q":"a","ts":null}\n{"q":"b","ts":5}\n']
    rng = random.Random(4)
    bodies = list(edges)
    for _ in range(200):
        events = [{"q": rng.choice(["a", "é", "", "x y", "日本", f"k{rng.randrange(9)}"])} for _ in range(rng.randrange(1, 40))]
        other = rng.choice([None, 1, "s", [1, 2], {"a": 1}])        # a field of one type, in some bodies
        for ev in events:
            if rng.random() < 0.7:
                ev["ts"] = rng.choice([rng.randrange(2_000_000_000), rng.random() * 2e9, round(rng.random() * 2e9, 3)])
            if other is not None and rng.random() < 0.5:
                ev["other"] = other
        bodies.append("\n".join(json.dumps(e, ensure_ascii=rng.random() < 0.3) for e in events).encode()
                      + rng.choice([b"", b"\n"]))
    fast = 0
    for body in bodies:
        for time_field in ("ts", None):
            try:
                want = parse_lines(body.decode(), "q", time_field, 64)
            except EventError as exc:
                want = str(exc)
            try:
                keys, times = parse_body(body, "q", time_field, 64)
                got = (list(keys), [int(t) for t in times])
            except EventError as exc:
                got = str(exc)
            assert got == want, (body, time_field)
            fast += arrow_lines(body, "q", time_field, 64) is not None
    assert fast > 100                     # many bodies took Arrow's way
    keys, times = arrow_lines(b'{"q": "a", "ts": 1.5}\n{"q": "b", "ts": 2}\n{"q": "c"}\n', "q", "ts", 64)
    assert keys == ["a", "b", "c"] and times.tolist() == [1500, 2000, ARRIVAL]


def test_event_parsing_names_what_and_where():
    assert parse_line(b'{"q": "x", "ts": 1796650000.5}', 1, "q", "ts", 64) == ("x", 1796650000500)
    assert parse_line('{"q": 42}', 1, "q", "ts", 64) == ("42", ARRIVAL)
    assert parse_line('{"q": 1.5, "ts": "2026-12-07T14:05:00Z"}', 1, "q", "ts", 64)[1] == 1796652300000
    assert parse_line("   ", 3, "q", None, 64) is None
    bad = [('{"q": null}', "missing"), ('{"x": 1}', "missing"), ('{"q": true}', "boolean"), ('{"q": [1]}', "array"),
           ('{"q": {}}', "object"), ('[1]', "JSON object"), ('{"q": "x"', "not JSON"), ('{"q": "' + "x" * 65 + '"}', "longer"),
           ('{"q": "x", "ts": "yesterday"}', "ISO 8601"), ('{"q": "x", "ts": "2026-12-07T14:05:00"}', "UTC offset"),
           ('{"q": "x", "ts": -5}', "1970"), ('{"q": "x", "ts": 1e300}', "1970"), ('{"q": "x", "ts": [1]}', "array"),
           (b'{"q": "\xff"}', "not JSON")]
    for line, what in bad:
        with pytest.raises(EventError) as e:
            parse_line(line, 7, "q", "ts", 64)
        assert str(e.value).startswith("line 7:") and what in str(e.value), (line, str(e.value))
    keys, times = parse_body(b'[{"q": "a"}, {"q": "b", "ts": 1}]', "q", "ts", 64)
    assert keys == ["a", "b"] and times == [ARRIVAL, 1000]
    keys, _ = parse_body(b'{"q": "a"}\n\n{"q": "b"}\n', "q", None, 64)
    assert keys == ["a", "b"]
    with pytest.raises(EventError, match="element 1"):
        parse_body(b'[{"q": "a"}, {"q": null}]', "q", None, 64)
    with pytest.raises(EventError, match="line 2"):
        parse_body(b'{"q": "a"}\nnope\n', "q", None, 64)


def test_top_items_cuts_ties_by_key_like_a_full_sort():
    from shardstats.worker.live.buckets import top_items
    rng = random.Random(8)
    for trial in range(200):
        n = rng.choice([0, 1, 2, 5, 50, 500])
        counts = {f"k{rng.randrange(10 * n + 1)}": rng.choice([1, 1, 2, 3, rng.randrange(1, 1 << 62)])
                  for _ in range(n)}
        for k in (1, 2, 3, 10, 100, 1000):
            want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            assert top_items(counts, k) == want, (trial, k)


def test_kept_window_sums_equal_a_fresh_merge_under_any_interleaving():
    """Adds (old, current, future within the allowance), time steps and queries at any moment, in random order:
    every answer equals the brute force over the events the buckets kept."""
    rng = random.Random(21)
    for trial in range(12):
        tb = TimeBuckets()
        now = T0 + rng.randrange(3600_000)
        tb.advance(now)
        kept = [[] for _ in LEVELS]          # per level: the events its buckets took
        for step in range(150):
            r = rng.random()
            if r < 0.4:
                batch = [(f"k{rng.randrange(15)}", now + rng.randrange(-90_000, 60_000)) for _ in range(rng.randrange(1, 30))]
                for lv, (width, _) in enumerate(LEVELS):
                    kept[lv] += [(k, t) for k, t in batch if t // width >= tb._oldest(lv)]
                add_events(tb, batch, rng, chunk=7)
            elif r < 0.6:
                now += rng.choice([500, 20_000, 60_000, 61_000, 300_000, 900_000])
                tb.advance(now)
            else:
                last = rng.choice(["1m", "2m", "5m", "10m", "1h", "3h", "24h"])
                w = parse_last(last)
                at = now - rng.choice([0, 0, 0, 30_000])
                start, end = w.span(at)
                start = max(start, tb._oldest(w.level) * w.width_ms)       # what rolled over is gone
                got = tb.top(4, w, at)
                want, total = ref_top(kept[w.level], 4, start, end)
                assert got["items"] == want and got["total"] == total, (trial, step, last)
