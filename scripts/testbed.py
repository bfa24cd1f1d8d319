#!/usr/bin/env python3
"""A multi-host test bed on one machine: W network namespaces on a Linux bridge, shaped links, one worker each.

Why: on loopback every "link" is a memory copy, so fan-in costs nothing and a
shuffle strategy that pours everything into one worker looks as good as one that
keeps all links busy.  Here every host has its own network stack and one link to
the bridge, limited in *both* directions with ``tc`` (token bucket on the host's
egress and on the bridge port's egress, plus ``netem`` delay where the kernel has
it), so the bottleneck the problem talks about is real and measurable.

Layout of bed number ``n`` (allocated by atomically creating bridge ``sbed<n>-br``,
so several beds can coexist):

    root namespace: bridge sbed<n>-br with 10.77.<n>.254/24
      └─ veth sbed<n>-r<i>  ──  sbed<n>-n<i> (10.77.<n>.<i+1>/24) in namespace sbed<n>-h<i>

Every name of bed n starts with ``sbed<n>-``, so one bed's leftovers can be removed
without touching another's.

Each host runs ``python -m cluster.cli worker`` on port 7000 of its own address
(a private namespace has a private port space, so a fixed port cannot collide).
The coordinator runs in the root namespace: ``bed.addrs`` and ``bed.token`` (or
``bed.env()``) are what ``run_job`` / ``cluster submit`` need.

Teardown (workers, namespaces, veths, bridge) runs on normal exit, exceptions,
Ctrl-C and SIGTERM; ``testbed.py cleanup`` removes leftovers of crashed runs by
the ``sbed`` prefix.  Needs root (CAP_NET_ADMIN).

    sudo .venv/bin/python scripts/testbed.py check
    sudo .venv/bin/python scripts/testbed.py up --hosts 10 --rate 100mbit -- \\
         .venv/bin/cluster submit mode --input /abs/path/shards --json
    sudo .venv/bin/python scripts/testbed.py cleanup
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from shardstats.cluster import launcher  # noqa: E402
from shardstats.cluster.config import ClusterInfo  # noqa: E402
from shardstats.coordinator.job import ping_all  # noqa: E402

PREFIX = "sbed"
MAX_BEDS = 64
WORKER_PORT = 7000
SUBNET = "10.77.{n}.0/24"


def bed_prefix(n: int | None) -> str:
    return f"{PREFIX}{n}-"


class BedError(Exception):
    """The bed could not be built (missing privilege or kernel feature, a worker that did not start)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP while a bed is up: unwinds like Ctrl-C so the teardown runs."""


# -- shell helpers -------------------------------------------------------------
def run(cmd: list[str], check: bool = True, ns: str | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise BedError(f"`{' '.join(cmd)}` failed: {(p.stderr or p.stdout).strip()}")
    return p


def parse_rate(rate: str | float) -> float:
    """A tc rate ("100mbit", "1gbit", "500kbit", "20mbps", or a number of Mbit/s) in bits per second."""
    if isinstance(rate, (int, float)):
        return float(rate) * 1e6
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmg]?)(bit|bps)?\s*", rate.lower())
    if not m:
        raise ValueError(f"bad rate {rate!r} (e.g. 100mbit, 1gbit, 500kbit)")
    scale = {"": 1e6 if m.group(3) is None else 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    bps = float(m.group(1)) * scale
    return bps * 8 if m.group(3) == "bps" else bps


def namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def ns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


# One way to tell a live process and to stop a group of them, shared with the local launcher.
_alive = launcher.alive
kill_all = launcher.terminate


def _sync(coro):
    """Runs a coroutine to completion from sync code, also when the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list = []
    t = threading.Thread(target=lambda: box.append(asyncio.run(coro)))
    t.start()
    t.join()
    return box[0]


