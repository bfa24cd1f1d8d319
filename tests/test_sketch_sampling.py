"""The sampled KLL path of ``median --approx`` (``--sample-rate``): estimates within the bound they state (the sketch's
rank error plus the sample's term) against numpy on many random datasets; the sample is a Bernoulli sample; a sampled
saved sketch and a full one are told apart, merge only at one rate, and refuse a header that was changed."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scripts.bench_sketches import SAMPLED_KINDS as KINDS
from scripts.bench_sketches import SAMPLED_QS as QS
from scripts.bench_sketches import sampled_data as _dataset
from scripts.bench_sketches import sampled_median as _run
from scripts.bench_sketches import worst_rank_error as _worst_rank_error
from shardstats import sketches as sk
from tests.conftest import cli, run_op
from tests.test_sketches import merged_week


def _assert_intervals_hold(values: np.ndarray, res: dict, sampled: bool) -> None:
    """Each stated [low, high] holds a value whose rank interval contains the asked rank (float64 order); a sample's
    interval is open (None) where it would reach past the sample's minimum or maximum."""
    s = np.sort(np.asarray(values, np.float64))
    n = len(s)
    f = lambda v: float(v) if abs(v) < 2 ** 63 - 1024 else float(np.float64(v))  # noqa: E731
    asked = [(0.5, res)] + [(float(q), a) for q, a in (res.get("quantiles") or {}).items()]
    e = res["rank_error_bound"]
    for r, a in asked:
        if a["low"] is not None:
            assert np.searchsorted(s, f(a["low"]), "left") <= r * n + 1e-9, (r, a)
        else:
            assert sampled and r - e <= 0, (r, a)
        if a["high"] is not None:
            assert np.searchsorted(s, f(a["high"]), "right") >= r * n - 1e-9, (r, a)
        else:
            assert sampled and r + e >= 1, (r, a)


def test_sampled_estimates_within_their_stated_bound_on_random_datasets():
    """60 random cases: every kind of data, 1 to 120k values, 1-9 shards on 1-6 ranks (more ranks than shards
    too), a forced rate of 1/2 to 1/256 or auto (no sampling at these sizes): every answer within its bound."""
    rng = np.random.default_rng(2026)
    sampled = 0
    for case in range(60):
        kind = KINDS[case % len(KINDS)]
        n = int(rng.integers(1, 120_000)) if case % 6 else int(rng.integers(1, 40))
        values = _dataset(kind, n, rng)
        shards, workers = int(rng.integers(1, 10)), int(rng.integers(1, 7))
        rate = "auto" if case % 5 == 0 else f"1/{2 ** int(rng.integers(1, 9))}"
        if rate != "auto" and n * sk.sample_rate_value(rate) < 30:
            rate = "1/2"                  # an empty sample is refused (tested below), not estimated
        params = {"approx": True, "quantiles": ",".join(QS), "sample_rate": rate, "seed": case, "k": 200}
        res = _run(values, shards, workers, params)
        err = _worst_rank_error(values, res)
        assert res["n"] == n, (case, kind)
        assert err <= res["rank_error_bound"] + 1e-12, (case, kind, n, rate, err, res["rank_error_bound"])
        _assert_intervals_hold(values, res, "sample_rate" in res)
        if rate == "auto":
            assert "sample_rate" not in res                # small inputs are sketched whole
        else:
            sampled += 1
            p = sk.sample_rate_value(rate)
            assert res["sample_rate"] == p
            assert res["sample_error"] == pytest.approx(sk.sample_error(res["sampled"], n))
            assert res["rank_error_bound"] == pytest.approx(min(1.0, res["sketch_rank_error"] + res["sample_error"]))
            assert abs(res["sampled"] - n * p) <= 6 * math.sqrt(n * p * (1 - p)) + 1     # binomial(n, p)
    assert sampled >= 40


def test_the_sampled_check_reports_the_true_error_against_the_bound():
    rng = np.random.default_rng(4)
    values = rng.permutation(300_000).astype(np.int64) - 150_000
    res, stats, _ = run_op("median", np.array_split(np.sort(values), 3), 4,
                           {"approx": True, "check": True, "quantiles": "0.1,0.99", "sample_rate": "1/16", "seed": 1})
    assert stats[0]["sample_rate"] == 1 / 16 and res["sampled"] < 40_000
    c = res["check"]
    assert c["max_rank_error"] == pytest.approx(_worst_rank_error(values, res), abs=1e-12)
    assert c["all_within"] and all(r["bound"] == res["rank_error_bound"] for r in c["rows"])
    assert c["rows"][0]["exact"] == np.median(values)
    from shardstats.worker.ops.approx import render_median
    text = "\n".join(render_median(res))
    assert "from a 1/16 sample" in text and "300,000 values" in text and "within" in text


