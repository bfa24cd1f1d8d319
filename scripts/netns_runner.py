"""The shared netns runner: containers as processes in network namespaces, then a real job against them.

No Docker engine or Kubernetes cluster runs where this project is tested, yet a typo in
docker-compose.yml or deploy/kubernetes/ (a wrong flag, a peer name that does not resolve,
a volume at the wrong path, a missing secret) should fail a test, not a user.  The two
front-ends (``compose_netns.py``, ``k8s_netns.py``) read their file into ``Unit``s — one
container each: argv, environment, mounts, user, working directory, host names, readiness
check — and this module runs them, the same way for both:

* a bed of hosts from ``testbed.py`` (namespaces ``sbed<n>-h<i>`` on a bridge), one per unit;
  ``/etc/netns/<ns>/hosts`` maps every unit's names to its address in every namespace, and an
  empty ``resolv.conf`` makes any other name fail at once;
* each unit starts as ``ip netns exec <ns> [unshare --uts] sh -c SETUP``: in the private mount
  namespace ``ip netns exec`` gives, SETUP mounts a tmpfs as a new root, bind-mounts the host's
  top-level directories into it (so the venv and Python are there), creates the image's
  directories, bind-mounts each volume (read-only when asked), sets the UTS host name when the
  unit has one (a pod's name), then ``chroot``s, drops to the unit's uid/gid/groups
  (``setpriv``) in its working directory and execs the argv.  Every step execs, so the
  process started is the unit's process;
* published ports (compose ``ports``, ``kubectl port-forward``) are an asyncio TCP forwarder on
  127.0.0.1 in the root namespace;
* readiness: an exec check run inside the unit's namespace and root as its user (compose
  healthcheck, Kubernetes exec probe) or a TCP connect to the unit's address (tcpSocket probe);
  a unit that exits or never gets ready fails the run with its log;
* ``submit`` runs ``cluster submit ... --json`` from the root namespace the way the docs tell
  users, ``reference``/``compare`` check it against numpy on the host's copy of the data.

Everything (processes, namespaces, links, bridge, forwarder, /etc/netns files, mount point,
volume directories) is removed on exit, on errors, on Ctrl-C and on SIGTERM.  Needs root.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePosixPath

from scripts import testbed
from scripts.testbed import BedError, LinkShape, TestBed

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent        # where `cluster` and `python` come from (the image's PATH)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEEP_WRITABLE = {"dev", "proc", "sys", "run"}  # not remounted read-only under a read-only root


@dataclass
class Mount:
    source: Path                      # on the host
    target: str                       # in the container
    read_only: bool


@dataclass
class Check:
    """Readiness: ``argv`` run in the unit (healthcheck, exec probe) or a TCP connect to ``tcp_port``."""
    argv: list[str] | None = None
    tcp_port: int | None = None
    timeout: float = 10.0

    def describe(self) -> str:
        return f"tcp port {self.tcp_port}" if self.tcp_port is not None else "exec " + shlex.join(self.argv or [])


@dataclass
class Unit:
    """One container on its own host: what both front-ends reduce their file to."""
    name: str                         # service or pod name: log file, messages
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    workdir: str = "/"
    check: Check | None = None
    names: list[str] = field(default_factory=list)   # resolve to this unit's address everywhere
    hostname: str | None = None       # the UTS host name (a pod's name); None keeps the machine's
    read_only_root: bool = False
    kind: str = "service"             # "service worker3" / "pod shardstats-3" in messages

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass
class Publish:
    """127.0.0.1:``published`` (0: a free port) in the root namespace -> unit ``unit``'s ``target`` port."""
    unit: int
    published: int
    target: int