# -- capability probe and leftovers --------------------------------------------
def available(prefix: str = PREFIX) -> tuple[bool, str]:
    """Whether beds can be built here: actually creates (and deletes) a namespace, a veth and a tbf qdisc
    (named with ``prefix``, so a caller that owns a prefix touches nothing else)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespaces need root (CAP_NET_ADMIN); run as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` (iproute2) is not installed"
    ns = f"{prefix}probe{os.getpid()}"
    veth = f"{prefix}p{os.getpid() % 100000}"
    try:
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "x", "netns", ns])
        run(["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "100mbit", "burst", "16kb", "latency", "20ms"])
    except (BedError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot build a namespace with a shaped veth here: {exc}"
    finally:
        run(["ip", "link", "del", veth], check=False)
        run(["ip", "netns", "del", ns], check=False)
    return True, "ok"


def netem_available(prefix: str = PREFIX) -> bool:
    """``sch_netem`` (link delay) is a module many minimal kernels lack; beds then shape rate only."""
    ns = f"{prefix}nprobe{os.getpid()}"
    try:
        run(["ip", "netns", "add", ns])
        return run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], ns=ns, check=False).returncode == 0
    except BedError:
        return False
    finally:
        run(["ip", "netns", "del", ns], check=False)


def leftovers(prefix: str = PREFIX) -> dict:
    """Namespaces, links and processes (inside such namespaces) whose names start with ``prefix``."""
    nss = [n for n in namespaces() if n.startswith(prefix)]
    return {"namespaces": nss, "links": [lk for lk in links() if lk.startswith(prefix)],
            "pids": sorted({p for n in nss for p in ns_pids(n)})}


def cleanup(prefix: str = PREFIX) -> dict:
    """Removes everything ``leftovers`` finds: kills the processes, deletes links, then namespaces."""
    found = leftovers(prefix)
    kill_all(found["pids"], grace=3.0)
    for lk in found["links"]:
        run(["ip", "link", "del", lk], check=False)
    for n in found["namespaces"]:
        run(["ip", "netns", "del", n], check=False)
    return found


# -- the bed ---------------------------------------------------------------------
@dataclass(frozen=True)
class LinkShape:
    """One host link, applied to each direction separately: ``rate`` (tc syntax), one-way ``delay_ms``."""
    rate: str = "100mbit"
    delay_ms: float = 1.0
    queue_ms: float = 50.0          # how long the token bucket may queue before it drops

    @property
    def bits_per_second(self) -> float:
        return parse_rate(self.rate)

    @property
    def bytes_per_second(self) -> float:
        return self.bits_per_second / 8

    def burst_bytes(self) -> int:
        # ~1 ms of tokens: small enough that the rate holds on short time scales, >= a few MTUs.
        return max(int(self.bytes_per_second / 1000), 4 * 1514)


class TestBed:
    """W hosts, each a network namespace with one shaped link and one worker.  Use as a context manager."""

    __test__ = False  # not a pytest class, despite the name
    # What every name starts with and the /24 of bed n: a subclass with its own pair shares nothing with other beds.
    name_prefix = PREFIX
    subnet = SUBNET

    def __init__(self, hosts: int, shape: LinkShape = LinkShape(), *, log_dir: str | None = None,
                 log_level: str = "warning", job_timeout: float = 120.0, ready_timeout: float = 60.0,
                 python: str = sys.executable, keep_logs: bool = False) -> None:
        """``log_dir`` None: a temporary folder, removed with the bed unless ``keep_logs`` (the bed's own CLI
        keeps it, for whoever ran it to read)."""
        if hosts < 1 or hosts > 250:
            raise ValueError("a bed has 1..250 hosts")
        self.hosts = hosts
        self.shape = shape
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="testbed-logs-"))
        self._own_logs = log_dir is None and not keep_logs
        self.log_level = log_level
        self.job_timeout = job_timeout
        self.ready_timeout = ready_timeout
        self.python = python
        self.token = secrets.token_hex(32)
        self.index: int | None = None
        self.procs: list[subprocess.Popen] = []
        self.delay_applied = False
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self._old_handlers: dict[int, object] = {}

    # names and addresses
    @property
    def prefix(self) -> str:
        """What every name of this bed starts with (``cleanup(bed.prefix)`` removes just this bed)."""
        return f"{self.name_prefix}{self.index}-"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def ns(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    def veth_root(self, i: int) -> str:
        return f"{self.prefix}r{i}"

    def veth_host(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def _net(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.subnet.format(n=self.index))

    def host_ip(self, i: int) -> str:
        return str(self._net().network_address + i + 1)

    @property
    def addrs(self) -> list[str]:
        return [f"{self.host_ip(i)}:{WORKER_PORT}" for i in range(self.hosts)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def env(self) -> dict[str, str]:
        """What ``cluster submit`` needs to find this bed (pass absolute --input paths)."""
        return {"CLUSTER_WORKERS": ",".join(self.addrs), "CLUSTER_TOKEN": self.token}

    # lifecycle
    def __enter__(self) -> "TestBed":
        self._install_signals()
        try:
            self.start()
        except BaseException:
            self._restore_signals()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._restore_signals()

    def start(self) -> "TestBed":
        atexit.register(self.stop)
        try:
            self._allocate()
            run(["ip", "addr", "add", f"{self._net().network_address + 254}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            netem = self.shape.delay_ms > 0 and netem_available(self.name_prefix)
            for i in range(self.hosts):
                self._add_host(i, netem)
            self.delay_applied = netem
            self._start_workers()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _allocate(self) -> None:
        """Claims the lowest free bed index by creating its bridge (atomic: a second creator gets EEXIST)."""
        used = run(["ip", "-o", "-4", "addr", "show"], check=False).stdout + run(["ip", "-4", "route"], check=False).stdout
        for n in range(MAX_BEDS):
            net = ipaddress.ip_network(self.subnet.format(n=n))
            if any(ipaddress.ip_address(a) in net for a in re.findall(r"\b(\d+\.\d+\.\d+\.\d+)", used)):
                continue
            if run(["ip", "link", "add", f"{self.name_prefix}{n}-br", "type", "bridge"], check=False).returncode == 0:
                self.index = n
                self._made_links.append(self.bridge)
                return
        raise BedError(f"no free bed index below {MAX_BEDS}; remove leftovers with `testbed.py cleanup`")

    def _add_host(self, i: int, netem: bool) -> None:
        ns, vr, vh = self.ns(i), self.veth_root(i), self.veth_host(i)
        run(["ip", "netns", "add", ns])
        self._made_ns.append(ns)
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        run(["ip", "link", "add", vr, "type", "veth", "peer", "name", vh, "netns", ns])
        self._made_links.append(vr)
        run(["ip", "link", "set", vr, "master", self.bridge])
        run(["ip", "link", "set", vr, "up"])
        run(["ip", "addr", "add", f"{self.host_ip(i)}/24", "dev", vh], ns=ns)
        run(["ip", "link", "set", vh, "up"], ns=ns)
        self._shape(vr, None, netem)   # bridge port egress: traffic *into* host i
        self._shape(vh, ns, netem)     # host egress: traffic *out of* host i

    def _shape(self, dev: str, ns: str | None, netem: bool) -> None:
        s = self.shape
        tbf = ["tbf", "rate", s.rate, "burst", str(s.burst_bytes()), "latency", f"{s.queue_ms:g}ms"]
        if netem:
            run(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", f"{s.delay_ms:g}ms",
                 "limit", "100000"], ns=ns)
            run(["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf], ns=ns)
        else:
            run(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf], ns=ns)

    def _start_workers(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CLUSTER_TOKEN": self.token}
        env.pop("CLUSTER_WORKERS", None)
        peers = ",".join(self.addrs)
        for i, addr in enumerate(self.addrs):
            cmd = ["ip", "netns", "exec", self.ns(i), self.python, "-m", "shardstats.cluster.cli", "worker", "--id", str(i),
                   "--listen", addr, "--peers", peers, "--log-level", self.log_level,
                   "--job-timeout", f"{self.job_timeout:g}",
                   "--allow-any-path"]      # one filesystem under every namespace: the bed's data lives anywhere
            with open(self.log_dir / f"worker{i}.log", "ab") as log:
                # `ip netns exec` execs the command, so this pid is the worker's.
                self.procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=log, start_new_session=True))

    def _wait_ready(self) -> None:
        info = ClusterInfo(workers=self.addrs, token=self.token, log_dir=str(self.log_dir))
        try:
            launcher.wait_ready(info, self.ready_timeout, self.procs)
        except launcher.LaunchError as exc:
            # The bed's own log folder goes with it, so what the workers said travels in the error.
            raise BedError(f"{exc} (hosts {self.ns(0)}..{self.ns(self.hosts - 1)}){self._log_tails()}") from None

    def _log_tails(self, workers: int = 3, lines: int = 5) -> str:
        """The last lines of the first few workers' logs that have any, for an error message."""
        out = []
        for i in range(self.hosts):
            try:
                text = (self.log_dir / f"worker{i}.log").read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                out.append(f"\nworker{i}.log:\n" + "\n".join(text.splitlines()[-lines:]))
            if len(out) == workers:
                break
        return "".join(out)

    def ping(self, timeout: float = 2.0) -> list[dict]:
        """``coordinator.job.ping_all`` from the root namespace: one row per host, up or not."""
        return _sync(ping_all(self.addrs, self.token.encode(), timeout=timeout))

    def stop(self) -> None:
        """Removes everything this bed made; idempotent; signals are held off until it is done."""
        held = threading.current_thread() is threading.main_thread()
        if held:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            pids = [p.pid for p in self.procs]
            kill_all(pids)
            for p in self.procs:
                try:
                    p.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            self.procs = []
            for ns in self._made_ns:     # anything else someone started inside our hosts
                kill_all(ns_pids(ns), grace=2.0)
            for lk in reversed(self._made_links):
                run(["ip", "link", "del", lk], check=False)
            for ns in self._made_ns:
                run(["ip", "netns", "del", ns], check=False)
            self._made_links, self._made_ns = [], []
            if self._own_logs:
                shutil.rmtree(self.log_dir, ignore_errors=True)
            atexit.unregister(self.stop)
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

    def leftovers(self) -> dict:
        """What of this bed still exists (for tests: all empty after ``stop``)."""
        if self.index is None:
            return {"namespaces": [], "links": [], "pids": []}
        return leftovers(self.prefix)

    def link_bytes(self) -> list[tuple[int, int]]:
        """(bytes into host i, bytes out of host i) so far, from the bridge-side veth counters (one `ip` call).

        Sampled during a job this gives every link's utilisation over time.
        """
        import json
        rows = {r["ifname"]: r for r in json.loads(run(["ip", "-s", "-j", "link", "show"]).stdout)}
        out = []
        for i in range(self.hosts):
            st = rows[self.veth_root(i)]["stats64"]
            out.append((st["tx"]["bytes"], st["rx"]["bytes"]))
        return out

    # fault injection
    def cut(self, i: int) -> None:
        """Takes host i's link down (its bridge side): the host is cut off from everyone, its worker keeps running."""
        run(["ip", "link", "set", self.veth_root(i), "down"])

    def restore(self, i: int) -> None:
        run(["ip", "link", "set", self.veth_root(i), "up"])

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kills host i's worker (a crash, for fault tests)."""
        self.procs[i].send_signal(sig)

    # signals
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupted(signum, frame):
            raise Interrupted(f"signal {signum}")
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, interrupted)

    def _restore_signals(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)  # type: ignore[arg-type]
        self._old_handlers = {}

    def describe(self) -> str:
        delay = f"{self.shape.delay_ms:g} ms delay" if self.delay_applied else "no delay (sch_netem unavailable)" \
            if self.shape.delay_ms > 0 else "no delay"
        return (f"bed {self.index}: {self.hosts} hosts on {self.bridge} ({self._net()}), each link "
                f"{self.shape.rate} per direction, {delay}; logs in {self.log_dir}")