def test_the_bound_is_not_vacuous_and_auto_picks_the_rate():
    """The sample's term is the stated formula; auto keeps it under a quarter of k=200's error with >= 2**20 values."""
    assert sk.sample_error(1 << 20) == pytest.approx(math.sqrt(math.log(2e6) / (2 << 20)))
    assert sk.sample_error(10, 10) == pytest.approx(math.sqrt(math.log(2e6) * 0.1 / 20)) and sk.sample_error(0) == 1.0
    assert sk.auto_sample_rate(1_000_000, 200) == 1.0
    assert sk.auto_sample_rate(10 ** 8, 200) == 1 / 64          # 1.56M values expected
    assert sk.auto_sample_rate(10 ** 8, 800) >= 1 / 16         # k=800: a bigger sample for the smaller bound
    eps = sk.ds().kll_doubles_sketch.get_normalized_rank_error(200, False)
    assert sk.sample_error(int(10 ** 8 * sk.auto_sample_rate(10 ** 8, 200) * 0.99)) <= eps / 4
    from shardstats.worker.ops.approx import sample_rate
    from shardstats.worker.ops.median import MedianParams
    assert sample_rate(MedianParams(approx=True), 10 ** 8) == 1 / 64
    assert sample_rate(MedianParams(approx=True, save_sketch="day.sk"), 10 ** 8) == 1.0   # saved: full unless asked
    assert sample_rate(MedianParams(approx=True, save_sketch="d.sk", sample_rate="1/8"), 10 ** 8) == 1 / 8


def test_bernoulli_sample_keeps_each_position_with_probability_p():
    """Positions from geometric gaps: in range, increasing, every position reachable (first and last included), each
    kept at rate p (20,000 draws of 64 positions against Binomial(20000, p) per position)."""
    rng = np.random.default_rng(9)
    base = np.arange(64, dtype=np.int64)
    hits = np.zeros(64, np.int64)
    for _ in range(20_000):
        s = sk.bernoulli_sample(base, 0.125, rng)
        assert np.all(np.diff(s) > 0)
        hits[s] += 1
    expect, sd = 20_000 * 0.125, math.sqrt(20_000 * 0.125 * 0.875)
    assert np.all(np.abs(hits - expect) <= 5 * sd), hits
    big = np.arange(3_000_000, dtype=np.int64)
    s = sk.bernoulli_sample(big, 1 / 1000, rng)
    assert abs(len(s) - 3000) <= 6 * math.sqrt(3000) and np.all(np.diff(s) > 0) and s[-1] < len(big)
    assert sk.bernoulli_sample(big, 1.0, rng) is big and len(sk.bernoulli_sample(big[:0], 0.5, rng)) == 0


def test_an_empty_sample_is_refused_and_rates_are_checked():
    from shardstats.errors import InputError, UsageError
    with pytest.raises(ExceptionGroup) as got:
        for seed in range(50):        # 3 values at 1/4096: the sample is empty in nearly every seed
            run_op("median", [np.arange(3, dtype=np.int64)], 2, {"approx": True, "sample_rate": "1/4096",
                                                                 "seed": seed})
    exc = got.value.exceptions[0]
    assert isinstance(exc, InputError) and "the sample of 3 values is empty" in str(exc)
    from shardstats.worker.ops.median import MedianParams
    for bad in ("0", "2", "1/0", "x", "-1/4", "nan"):
        with pytest.raises((UsageError, ValueError)):
            MedianParams(approx=True, sample_rate=bad)
    with pytest.raises(UsageError, match="--sample-rate"):
        MedianParams(sample_rate="1/8")


# ---- saved sketches: a sample and a full sketch told apart ------------------------------------------------

def _kll_file(path, values, rate=1.0, seed=0, population=True):
    payload = sk.kll_build(values, 200, rate, np.random.default_rng(seed))
    params = {"k": 200, **({"sample_rate": rate} if rate < 1 else {})}
    sk.write(str(path), sk.header("kll_doubles", params, payload, {"values": len(values)}, None,
                                  len(values) if rate < 1 and population else None), payload)


