"""The local multi-process launcher: N ``cluster worker`` processes on one host.

The token reaches the workers through the environment (not argv), so it does not
show in process listings.  Ports are probed free before the workers start.  With a
TLS directory (``cluster tls init``) worker i gets worker<i>.crt/.key through
``CLUSTER_TLS_*`` and the cluster file records client.crt/.key for later commands.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shardstats.cluster.config import ClusterInfo
from shardstats.errors import ConfigError, LaunchError
from shardstats.tls import ENV as TLS_ENV, TLSFiles




def free_ports(host: str, n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def ports_in_use(host: str, ports: list[int]) -> list[int]:
    busy = []
    for p in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, p))
            except OSError:
                busy.append(p)
    return busy


def tls_for(tls_dir: str | Path, workers: int) -> TLSFiles:
    """The client's files in a ``cluster tls init`` directory, once every worker's are known to be there."""
    d = Path(tls_dir)
    need = [d / "ca.crt", d / "client.crt", d / "client.key",
            *(d / f"worker{i}.{e}" for i in range(workers) for e in ("crt", "key"))]
    missing = [p for p in need if not p.is_file()]
    if missing:
        raise LaunchError(f"{missing[0]} is missing: TLS for {workers} workers needs what "
                          f"`cluster tls init NEWDIR --workers {workers}` writes")
    return TLSFiles.in_dir(d, "client")


def start(workers: int, host: str = "127.0.0.1", base_port: int | None = None, log_dir: str | None = None,
          log_level: str = "info", extra_args: list[str] | None = None, ready_timeout: float = 30.0,
          tls_dir: str | Path | None = None, http_base: int | None = None,
          exit_with_parent: bool = False) -> ClusterInfo:
    """``http_base``: worker i serves HTTP (metrics) on ``http_base + i``; 0: on free ports; None: no HTTP.
    ``exit_with_parent``: the workers stop when this process is gone, however it ends (an ephemeral cluster:
    the API's, --local's; never a detached `cluster up`, whose starter exits at once)."""
    if workers < 1:
        raise LaunchError("--workers must be at least 1")
    client_tls = tls_for(tls_dir, workers) if tls_dir is not None else None
    ports = free_ports(host, workers) if base_port is None else list(range(base_port, base_port + workers))
    if base_port is not None:
        busy = ports_in_use(host, ports)
        if busy:
            raise LaunchError(f"port {busy[0]} on {host} is in use; pick another --base-port or run `cluster down`")
    addrs = [f"{host}:{p}" for p in ports]
    http_ports = _http_ports(host, http_base, workers, ports)
    token = secrets.token_hex(32)
    logs = Path(log_dir or tempfile.mkdtemp(prefix="cluster-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    if "--memory-limit" not in (extra_args or []):
        # Workers of one machine share it: each keeps to its share (worker/memory.py machine_budget).
        from shardstats.worker.memory import machine_budget
        extra_args = [*(extra_args or []), "--memory-limit", str(machine_budget() // workers)]
    procs: list[subprocess.Popen] = []
    try:
        for i in range(workers):
            procs.append(_spawn(i, addrs, token, logs, log_level, extra_args, tls_dir,
                                http_ports[i] if http_ports else None,
                                parent=os.getpid() if exit_with_parent else None))
        pids = [p.pid for p in procs]
        info = ClusterInfo(workers=addrs, token=token, local=True, pids=pids, log_dir=str(logs),
                           root=os.getcwd(), tls=client_tls.as_dict() if client_tls is not None else None,
                           starts=[start_time(p) for p in pids], own_logs=log_dir is None, http_ports=http_ports,
                           worker_args=list(extra_args or []))
        wait_ready(info, ready_timeout, procs)
    except BaseException as exc:
        # Whatever ended the start -- a worker that failed, or Ctrl-C between two spawns (the workers have
        # sessions of their own: the terminal's SIGINT never reaches them) -- no worker started is left behind.
        terminate([p.pid for p in procs])
        if log_dir is None and not isinstance(exc, LaunchError):   # a launch error names a log file: kept
            shutil.rmtree(logs, ignore_errors=True)
        raise
    return info


def _http_ports(host: str, base: int | None, workers: int, ports: list[int]) -> list[int]:
    """The workers' HTTP ports: ``base``..``base+workers-1`` (each free, none a worker's own port), free ports
    for 0, none for None."""
    if base is None:
        return []
    if base == 0:
        return free_ports(host, workers)
    http = list(range(base, base + workers))
    if http[-1] > 65535:
        raise LaunchError(f"--http-port {base}: {workers} workers need ports up to {http[-1]}, past 65535")
    clash = sorted(set(http) & set(ports))
    if clash:
        raise LaunchError(f"--http-port {base}: port {clash[0]} is a worker's own port; pick another --http-port")
    busy = ports_in_use(host, http)
    if busy:
        raise LaunchError(f"port {busy[0]} on {host} is in use; pick another --http-port (or --no-http) or run "
                          f"`cluster down`")
    return http


def _spawn(i: int, addrs: list[str], token: str, logs: Path, log_level: str,
           extra_args: list[str] | None, tls_dir: str | Path | None = None,
           http_port: int | None = None, parent: int | None = None) -> subprocess.Popen:
    """Worker ``i`` as a process of its own session (Ctrl-C at the shell does not reach it).

    The caller's own ``CLUSTER_TLS_*`` (a client's certificate) never reach a worker: it gets its own or none.
    """
    env = {k: v for k, v in os.environ.items() if k not in TLS_ENV.values()}
    env["CLUSTER_TOKEN"] = token
    if tls_dir is not None:
        env.update(TLSFiles.in_dir(tls_dir, f"worker{i}").env())
    cmd = [sys.executable, "-m", "shardstats.cluster.cli", "worker", "--id", str(i), "--listen", addrs[i],
           "--peers", ",".join(addrs), "--log-level", log_level, "--allow-any-path",
           *(["--http-port", str(http_port)] if http_port else ["--no-http"]), *(extra_args or []),
           *(["--exit-with-parent", str(parent)] if parent is not None else [])]
    with open(logs / f"worker{i}.log", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def restart(info: ClusterInfo, i: int, log_level: str = "info", ready_timeout: float = 30.0) -> None:
    """Starts worker ``i`` again on its address (after it died); it rejoins the mesh for the next job."""
    if alive(info.pids[i]):
        raise LaunchError(f"worker {i} (pid {info.pids[i]}) is still running")
    tls_dir = Path(info.tls["ca"]).parent if info.tls else None
    p = _spawn(i, info.workers, info.token, Path(info.log_dir), log_level, info.worker_args, tls_dir,
               info.http_ports[i] if i < len(info.http_ports) else None)
    info.pids[i] = p.pid
    if len(info.starts) == len(info.pids):
        info.starts[i] = start_time(p.pid)
    wait_ready(ClusterInfo(workers=[info.workers[i]], token=info.token, local=True, pids=[p.pid],
                           log_dir=info.log_dir, root=info.root, tls=info.tls), ready_timeout, [p])


def wait_ready(info: ClusterInfo, timeout: float, procs: list[subprocess.Popen] | None = None) -> None:
    deadline = time.monotonic() + timeout
    # The files this launcher recorded, not $CLUSTER_TLS_* (which may name another cluster's client).
    try:
        tls = TLSFiles(**info.tls).client_context() if info.tls else None
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None
    while True:
        for i, p in enumerate(procs or []):
            if p.poll() is not None:
                raise LaunchError(f"worker {i} exited with status {p.returncode}; see {info.log_dir}/worker{i}.log")
        from shardstats.coordinator.job import ping_all   # lazily: `cluster --help` needs no asyncio stack
        rows = asyncio.run(ping_all(info.workers, info.token.encode(), timeout=1.0, tls=tls))
        down = [r for r in rows if not r["up"]]
        if not down:
            return
        if time.monotonic() > deadline:
            raise LaunchError(f"worker at {down[0]['addr']} did not come up within {timeout:g}s "
                              f"({down[0].get('error')}); logs in {info.log_dir}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone (reaped here)
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        from shardstats.worker.spill import alive as running
        return running(pid)          # anyone's zombie counts as gone too


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if unknown.

    With the pid it names one process for good: a pid reused by another process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()      # after "pid (comm) ": field 3 onwards
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def ours(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` is a worker this launcher started: alive, running ``cluster worker`` (its command
    line), and -- when the cluster file recorded one -- started at the recorded time.  A stale cluster
    file whose pids now belong to other processes names none of ours, so nothing of theirs is signalled."""
    if not alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if b"shardstats.cluster.cli" not in argv or b"worker" not in argv:
        return False
    return start is None or start_time(pid) == start


def our_pids(info: ClusterInfo) -> list[int]:
    """The recorded workers that are still running and provably ours."""
    starts = info.starts if len(info.starts) == len(info.pids) else [None] * len(info.pids)
    return [p for p, s in zip(info.pids, starts) if ours(p, s)]


def stop(info: ClusterInfo, timeout: float = 10.0, keep_logs: bool = False) -> list[int]:
    """SIGTERM the workers that are provably ours (``ours``), SIGKILL what is still there after ``timeout``;
    returns the pids that needed SIGKILL.  A log directory the launcher made is removed with them."""
    killed = terminate(our_pids(info), timeout)
    if info.own_logs and info.log_dir and not keep_logs:
        shutil.rmtree(info.log_dir, ignore_errors=True)
    return killed


def terminate(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL what is left after ``grace`` (and wait for it); returns the pids that needed SIGKILL."""
    _signal_and_wait(pids, signal.SIGTERM, grace)
    killed = [p for p in pids if alive(p)]
    _signal_and_wait(killed, signal.SIGKILL, grace)
    return killed


def _signal_and_wait(pids: list[int], sig: int, grace: float) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.02)
