"""The ``cluster`` command line (see DESIGN.md for the contract).

Exit status: 0 on success, 2 for bad input or usage, 1 for a cluster failure.
Errors are one line on stderr.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time
from pathlib import Path

import click

from shardstats.cluster.config import (ClusterInfo, ConfigError, default_cluster_file, find_cluster, token_from_env,
                                       worker_id_from_hostname)
from shardstats.cluster.submit import SubmitGroup, fail
from shardstats.cluster.httpflags import up_http_base, up_options, worker_http, worker_options
from shardstats._version import __version__
from shardstats.errors import ShardstatsError
from shardstats.settings import DEFAULTS, Settings
from shardstats.tls import TLSFiles


CLUSTER_FILE_HELP = ("The cluster to use, as `cluster up` recorded it (default: $CLUSTER_FILE, else "
                     "~/.local/state/cluster/cluster.json; $CLUSTER_WORKERS with $CLUSTER_TOKEN overrides the default).")


@click.group(epilog="""\b
Examples:
  cluster gen --out shards/ --rows 1e6               # sample data
  cluster up --detach                                # start ten local workers
  cluster submit mode --input shards/                # the most frequent value
  cluster submit median --input shards/ --report job.html
  cluster down
\b
Shell completion (bash; zsh and fish likewise with zsh_source / fish_source):
  eval "$(_CLUSTER_COMPLETE=bash_source cluster)"
""")
@click.version_option(__version__, prog_name="cluster")
def main() -> None:
    """An asyncio TCP cluster computing exact statistics over sharded integer data."""
    # At exit, the interpreter's garbage collection walks every object of every module imported (~250 for a
    # submit): ~15 ms of a one-value job's ~0.1 s. Frozen objects are skipped; their memory goes back with
    # the process all the same (atexit handlers and stream flushes still run).
    atexit.register(gc.freeze)


# -- the daemon ------------------------------------------------------------
@main.command(epilog="""\b
Example (worker 0 of three; run the same with --id 1 and --id 2 on their hosts):
  CLUSTER_TOKEN=$(cat token) cluster worker --id 0 --listen 0.0.0.0:7000 \\
      --peers hostA:7000,hostB:7000,hostC:7000