# -- CLI ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must tear the bed down even when we were started with SIGINT ignored (a background
    # job of a non-interactive shell, as CI may start us): Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="say whether beds can be built here")
    upp = sub.add_parser("up", help="start a bed; run COMMAND in it (env set) or wait for Ctrl-C")
    upp.add_argument("--hosts", type=int, default=10)
    upp.add_argument("--rate", default="100mbit", help="per direction of each host link (tc syntax)")
    upp.add_argument("--delay", type=float, default=1.0, help="one-way delay per link direction, ms (needs netem)")
    upp.add_argument("--log-level", default="warning")
    upp.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run with CLUSTER_WORKERS/TOKEN set")
    sub.add_parser("cleanup", help=f"remove leftover {PREFIX}* namespaces, links and their processes")
    sub.add_parser("list", help=f"show leftover {PREFIX}* namespaces, links and processes")
    a = ap.parse_args(argv)

    if a.cmd == "check":
        ok, why = available()
        print(f"{'available' if ok else 'unavailable'}: {why}; netem delay: "
              f"{'yes' if ok and netem_available() else 'no'}")
        return 0 if ok else 1
    if a.cmd == "list":
        print(leftovers())
        return 0
    if a.cmd == "cleanup":
        found = cleanup()
        print(f"removed {len(found['namespaces'])} namespaces, {len(found['links'])} links, "
              f"{len(found['pids'])} processes")
        return 0
    ok, why = available()
    if not ok:
        print(f"error: {why}", file=sys.stderr)
        return 1
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    try:
        with TestBed(a.hosts, LinkShape(a.rate, a.delay), log_level=a.log_level, keep_logs=True) as bed:
            print(bed.describe(), file=sys.stderr)
            if cmd:
                return subprocess.run(cmd, env={**os.environ, **bed.env()}).returncode
            print(f"export CLUSTER_WORKERS={bed.env()['CLUSTER_WORKERS']} CLUSTER_TOKEN={bed.token}")
            print("press Ctrl-C to tear the bed down", file=sys.stderr)
            while all(p.poll() is None for p in bed.procs):
                time.sleep(0.5)
            print("a worker exited; tearing down", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("torn down", file=sys.stderr)
        return 130
    except BedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
