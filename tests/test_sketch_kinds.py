"""Sketches of float64 and string columns (median/topk/distinct --approx --of COL) and the kinds of ``cluster submit
sketch`` (count-min, Bloom, theta, CPC, t-digest, ...) against exact answers from numpy and collections.Counter;
their files merged, intersected, refused when mismatched or crafted."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from shardstats import sketches as sk
from shardstats import sketchkinds as kinds
from tests.conftest import I64_MAX, I64_MIN, cli

pytestmark = pytest.mark.timeout(120)


def run_tables(opname: str, tables: list, params: dict):
    """``opname`` on one in-memory rank per table; rank 0's result."""
    from shardstats.testing import run_on_ranks
    return run_on_ranks(opname, tables, params)[0][0][0]


def split(col: str, values, parts: int) -> list:
    """``values`` (a list, nulls as None) as ``parts`` one-column tables; the last ones may be empty."""
    cuts = np.linspace(0, len(values), parts + 1).astype(int)
    typ = pa.string() if any(isinstance(v, str) for v in values) else None
    return [pa.table({col: pa.array(values[a:b], type=typ or (pa.float64() if isinstance(values[0] if values else 0.0,
                                                                                        float) else None))})
            for a, b in zip(cuts, cuts[1:])]


def _floats() -> dict[str, list]:
    rng = np.random.default_rng(3)
    normal = rng.normal(0, 1e6, 120_000)
    return {
        "normal": normal.tolist(),
        "ties": np.repeat(rng.normal(size=50), 1000).tolist(),
        "negative tiny": (-rng.random(50_000) * 1e-300).tolist(),
        "single": [2.5],
        "nulls and NaN": [None, float("nan"), 1.5, None, -0.0, 0.0, 7.25] * 3000,
        "huge": [1e308, -1e308, 5e-324, 0.0] * 2500,
    }


def _strings() -> dict[str, list]:
    rng = np.random.default_rng(4)
    zipf = np.minimum(rng.zipf(1.4, 80_000), 10 ** 9)
    return {
        "zipf": [f"user-{v}" for v in zipf],
        "unique-dup": [f"{i:08d}" for i in range(40_000)] + ["00000007"] * 3,
        "unicode, empty, nulls": (["", "é", "日本", None, "a\x00b", "ß" * 300] * 2000),
        "one": ["x"],
    }


FLOATS, STRINGS = _floats(), _strings()


def _rank_error(sorted_values: np.ndarray, rank: float, answer: float) -> float:
    n = len(sorted_values)
    return sk.true_rank_error(rank, int(np.searchsorted(sorted_values, answer, "left")),
                              int(np.searchsorted(sorted_values, answer, "right")), n)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("name", sorted(FLOATS))
def test_float_quantiles_within_the_bound(name, workers):
    values = FLOATS[name]
    res = run_tables("median", split("x", values, workers), {"approx": True, "of": "x", "quantiles": "0,0.01,0.9,1",
                                                               "check": True})
    clean = np.sort(np.array([v for v in values if v is not None and v == v], np.float64))
    assert res["n"] == len(clean) and res["values"] == "float64"
    assert res["skipped"] == len(values) - len(clean)
    eps = res["rank_error_bound"]
    for q, r in [("median", 0.5), ("0", 0.0), ("0.01", 0.01), ("0.9", 0.9), ("1", 1.0)]:
        got = res if q == "median" else res["quantiles"][q]
        assert isinstance(got["value"], float) and got["low"] <= got["value"] <= got["high"]
        assert _rank_error(clean, r, got["value"]) <= eps + 1e-12, (q, got)
    assert res["min"] == clean[0] and res["max"] == clean[-1]
    assert res["check"]["all_within"]