""")
@click.option("--id", "worker_id", type=click.IntRange(min=0), help="This worker's index into --peers.")
@click.option("--id-from-hostname", is_flag=True,
              help="Take the id from the host name's trailing -N (a StatefulSet pod: shardstats-3 is worker 3).")
@click.option("--listen", required=True, help="HOST:PORT to serve on.")
@click.option("--peers", required=True, help="Every worker's address, comma-separated, in id order.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the cluster token "
              "(default: $CLUSTER_TOKEN or $CLUSTER_TOKEN_FILE).")
@click.option("--root", default=".", show_default=True,
              help="The data root: jobs may read only files under it (links resolved), relative paths resolve "
              "against it.")
@click.option("--allow-any-path", is_flag=True,
              help="Let jobs read any file this process can read (what `cluster up` and --local use: the "
              "coordinator runs on this host as the same user).")
@click.option("--memory-limit", help="Memory this worker keeps within, e.g. 300M or 2G (default: the cgroup's "
              "limit or the physical memory). Values beyond it stay on disk: mode and median work from there "
              "in passes; other ops refuse such a job (exit 2).")
@click.option("--spill-dir", type=click.Path(file_okay=False), help="Where jobs keep what exceeds --memory-limit "
              "(default: the temporary folder's shardstats-spill); each job's files go when it ends.")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=DEFAULTS.read_timeout, show_default=True,
              help="Seconds a load may go without finishing a file before the worker reports itself unhealthy.")
@click.option("--job-timeout", type=click.FloatRange(min=0.1), default=DEFAULTS.job_timeout, show_default=True,
              help="Seconds any single wait inside a job may take.")
@click.option("--handshake-timeout", type=click.FloatRange(min=0.1), default=DEFAULTS.handshake_timeout, show_default=True,
              help="Seconds a new connection has to prove the token before it is closed (slowloris guard).")
@click.option("--no-user-code", is_flag=True, help="Refuse mapreduce jobs, whose Python functions a client sends "
              "and this worker would run (in a child process, as this worker's user).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Which log lines to write (to stderr).")
@click.option("--live-dir", type=click.Path(file_okay=False), help="Where the live top-K checkpoints its buckets "
              "(default: $XDG_STATE_HOME or ~/.local/state, /shardstats/live/cluster-<token digest>/).")
@click.option("--live-approx", is_flag=True, help="Live top-K: keep count-min and heavy-hitter sketches per bucket "
              "(flat memory, counts with an error bound) instead of exact counts.")
@click.option("--live-flush-interval", type=click.FloatRange(min=0.01), default=DEFAULTS.live_flush_interval,
              show_default=True, help="Seconds between flushes of this worker's local counts to the keys' owners.")
@click.option("--live-allowance", type=click.FloatRange(min=0), default=DEFAULTS.live_allowance, show_default=True,
              help="Seconds an event time may lag (or lead) its arrival and still count in its bucket.")
@click.option("--live-checkpoint-interval", type=click.FloatRange(min=0.1), default=DEFAULTS.live_checkpoint_interval,
              show_default=True, help="Seconds between checkpoints of the live top-K buckets to local disk.")
@click.option("--tls-cert", envvar="CLUSTER_TLS_CERT", help="This worker's certificate (PEM); with --tls-key and "
              "--tls-ca every connection, in and out, is mutual TLS (env CLUSTER_TLS_CERT).")
@click.option("--tls-key", envvar="CLUSTER_TLS_KEY", help="Its private key (env CLUSTER_TLS_KEY).")
@click.option("--tls-ca", envvar="CLUSTER_TLS_CA", help="The cluster CA's certificate: peers and clients must "
              "present a certificate it signed (env CLUSTER_TLS_CA).")
@click.option("--exit-with-parent", type=int, default=None, hidden=True,
              help="Stop when the process PID (the worker's parent) is gone: what an ephemeral cluster's "
              "launcher (the Python API, --local) passes, so a killed notebook leaves no worker behind.")
@worker_options
def worker(worker_id: int | None, id_from_hostname: bool, listen: str, peers: str, token_file: str | None, root: str,
           allow_any_path: bool, memory_limit: str | None, spill_dir: str | None, read_timeout: float,
           job_timeout: float, handshake_timeout: float, no_user_code: bool, log_level: str,
           live_dir: str | None, live_approx: bool, live_flush_interval: float, live_allowance: float,
           live_checkpoint_interval: float, tls_cert: str | None, tls_key: str | None, tls_ca: str | None,
           exit_with_parent: int | None = None) -> None:
    """Run one worker daemon (what `cluster up`, docker compose and the Kubernetes StatefulSet start)."""
    import socket
    if exit_with_parent is not None:
        _exit_with_parent(exit_with_parent)
    # One BLAS thread per worker, set before numpy loads: workers are many per host already, and ten
    # processes' BLAS thread pools on two cores made the stats op 2.7x slower (0.92 s vs 0.34 s at 10M).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS"):
        os.environ.setdefault(var, "1")
    from shardstats import logs
    from shardstats.worker.memory import fixed_mmap_threshold
    from shardstats.worker.server import WorkerServer
    if (worker_id is None) == (not id_from_hostname):
        fail("give exactly one of --id and --id-from-hostname", 2)
    if id_from_hostname:
        try:
            worker_id = worker_id_from_hostname(socket.gethostname())
        except ConfigError as exc:
            fail(f"--id-from-hostname: {exc}", 2)
    fixed_mmap_threshold()
    try:
        token = Path(token_file).read_text().strip() if token_file else token_from_env()
    except (OSError, ConfigError) as exc:
        fail(f"cannot read the cluster token: {exc}", 2)
    if not token:
        fail("no cluster token: set CLUSTER_TOKEN or CLUSTER_TOKEN_FILE, or pass --token-file", 2)
    from shardstats.protocol.handshake import weak_token
    weak = weak_token(token, DEFAULTS.min_token_chars)
    if weak:
        fail(weak, 2)
    _raise_fd_limit()
    from shardstats.worker.memory import parse_size
    try:
        limit = parse_size(memory_limit) if memory_limit else None
    except ValueError as exc:
        fail(f"--memory-limit: {exc}", 2)
    if not Path(root).is_dir():
        fail(f"--root {root}: not a directory", 2)
    addrs = [a.strip() for a in peers.split(",") if a.strip()]
    logs.setup(log_level, worker=worker_id)
    try:
        server = WorkerServer(worker_id, listen, addrs, token.encode(), root=root, confine=not allow_any_path,
                              settings=Settings(job_timeout=job_timeout, handshake_timeout=handshake_timeout,
                                                memory_limit=limit, spill_dir=spill_dir, read_timeout=read_timeout,
                                                user_code=not no_user_code, live_dir=live_dir,
                                                live_approx=live_approx, live_flush_interval=live_flush_interval,
                                                live_allowance=live_allowance,
                                                live_checkpoint_interval=live_checkpoint_interval),
                              tls=TLSFiles.of(tls_cert, tls_key, tls_ca), **worker_http(listen))
    except ValueError as exc:
        fail(str(exc), 2)
    except ConfigError as exc:        # a TLS file missing or unusable: the operator's to fix
        fail(f"worker {worker_id}: {exc}", 2)
    from shardstats.cluster.runner import run_async      # asyncio: not for --help, --version or gen
    # What the daemon holds at start (its modules, the server) lives as long as it: frozen, no full garbage
    # collection walks it again. Each such walk paused every request waiting on the loop: on workers taking
    # live events, 35 ms of CPU and up to 200 ms on a busy machine, the tail of the live top query's latency.
    gc.collect()
    gc.freeze()
    try:
        run_async(server.serve(handle_signals=True), data_path=True)
    except OSError as exc:
        fail(f"worker {worker_id} cannot listen on {listen}: {exc.strerror or exc}", 1)


PARENT_POLL = 1.0      # seconds between an ephemeral worker's looks at its parent


def _exit_with_parent(parent: int) -> None:
    """SIGTERM to this worker (its ordinary shutdown: jobs aborted, spill removed) once ``parent`` is no longer
    its parent -- the process that started it died, even by SIGKILL (a notebook kernel killed), and the
    worker was handed to init.  Polled on a daemon thread: PR_SET_PDEATHSIG would follow the parent's
    *thread*, and the API starts workers from a helper thread that ends at once."""
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _raise_fd_limit() -> None:
    """Lifts the soft descriptor limit to the hard one: a worker's connections and shard files share it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


