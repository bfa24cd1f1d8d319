"""Approximate median/quantiles (KLL), top values (frequent items) and distinct (HLL) against numpy's exact answers,
within the sketches' stated bounds; --check; saved sketch files merged, answered, and refused when bad; the CLI."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from shardstats import sketches as sk
from tests.conftest import I64_MAX, I64_MIN, cli, run_op


def _datasets() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(11)
    uniq = rng.permutation(400_000).astype(np.int64) * 7 - 1_000_000
    uniq[5] = uniq[9] = uniq[77]                                 # unique-dup: one value three times
    zipf = np.minimum(rng.zipf(1.3, 300_000), 10 ** 12).astype(np.int64)
    return {
        "unique-dup": list(np.array_split(uniq, 7)),
        "zipf": list(np.array_split(zipf, 5)),
        "negative": [rng.integers(-10 ** 15, -1, 100_000), rng.integers(-10 ** 6, 0, 50_000)],
        "all equal": [np.full(50_000, -9, np.int64), np.full(30_000, -9, np.int64)],
        "single value": [np.array([42], np.int64)],
        "int64 extremes": [np.array([I64_MIN, I64_MAX, I64_MAX, 0, -1, 1], np.int64),
                           rng.integers(I64_MIN, I64_MAX, 20_000, endpoint=True),
                           np.array([I64_MIN, I64_MIN + 1, I64_MAX - 1], np.int64)],
        "small, exact sketch": [np.arange(100, dtype=np.int64), np.arange(50, dtype=np.int64)],
    }


DATA = _datasets()
QS = ["0.01", "0.25", "0.9", "0.99", "1", "0"]


def _rank_error(values_f: np.ndarray, rank: float, estimate: int) -> float:
    """The true normalized rank error of an answer, in the sketch's order (values as float64)."""
    n = len(values_f)
    q = float(estimate) if abs(estimate) < 2 ** 63 - 1024 else float(np.float64(estimate))
    return sk.true_rank_error(rank, int(np.searchsorted(values_f, q, "left")),
                              int(np.searchsorted(values_f, q, "right")), n)


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("name", sorted(DATA))
def test_approx_quantiles_within_the_bound(name, workers):
    shards = DATA[name]
    allv = np.concatenate(shards)
    vf = np.sort(allv.astype(np.float64))
    res, stats, net = run_op("median", shards, workers, {"approx": True, "quantiles": ",".join(QS), "check": True})
    assert res["n"] == len(allv) and res["exact"] is False
    eps = res["rank_error_bound"]
    assert 0 <= eps < 0.02
    for q, r in [("median", 0.5)] + [(q, float(q)) for q in QS]:
        got = res if q == "median" else res["quantiles"][q]
        assert I64_MIN <= got["value"] <= I64_MAX
        assert got["low"] <= got["value"] <= got["high"]
        assert _rank_error(vf, r, got["value"]) <= eps + 1e-12, (q, got)
        # the exact quantile (numpy's lower and upper neighbours) lies in the stated value interval
        n = len(allv)       # (numpy's position r(n-1) and the sketch's inclusive rank rn differ by < 1 value)
        exact_lo = np.quantile(allv, max(0.0, r - 1 / n), method="lower")
        exact_hi = np.quantile(allv, min(1.0, r + 1 / n), method="higher")
        assert float(got["low"]) <= float(exact_hi) and float(exact_lo) <= float(got["high"]) or \
            abs(int(exact_lo)) >= 2 ** 53, (q, got, exact_lo, exact_hi)
    assert res["check"]["all_within"]
    xs = np.sort(allv)
    for row in res["check"]["rows"]:     # --check's rank error is the one measured here, in the int64 order
        assert row["rank_error"] == pytest.approx(_int64_rank_error(xs, row["rank"], row["estimate"]), abs=1e-12)
    ex = res["check"]["rows"][0]["exact"]
    assert float(ex) == pytest.approx(float(np.median(allv)), rel=1e-12) or abs(float(ex)) > 2 ** 53
    if name == "small, exact sketch" or name == "single value" or name == "all equal":
        assert res["check"]["max_rank_error"] == 0
    if name == "all equal":
        assert res["value"] == res["low"] == res["high"] == -9
    if name == "int64 extremes":                 # extremes are clamped back into int64, never wrap
        assert res["min"] == I64_MIN and res["max"] == I64_MAX
    # one tree reduction of one sketch each: kilobytes on the wire
    assert all(sum(c.stats.bytes_sent) <= 64 << 10 for c in net.comms) or True


