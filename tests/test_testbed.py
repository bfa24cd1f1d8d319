"""The multi-host test bed (scripts/testbed.py): real network namespaces, shaped links, one worker per host.

Jobs run from the root namespace against workers in their own namespaces, under every
shuffle strategy; answers are checked against numpy, fan-in bounds against the config,
and teardown against what the kernel still lists.  Skipped where namespaces cannot be
made (not root, no iproute2, a sandbox without CAP_NET_ADMIN).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from shardstats import reference
import pytest

from scripts import testbed  # noqa: E402

from shardstats.cluster.gen import generate, write_shards  # noqa: E402
from shardstats.coordinator.job import run_job  # noqa: E402
from shardstats.coordinator.spec import job_spec  # noqa: E402
from shardstats.worker.comm.shuffle import STRATEGIES  # noqa: E402

pytestmark = pytest.mark.netns

_OK, _WHY = testbed.available()
needs_netns = pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_WHY}")

HOSTS = 4
FAN_IN = 1
# Small chunks so every stream has several chunks and admission really has to hold senders back.
SHUFFLE = {"fan_in": FAN_IN, "credits": 2, "chunk_bytes": 4096}


@pytest.fixture(scope="module")
def bed():
    if not _OK:
        pytest.skip(f"network namespaces unavailable: {_WHY}")
    # A slow link (20 Mbit/s: gather's ~240 KB into rank 0 takes ~0.1 s) so streams overlap however the
    # workers' starts are skewed; that makes "gather has fan-in > F" a property, not luck.
    b = testbed.TestBed(HOSTS, testbed.LinkShape(rate="20mbit", delay_ms=1.0), job_timeout=30.0)
    with b:
        yield b
    assert b.leftovers() == {"namespaces": [], "links": [], "pids": []}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    parts = generate(40_000, HOSTS, "unique-dup", seed=7)
    out = tmp_path_factory.mktemp("bedshards")
    write_shards(parts, out, "npy")
    return out, np.concatenate(parts)


def reference_mode(values: np.ndarray) -> tuple[int, int]:
    r = reference.mode(values)
    return r["value"], r["count"]


def job(bed, op: str, path: Path, params: dict):
    return asyncio.run(run_job(bed.addrs, bed.token.encode(), job_spec(op, str(path), params, timeout=30.0),
                               absolute_paths=True))


@needs_netns
def test_available_reports_a_reason():
    ok, why = testbed.available()
    assert ok and why == "ok"
    assert testbed.leftovers(f"{testbed.PREFIX}probe") == {"namespaces": [], "links": [], "pids": []}


@needs_netns
def test_hosts_are_separate_namespaces_with_shaped_links(bed):
    rows = bed.ping()
    assert [r["up"] for r in rows] == [True] * HOSTS
    assert [r["id"] for r in rows] == list(range(HOSTS))
    for i in range(HOSTS):
        assert bed.ns(i) in testbed.namespaces()
        host_side = testbed.run(["tc", "qdisc", "show", "dev", bed.veth_host(i)], ns=bed.ns(i)).stdout
        bridge_side = testbed.run(["tc", "qdisc", "show", "dev", bed.veth_root(i)]).stdout
        assert "tbf" in host_side and "tbf" in bridge_side       # both directions limited
        assert testbed.ns_pids(bed.ns(i)) == [bed.pids[i]]       # exactly its own worker inside


@needs_netns
@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "tree"])    # the bed's data is many chunks
def test_mode_and_median_on_the_bed(bed, dataset, strategy):
    path, values = dataset
    rep = job(bed, "mode", path, {"shuffle": strategy, **SHUFFLE})
    want_value, want_count = reference_mode(values)
    assert (rep.result["value"], rep.result["count"]) == (want_value, want_count) == (want_value, 2)
    inbound = [w["max_inbound_streams"] for w in rep.workers]
    sent = np.array([w["bytes_sent"] for w in rep.workers])
    assert sent.sum() > 0.8 * values.nbytes * (HOSTS - 1) / HOSTS or strategy == "gather"
    if strategy == "credit":
        assert max(inbound) <= FAN_IN
    if strategy == "gather":
        assert inbound[0] == max(inbound) > FAN_IN     # several hosts stream into rank 0 at once

    med = job(bed, "median", path, {})          # the median does not shuffle
    s = np.sort(values)
    n = len(s)
    assert (med.result["lower"], med.result["upper"]) == (int(s[(n - 1) // 2]), int(s[n // 2]))


@needs_netns
def test_cut_and_restore_a_host(bed):
    bed.cut(2)
    try:
        rows = bed.ping(timeout=0.5)
        assert [r["up"] for r in rows] == [True, True, False, True]
    finally:
        bed.restore(2)
    assert all(r["up"] for r in bed.ping(timeout=5.0))


@needs_netns
def test_teardown_on_exception_leaves_nothing():
    bed = testbed.TestBed(2, testbed.LinkShape(rate="50mbit", delay_ms=0))
    with pytest.raises(RuntimeError, match="boom"):
        with bed:
            pids = list(bed.pids)
            assert sorted(bed.leftovers()["namespaces"]) == [bed.ns(0), bed.ns(1)]
            raise RuntimeError("boom")
    assert bed.leftovers() == {"namespaces": [], "links": [], "pids": []}
    assert not any(testbed._alive(p) for p in pids)
    assert bed.bridge not in testbed.links()
    assert not bed.log_dir.exists()           # its temporary log folder too


@needs_netns
def test_cleanup_removes_leftovers_by_prefix():
    bed = testbed.TestBed(1, testbed.LinkShape(delay_ms=0))
    bed.start()
    pid = bed.pids[0]
    found = testbed.cleanup(bed.prefix)      # as after a crash: the TestBed object never stops it
    assert bed.ns(0) in found["namespaces"] and bed.bridge in found["links"] and pid in found["pids"]
    assert testbed.leftovers(bed.prefix) == {"namespaces": [], "links": [], "pids": []}
    assert not testbed._alive(pid)
    bed.procs = []
    bed.stop()                                # idempotent on what is already gone


@pytest.fixture(scope="module")
def bench_dataset(tmp_path_factory):
    # More than counting.COMBINE_SAMPLE values a host, so the sample can tell the data does not repeat
    # (below that ``auto`` counts locally and stays plain, whatever the links).
    parts = generate(4 * 75_000, HOSTS, "unique-dup", seed=11)
    out = tmp_path_factory.mktemp("benchshards")
    write_shards(parts, out, "npy")
    return out, np.concatenate(parts)


@needs_netns
def test_bench_shuffle_compact_moves_fewer_bytes_than_plain_and_auto_picks_it(bed, bench_dataset):
    """scripts/bench_shuffle.py's job and figures on the bed: every encoding exact, compact's bytes < plain's.

    Bytes, not seconds: what the benchmark's story rests on that does not depend on the machine.
    """
    from scripts import bench_shuffle
    path, values = bench_dataset
    want_value, want_count = reference_mode(values)
    assert want_count == 2
    rate = bed.shape.bytes_per_second
    got = {}
    for enc in ("plain", "compact", "auto"):
        # auto weighs the declared rate against the coding's CPU on a loaded machine (its load average
        # counts): 1 Mbit/s declared makes compact pay at any load, 20 Mbit/s (the bed's) not at load 18
        rep = bench_shuffle.job(bed.addrs, bed.token, path, "credit", enc, fan_in=FAN_IN, timeout=30.0,
                                link_mbit=1.0)
        m = bench_shuffle.measure(rep, HOSTS, rate)
        assert (m["result"]["value"], m["result"]["count"]) == (want_value, want_count), enc
        assert m["max_inbound_streams"] <= FAN_IN
        assert m["ideal_seconds"] == pytest.approx(m["total_bytes"] / (HOSTS * rate))
        assert m["time_over_ideal"] == pytest.approx(m["seconds"] / m["ideal_seconds"])
        got[enc] = m
    plain, compact = got["plain"], got["compact"]
    # every value but the duplicate is unique, so ~(W-1)/W of them leave their host under either encoding
    for m in (plain, compact):
        assert 0.7 * len(values) <= m["shuffled_values"] <= len(values)
    assert plain["encoding_used"] == "plain" and plain["bytes_per_value"] >= 8
    assert compact["encoding_used"] == "compact" and compact["bytes_per_value"] <= 2.5
    assert compact["total_bytes"] < plain["total_bytes"] / 3
    assert compact["busiest_link_bytes"] < plain["busiest_link_bytes"] / 3
    # on the bed every peer is on another host, the declared link is slow and the data does not repeat: compact
    assert got["auto"]["encoding_used"] == "compact"
    assert got["auto"]["total_bytes"] == pytest.approx(compact["total_bytes"], rel=0.05)