def test_sampled_files_merge_at_one_rate_and_answer_within_the_bound(tmp_path):
    rng = np.random.default_rng(6)
    days = [rng.lognormal(3 + d / 7, 1, 200_000).astype(np.int64) for d in range(4)]
    for d, v in enumerate(days):
        _kll_file(tmp_path / f"s{d}.sk", v, 1 / 8, seed=d)
    _kll_file(tmp_path / "full.sk", days[0])
    _kll_file(tmp_path / "s16.sk", days[1], 1 / 16)
    files = [str(tmp_path / f"s{d}.sk") for d in range(4)]
    doc = merged_week(tmp_path, files)
    ans, allv = doc["answer"], np.concatenate(days)
    assert doc["header"]["params"]["sample_rate"] == 1 / 8 and doc["header"]["population"] == len(allv)
    assert ans["n"] == len(allv) and not ans["n_estimated"] and ans["sample_rate"] == 1 / 8
    assert ans["rank_error_bound"] == pytest.approx(ans["sketch_rank_error"] + sk.sample_error(ans["sampled"],
                                                                                                len(allv)))
    s = np.sort(allv.astype(np.float64))
    for q, a in ans["quantiles"].items():
        lo, hi = np.searchsorted(s, a["value"], "left"), np.searchsorted(s, a["value"], "right")
        assert sk.true_rank_error(float(q), int(lo), int(hi), len(s)) <= ans["rank_error_bound"]
    r = cli("sketch", "show", str(tmp_path / "week.sk"))
    assert r.returncode == 0 and "from a 1/8 sample" in r.stdout, r.stdout
    r = cli("sketch", "show", str(tmp_path / "full.sk"))
    assert r.returncode == 0 and "sample" not in r.stdout.splitlines()[1], r.stdout
    for a, b, said in (("full.sk", "s0.sk", "a 1/8 sample and"), ("s0.sk", "full.sk", "a sketch of every value"),
                       ("s0.sk", "s16.sk", "a 1/16 sample and")):
        r = cli("sketch", "merge", str(tmp_path / a), str(tmp_path / b), "-o", str(tmp_path / "x.sk"))
        assert r.returncode == 2 and said in r.stderr and "--sample-rate" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.sk").exists()


def test_a_sampled_file_without_its_population_estimates_n_and_bad_headers_are_refused(tmp_path):
    v = np.arange(100_000, dtype=np.int64)
    _kll_file(tmp_path / "nopop.sk", v, 1 / 4, population=False)
    ans = json.loads(cli("sketch", "show", str(tmp_path / "nopop.sk"), "--json").stdout)["answer"]
    assert ans["n_estimated"] and abs(ans["n"] - 100_000) < 3_000
    _kll_file(tmp_path / "good.sk", v, 1 / 4)
    data = (tmp_path / "good.sk").read_bytes()
    nl = data.index(b"\n")
    head, payload = json.loads(data[:nl]), data[nl + 1:]
    cases = {"rate.sk": ({**head, "params": {"k": 200, "sample_rate": 1.5}}, "sample_rate"),
             "rate0.sk": ({**head, "params": {"k": 200, "sample_rate": 0.0}}, "sample_rate"),
             "pop.sk": ({**head, "population": -5}, "population"),
             "small.sk": ({**head, "population": 10}, "a sample of")}
    for name, (h, said) in cases.items():
        (tmp_path / name).write_bytes(sk.dump(h, payload))
        r = cli("sketch", "show", str(tmp_path / name))
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)


def test_through_a_cluster_saved_sketches_are_full_unless_a_rate_is_asked(tmp_path):
    from shardstats.cluster.gen import generate, write_shards
    parts = generate(80_000, 3, "unique-dup", seed=3)
    write_shards(parts, tmp_path / "u", "npy")
    for name, extra in (("full.sk", []), ("s4.sk", ["--sample-rate", "1/4"])):
        r = cli("submit", "median", "--input", str(tmp_path / "u"), "--local", "2", "--approx", "--json",
                "--save-sketch", str(tmp_path / name), *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    full, s4 = (sk.read(str(tmp_path / n))[0] for n in ("full.sk", "s4.sk"))
    assert "sample_rate" not in full["params"] and "population" not in full
    assert s4["params"]["sample_rate"] == 0.25 and s4["population"] == sum(map(len, parts))
    r = cli("submit", "median", "--input", str(tmp_path / "u"), "--local", "1", "--sample-rate", "1/4")
    assert r.returncode == 2 and "--approx" in r.stderr