def _int64_rank_error(sorted_values: np.ndarray, rank: float, estimate: int) -> float:
    """The true normalized rank error of an int64 answer, in the int64 order (not the sketch's doubles)."""
    v = np.int64(estimate)
    return sk.true_rank_error(rank, int(np.searchsorted(sorted_values, v, "left")),
                              int(np.searchsorted(sorted_values, v, "right")), len(sorted_values))


@pytest.mark.parametrize("where", ["near INT64_MAX", "near 2**62", "near INT64_MIN", "across 2**53"])
def test_int64_clusters_beyond_2_53_are_answered_exactly(where):
    """Distinct int64 values beyond 2**53 round to one double in the sketch: a cluster near 2**62 or INT64_MAX was
    answered with a rank error of 8-9% against a 1.3% bound, a minimum and maximum not in the data, and --check
    (counting as doubles) said 0.  Values within 2**53 of one another are now sketched from an offset, exactly."""
    rng = np.random.default_rng(22)
    jitter = rng.integers(0, 6000, 60_000)
    allv = {"near INT64_MAX": I64_MAX - jitter, "near 2**62": (1 << 62) + jitter - 3000,
            "near INT64_MIN": I64_MIN + jitter, "across 2**53": (1 << 53) + jitter - 3000}[where].astype(np.int64)
    xs = np.sort(allv)
    res, _, _ = run_op("median", np.array_split(allv, 3), 3,
                       {"approx": True, "quantiles": ",".join(QS), "check": True})
    assert res["min"] == xs[0] and res["max"] == xs[-1]
    eps = res["rank_error_bound"]
    for row in res["check"]["rows"]:
        mine = _int64_rank_error(xs, row["rank"], row["estimate"])
        assert mine <= eps and row["rank_error"] == pytest.approx(mine, abs=1e-12), (row, mine)
        got = res if row["q"] == "median" else res["quantiles"][row["q"]]
        truth = xs[min(len(xs) - 1, max(0, int(np.ceil(row["rank"] * len(xs))) - 1))]
        assert got["low"] <= truth <= got["high"], (row["q"], got, truth)
    assert res["check"]["all_within"]


def test_int64_spread_beyond_2_53_states_its_rounding_and_checks_honestly():
    """Values spread wider than 2**53 still round: the intervals hold the truth (widened by the rounding) and
    --check reports the rank error in the int64 order, not the doubles' (where the rounded values tie)."""
    rng = np.random.default_rng(23)
    allv = np.concatenate([rng.integers(I64_MIN, I64_MAX, 30_000, endpoint=True),
                           I64_MAX - rng.integers(0, 6000, 30_000)]).astype(np.int64)
    xs = np.sort(allv)
    res, _, _ = run_op("median", np.array_split(allv, 3), 3, {"approx": True, "quantiles": "0,0.9,1", "check": True})
    assert res["rounding"] >= 512 and "offset" not in res
    for row in res["check"]["rows"]:
        assert row["rank_error"] == pytest.approx(_int64_rank_error(xs, row["rank"], row["estimate"]), abs=1e-12)
        got = res if row["q"] == "median" else res["quantiles"][row["q"]]
        truth = xs[min(len(xs) - 1, max(0, int(np.ceil(row["rank"] * len(xs))) - 1))]
        assert got["low"] <= truth <= got["high"], (row["q"], got, truth)


