"""Whether the mode's compact shuffle pays for this job: measurements in, a choice and its reasons out.

Compact sends ~2.3 bytes a value where plain sends 8, but fingerprinting, sorting,
Rice-coding and decoding cost CPU that plain does not spend.  Which one finishes
first depends on what only the running job can know: how fast its links carry
bytes, how fast a worker codes values, and how many workers share each machine's
cores (ten workers on two cores code five times slower than one).  So ``auto``
measures while the values are counted and split (on a thread: the probe and the
allgather wait on the network beside the count, not after the slowest rank's), on
every rank at once:

- the link: ``worker.comm.linkprobe.probe_ring`` streams ~1.5% of this rank's plain
  shuffle (48 KiB to 1 MiB) to the next rank and times what arrives from the one
  before (``--link-mbit`` replaces the probe with the user's figure);
- the coding: a sample of this rank's values is fingerprinted, sorted, coded,
  decoded and fingerprinted again (what sender and owner do per value), on a
  thread while the probe runs, timed in CPU seconds (``coding_sample``), at the
  job's fingerprint density, so its bytes a value are the job's too;
- the machine: its boot id, usable CPUs and load average, so the ranks sharing one
  machine (a bed of namespaces, containers, a local cluster) are counted, not
  guessed from addresses, and so is other work on its cores (the coding is timed
  in CPU seconds; the larger of the two stretches it into wall seconds).

An allgather brings every rank's figures (a few numbers each) to every rank; ``decide`` -- a
pure function, the same on every rank -- predicts each rank's cost of the parts
where the shuffles differ (``predict``), takes medians (one probe disturbed by a
busy CPU does not decide), and picks compact only when it is predicted to save at
least ``1 - COMPACT_MARGIN`` of plain's time and no rank's sample shows repeats
(then most fingerprints become candidates and travel twice).  The stats say what
was chosen, why, and the figures (``report``).

Workers all on loopback skip the measuring: a loopback "link" is the same CPUs
copying memory, so bytes saved there are never cheaper than the coding.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import os
import socket
import time
from dataclasses import dataclass

from shardstats.lazy import numpy as np

from shardstats.worker.comm.collectives import allgather, allreduce, sum_ints, tree_depth
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.data.encoding import decode, encode_chunks, fingerprint_bits, fingerprints
from shardstats.worker.comm.linkprobe import FAST, probe_ring

PLAIN_BYTES = 8.0              # a value on the plain wire (its msgpack framing is a few bytes a chunk)
CODING_SAMPLE = 1 << 13        # values coded to time the coding: ~1.5 ms of a core
# Calibrated on the netns bed (10 hosts sharing 2 cores; 15M unique values; 1 Gbit/s, 100 and 20 Mbit/s links):
CODING_FACTOR = 2.5            # compact's extra CPU a value in the job (both ends, three rounds), over the sample's
LINK_SHARE = 0.6               # the share of a link's probed rate a shuffle sustains (staggered rounds, credits)
COMPACT_MARGIN = 0.9           # compact must be predicted to take at most this share of plain's time
PROBE_SHARE = 1 / 64           # the probe's bytes, as a share of this rank's plain shuffle ...
PROBE_MIN, PROBE_MAX = 48 << 10, 1 << 20     # ... within these bounds


@dataclass(frozen=True)
class Measured:
    """One rank's figures: the values that leave it, its link's rate, the coding's CPU cost, and its host."""
    leaving: int                      # values this rank sends to other ranks
    link_rate: float                  # bytes/s (probed or declared)
    coding_cpu: float                 # CPU seconds a value of the sampled coding (one core, uncontended)
    compact_bytes: float              # bytes a value of the coded sample, at the job's density
    repeats: bool                     # this rank's sample shows repeated values
    host: str = ""                    # which machine (its kernel's boot id): ranks on one machine share its CPUs
    cpus: int = 1                     # the CPUs this rank may run on
    load: float = 0.0                 # the machine's load average (1 minute): other work on its CPUs

    def entry(self) -> dict:
        """As it travels in the allgather that brings every rank's to every rank."""
        return dataclasses.asdict(self)


def probe_bytes(leaving: int) -> int:
    """How much the link probe sends: a small share of this rank's plain shuffle, within fixed bounds."""
    return int(min(PROBE_MAX, max(PROBE_MIN, leaving * PLAIN_BYTES * PROBE_SHARE)))


