"""The ``cluster`` command line (see DESIGN.md for the contract).

Exit status: 0 on success, 2 for bad input or usage, 1 for a cluster failure.
Errors are one line on stderr.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo, ConfigError, default_cluster_file, find_cluster, token_from_env
from shardstats.cluster.output import dumps_exact, human, json_document
from shardstats.coordinator.job import ping_all, run_job
from shardstats._version import __version__
from shardstats.errors import ShardstatsError
from shardstats.settings import DEFAULTS, Settings
from shardstats.tls import TLSFiles
from shardstats.coordinator.liveness import Liveness
from shardstats.worker.comm.shuffle import STRATEGIES


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_async(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


@click.group()
@click.version_option(__version__, prog_name="cluster")
def main() -> None:
    """An asyncio TCP cluster computing exact statistics over sharded integer data."""


# -- the daemon ------------------------------------------------------------
@main.command()
@click.option("--id", "worker_id", type=int, required=True, help="This worker's index into --peers.")
@click.option("--listen", required=True, help="HOST:PORT to serve on.")
@click.option("--peers", required=True, help="Every worker's address, comma-separated, in id order.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the cluster token "
              "(default: $CLUSTER_TOKEN or $CLUSTER_TOKEN_FILE).")
@click.option("--root", default=".", show_default=True, help="Directory relative input paths are resolved against.")
@click.option("--job-timeout", type=float, default=120.0, show_default=True, help="Seconds any wait inside a job may take.")
@click.option("--handshake-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds a new connection has to prove the token before it is closed (slowloris guard).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--tls-cert", envvar="CLUSTER_TLS_CERT", help="This worker's certificate (PEM); with --tls-key and "
              "--tls-ca every connection, in and out, is mutual TLS (env CLUSTER_TLS_CERT).")
@click.option("--tls-key", envvar="CLUSTER_TLS_KEY", help="Its private key (env CLUSTER_TLS_KEY).")
@click.option("--tls-ca", envvar="CLUSTER_TLS_CA", help="The cluster CA's certificate: peers and clients must "
              "present a certificate it signed (env CLUSTER_TLS_CA).")
def worker(worker_id: int, listen: str, peers: str, token_file: str | None, root: str, job_timeout: float,
           handshake_timeout: float, log_level: str, tls_cert: str | None, tls_key: str | None,
           tls_ca: str | None) -> None:
    """Run one worker daemon (what `cluster up` and docker compose start)."""
    from shardstats import logs
    from shardstats.worker.memory import fixed_mmap_threshold
    from shardstats.worker.server import WorkerServer
    fixed_mmap_threshold()
    try:
        token = Path(token_file).read_text().strip() if token_file else token_from_env()
    except (OSError, ConfigError) as exc:
        fail(f"cannot read the cluster token: {exc}", 2)
    if not token:
        fail("no cluster token: set CLUSTER_TOKEN or CLUSTER_TOKEN_FILE, or pass --token-file", 2)
    addrs = [a.strip() for a in peers.split(",") if a.strip()]
    logs.setup(log_level, worker=worker_id)
    try:
        server = WorkerServer(worker_id, listen, addrs, token.encode(), root=root,
                              settings=Settings(job_timeout=job_timeout, handshake_timeout=handshake_timeout),
                              tls=TLSFiles.of(tls_cert, tls_key, tls_ca))
    except ValueError as exc:
        fail(str(exc), 2)
    except ConfigError as exc:        # a TLS file missing or unusable: the operator's to fix
        fail(f"worker {worker_id}: {exc}", 2)
    try:
        run_async(server.serve())
    except OSError as exc:
        fail(f"worker {worker_id} cannot listen on {listen}: {exc.strerror or exc}", 1)


# -- local launcher ------------------------------------------------------------
def _cluster_file(path: str | None) -> Path:
    return Path(path) if path else default_cluster_file()


def _running(info: ClusterInfo) -> bool:
    return any(launcher.alive(p) for p in info.pids)


@main.command()
@click.option("--workers", type=int, default=10, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--base-port", type=int, default=7000, show_default=True, envvar="CLUSTER_BASE_PORT",
              help="Workers listen on BASE..BASE+N-1 (env CLUSTER_BASE_PORT).")
@click.option("--detach", is_flag=True, help="Start the workers in the background and return.")
@click.option("--cluster-file", type=click.Path(dir_okay=False), help="Where to record the cluster.")
@click.option("--log-dir", type=click.Path(file_okay=False), help="Worker logs (default: a temporary directory).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--tls", "tls_dir", type=click.Path(file_okay=False), help="Mutual TLS on every connection, with the "
              "certificates `cluster tls init DIR` wrote (made now if DIR holds none); the cluster file records "
              "the client's, so later commands use them.")
def up(workers: int, host: str, base_port: int, detach: bool, cluster_file: str | None, log_dir: str | None,
       log_level: str, tls_dir: str | None) -> None:
    """Start a local cluster of worker processes."""
    path = _cluster_file(cluster_file)
    if path.exists():
        try:
            old = ClusterInfo.load(path)
        except ConfigError:
            old = None
        if old is not None and _running(old):
            fail(f"a cluster is already running ({path}); stop it with `cluster down`", 2)
    if tls_dir is not None and not (Path(tls_dir) / "ca.crt").exists():
        from shardstats.cluster import certs
        try:
            certs.init(Path(tls_dir), workers, sans=[host])
        except ShardstatsError as exc:
            fail(str(exc), exc.exit_code)
        click.echo(f"made a cluster CA and certificates for {workers} workers in {tls_dir}")
    t = time.perf_counter()
    try:
        info = launcher.start(workers, host, base_port, log_dir, log_level, tls_dir=tls_dir)
    except launcher.LaunchError as exc:
        fail(str(exc), 1)
    info.save(path)
    click.echo(f"cluster of {workers} workers up on {info.workers[0]} .. {info.workers[-1]} "
               f"in {time.perf_counter() - t:.2f} s (logs: {info.log_dir}, cluster file: {path})")
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
    click.echo("cluster stopped")


@main.command()
@click.option("--cluster-file", type=click.Path(dir_okay=False))
def down(cluster_file: str | None) -> None:
    """Stop the local cluster `cluster up` started."""
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
    killed = launcher.stop(info)
    path.unlink(missing_ok=True)
    click.echo(f"stopped {len(info.pids)} workers" + (f" ({len(killed)} needed SIGKILL)" if killed else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--cluster-file", type=click.Path(dir_okay=False))
def status(as_json: bool, cluster_file: str | None) -> None:
    """Show every worker: address, up/down, version, jobs run, last job (op, bytes sent, seconds).

    Exit status 0 when every worker answers, 1 when any is down (the table or JSON is printed either way),
    so scripts and healthchecks can test it.
    """
    try:
        info, source = find_cluster(cluster_file)
    except ConfigError as exc:
        fail(str(exc), 1)
    try:
        tls = info.client_tls()
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    rows = run_async(ping_all(info.workers, info.token.encode(), tls=tls))
    if as_json:
        click.echo(json.dumps({"source": source, "workers": rows}))
    else:
        click.echo(f"cluster from {source}")
        click.echo(f"{'id':>3}  {'address':<22} {'state':<5} {'version':<8} {'jobs':>5}  last job")
        for r in rows:
            last = r.get("last_job") or {}
            desc = (f"{last.get('op')} {last.get('bytes_sent', 0):,} B sent, {last.get('seconds', 0):.3f} s"
                    if last else "-")
            click.echo(f"{r['id']:>3}  {r['addr']:<22} {'up' if r['up'] else 'DOWN':<5} "
                       f"{r.get('version', '-'):<8} {r.get('jobs_run', '-'):>5}  "
                       f"{desc if r['up'] else r.get('error', '')}")
    if not all(r["up"] for r in rows):
        sys.exit(1)


# -- jobs ------------------------------------------------------------------------
def _common_job_options(f):
    opts = [
        click.option("--input", "input_path", required=True,
                     help="Directory, file or glob of .txt/.npy/.csv/.parquet shards."),
        click.option("--column", help="Column of .csv/.parquet shards: a header name or a 0-based index "
                     "(default: the first column)."),
        click.option("--local", "local_workers", type=int, help="Run on an ephemeral local cluster of N workers."),
        click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object."),
        click.option("--timeout", type=float, default=300.0, show_default=True, help="Deadline for each phase."),
        click.option("--cluster-file", type=click.Path(dir_okay=False)),
        click.option("--max-retries", type=click.IntRange(0), default=DEFAULTS.max_retries, show_default=True,
                     help="Times the job runs again on the survivors when workers are lost."),
        click.option("--heartbeat", type=click.FloatRange(0.05), default=DEFAULTS.heartbeat, show_default=True,
                     help="Seconds between the coordinator's pings to each worker during a job."),
        click.option("--dead-after", type=click.FloatRange(0.2), default=DEFAULTS.dead_after, show_default=True,
                     help="Seconds of silence after which a worker is declared lost."),
        click.option("--quiet", "-q", is_flag=True, help="No progress line on stderr (it is shown only when "
                     "stderr is a terminal anyway)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _submit(op: str, input_path: str, local_workers: int | None, as_json: bool, timeout: float,
            cluster_file: str | None, params: dict, max_retries: int = DEFAULTS.max_retries,
            heartbeat: float = DEFAULTS.heartbeat, dead_after: float = DEFAULTS.dead_after, quiet: bool = False) -> None:
    from shardstats.cluster.progress import ProgressLine, progress_enabled
    startup = None
    info = None
    if local_workers is not None:
        if local_workers < 1:
            fail("--local needs at least 1 worker", 2)
        t = time.perf_counter()
        try:
            info = launcher.start(local_workers, "127.0.0.1", None, None, "warning")
        except launcher.LaunchError as exc:
            fail(str(exc), 1)
        startup = time.perf_counter() - t
    else:
        try:
            info, _ = find_cluster(cluster_file)
        except ConfigError as exc:
            fail(str(exc), 1)
    assert info is not None
    try:     # an ephemeral --local cluster is plain; any other is dialed with its TLS files, if any
        tls = info.client_tls() if local_workers is None else None
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    # Progress goes to stderr only, so stdout holds nothing but the result (one JSON object with --json).
    line = ProgressLine(sys.stderr, op) if progress_enabled(sys.stderr, quiet) else None
    handler = line.log_handler() if line is not None else None
    if handler is not None:
        logging.getLogger("cluster").addHandler(handler)
    try:
        rep = run_async(run_job(info.workers, info.token.encode(), op, input_path, params,
                                absolute_paths=info.local, timeout=timeout, max_retries=max_retries,
                                liveness=Liveness(heartbeat, dead_after), on_progress=line, tls=tls))
    except ShardstatsError as exc:
        if line is not None:
            line.close()
        fail(str(exc), exc.exit_code)
    finally:
        if line is not None:
            logging.getLogger("cluster").removeHandler(handler)
            line.close()
        if local_workers is not None:
            launcher.stop(info)
    click.echo(json_document(rep, startup) if as_json else human(rep, startup))


def _shuffle_options(f):
    opts = [
        click.option("--shuffle", type=click.Choice(STRATEGIES), default="credit", show_default=True,
                     help="credit: receiver-driven admission; naive: everyone sends at once; gather: all to one."),
        click.option("--fan-in", type=int, default=1, show_default=True, help="Concurrent inbound streams per worker."),
        click.option("--credits", type=int, default=4, show_default=True, help="Chunks in flight per stream."),
        click.option("--chunk-bytes", type=int, default=1 << 20, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.group()
def submit() -> None:
    """Run a job on the cluster."""


@submit.command("mode")
@_common_job_options
@click.option("--ties", type=click.Choice(["smallest", "all"]), default="smallest", show_default=True,
              help="smallest: the smallest tied value wins; all: list every tied value (up to 100,000).")
@_shuffle_options
def submit_mode(input_path, column, local_workers, as_json, timeout, cluster_file, ties, shuffle, fan_in, credits,
                chunk_bytes, **common) -> None:
    """The exact mode (most frequent value) and its count."""
    from shardstats.cluster.jobparams import mode_params
    try:
        params = mode_params(ties, shuffle, fan_in, credits, chunk_bytes, column)
    except ValueError as exc:
        fail(str(exc), 2)
    _submit("mode", input_path, local_workers, as_json, timeout, cluster_file, params, **common)


@submit.command("median")
@_common_job_options
@click.option("--even", type=click.Choice(["mean", "lower", "upper"]), default="mean", show_default=True,
              help="For an even count: the exact mean of the two middle values, or one of them.")
@click.option("--quantiles", help="Also these quantiles, e.g. 0.9,0.99 (numpy's linear definition, exact).")
def submit_median(input_path, column, local_workers, as_json, timeout, cluster_file, even, quantiles,
                  **common) -> None:
    """The exact median (and optional quantiles)."""
    from shardstats.cluster.jobparams import median_params
    try:
        params = median_params(even, quantiles, column)
    except ValueError as exc:
        fail(str(exc), 2)
    _submit("median", input_path, local_workers, as_json, timeout, cluster_file, params, **common)


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
@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--shards", type=int, default=10, show_default=True)
@click.option("--rows", type=int, default=1_000_000, show_default=True)
@click.option("--dist", type=click.Choice(["unique-dup", "zipf", "uniform"]), default="unique-dup", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["txt", "npy"]), default="npy", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def gen(out: str, shards: int, rows: int, dist: str, fmt: str, seed: int) -> None:
    """Generate sample shards (seeded, reproducible)."""
    from shardstats.cluster.gen import generate, write_shards
    if shards < 1 or rows < 0:
        fail("--shards must be >= 1 and --rows >= 0", 2)
    try:
        parts = generate(rows, shards, dist, seed)
    except ValueError as exc:
        fail(str(exc), 2)
    paths = write_shards(parts, Path(out), fmt)
    click.echo(f"wrote {sum(len(p) for p in parts):,} values ({dist}) in {len(paths)} {fmt} shards to {out}")


if __name__ == "__main__":
    main()