# -- local launcher ------------------------------------------------------------
DEFAULT_BASE_PORT = 7000


def _base_port_shown() -> str:
    env = os.environ.get("CLUSTER_BASE_PORT")
    return f"{env} from $CLUSTER_BASE_PORT" if env else str(DEFAULT_BASE_PORT)


def _cluster_file(path: str | None) -> Path:
    return Path(path) if path else default_cluster_file()


def _running(info: ClusterInfo) -> bool:
    """Whether any worker the cluster file names is still running and provably ours (launcher.ours)."""
    from shardstats.cluster import launcher
    return bool(launcher.our_pids(info))


@main.command(epilog="""\b
Examples:
  cluster up --detach                   # ten workers on 127.0.0.1:7000..7009, in the background
  cluster up --workers 4 --base-port 7500 --detach
  CLUSTER_BASE_PORT=7500 cluster up     # in the foreground; Ctrl-C stops it
""")
@click.option("--workers", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many worker processes to start.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the workers listen on.")
@click.option("--base-port", type=int, default=lambda: os.environ.get("CLUSTER_BASE_PORT") or DEFAULT_BASE_PORT,
              show_default=_base_port_shown(),
              help="Workers listen on BASE..BASE+N-1 (default from $CLUSTER_BASE_PORT when set).")
@click.option("--detach", is_flag=True, help="Start the workers in the background and return.")
@up_options
@click.option("--cluster-file", type=click.Path(dir_okay=False),
              help="Where to record the cluster for later commands (default: $CLUSTER_FILE, else "
              "~/.local/state/cluster/cluster.json).")
@click.option("--log-dir", type=click.Path(file_okay=False), help="Worker logs (default: a temporary directory).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
              help="How much the workers write to their logs.")
@click.option("--tls", "tls_dir", type=click.Path(file_okay=False), help="Mutual TLS on every connection, with the "
              "certificates `cluster tls init DIR` wrote (made now if DIR holds none); the cluster file records "
              "the client's, so later commands use them.")
@click.option("--memory-limit", help="Memory each worker keeps within, e.g. 300M (default: the machine's memory "
              "or its cgroup's limit, shared by the workers); values beyond it stay on disk (see `cluster worker`).")
@click.option("--spill-dir", type=click.Path(file_okay=False), help="Where the workers' jobs keep what exceeds "
              "--memory-limit (default: the temporary folder's shardstats-spill).")
@click.option("--live-approx", is_flag=True, help="Live top-K: the owners keep count-min and heavy-hitter sketches "
              "(flat memory, bounded error) instead of exact counts (see `cluster worker`).")
@click.option("--live-flush-interval", type=click.FloatRange(min=0.01), default=DEFAULTS.live_flush_interval,
              show_default=True, help="Live top-K: seconds between each worker's flushes to the keys' owners.")
def up(workers: int, host: str, base_port: int, detach: bool, cluster_file: str | None, log_dir: str | None,
       log_level: str, tls_dir: str | None, memory_limit: str | None, spill_dir: str | None, live_approx: bool,
       live_flush_interval: float) -> None:
    """Start a local cluster of worker processes."""
    from shardstats.cluster import launcher
    from shardstats.worker.memory import parse_size
    try:
        worker_args = ["--memory-limit", str(parse_size(memory_limit))] if memory_limit else []
    except ValueError as exc:
        fail(f"--memory-limit: {exc}", 2)
    worker_args += ["--spill-dir", str(Path(spill_dir).absolute())] if spill_dir else []
    worker_args += ["--live-approx"] if live_approx else []
    if live_flush_interval != DEFAULTS.live_flush_interval:
        worker_args += ["--live-flush-interval", repr(live_flush_interval)]
    path = _cluster_file(cluster_file)
    if path.exists():
        try:
            old = ClusterInfo.load(path)
        except ConfigError:
            old = None
        if old is not None and _running(old):
            fail(f"a cluster is already running ({path}); stop it with `cluster down`", 2)
        if old is not None and old.local:      # its workers are all gone (a crash, a reboot): clean up, start anew
            launcher.stop(old)
            click.echo(f"note: {path} named a cluster whose workers are gone; starting a new one", err=True)
    if tls_dir is not None and not (Path(tls_dir) / "ca.crt").exists():
        from shardstats.cluster import certs
        try:
            certs.init(Path(tls_dir), workers, sans=[host])
        except ShardstatsError as exc:
            fail(str(exc), exc.exit_code)
        click.echo(f"made a cluster CA and certificates for {workers} workers in {tls_dir}")
    t = time.perf_counter()
    try:
        info = launcher.start(workers, host, base_port, log_dir, log_level, extra_args=worker_args, tls_dir=tls_dir,
                              http_base=up_http_base(base_port))
    except launcher.LaunchError as exc:
        fail(str(exc), 1)
    info.save(path)
    click.echo(f"cluster of {workers} workers up on {info.workers[0]} .. {info.workers[-1]} "
               f"in {time.perf_counter() - t:.2f} s (logs: {info.log_dir}, cluster file: {path})")
    if info.http_ports:
        click.echo(f"metrics: http://{host}:{info.http_ports[0]}/metrics .. :{info.http_ports[-1]}/metrics")
    if detach:
        return
    click.echo("press Ctrl-C to stop")
    try:
        while _running(info):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    launcher.stop(info)
    path.unlink(missing_ok=True)
    _forget_live(info)
    click.echo("cluster stopped")


def _forget_live(info: ClusterInfo) -> None:
    """A stopped local cluster's live top-K checkpoints go too: its token is never used again."""
    from shardstats.worker.live.store import forget_cluster
    forget_cluster(info.token.encode())


@main.command(epilog="""\b
Example:
  cluster down                     # stops the workers `cluster up --detach` started
""")
@click.option("--cluster-file", type=click.Path(dir_okay=False), help=CLUSTER_FILE_HELP)
def down(cluster_file: str | None) -> None:
    """Stop the local cluster `cluster up` started."""
    from shardstats.cluster import launcher
    path = _cluster_file(cluster_file)
    if not path.exists():
        click.echo("no cluster is running")
        return
    try:
        info = ClusterInfo.load(path)
    except ConfigError as exc:
        fail(str(exc), 1)
    if not info.local:
        fail(f"{path} describes a cluster this host did not start; stop it where it runs", 2)
    running = launcher.our_pids(info)       # only processes provably ours: a stale file's pids may be anyone's
    killed = launcher.stop(info)
    path.unlink(missing_ok=True)
    _forget_live(info)
    gone = len(info.pids) - len(running)
    click.echo(f"stopped {len(running)} workers" + (f" ({len(killed)} needed SIGKILL)" if killed else "")
               + (f"; {gone} had already exited" if gone else ""))


@main.command(epilog="""\b
Examples:
  cluster status                  # one table; exit 1 if any worker is down
  cluster status --watch          # refresh in place every second; Ctrl-C to stop
  cluster status --json | jq '.workers[] | select(.up | not)'
""")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with --watch: one per refresh, a line each).")
@click.option("--watch", is_flag=True, help="Keep refreshing: in place on a terminal, one table per interval "
              "elsewhere. Ctrl-C stops it (exit 0).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--cluster-file", type=click.Path(dir_okay=False), help=CLUSTER_FILE_HELP)