class Forwarder:
    """Published ports in the root namespace: listens on 127.0.0.1:published, pipes each connection to host:target.

    Runs its own event loop in a thread, so the caller can stay synchronous (and run
    ``cluster submit`` as a subprocess meanwhile).
    """

    CONNECT_TIMEOUT = 5.0

    def __init__(self, routes: list[tuple[int, str, int]]) -> None:
        self.routes = routes          # (published port on 127.0.0.1, upstream host, upstream port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.bound: list[int] = []    # the port each route listens on (a published 0 gets a free one)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="netns-ports", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self.stop()
            raise BedError(f"cannot publish ports: {self._error}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        writers: set[asyncio.StreamWriter] = set()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()
            except (OSError, ConnectionError):
                w.close()

        def handler(host: str, port: int):
            async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
                writers.add(cw)
                try:
                    ur, uw = await asyncio.wait_for(asyncio.open_connection(host, port), self.CONNECT_TIMEOUT)
                except (OSError, TimeoutError):
                    cw.close()
                    writers.discard(cw)
                    return
                writers.add(uw)
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(pipe(cr, uw))
                        tg.create_task(pipe(ur, cw))
                finally:
                    for w in (cw, uw):
                        w.close()
                        writers.discard(w)
            return handle

        servers = []
        try:
            for published, host, port in self.routes:
                try:
                    servers.append(await asyncio.start_server(handler(host, port), "127.0.0.1", published,
                                                              reuse_address=True))
                    self.bound.append(servers[-1].sockets[0].getsockname()[1])
                except OSError as exc:
                    raise BedError(f"127.0.0.1:{published}: {exc.strerror or exc}") from None
            self._ready.set()
            await self._stop.wait()
        finally:
            for s in servers:
                s.close()
            for w in list(writers):
                w.close()


# -- the bed ---------------------------------------------------------------------------
def _top(path: str) -> str:
    parts = PurePosixPath(path).parts
    return parts[1] if len(parts) > 1 else ""


def _traversable(p: Path) -> bool:
    try:
        return bool(p.stat().st_mode & stat.S_IXOTH)
    except OSError:
        return False


class UnitBed(TestBed):
    """Units on a testbed bed: one namespace each, names in every hosts file, ports published."""

    __test__ = False

    def __init__(self, units: list[Unit], publish: list[Publish] = (), *, token: str = "", cwd: Path = REPO,
                 shape: LinkShape = LinkShape(rate="1gbit", delay_ms=0.0), log_dir: str | None = None,
                 ready_timeout: float = 60.0, health_poll: float = 0.3, on_start=None,
                 owned_dirs: list[Path] = ()) -> None:
        super().__init__(len(units), shape, log_dir=log_dir, ready_timeout=ready_timeout)
        self.units = units
        self.publish = list(publish)
        self.token = token            # what the host-side `cluster submit` authenticates with
        self.cwd = Path(cwd)          # where the host-side `cluster submit` runs (relative --input)
        self.on_start = on_start      # called with the bed once its names are known, before units start
        self.health_poll = health_poll
        self.published: list[tuple[str, int, int]] = []      # (unit name, published port, target)
        self.forwarder: Forwarder | None = None
        self.mount_point: Path | None = None
        self.owned_dirs = list(owned_dirs)                  # the front-end's volume directories, removed on stop
        self._netns_dirs: list[Path] = []
        self._check_layout()

    # names -------------------------------------------------------------------------
    @property
    def addrs(self) -> list[str]:
        """The published addresses, in unit order: what CLUSTER_WORKERS lists on the host."""
        return [f"127.0.0.1:{pub}" for _, pub, _ in self.published]

    def env(self) -> dict[str, str]:
        return {"CLUSTER_WORKERS": ",".join(self.addrs), "CLUSTER_TOKEN": self.token}

    def unit_named(self, name: str) -> int:
        return next(i for i, u in enumerate(self.units) if u.name == name)

    # the private root of a unit -------------------------------------------------------
    def _exposed(self) -> list[str]:
        """Host paths the unit needs even under a top-level directory it could not traverse (/root 0700)."""
        need = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(VENV_BIN.parent), str(REPO)})
        return [p for p in need if not any(p != q and p.startswith(q + "/") for q in need)]

    def _check_layout(self) -> None:
        from scripts.dockerfile import SpecError
        for u in self.units:
            for m in u.mounts:
                for e in self._exposed():
                    if m.target == e or m.target.startswith(e + "/"):
                        raise SpecError(f"{u.label}: volume target {m.target} lies inside {e}, which the "
                                        f"emulation needs from the host")

    def setup_script(self, unit: Unit, argv: list[str]) -> list[str]:
        """argv that builds the unit's root in a tmpfs, mounts its volumes and execs ``argv`` as its user."""
        assert self.mount_point is not None
        q = shlex.quote
        new = str(self.mount_point)
        image_dirs = [unit.workdir] + [m.target for m in unit.mounts]
        image_tops = {_top(d) for d in image_dirs} - {""}
        exposed = self._exposed()
        lines = ["set -eu", f"new={q(new)}",
                 'mount -t tmpfs -o mode=0755 netns-root "$new"',
                 'mount --make-unbindable "$new"']          # so the /tmp bind below does not copy it
        bound = []
        for entry in sorted(set(os.listdir("/")) | image_tops):
            host, dst = Path("/") / entry, f'"$new"/{q(entry)}'
            if entry in image_tops or (host.is_dir() and not host.is_symlink() and not _traversable(host)):
                # The image owns it (or the unit's user could not enter it): an empty directory,
                # holding only what the unit needs from the host.
                lines.append(f"mkdir -m 0755 {dst}")
                for e in exposed:
                    if _top(e) == entry:
                        lines.append(f'mkdir -p "$new"{q(e)} && mount --rbind {q(e)} "$new"{q(e)}')
                        bound.append(f'"$new"{q(e)}')
            elif host.is_symlink():
                lines.append(f"ln -s {q(os.readlink(host))} {dst}")
            elif host.is_dir():
                lines.append(f"mkdir {dst} && mount --rbind {q(str(host))} {dst}")
                if entry not in KEEP_WRITABLE:
                    bound.append(dst)
        for d in image_dirs:
            lines.append(f'mkdir -p "$new"{q(d)}')
        for m in sorted(unit.mounts, key=lambda m: len(PurePosixPath(m.target).parts)):
            dst = f'"$new"{q(m.target)}'
            lines.append(f"mount --bind {q(str(m.source))} {dst}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {dst}")
        if unit.read_only_root:       # readOnlyRootFilesystem: the root and what it shows of the host
            lines += [f"mount -o remount,bind,ro {d}" for d in bound]
            lines.append('mount -o remount,ro "$new"')
        if unit.hostname:
            lines.append(f"hostname {q(unit.hostname)}")
        groups = [f"--groups={','.join(map(str, unit.groups))}"] if unit.groups else ["--clear-groups"]
        drop = ["setpriv", f"--reuid={unit.uid}", f"--regid={unit.gid}", *groups] if unit.uid else []
        inner = [*drop, "/bin/sh", "-c", 'cd "$0" && exec "$@"', unit.workdir, *argv]
        lines.append('exec chroot "$new" ' + " ".join(q(a) for a in inner))
        uts = ["unshare", "--uts"] if unit.hostname else []
        return [*uts, "sh", "-c", "\n".join(lines)]

    def unit_env(self, unit: Unit) -> dict[str, str]:
        home = "/root" if unit.uid == 0 else "/"
        return {"PATH": f"{VENV_BIN}:{SYSTEM_PATH}", "HOME": home, "HOSTNAME": unit.hostname or unit.name,
                **unit.env}

    def hosts_file(self) -> str:
        return "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(
            f"{self.host_ip(i)}\t{' '.join(u.names)}\n" for i, u in enumerate(self.units) if u.names)

    # lifecycle (called by TestBed.start) -----------------------------------------------
    def _start_workers(self) -> None:
        if self.on_start is not None:
            self.on_start(self)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.mount_point = Path(tempfile.mkdtemp(prefix=f"{self.prefix}root-"))
        hosts = self.hosts_file()
        for i in range(self.hosts):
            d = Path("/etc/netns") / self.ns(i)
            d.mkdir(parents=True, exist_ok=True)
            self._netns_dirs.append(d)
            (d / "hosts").write_text(hosts)
            (d / "resolv.conf").write_text("# netns runner: no DNS server; unit names are in /etc/hosts\n"
                                           "options timeout:1 attempts:1\n")
        for i, unit in enumerate(self.units):
            cmd = ["ip", "netns", "exec", self.ns(i), *self.setup_script(unit, unit.argv)]
            with open(self.log_dir / f"{unit.name}.log", "ab") as log:
                # `ip netns exec`, unshare, sh, chroot and setpriv all exec: this pid is the unit's process.
                self.procs.append(subprocess.Popen(cmd, env=self.unit_env(unit), stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=log, start_new_session=True))
        routes = [(p.published, self.host_ip(p.unit), p.target) for p in self.publish]
        self.forwarder = Forwarder(routes)
        self.forwarder.start()
        # Port 0 is bound by the forwarder itself: a port picked free beforehand can be taken in
        # between (by any outgoing connection's ephemeral port), which failed a test run in CI.
        self.published = [(self.units[p.unit].name, bound, p.target)
                          for p, bound in zip(self.publish, self.forwarder.bound)]

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def log_errors(self, per_unit: int = 3) -> str:
        """The units' own error lines (not the echo of the coordinator's abort), for a failure message."""
        out = []
        for u in self.units:
            lines = [ln for ln in self.log_tail(u.name, 200).splitlines()
                     if re.search(r"\b(error|warning|Error)\b", ln) and "aborted by the coordinator" not in ln]
            out += [f"  {u.name}: {ln}" for ln in lines[-per_unit:]]
        return f"\n{self.units[0].kind} log lines with errors:\n" + "\n".join(out) if out else ""

    def check_ready(self, i: int) -> tuple[bool, str]:
        """Runs unit i's readiness check once."""
        return self._check_many([i])[i]

    def _check_many(self, hosts: list[int]) -> dict[int, tuple[bool, str]]:
        """Checks of several units at once (each exec check is a process start; in parallel they cost one)."""
        out: dict[int, tuple[bool, str]] = {}
        procs = {}
        for i in hosts:
            unit = self.units[i]
            if unit.check is None:
                out[i] = (True, "no readiness check")
            elif unit.check.tcp_port is not None:
                try:
                    socket.create_connection((self.host_ip(i), unit.check.tcp_port),
                                             timeout=min(unit.check.timeout, 5.0)).close()
                    out[i] = (True, "accepts")
                except OSError as exc:
                    out[i] = (False, f"tcp {self.host_ip(i)}:{unit.check.tcp_port}: "
                                     f"{exc.strerror or exc.__class__.__name__}")
            else:
                cmd = ["ip", "netns", "exec", self.ns(i), *self.setup_script(unit, unit.check.argv or [])]
                procs[i] = subprocess.Popen(cmd, env=self.unit_env(unit), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        try:
            for i, p in procs.items():
                limit = min(self.units[i].check.timeout, 10.0) + 5.0  # type: ignore[union-attr]
                try:
                    stdout, stderr = p.communicate(timeout=limit)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    out[i] = (False, f"check did not finish within {limit:g}s")
                    continue
                lines = (stderr or stdout).strip().splitlines()
                out[i] = (p.returncode == 0, lines[-1] if lines else f"exit status {p.returncode}")
        finally:                                      # interrupted: no check outlives the wait
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return out

    def _listening(self, i: int) -> bool:
        """Whether unit i accepts TCP on every published target (cheap, from the root namespace).

        Only decides when an exec check is worth running; the check decides readiness.
        """
        for p in self.publish:
            if p.unit == i:
                try:
                    socket.create_connection((self.host_ip(i), p.target), timeout=1.0).close()
                except OSError:
                    return False
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = set(range(self.hosts))
        why = {i: "not listening yet" for i in pending}
        while True:
            self._check_running()
            due = [i for i in sorted(pending)     # a TCP check is as cheap as the pre-check: run it
                   if (self.units[i].check is not None and self.units[i].check.tcp_port is not None)
                   or self._listening(i)]
            for i, (ok, why[i]) in self._check_many(due).items():
                if ok:
                    pending.discard(i)
            if not pending:
                return
            self._check_running()
            if time.monotonic() > deadline:
                u = self.units[min(pending)]
                word = "healthy" if u.kind == "service" else "ready"
                raise BedError(f"{u.label} is not {word} after {self.ready_timeout:g}s "
                               f"({u.check.describe() if u.check else 'check'}: {why[min(pending)]}); its log:\n"
                               f"{self.log_tail(u.name)}")
            time.sleep(self.health_poll)

    def _check_running(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                u = self.units[i]
                raise BedError(f"{u.label} exited with status {p.returncode}; its log "
                               f"({self.log_dir / (u.name + '.log')}):\n{self.log_tail(u.name)}")

    def stop(self) -> None:
        held = threading.current_thread() is threading.main_thread()
        if held:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            if self.forwarder is not None:
                self.forwarder.stop()
                self.forwarder = None
            super().stop()
            for d in self._netns_dirs:
                shutil.rmtree(d, ignore_errors=True)
            self._netns_dirs = []
            for d in self.owned_dirs:
                shutil.rmtree(d, ignore_errors=True)
            if self.mount_point is not None:
                try:
                    self.mount_point.rmdir()     # the tmpfs roots vanished with their mount namespaces
                except OSError:
                    pass
                self.mount_point = None
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

    def leftovers(self) -> dict:
        found = super().leftovers()
        found["files"] = [str(p) for p in self._netns_dirs + self.owned_dirs if p.exists()] + \
            ([str(self.mount_point)] if self.mount_point is not None and self.mount_point.exists() else [])
        return found


def cleanup(prefix: str = testbed.PREFIX) -> dict:
    """Leftovers of killed runs under ``prefix`` (one bed's, or all): namespaces, links, processes, files."""
    found = testbed.cleanup(prefix)
    files = []
    for d in Path("/etc/netns").glob(f"{prefix}*") if Path("/etc/netns").is_dir() else []:
        if d.name not in testbed.namespaces():
            shutil.rmtree(d, ignore_errors=True)
            files.append(str(d))
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}*root-*"):
        try:
            d.rmdir()
            files.append(str(d))
        except OSError:
            pass
    found["files"] = files
    return found


def available() -> tuple[bool, str]:
    ok, why = testbed.available()
    if not ok:
        return ok, why
    for tool in ("chroot", "setpriv", "mount", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed"
    return True, "ok"


# -- the job and the reference ------------------------------------------------------------
@dataclass
class JobOutcome:
    op: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def document(self) -> dict:
        return json.loads(self.stdout, parse_float=Decimal)


def submit(bed: UnitBed, op: str, input_path: str = "shards/", timeout: float = 60.0,
           extra: list[str] | None = None) -> JobOutcome:
    """``cluster submit OP --input INPUT --json`` from the bed's directory, as the docs' user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(bed.env())
    cmd = [str(VENV_BIN / "cluster"), "submit", op, "--input", input_path, "--json", "--timeout", f"{timeout:g}",
           *(extra or [])]
    try:
        p = subprocess.run(cmd, env=env, cwd=bed.cwd, capture_output=True, text=True,
                           timeout=timeout * 2 + 30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return JobOutcome(op, 124, "", f"`{' '.join(cmd)}` did not finish within {timeout * 2 + 30:g}s")
    return JobOutcome(op, p.returncode, p.stdout, p.stderr)


def reference(values, op: str) -> dict:
    """numpy's answer (shardstats.reference): the mode with its count, or the exact median."""
    from shardstats import reference as ref
    return ref.mode(values) if op == "mode" else ref.median(values)


def host_values(directory: Path, input_path: str = "shards/"):
    """The values the job should see, read on the host from the same files the units see."""
    import numpy as np
    from shardstats.worker.io.listing import list_shards
    from shardstats.worker.io.shards import read_shard
    files = list_shards(os.path.join(directory, input_path))
    return np.concatenate([read_shard(f) for f in files])


def compare(outcome: JobOutcome, ref: dict) -> str | None:
    """None when the job's answer equals the reference, else what differs."""
    if outcome.returncode != 0:
        return f"cluster submit {outcome.op} failed (status {outcome.returncode}): {outcome.stderr.strip()}"
    got = outcome.document["result"]
    for k, want in ref.items():
        have = Fraction(str(got.get(k))) if isinstance(want, Fraction) else got.get(k)
        if have != want:
            return f"{outcome.op}: {k} is {got.get(k)}, numpy says {want}"
    return None


def check_jobs(bed: UnitBed, values, ops: tuple[str, ...], input_path: str = "shards/", job_timeout: float = 60.0,
               out=sys.stderr) -> list[dict]:
    """Runs each op from the host side and compares it with numpy; raises BedError on any difference."""
    rows = []
    for op in ops:
        outcome = submit(bed, op, input_path, job_timeout)
        why = compare(outcome, reference(values, op))
        if why is not None:
            raise BedError(why + bed.log_errors())
        doc = outcome.document
        rows.append({"op": op, "result": doc["result"], "values": doc["stats"]["values"],
                     "workers": doc["stats"]["workers"], "seconds": doc["stats"]["seconds"]})
        shown = " ".join(f"{k}={v}" for k, v in doc["result"].items())
        print(f"{op}: {shown} on {doc['stats']['workers']} workers, "
              f"{doc['stats']['values']:,} values: matches numpy", file=out)
    return rows


def announce(out=sys.stderr):
    """An ``on_start`` hook: says where the units run and log (the interrupt test reads the prefix)."""
    def starting(bed: UnitBed) -> None:
        print(f"starting {bed.hosts} {bed.units[0].kind}s in namespaces {bed.ns(0)}..{bed.ns(bed.hosts - 1)} "
              f"(logs in {bed.log_dir})", file=out, flush=True)
    return starting


# -- what both front-ends' command lines share ------------------------------------------------
def command_line(description: str):
    """(parser, subparsers) with ``check`` and ``cleanup``; Ctrl-C always tears the bed down.

    Python leaves SIGINT ignored when we were started with it ignored (a background job of a
    non-interactive shell, as CI may start us), so the default handler is put back first.
    """
    import argparse
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="say whether the emulation can run here")
    sub.add_parser("cleanup", help="remove leftovers of killed runs (shared with testbed.py)")
    return ap, sub


def add_run_options(p, ready_timeout: float) -> None:
    p.add_argument("--input", default="shards/", help="what `cluster submit --input` gets (default shards/)")
    p.add_argument("--ops", default="mode,median")
    p.add_argument("--ready-timeout", type=float, default=ready_timeout)
    p.add_argument("--job-timeout", type=float, default=60.0)
    p.add_argument("--rate", default="1gbit", help="per direction of each unit's link (tc syntax)")
    p.add_argument("--log-dir")


def maintenance(cmd: str) -> int | None:
    """Runs ``check`` or ``cleanup`` and returns the exit status; None for any other command."""
    if cmd == "check":
        ok, why = available()
        print(f"{'available' if ok else 'unavailable'}: {why}")
        return 0 if ok else 1
    if cmd == "cleanup":
        found = cleanup()
        print(f"removed {len(found['namespaces'])} namespaces, {len(found['links'])} links, "
              f"{len(found['pids'])} processes, {len(found['files'])} files")
        return 0
    return None


def run_reported(run, log_dir: str | None, prefix: str) -> int:
    """Calls ``run(log_dir)``; every failure is one ``error:`` line and an exit status (2 for bad input).

    Unit logs are kept when something fails (the error names them), removed after a clean run.
    """
    from scripts.dockerfile import SpecError
    from shardstats.errors import InputError
    ok, why = available()
    if not ok:
        print(f"error: {why}", file=sys.stderr)
        return 1
    logs = log_dir or tempfile.mkdtemp(prefix=prefix)
    try:
        run(logs)
    except KeyboardInterrupt:
        print("interrupted; torn down", file=sys.stderr)
        return 130
    except (BedError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:             # the host's shards/ is missing or unreadable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not log_dir:
        shutil.rmtree(logs, ignore_errors=True)
    print("all jobs match numpy; torn down", file=sys.stderr)
    return 0
