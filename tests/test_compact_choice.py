"""``--encoding auto``: the decision from measured figures (sans-IO), the link probe, the coding sample, and
the choice as a job makes it over the in-memory transport (every answer checked against numpy)."""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from shardstats.cluster.gen import generate
from shardstats.worker.data import encoding as enc
from shardstats.worker.comm.inmemory import InMemoryNetwork
from shardstats.worker.comm.linkprobe import FAST, frames_for, probe_ring, rate_of
from shardstats.worker.ops import compact_choice as cc
from tests.conftest import I64_MAX, I64_MIN, ref_mode, run_op

pytestmark = pytest.mark.timeout(60)

MBIT = 1e6 / 8          # bytes/s in one Mbit/s


def rank(link_mbit: float, *, leaving: int = 1_350_000, coding_cpu: float = 0.2e-6, compact_bytes: float = 2.3,
         repeats: bool = False, host: str = "h", cpus: int = 2) -> dict:
    return cc.Measured(leaving=leaving, link_rate=link_mbit * MBIT, coding_cpu=coding_cpu,
                       compact_bytes=compact_bytes, repeats=repeats, host=host, cpus=cpus).entry()


def ten(link_mbit: float, *, one_host: bool = True, **kw) -> list[dict]:
    return [rank(link_mbit, host="h" if one_host else f"h{i}", **kw) for i in range(10)]


@pytest.mark.parametrize("link,want", [(1000, "plain"), (100, "plain"), (20, "compact"), (5, "compact")])
def test_ten_ranks_on_two_cores_pick_compact_only_on_slow_links(link, want):
    encoding, why, job = cc.decide(ten(link))
    assert encoding == want, job
    assert job["load_per_cpu"] == 5.0
    assert ("slow" in why) == (want == "compact")


def test_the_same_link_and_cpu_pay_for_compact_only_when_each_rank_has_its_own_cores():
    """100 Mbit/s: ten ranks sharing two cores code five times slower than ten on their own machines."""
    assert cc.decide(ten(100, one_host=True))[0] == "plain"
    encoding, _, job = cc.decide(ten(100, one_host=False))
    assert encoding == "compact" and job["load_per_cpu"] == 0.5


def test_predictions_follow_the_formula():
    r = rank(100, leaving=1000, coding_cpu=1e-6, compact_bytes=2.0)
    p = cc.predict(r, sharing=4)
    rate = cc.LINK_SHARE * 100 * MBIT
    assert p["plain_s"] == pytest.approx(1000 * 8 / rate)
    assert p["compact_s"] == pytest.approx(1000 * (2.0 / rate + cc.CODING_FACTOR * 4e-6))
    assert cc.predict(r, sharing=0.25)["coding_s"] == pytest.approx(cc.CODING_FACTOR * 1e-6)   # never below a core


def test_repeats_on_any_rank_or_nothing_to_send_keep_plain():
    ranks = ten(1)
    ranks[7] = rank(1, repeats=True)
    assert cc.decide(ranks)[:2] == ("plain", "values repeat: most fingerprints would be candidates and travel twice")
    assert cc.decide(ten(1, leaving=0))[0] == "plain"


def test_one_disturbed_probe_does_not_decide():
    """A rank whose probe ran while its CPU was busy reads a slow link; the median of the others holds."""
    ranks = ten(1000)
    ranks[3] = rank(1)
    encoding, _, job = cc.decide(ranks)
    assert encoding == "plain" and job["slowest_link_rate"] == 1 * MBIT and job["link_rate"] == 1000 * MBIT


def test_compact_must_save_the_margin():
    """Near a tie the prediction's error decides nothing: plain unless compact saves 1 - COMPACT_MARGIN."""
    def ranks_at(ratio: float) -> list[dict]:
        # one rank per host, 1 cpu: compact_s / plain_s = (b + c * rate * factor) / 8 for rate = LINK_SHARE * link
        link = 10.0
        rate = cc.LINK_SHARE * link * MBIT
        coding_cpu = (8 * ratio - 2.0) / (rate * cc.CODING_FACTOR)
        return [rank(link, coding_cpu=coding_cpu, compact_bytes=2.0, host=f"h{i}", cpus=1) for i in range(4)]
    assert cc.decide(ranks_at(0.8))[0] == "compact"
    assert cc.decide(ranks_at(0.95))[0] == "plain"
    assert cc.decide(ranks_at(1.5))[0] == "plain"