def status(as_json: bool, watch: bool, interval: float, cluster_file: str | None) -> None:
    """Show every worker: address, up/down, version, jobs run and failed, bytes sent, memory, last job.

    Exit status 0 when every worker answers, 1 when any is down (the table or JSON is printed either way),
    so scripts and healthchecks can test it.
    """
    from shardstats.cluster.statusview import table, watch as watch_loop
    try:
        info, source = find_cluster(cluster_file)
    except ConfigError as exc:
        fail(str(exc), 1)
    try:
        tls = info.client_tls()
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)

    def poll() -> list[dict]:
        from shardstats.cluster.runner import run_async
        from shardstats.coordinator.job import ping_all
        return run_async(ping_all(info.workers, info.token.encode(), timeout=DEFAULTS.status_timeout, tls=tls))

    def as_document(rows: list[dict]) -> str:
        return json.dumps({"source": source, "workers": rows})
    if watch:
        try:
            watch_loop(poll, source, sys.stdout, interval, sys.stdout.isatty(), as_document if as_json else None)
        except KeyboardInterrupt:
            click.echo()
        return
    rows = poll()
    click.echo(as_document(rows) if as_json else "\n".join(table(rows, source)))
    if not all(r["up"] for r in rows):
        sys.exit(1)


# -- jobs ------------------------------------------------------------------------
main.add_command(SubmitGroup("submit", help="Run a job on the cluster: one command per op (see `cluster submit --help`)."))