def test_tdigest_by_name_says_it_has_no_bound():
    values = FLOATS["normal"]
    res = run_tables("median", split("x", values, 2), {"approx": True, "of": "x", "sketch": "tdigest",
                                                       "quantiles": "0.99"})
    clean = np.sort(np.array(values))
    assert res["approx"] == "tdigest_double" and res["rank_error_bound"] is None and "no guarantee" in res["bound"]
    assert _rank_error(clean, 0.5, res["value"]) < 0.03 and _rank_error(clean, 0.99, res["quantiles"]["0.99"]["value"]) < 0.002


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_string_top_values_within_their_bounds(name):
    values = STRINGS[name]
    res = run_tables("topk", split("s", values, 3), {"approx": True, "of": "s", "k": 8, "lg_max_k": 6,
                                                      "check": True})
    counts = Counter(v for v in values if v is not None)
    assert res["n"] == sum(counts.values()) and res["values"] == "string"
    err = res["max_error"]
    for (v, est), (lo, hi) in zip(res["items"], res["bounds"]):
        assert lo <= counts[v] <= hi and hi - lo == err
    big = [v for v, c in counts.items() if c > err]
    if len(big) <= 8:
        assert set(big) <= {v for v, _ in res["items"]}
    assert res["check"]["all_within"] and not res["check"]["missed_above_bound"]
    assert [c for (c,) in res["check"]["exact_items"]] == sorted(counts.values(), reverse=True)[:8]


def test_float_top_values_and_distinct():
    values = [float(v) / 4 for v in np.random.default_rng(8).zipf(1.6, 50_000)] + [-0.0, 0.0, None]
    res = run_tables("topk", split("f", values, 2), {"approx": True, "of": "f", "k": 5, "check": True})
    counts = Counter(v for v in values if v is not None)
    for (v, _), (lo, hi) in zip(res["items"], res["bounds"]):
        assert lo <= counts[v] <= hi
    assert res["check"]["recall"] == 1.0
    d = run_tables("distinct", split("f", values, 3), {"approx": True, "of": "f", "check": True})
    assert d["check"]["exact"] == len(counts) and d["values"] == "float64"
    assert abs(d["value"] - len(counts)) <= 4 * d["relative_standard_error"] * len(counts)


def test_float_top_check_counts_minus_zero_as_zero():
    """--check counted -0.0 and 0.0 apart (Arrow's hash kernels) while the sketch counts them as one value, as they
    compare: a true count of 0.0 half the truth, reported outside its bounds."""
    values = [-0.0] * 3000 + [0.0] * 3000 + [1.5] * 100 + [None]
    res = run_tables("topk", split("f", values, 3), {"approx": True, "of": "f", "k": 3, "check": True})
    counts = Counter(v for v in values if v is not None)          # Counter: -0.0 == 0.0, one key
    assert res["check"]["all_within"], res["check"]
    assert {float(r["value"]): r["true"] for r in res["check"]["rows"]} == {0.0: counts[0.0], 1.5: 100}


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_string_distinct_within_four_standard_errors(name):
    values = STRINGS[name]
    res = run_tables("distinct", split("s", values, 3), {"approx": True, "of": "s", "check": True})
    n = len({v for v in values if v is not None})
    assert res["check"]["exact"] == n
    assert abs(res["value"] - n) <= 4 * res["relative_standard_error"] * n + 1


def test_an_int_column_sketches_as_int64_shards_do():
    rng = np.random.default_rng(9)
    ints = [int(x) for x in rng.integers(I64_MIN, I64_MAX, 30_000)] + [I64_MIN, I64_MAX]
    res = run_tables("distinct", split("i", ints, 2), {"approx": True, "of": "i"})
    from tests.conftest import run_op
    plain, _, _ = run_op("distinct", [np.array(ints, np.int64)], 2, {"approx": True})
    assert res["value"] == plain["value"] and res["values"] == "int64"
    med = run_tables("median", split("i", ints, 2), {"approx": True, "of": "i"})
    assert isinstance(med["value"], int) and med["max"] == I64_MAX and med["min"] == I64_MIN


def test_a_column_of_nulls_only_is_no_values():
    from shardstats.errors import EmptyDataset
    tables = [pa.table({"x": pa.nulls(5)}), pa.table({"x": pa.nulls(0)})]
    res = run_tables("distinct", tables, {"approx": True, "of": "x"})
    assert res["value"] == 0 and res["skipped"] == 5
    with pytest.raises(ExceptionGroup) as got:
        run_tables("median", tables, {"approx": True, "of": "x"})
    assert isinstance(got.value.exceptions[0], EmptyDataset)


def test_a_column_of_the_wrong_type_is_one_line_exit_2():
    from shardstats.errors import InputError, UsageError
    tables = split("s", ["a", "b"], 1)
    with pytest.raises(ExceptionGroup) as got:
        run_tables("median", tables, {"approx": True, "of": "s"})
    exc = got.value.exceptions[0]
    assert isinstance(exc, InputError) and exc.exit_code == 2 and "string" in str(exc) and "\n" not in str(exc)
    with pytest.raises(ExceptionGroup) as got:
        run_tables("topk", tables, {"approx": True, "of": "nope"})
    assert "no such column" in str(got.value.exceptions[0])
    with pytest.raises(UsageError, match="--approx"):
        run_tables("median", tables, {"of": "s"})