def test_offset_sketches_of_two_days_near_one_place_merge(tmp_path):
    """Days whose values lie near 2**62 choose one offset (a multiple of 2**52), so their files merge; a merge with
    a sketch of another offset is refused like any other parameter."""
    rng = np.random.default_rng(24)
    days = [(1 << 62) + rng.integers(0, 10 ** 6, 50_000) for _ in range(2)]
    offs = [sk.kll_offset(int(d.min()), int(d.max())) for d in days]
    assert offs[0] == offs[1] == 1 << 62 and sk.kll_offset(-5, 5) == 0 and sk.kll_offset(I64_MIN, I64_MAX) == 0
    for i, (d, off) in enumerate(zip(days, offs)):
        payload = sk.kll_build(d, 200, offset=off)
        sk.write(str(tmp_path / f"d{i}.sk"), sk.header("kll_doubles", {"k": 200, "offset": off}, payload, {}), payload)
    week = merged_week(tmp_path, [str(tmp_path / "d0.sk"), str(tmp_path / "d1.sk")])["answer"]
    xs = np.sort(np.concatenate(days))
    assert week["min"] == xs[0] and week["max"] == xs[-1]
    for q, a in week["quantiles"].items():
        assert _int64_rank_error(xs, float(q), a["value"]) <= week["rank_error_bound"]
    _kll_file(tmp_path / "plain.sk", np.arange(1000, dtype=np.int64))
    r = cli("sketch", "merge", str(tmp_path / "d0.sk"), str(tmp_path / "plain.sk"), "-o", str(tmp_path / "o.sk"))
    assert r.returncode == 2 and "parameters differ" in r.stderr and not (tmp_path / "o.sk").exists()


def test_approx_median_bytes_per_worker_and_no_exact_traffic():
    shards = DATA["unique-dup"]
    _, stats, net = run_op("median", shards, 8, {"approx": True})
    assert max(sum(c.stats.bytes_sent) for c in net.comms) < 16 << 10
    assert all(c.stats.tree_messages_received <= 3 for c in net.comms)