def test_the_decision_does_not_depend_on_the_ranks_order():
    rng = np.random.default_rng(2)
    ranks = [rank(float(rng.uniform(1, 500)), coding_cpu=float(rng.uniform(0.05e-6, 1e-6)),
                  host=f"h{rng.integers(0, 3)}", cpus=int(rng.integers(1, 5))) for _ in range(6)]
    answers = {cc.decide(list(p))[:2] for p in itertools.permutations(ranks)}
    assert len(answers) == 1


def test_probe_size_is_a_small_share_within_bounds():
    assert cc.probe_bytes(0) == cc.PROBE_MIN
    assert cc.probe_bytes(10 ** 9) == cc.PROBE_MAX
    assert cc.probe_bytes(5_000_000) == int(5_000_000 * 8 * cc.PROBE_SHARE)


def test_rate_of_times_the_frames_after_the_first():
    assert rate_of([0.0, 0.1, 0.2, 0.3], [100, 1000, 1000, 1000]) == pytest.approx(3000 / 0.3)
    assert rate_of([1.0], [1000]) == FAST                      # one frame: nothing to time
    assert rate_of([1.0, 1.0, 1.0], [1000] * 3) == FAST        # all at once: loopback, or a busy receiver
    assert frames_for(0) == 3 and frames_for(5 * (1 << 14) + 1) == 6


@pytest.mark.parametrize("size", [1, 2, 5])
def test_every_rank_probes_its_predecessors_link(size):
    net = InMemoryNetwork(size, timeout=10)

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(probe_ring(c, 100_000 + 20_000 * c.rank)) for c in net.comms]
        return [t.result() for t in tasks]
    probes = asyncio.run(main())
    for r, p in enumerate(probes):
        want = 0 if size == 1 else frames_for(100_000 + 20_000 * ((r - 1) % size)) * (1 << 14)
        assert p.received == want and p.rate > 0