# ---- the sketch op: every kind against the truth --------------------------------------------------------

DATA = {"ints": [int(v) for v in np.random.default_rng(5).zipf(1.3, 60_000) % (1 << 40)] + [I64_MIN, I64_MAX, -1],
        "floats": FLOATS["nulls and NaN"] + FLOATS["normal"][:20_000],
        "strings": STRINGS["zipf"] + STRINGS["unicode, empty, nulls"]}


@pytest.mark.parametrize("col", sorted(DATA))
def test_count_min_is_never_below_the_truth(col):
    values = DATA[col]
    counts = Counter(v for v in values if v is not None and v == v)
    asked = [v for v, _ in counts.most_common(5)] + list(counts)[-20:] + ([12345.5] if col == "floats" else
                                                                          ["absent"] if col == "strings" else [7 << 50])
    text = [repr(v) if isinstance(v, float) else str(v) for v in asked]
    res = run_tables("sketch", split("c", values, 3), {"kind": "count_min", "of": "c", "buckets": 256,
                                                        "count": text})
    n = sum(counts.values())
    assert res["total"] == n
    over = 0
    for v, c in zip(asked, res["counts"]):
        truth = counts.get(v, 0)
        assert c["estimate"] >= truth and c["upper"] == c["estimate"], (v, c, truth)
        assert c["lower"] <= truth
        over += c["estimate"] - truth > res["relative_error"] * n
    assert over <= 1           # above eps * N with probability e**-5 each


@pytest.mark.parametrize("col", sorted(DATA))
def test_bloom_has_no_false_negatives(col):
    values = DATA[col]
    present = sorted({v for v in values if v is not None and v == v}, key=str)[:300]
    absent = [f"zz-{i}" for i in range(200)] if col == "strings" else [float(i) + 0.123 for i in range(200)] \
        if col == "floats" else [(1 << 50) + i for i in range(200)]
    text = [repr(v) if isinstance(v, float) else str(v) for v in present + absent]
    res = run_tables("sketch", split("c", values, 2), {"kind": "bloom", "of": "c", "bloom_bytes": 1 << 14,
                                                        "contains": text})
    said = [c["maybe"] for c in res["contains"]]
    assert all(said[:len(present)])
    assert sum(said[len(present):]) <= max(10, 4 * res["false_positive_rate"] * len(absent))


@pytest.mark.parametrize("kind", ["theta", "cpc", "hll"])
@pytest.mark.parametrize("col", sorted(DATA))
def test_distinct_sketches_hold_the_truth(kind, col):
    values = DATA[col]
    n = len({v for v in values if v is not None and v == v})
    res = run_tables("sketch", split("c", values, 3), {"kind": kind, "of": "c", "lg_k": 10})
    if kind == "hll":
        assert abs(res["value"] - n) <= 4 * res["relative_standard_error"] * n
    else:
        assert res["lower"] <= n <= res["upper"], (res, n)


def test_sketch_op_options_out_of_range_are_usage_errors():
    from shardstats.errors import UsageError
    from shardstats.worker.ops import registry
    build = registry.get("sketch").params.build
    for given, said in (({"kind": "count_min", "hashes": 32, "buckets": 1 << 20}, "one message"),
                        ({"bloom_bytes": 1000}, "power of two"), ({"lg_k": 30}, "--lg-k"),
                        ({"kind": "kll", "count": ("3",)}, "count_min"), ({"quantiles": "2"}, "--quantiles"),
                        ({"kind": "nope"}, "--kind")):
        with pytest.raises(UsageError, match=said):
            build(**given)


def test_the_sketch_op_on_int64_shards_and_empty_ranks():
    from tests.conftest import run_op
    shards = [np.array([5, 5, 5, -1], np.int64), np.zeros(0, np.int64)]
    res, _, _ = run_op("sketch", shards, 3, {"kind": "count_min", "count": ("5", "-1", "6")})
    assert [c["estimate"] for c in res["counts"]][:2] == [3, 1] and res["counts"][2]["estimate"] >= 0
    res, _, _ = run_op("sketch", shards, 3, {"kind": "frequent", "top": 1})
    assert res["items"][0]["value"] == 5 and res["kind"] == "frequent_items_i64"
    res, _, _ = run_op("sketch", [np.zeros(0, np.int64)], 2, {"kind": "theta"})
    assert res["value"] == 0