# -- saved sketches ----------------------------------------------------------------
from shardstats.cluster.sketchcli import sketch  # noqa: E402 - the group lives in its own module
main.add_command(sketch)


# -- live top-K ---------------------------------------------------------------------
from shardstats.cluster.livecli import ingest, live_stats, top  # noqa: E402 - the commands live in their own module
main.add_command(ingest)
main.add_command(top)
main.add_command(live_stats)


# -- TLS -------------------------------------------------------------------------
@main.group()
def tls() -> None:
    """Certificates for mutual TLS between workers and clients."""


@tls.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--workers", type=click.IntRange(1), default=10, show_default=True)
@click.option("--hosts", multiple=True, help="The names workers are dialed by, put in their certificates: one per "
              "worker in id order (h0,h1,...) or templates with {i} (worker{i}); repeatable. localhost, "
              "127.0.0.1 and ::1 are always added.")
@click.option("--san", multiple=True, help="A name or IP added to every worker's certificate; repeatable.")
@click.option("--days", type=click.IntRange(1), default=365, show_default=True, help="Validity of the worker "
              "and client certificates (the CA's: at least 10 years).")
def tls_init(directory: str, workers: int, hosts: tuple[str, ...], san: tuple[str, ...], days: int) -> None:
    """Make a cluster CA, a certificate per worker and one for clients in DIRECTORY (keys mode 0600)."""
    from shardstats.cluster import certs
    try:
        made = certs.init(Path(directory), workers, list(hosts), list(san), days)
    except ShardstatsError as exc:
        fail(str(exc), exc.exit_code)
    click.echo(f"wrote a cluster CA ({made.ca}), {workers} worker certificates and a client certificate "
               f"to {directory}")
    for crt, names in made.workers:
        click.echo(f"  {crt.name}: {', '.join(names)}")
    click.echo(f"workers: --tls-cert {directory}/workerI.crt --tls-key {directory}/workerI.key "
               f"--tls-ca {directory}/ca.crt")
    click.echo(f"clients: CLUSTER_TLS_CERT={directory}/client.crt CLUSTER_TLS_KEY={directory}/client.key "
               f"CLUSTER_TLS_CA={directory}/ca.crt")