@pytest.mark.parametrize("kind", ["unique-dup", "full-range", "narrow"])
def test_the_sample_codes_at_the_jobs_bytes_a_value(kind):
    """The sample's fingerprints are given the job's density: its bytes a value are what the job's chunks cost."""
    rng = np.random.default_rng(5)
    w, n = 10, 200_000
    values = {"unique-dup": generate(n * w, w, "unique-dup", 3)[0],
              "full-range": rng.integers(I64_MIN, I64_MAX, n, dtype=np.int64),
              "narrow": rng.permutation(n).astype(np.int64) - n // 2}[kind]
    bits = enc.fingerprint_bits(len(values) * w, w)
    owners = rng.integers(0, w, len(values))
    coded = 0
    for o in range(w):                                  # what this rank would send each owner
        fps = np.sort(enc.fingerprints(values[owners == o], bits))
        coded += sum(len(p["fq"]) + len(p["fr"]) + 24 for p in enc.encode_chunks(fps, 1 << 20))
    smp = cc.sample_of(values)
    assert len(smp) == cc.CODING_SAMPLE and np.isin(smp, values).all()
    secs, nbytes = cc.coding_sample(smp, len(values) / w, bits, 1 << 20)
    assert nbytes == pytest.approx(coded / len(values), rel=0.1)
    assert secs > 0
    assert cc.coding_sample(values[:0], 1, bits, 1 << 20) == (0.0, 0.0)


def _job(shards, params, host):
    net = InMemoryNetwork(len(shards), timeout=20)
    for c in net.comms:
        c.addrs = [f"{host.format(i + 1)}:7000" for i in range(len(shards))]
    res, stats, _ = run_op("mode", shards, len(shards), {"encoding": "auto", **params}, net=net)
    value, count, _ = ref_mode(np.concatenate(shards))
    assert (res["value"], res["count"]) == (value, count)
    return stats


def _unique_shards(seed=11):
    rng = np.random.default_rng(seed)
    shards = [rng.permutation(200_000)[:70_000].astype(np.int64) + 10 ** 12 * i for i in range(4)]
    shards[3][0] = shards[0][0]                       # one repeat across two shards
    shards[1][5] = I64_MAX
    shards[2][9] = I64_MIN
    return shards


@pytest.mark.parametrize("host,params,want,source", [
    ("10.228.0.{}", {"link_mbit": 5}, "compact", "declared"),
    ("10.228.0.{}", {"link_mbit": 10_000}, "plain", "declared"),
    ("10.228.0.{}", {}, "plain", "probed"),              # the in-memory "link" is a memory copy: fast
    ("127.0.0.{}", {"link_mbit": 5}, "plain", "loopback"),
])
def test_a_job_chooses_says_why_and_stays_exact(host, params, want, source):
    stats = _job(_unique_shards(), params, host)
    choices = [s["encoding_choice"] for s in stats]
    assert {s["encoding"] for s in stats} == {want} and {c["encoding"] for c in choices} == {want}
    assert {c["link"] for c in choices} == {source}
    if source != "loopback":
        c = choices[0]
        assert set(c) >= {"link_mbit", "coding_mvalues_per_s", "predicted_plain_s", "predicted_compact_s", "why"}
        assert (c["predicted_compact_s"] <= cc.COMPACT_MARGIN * c["predicted_plain_s"]) == (want == "compact")
        assert ("probe" in c) == (source == "probed")
    depth = 2
    plan = {"declared": depth, "probed": depth + 1, "loopback": 0}[source]     # an allgather: log2 W rounds
    assert all(s["rounds"] == 1 + depth + plan + (2 if want == "compact" else 0) for s in stats)


def test_repeating_values_stay_plain_on_a_slow_link():
    rng = np.random.default_rng(3)
    shards = [rng.integers(-300, 300, 30_000) for _ in range(4)]
    stats = _job(shards, {"link_mbit": 1}, "10.228.0.{}")
    assert {s["encoding"] for s in stats} == {"plain"}
    assert "repeat" in stats[0]["encoding_choice"]["why"]


def test_an_even_split_between_timed_and_untimeable_links_reads_as_the_timed_rate():
    """Half the probes too fast to time (a busy receiver read its frames at once): the median is a real figure."""
    ranks = ten(100)
    for r in ranks[::2]:
        r["link_rate"] = FAST
    _, _, job = cc.decide(ranks)
    assert job["link_rate"] == 100 * MBIT and cc.mbit(job["link_rate"]) == 100.0 and cc.mbit(FAST) is None


def test_a_one_chunk_job_goes_up_the_tree_plain_and_says_so():
    shards = [np.array([5, 1, 5], dtype=np.int64), np.array([1, 5], dtype=np.int64)]
    net = InMemoryNetwork(2, timeout=10)
    for c in net.comms:
        c.addrs = ["10.228.0.1:7000", "10.228.0.2:7000"]
    res, stats, _ = run_op("mode", shards, 2, {"encoding": "auto", "link_mbit": 1}, net=net, known_total=True)
    assert (res["value"], res["count"]) == (5, 3)
    assert {s["shuffle"] for s in stats} == {"tree"} and {s["encoding"] for s in stats} == {"plain"}
    assert "tree" in stats[0]["encoding_choice"]["why"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 10, 13])
def test_allgather_brings_every_ranks_item_to_every_rank_in_rank_order(size):
    from shardstats.worker.comm.collectives import allgather, tree_depth
    net = InMemoryNetwork(size, timeout=10)

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(allgather(c, {"r": c.rank, "x": [c.rank] * (c.rank % 3)})) for c in net.comms]
        return [t.result() for t in tasks]
    want = [{"r": r, "x": [r] * (r % 3)} for r in range(size)]
    assert all(got == want for got in asyncio.run(main()))
    assert all(c.stats.messages_sent == tree_depth(size) for c in net.comms)     # one message a round


def test_other_work_on_the_machine_stretches_the_coding():
    """Ten ranks each on its own 2-core machine pick compact at 100 Mbit/s, unless those machines are busy."""
    idle = ten(100, one_host=False)
    busy = [{**r, "load": 16.0} for r in idle]
    assert cc.decide(idle)[0] == "compact"
    encoding, _, job = cc.decide(busy)
    assert encoding == "plain" and job["load_per_cpu"] == 8.0
    assert cc.decide([{**r, "load": 0.5} for r in idle])[2]["load_per_cpu"] == 0.5     # its own ranks count anyway