# ---- files: merge, set operations, refusals, crafted payloads -------------------------------------------

def _file(path, kind: str, params: dict, values, vtype: str = "int64"):
    p = {**params, "values": vtype}
    payload = kinds.build(kind, p, values)
    sk.write(str(path), sk.header(kind, p, payload, {"values": len(values)}), payload)
    return str(path)


def _run(*args):
    from shardstats.cluster.sketchcli import sketch
    return CliRunner().invoke(sketch, list(args))


def test_theta_set_operations_match_python_sets(tmp_path):
    rng = np.random.default_rng(12)
    a = set(rng.integers(0, 60_000, 40_000).tolist())
    b = set(rng.integers(30_000, 90_000, 40_000).tolist())
    fa = _file(tmp_path / "a.th", "theta", {"lg_k": 12}, np.array(sorted(a), np.int64))
    fb = _file(tmp_path / "b.th", "theta", {"lg_k": 12}, np.array(sorted(b), np.int64))
    for op, truth in (("union", a | b), ("intersect", a & b), ("minus", a - b)):
        out = str(tmp_path / f"{op}.th")
        r = _run("merge", "--op", op, fa, fb, "-o", out)
        assert r.exit_code == 0, r.output
        r = _run("show", out, "--json")
        ans = json.loads(r.output)["answer"]
        assert ans["lower"] <= len(truth) <= ans["upper"], (op, ans, len(truth))


def test_daily_count_min_and_strings_merge_like_the_whole(tmp_path):
    days = [STRINGS["zipf"][i::5] for i in range(5)]
    files = [_file(tmp_path / f"d{i}.cm", "count_min", {"hashes": 4, "buckets": 512, "seed": 9001},
                   pa.array(d, pa.large_string()), "string") for i, d in enumerate(days)]
    r = _run("merge", *files, "-o", str(tmp_path / "w.cm"))
    assert r.exit_code == 0, r.output
    counts = Counter(STRINGS["zipf"])
    r = _run("show", str(tmp_path / "w.cm"), "--count", "user-1", "--count", "user-77", "--count", "nobody", "--json")
    got = json.loads(r.output)["answer"]["counts"]
    for c in got:
        assert c["estimate"] >= counts.get(c["value"], 0) >= c["lower"]
    r = _run("show", str(tmp_path / "w.cm"))
    assert r.exit_code == 0 and "never below the truth" in r.output


def test_mismatched_and_wrong_questions_are_one_line_exit_2(tmp_path):
    v = np.arange(1000, dtype=np.int64)
    a = _file(tmp_path / "a.cm", "count_min", {"hashes": 4, "buckets": 512, "seed": 9001}, v)
    cases = [(_file(tmp_path / "w.cm", "count_min", {"hashes": 4, "buckets": 1024, "seed": 9001}, v), "buckets=1024"),
             (_file(tmp_path / "d.cm", "count_min", {"hashes": 3, "buckets": 512, "seed": 9001}, v), "hashes=3"),
             (_file(tmp_path / "f.cm", "count_min", {"hashes": 4, "buckets": 512, "seed": 9001}, v.astype(float),
                    "float64"), "values=float64")]
    for other, said in cases:
        r = _run("merge", a, other, "-o", str(tmp_path / "o.cm"))
        assert r.exit_code == 2 and said in r.output and "parameters differ" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o.cm").exists()
    other_seed = sk.header("count_min", {"hashes": 4, "buckets": 512, "seed": 2}, b"x", {})
    (tmp_path / "s.cm").write_bytes(sk.dump(other_seed, b"x"))
    r = _run("merge", a, str(tmp_path / "s.cm"), "-o", str(tmp_path / "o.cm"))
    assert r.exit_code == 2 and "seed = 2" in r.output and len(r.output.strip().splitlines()) == 1
    kll = str(tmp_path / "k.sk")
    payload = sk.kll_build(v, 200)
    sk.write(kll, sk.header("kll_doubles", {"k": 200}, payload, {}), payload)
    td = _file(tmp_path / "t.td", "tdigest_double", {"k": 200}, v)
    r = _run("merge", kll, td, "-o", str(tmp_path / "o.sk"))
    assert r.exit_code == 2 and "one kind" in r.output
    r = _run("merge", "--op", "intersect", a, a, "-o", str(tmp_path / "o.sk"))
    assert r.exit_code == 2 and "theta" in r.output
    r = _run("show", a, "--contains", "3")
    assert r.exit_code == 2 and "answers --count" in r.output
    r = _run("show", _file(tmp_path / "b.bl", "bloom", {"bytes": 64, "hashes": 7}, v), "--contains", "x")
    assert r.exit_code == 2 and "int64" in r.output
    r = _run("show", str(tmp_path / "b.bl"), "--contains", "3", "--contains", "5000")
    assert r.exit_code == 0 and "3: maybe" in r.output
    bad = sk.header("bloom", {"bytes": 96, "hashes": 7}, b"x" * 96, {})
    (tmp_path / "x.bl").write_bytes(sk.dump(bad, b"x" * 96))
    r = _run("show", str(tmp_path / "x.bl"))
    assert r.exit_code == 2 and "power of two" in r.output