# -- data -----------------------------------------------------------------------
class Count(click.ParamType):
    """A count of things: 1000000, 1_000_000, 1e6, 10M or 500k (as scripts/bench.py takes --rows)."""
    name = "COUNT"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        t = str(value).strip().lower().replace("_", "").replace(",", "")
        mult = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}.get(t[-1:], 1)
        try:
            from decimal import Decimal, InvalidOperation
            n = Decimal(t[:-1] if mult != 1 else t) * mult
            if n == n.to_integral_value() and n >= 0:
                return int(n)
        except (InvalidOperation, ValueError):
            pass
        self.fail(f"{value!r} is not a whole number of rows (e.g. 1000000, 1e6 or 1M)", param, ctx)


@main.command(epilog="""\b
Examples:
  cluster gen --out shards/                          # 1M values in 10 .npy shards
  cluster gen --out big/ --rows 1e8 --dist zipf      # 100M values, Zipf-distributed
  cluster gen --out txt/ --rows 1000 --shards 3 --format txt
""")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write the shard files into (created if missing).")
@click.option("--shards", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many shard files to split the values into.")
@click.option("--rows", type=Count(), default=1_000_000, show_default=True,
              help="How many values in all: 1000000, 1e6 or 1M.")
@click.option("--dist", type=click.Choice(["unique-dup", "zipf", "uniform"]), default="unique-dup", show_default=True,
              help="unique-dup: distinct values plus one that repeats (the problem's data); zipf: a few very "
              "common values; uniform: random in a range.")
@click.option("--format", "fmt", type=click.Choice(["txt", "npy"]), default="npy", show_default=True,
              help="npy: numpy binary (fast); txt: one integer per line.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same values.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder, replacing the shard-N files an "
              "earlier `cluster gen` wrote there (other files are kept).")
def gen(out: str, shards: int, rows: int, dist: str, fmt: str, seed: int, force: bool) -> None:
    """Generate sample shards (seeded, reproducible) into an empty folder."""
    from shardstats.cluster.gen import generate, prepare_target, write_shards
    try:
        parts = generate(rows, shards, dist, seed)
        _, others = prepare_target(out, force)
    except ValueError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"--out {out}: {exc.strerror or exc}", 2)
    if others:
        click.echo(f"note: {out} also holds {len(others)} other entries (e.g. {others[0]}); "
                   f"jobs on it read every shard file there", err=True)
    paths = write_shards(parts, Path(out), fmt)
    click.echo(f"wrote {sum(len(p) for p in parts):,} values ({dist}) in {len(paths)} {fmt} shards to {out}")


FAST_EXIT = ("submit", "status")     # short-lived client commands; never the worker or the launcher


def run() -> None:
    """The ``cluster`` console script: click's ``main``, then, for a client command, a fast exit.

    After a ``submit`` has written its answer there is nothing left to run: the
    interpreter's teardown (module dicts, finalizers) was ~6 ms of a one-value job's
    ~0.105 s. Streams and log handlers are flushed first, and the exit code is the one
    ``main`` chose. Everything else (``worker``, ``up``...) exits the ordinary way.
    """
    fast = len(sys.argv) > 1 and sys.argv[1] in FAST_EXIT
    try:
        main()
    except SystemExit as exc:
        if not fast:
            raise
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        _fast_exit(code)


def _fast_exit(code: int) -> None:
    import logging
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):        # a closed pipe (`| head`): the answer is gone either way
        code = code or 120
    os._exit(code)


if __name__ == "__main__":
    run()