def predict(m: dict, sharing: float) -> dict:
    """One rank's predicted seconds of the parts where the shuffles differ: plain's bytes; compact's bytes and
    coding, its CPU stretched by the ranks sharing each of its host's cores (``sharing``, at least 1)."""
    rate = LINK_SHARE * m["link_rate"]
    plain = m["leaving"] * PLAIN_BYTES / rate
    coding = CODING_FACTOR * m["coding_cpu"] * max(1.0, sharing)
    compact = m["leaving"] * (m["compact_bytes"] / rate + coding)
    return {"plain_s": plain, "compact_s": compact, "coding_s": coding}


def _median(xs: list[float]) -> float:
    """The lower median: always one rank's own figure, never a blend of a timed link and one too fast to time."""
    return sorted(xs)[(len(xs) - 1) // 2]


def summary(ranks: list[dict]) -> dict:
    """The job's figures from every rank's (``Measured.entry``): each rank's predictions with its host's
    sharing, then medians (one rank's probe disturbed by a busy CPU does not decide), the slowest link,
    any repeats, all values leaving, the most runnable work a core has."""
    on_host: dict[str, int] = {}
    for r in ranks:
        on_host[r["host"]] = on_host.get(r["host"], 0) + 1
    # a core's share: the job's workers on that machine, or its load average when other work loads it more
    sharing = [max(on_host[r["host"]], r.get("load", 0.0)) / max(1, r["cpus"]) for r in ranks]
    preds = [predict(r, s) for r, s in zip(ranks, sharing)]
    return {"plain_s": _median([p["plain_s"] for p in preds]), "compact_s": _median([p["compact_s"] for p in preds]),
            "coding_s": _median([p["coding_s"] for p in preds]),
            "link_rate": _median([r["link_rate"] for r in ranks]),
            "slowest_link_rate": min(r["link_rate"] for r in ranks),
            "compact_bytes": _median([r["compact_bytes"] for r in ranks]),
            "load_per_cpu": round(max(sharing), 2),
            "repeats": sum(int(r["repeats"]) for r in ranks), "leaving": sum(r["leaving"] for r in ranks)}


def decide(ranks: list[dict]) -> tuple[str, str, dict]:
    """(``compact`` or ``plain``, why, the job's figures) from every rank's measurements; the same on every rank."""
    job = summary(ranks)
    if job["repeats"]:
        return "plain", "values repeat: most fingerprints would be candidates and travel twice", job
    if job["leaving"] == 0:
        return "plain", "nothing leaves any worker", job
    if job["compact_s"] <= COMPACT_MARGIN * job["plain_s"]:
        return "compact", "the links are slow for the bytes: compact's coding costs less than the bytes it saves", job
    return "plain", "the links are fast for the bytes: compact's coding would cost more than the bytes it saves", job


def mbit(rate: float) -> float | None:
    """A rate in bytes/s as Mbit/s for people; None when the probe's frames came too close together to time."""
    return None if rate >= FAST else round(rate * 8 / 1e6, 1)


def report(encoding: str, why: str, job: dict | None, source: str, probe: dict | None = None) -> dict:
    """The stats entry: what was chosen, why, and the figures (rounded for people)."""
    out: dict = {"encoding": encoding, "why": why, "link": source}
    if job is not None:
        out.update({
            "link_mbit": mbit(job["link_rate"]), "slowest_link_mbit": mbit(job["slowest_link_rate"]),
            "coding_mvalues_per_s": round(1e-6 / job["coding_s"], 2) if job["coding_s"] > 0 else None,
            "load_per_cpu": job["load_per_cpu"],
            "compact_bytes_per_value": round(job["compact_bytes"], 2),
            "predicted_plain_s": round(job["plain_s"], 3),
            "predicted_compact_s": round(job["compact_s"], 3)})
    if probe is not None:
        out["probe"] = probe
    return out


def coding_sample(smp: np.ndarray, leaving_per_owner: float, bits: int, chunk_bytes: int) -> tuple[float, float]:
    """(CPU seconds a value, bytes a value) of compact's per-value work on ``smp``, a sample of the values.

    CPU time of this thread, not wall time: the sample is too short to see how many
    workers compete for the cores (``summary`` counts them instead).
    The sample's fingerprints get fewer bits, so their gaps are those of the job's
    per-owner chunks (``leaving_per_owner`` values at ``bits`` bits): the Rice code's
    length, and the time to make it, are the job's.
    """
    if len(smp) == 0:
        return 0.0, 0.0
    shift = math.log2(max(1.0, leaving_per_owner) / len(smp))
    sbits = int(min(64, max(8, round(bits - shift))))
    t = time.thread_time()
    fp = fingerprints(smp, sbits)
    order = np.argsort(fp)
    fp = fp[order]
    kept = smp[order]
    chunks = encode_chunks(fp, chunk_bytes)
    nbytes = 0
    for c in chunks:
        decode(c)
        nbytes += c["fq"].nbytes + c["fr"].nbytes + 8 + 16
    fingerprints(kept, sbits)
    return (time.thread_time() - t) / len(smp), nbytes / len(smp)


@dataclass(frozen=True)
class Choice:
    """What every rank uses: the encoding, its fingerprint bits (compact), the rounds choosing took, the stats entry."""
    encoding: str
    bits: int | None
    rounds: int
    stats: dict


def sample_of(values: np.ndarray) -> np.ndarray:
    """The values ``choose`` codes to time the coding (a copy: the values themselves may be let go)."""
    from shardstats.worker.ops.counting import sample
    return sample(values, CODING_SAMPLE)


async def choose(comm: Communicator, asked: str, n: int, leaving: int, smp: np.ndarray | None, link_mbit: float,
                 chunk_bytes: int, repeat_share: float, tree: bool = False) -> Choice:
    """The job's encoding, the same on every rank: ``asked`` unless ``auto``, which measures (module doc).

    This rank holds ``n`` values, ``leaving`` of them (or pairs) go to other ranks; ``smp`` is a sample of
    them (``sample_of``; needed for ``auto``), which repeats when its distinct share is below ``repeat_share``.
    A ``tree`` job (one chunk in all) is plain whatever was asked.
    Plain asked: no round; compact asked: one allreduce (the job's value count sizes the
    fingerprints); auto off loopback: the probe round and an allgather of every rank's figures.
    """
    depth = tree_depth(comm.size)
    if tree:
        return Choice("plain", None, 0, report("plain", "the job is one chunk, sent up the tree: nothing to code",
                                               None, "none"))
    if asked == "plain":
        return Choice("plain", None, 0, report("plain", "asked for", None, "none"))
    if asked == "compact":
        total = await allreduce(comm, {"n": n}, sum_ints, "mode.plan")
        return Choice("compact", fingerprint_bits(total["n"], comm.size), 2 * depth,
                      report("compact", "asked for", None, "none"))
    if all_loopback(comm):
        return Choice("plain", None, 0, report("plain", "every worker is on loopback: its links are the same CPUs "
                                               "copying memory, which the coding would only slow", None, "loopback"))
    t0 = time.perf_counter()
    size = comm.size
    bits = fingerprint_bits(comm.total if comm.total is not None else n * size, size)
    assert smp is not None, "auto needs a sample of the values (sample_of)"

    def measure_cpu() -> tuple[float, float, bool]:
        secs, nbytes = coding_sample(smp, leaving / max(1, size - 1), bits, chunk_bytes)
        return secs, nbytes, bool(len(smp)) and len(np.unique(smp)) < repeat_share * len(smp)

    probe = None
    async with asyncio.TaskGroup() as tg:      # the probe waits on the network while the sample codes on a thread
        cpu = tg.create_task(asyncio.to_thread(measure_cpu))
        if link_mbit <= 0:
            probed = tg.create_task(probe_ring(comm, probe_bytes(leaving)))
    secs, nbytes, rep = cpu.result()
    if link_mbit > 0:
        rate, source = link_mbit * 1e6 / 8, "declared"
    else:
        p = probed.result()
        rate, source = p.rate, "probed"
        probe = {"bytes": p.received, "seconds": round(p.seconds, 4),
                 "mbit": mbit(p.rate)}
    m = Measured(leaving=leaving, link_rate=rate, coding_cpu=secs, compact_bytes=nbytes, repeats=rep,
                 host=host_id(), cpus=usable_cpus(), load=load_average())
    ranks = await allgather(comm, {**m.entry(), "values": n}, "mode.plan")
    encoding, why, job = decide(ranks)
    bits = fingerprint_bits(sum(r["values"] for r in ranks), size) if encoding == "compact" else None
    stats = {**report(encoding, why, job, source, probe), "seconds": round(time.perf_counter() - t0, 4)}
    return Choice(encoding, bits, depth + (1 if source == "probed" else 0), stats)


def host_id() -> str:
    """This machine's identity: the kernel's boot id, shared by its network namespaces and containers (which
    share its CPUs); the host name where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def load_average() -> float:
    """The machine's 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def all_loopback(comm: Communicator) -> bool:
    """Whether every worker of this job listens on a loopback address (the same answer on every rank)."""
    addrs = getattr(comm, "addrs", None)
    if addrs is None:              # the in-memory transport: one process
        return True
    for addr in addrs:
        host = str(addr).rsplit(":", 1)[0].strip("[]")
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            if host != "localhost":
                return False
    return True