@pytest.mark.parametrize("kind,params", [("tdigest_double", {"k": 100}), ("theta", {"lg_k": 10}),
                                         ("cpc", {"lg_k": 10}), ("count_min", {"hashes": 3, "buckets": 64, "seed": 9001}),
                                         ("frequent_strings", {"lg_max_k": 6}), ("frequent_items_f64", {"lg_max_k": 6})])
def test_crafted_payloads_of_every_new_kind_never_crash_the_command(kind, params):
    """Payloads changed and re-signed: read in a forked child, so a library crash is one line, never a segfault."""
    from shardstats.cluster.sketchcli import _guarded
    vtype = "string" if kind == "frequent_strings" else "float64" if kind in ("tdigest_double", "frequent_items_f64") \
        else "int64"
    values = pa.array([f"v{i % 300}" for i in range(5000)], pa.large_string()) if vtype == "string" else \
        np.arange(5000, dtype=np.int64 if vtype == "int64" else np.float64) % 300
    p = {**params, "values": vtype}
    payload = kinds.build(kind, p, values)
    head = sk.header(kind, p, payload, {})
    rng = np.random.default_rng(2)
    outcomes = Counter()
    tampered = []
    for _ in range(10):
        bad = bytearray(payload)
        for j in rng.integers(0, min(len(bad), 64), 2):       # the preamble: where sizes and counts live
            bad[j] = int(rng.integers(0, 256))
        tampered.append(bytes(bad))
    cut = [payload[:len(payload) // 2], payload[:7]]            # truncated, re-signed: never a whole sketch
    for i, bad in enumerate(tampered + cut):
        try:
            _guarded("x", sk.validate_payload, head, bad)
            assert i < len(tampered), "a truncated payload was read"
            outcomes["read"] += 1
        except sk.SketchFileError as exc:
            assert "\n" not in str(exc)
            outcomes["crashed" if "crashed" in str(exc) else "refused"] += 1
    assert outcomes["refused"] + outcomes["crashed"] >= len(cut), outcomes


# ---- through a cluster: the coordinator reads the column as a table ------------------------------------

def test_of_column_through_a_local_cluster(tmp_path):
    rows = [(f"u{i % 37}", i * 0.5 - 100.0) for i in range(3000)]
    (tmp_path / "t.csv").write_text("user,price\n" + "".join(f"{u},{p}\n" for u, p in rows))
    r = cli("submit", "median", "--input", str(tmp_path / "t.csv"), "--local", "2", "--approx", "--of", "price",
            "--json", "--save-sketch", str(tmp_path / "p.sk"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["result"]
    prices = np.sort([p for _, p in rows])
    assert res["values"] == "float64" and _rank_error(prices, 0.5, res["value"]) <= res["rank_error_bound"]
    r = cli("submit", "sketch", "--input", str(tmp_path / "t.csv"), "--local", "2", "--of", "user", "--kind",
            "count_min", "--count", "u3", "--count", "u99", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["result"]["counts"]
    assert counts[0]["estimate"] >= sum(u == "u3" for u, _ in rows) and counts[1]["estimate"] >= 0
    r = cli("sketch", "show", str(tmp_path / "p.sk"), "--quantiles", "0.5")
    assert r.returncode == 0 and "q0.5: ~" in r.stdout and "column price" in r.stdout