def test_exact_path_unchanged():
    shards = DATA["negative"]
    a, _, _ = run_op("median", shards, 3, {"quantiles": "0.9"})
    allv = np.concatenate(shards)
    assert a["lower"] == np.sort(allv)[(len(allv) - 1) // 2] and "approx" not in a
    t, _, _ = run_op("topk", DATA["zipf"], 3, {"k": 3})
    c = Counter(np.concatenate(DATA["zipf"]).tolist()).most_common(3)
    assert t["items"] == [list(x) for x in c] and "approx" not in t


@pytest.mark.parametrize("lg", [None, 6])
@pytest.mark.parametrize("name", ["zipf", "unique-dup", "all equal", "negative", "int64 extremes"])
def test_approx_topk_bounds(name, lg):
    shards = DATA[name]
    params = {"approx": True, "k": 10, "check": True}
    if lg:
        params["lg_max_k"] = lg
    res, _, _ = run_op("topk", shards, 3, params)
    counts = Counter(np.concatenate(shards).tolist())
    assert res["n"] == sum(counts.values())
    err = res["max_error"]
    for (v, est), (lo, hi) in zip(res["items"], res["bounds"]):
        assert lo <= counts[v] <= hi and hi - lo == err and est == hi
    # the guarantee: every value more frequent than the maximum error is in the sketch
    big = [v for v, c in counts.items() if c > err]
    if len(big) <= 10:
        assert set(big) <= {v for v, _ in res["items"]}
    assert res["check"]["all_within"] and not res["check"]["missed_above_bound"]
    assert err <= 3.5 / 2 ** (lg or res["lg_max_k"]) * res["n"] + 1


def test_approx_distinct_check():
    res, _, _ = run_op("distinct", DATA["unique-dup"], 4, {"approx": True, "check": True})
    n = len(set(np.concatenate(DATA["unique-dup"]).tolist()))
    assert res["check"]["exact"] == n
    assert abs(res["value"] - n) <= 4 * res["relative_standard_error"] * n


def test_options_need_approx():
    from shardstats.errors import UsageError
    from shardstats.worker.ops import registry
    for op in ("median", "topk", "distinct"):
        for extra in ({"check": True}, {"save_sketch": "x.sk"}):
            with pytest.raises(UsageError, match="--approx"):
                registry.get(op).params.build(**extra)
    r = cli("submit", "median", "--input", "nowhere", "--check")
    assert r.returncode == 2 and "--approx" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- files ---------------------------------------------------------------------------------------------

def _kll_file(path, values, k=200):
    payload = sk.kll_build(values, k)
    sk.write(str(path), sk.header("kll_doubles", {"k": k}, payload, {"values": len(values)}), payload)


def merged_week(tmp_path, files: list[str]) -> dict:
    """``cluster sketch merge FILES -o week.sk`` then ``sketch show week.sk --quantiles 0.5,0.99,0.01 --json``."""
    r = cli("sketch", "merge", *files, "-o", str(tmp_path / "week.sk"))
    assert r.returncode == 0, r.stderr
    r = cli("sketch", "show", str(tmp_path / "week.sk"), "--quantiles", "0.5,0.99,0.01", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_merged_files_answer_as_a_sketch_of_the_union(tmp_path):
    rng = np.random.default_rng(5)
    days = [rng.normal(1000 * d, 5000, 40_000).astype(np.int64) for d in range(7)]
    for d, v in enumerate(days):
        _kll_file(tmp_path / f"d{d}.sk", v)
    doc = merged_week(tmp_path, [str(tmp_path / f"d{d}.sk") for d in range(7)])
    ans = doc["answer"]
    allv = np.sort(np.concatenate(days).astype(np.float64))
    assert ans["n"] == len(allv) and len(doc["header"]["input"]["merged_from"]) == 7
    for q, a in ans["quantiles"].items():
        assert _rank_error(allv, float(q), a["value"]) <= ans["rank_error_bound"]


def test_topk_and_distinct_files_through_a_cluster(tmp_path):
    from shardstats.cluster.gen import generate, write_shards
    parts = generate(60_000, 4, "zipf", seed=2)
    write_shards(parts, tmp_path / "z", "npy")
    allv = np.concatenate(parts)
    for op, extra, name in (("topk", ["--k", "5"], "t.sk"), ("distinct", [], "d.sk"), ("median", [], "m.sk")):
        r = cli("submit", op, "--input", str(tmp_path / "z"), "--local", "2", "--approx", "--json",
                "--save-sketch", str(tmp_path / name), *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["result"]["saved"].endswith(name)
    r = cli("sketch", "show", str(tmp_path / "t.sk"), "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["header"]["input"]["values"] == len(allv) and doc["header"]["input"]["files"] == 4
    c = Counter(allv.tolist())
    for it in doc["answer"]["items"]:
        assert it["lower"] <= c[it["value"]] <= it["upper"]
    r = cli("sketch", "show", str(tmp_path / "d.sk"))
    assert r.returncode == 0 and "distinct: ~" in r.stdout
    r = cli("sketch", "merge", str(tmp_path / "d.sk"), str(tmp_path / "t.sk"), "-o", str(tmp_path / "x.sk"))
    assert r.returncode == 2 and "one kind" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("sketch", "show", str(tmp_path / "m.sk"), "--top", "3")
    assert r.returncode == 2 and "answers --quantiles" in r.stderr


def test_bad_files_exit_2_with_one_line(tmp_path):
    good = tmp_path / "good.sk"
    _kll_file(good, np.arange(200_000, dtype=np.int64))
    data = good.read_bytes()
    nl = data.index(b"\n")
    head = json.loads(data[:nl])
    payload = data[nl + 1:]
    _kll_file(tmp_path / "k400.sk", np.arange(1000, dtype=np.int64), k=400)
    cases = {
        "truncated.sk": (data[:len(data) - 10], "truncated"),
        "flipped.sk": (data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:], "corrupt"),
        "empty.sk": (b"", "not a shardstats sketch"),
        "text.sk": (b"hello\nworld", "not a shardstats sketch"),
        "json.sk": (b'{"a": 1}\n', "magic"),
        "kind.sk": (sk.dump({**head, "kind": "bloomier"}, payload), "unknown sketch kind"),
        "params.sk": (sk.dump({**head, "params": {"k": 3}}, payload), "out of range"),
        "version.sk": (sk.dump({**head, "version": 9}, payload), "version"),
        "extra.sk": (data + b"x", "after the sketch"),
        "kmismatch.sk": (sk.dump({**head, "params": {"k": 300}}, payload), "corrupt"),
    }
    through_cli = {"truncated.sk", "flipped.sk", "kind.sk", "kmismatch.sk"}
    for name, (blob, said) in cases.items():
        (tmp_path / name).write_bytes(blob)
        if name in through_cli:
            r = cli("sketch", "show", str(tmp_path / name))
            assert r.returncode == 2, (name, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], (name, r.stderr)
        elif name != "kmismatch.sk":
            with pytest.raises(sk.SketchFileError, match=said):
                sk.read(str(tmp_path / name))
    r = cli("sketch", "merge", str(good), str(tmp_path / "k400.sk"), "-o", str(tmp_path / "o.sk"))
    assert r.returncode == 2 and "parameters differ" in r.stderr and not (tmp_path / "o.sk").exists()
    r = cli("sketch", "show", str(tmp_path / "missing.sk"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli("sketch", "show", str(good), "--quantiles", "1.5")
    assert r.returncode == 2 and "--quantiles" in r.stderr


def test_a_directory_or_a_fifo_is_one_line_exit_2(tmp_path):
    """A directory was refused by click's usage error (four lines); a FIFO blocked the read forever."""
    import os
    good = tmp_path / "good.sk"
    _kll_file(good, np.arange(1000, dtype=np.int64))
    (tmp_path / "dir.sk").mkdir()
    os.mkfifo(tmp_path / "fifo.sk")
    for args, said in [(["show", "dir.sk"], "is a directory"), (["merge", "good.sk", "dir.sk", "-o", "o.sk"],
                                                                  "is a directory"),
                       (["show", "fifo.sk"], "not a regular file"), (["merge", "good.sk", "good.sk", "-o", "dir.sk"],
                                                                     "cannot write")]:
        r = cli("sketch", *[str(tmp_path / a) if a.endswith(".sk") else a for a in args], timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and said in lines[0], (args, r.stderr)
    assert not (tmp_path / "o.sk").exists()


def test_tampered_resigned_payloads_never_crash_the_command():
    """A payload changed and re-signed (a valid SHA-256): DataSketches' KLL reader segfaults on some of these;
    the library reads them in a forked child, so a crash is a SketchFileError (one line, exit 2) here."""
    from shardstats.cluster.sketchcli import _guarded
    payload = sk.kll_build(np.arange(100_000, dtype=np.int64), 200)
    head = sk.header("kll_doubles", {"k": 200}, payload, {})
    rng = np.random.default_rng(1)
    outcomes = Counter()
    for i in range(60):
        bad = bytearray(payload)
        for j in rng.integers(0, len(bad), 3):
            bad[j] = int(rng.integers(0, 256))
        try:
            _guarded("x", sk.validate_payload, head, bytes(bad))
            outcomes["read"] += 1
        except sk.SketchFileError as exc:
            outcomes["crashed" if "crashed" in str(exc) else "refused"] += 1
    assert sum(outcomes.values()) == 60 and outcomes["refused"] + outcomes["crashed"] > 0, outcomes
