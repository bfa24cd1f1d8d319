"""``cluster ingest``, ``cluster top`` and ``cluster live-stats``: the live top-K from the command line.

Exit status as everywhere: 2 for bad input or usage (a malformed event names its line,
and nothing was sent), 1 for the cluster.  ``cluster top`` prints an answer whenever
one owner answered; owners that did not are named in a warning (and in ``--json``).
"""
from __future__ import annotations

import json
import os
import sys
import time

import click

from shardstats.cluster.config import ConfigError, find_cluster
from shardstats.cluster.submit import fail
from shardstats.errors import ShardstatsError
from shardstats.settings import DEFAULTS

CLUSTER_FILE_HELP = "The cluster to use (default: $CLUSTER_FILE, $CLUSTER_WORKERS, or what `cluster up` recorded)."


def _client(cluster_file: str | None):
    from shardstats.cluster.live import LiveClient
    try:
        info, _ = find_cluster(cluster_file)
        tls = info.client_tls()
    except ConfigError as exc:
        fail(str(exc), exc.exit_code)
    return LiveClient(info.workers, info.token.encode(), tls)


def _run(coro):
    from shardstats.cluster.runner import run_async
    try:
        return run_async(coro)
    except ShardstatsError as exc:
        fail(str(exc), exc.exit_code)


def _batches_of(keys: list[str], times: list[int] | None, size: int):
    import numpy as np

    async def gen():
        for i in range(0, len(keys), size):
            yield keys[i:i + size], (np.asarray(times[i:i + size], dtype=np.int64) if times is not None else None)
    return gen()


async def _follow(fd: int, key_field: str, time_field: str | None, size: int, totals, send) -> None:
    """Reads a growing file (or a pipe) from ``fd`` until end of input (a pipe) or Ctrl-C (a file, like tail -f):
    each batch is sent when full or when no new line came for a quarter second."""
    import asyncio

    import numpy as np
    from shardstats.worker.live.events import EventError, parse_line
    regular = _is_regular(fd)
    rest = b""
    number = 0
    keys: list[str] = []
    times: list[int] = []

    async def ship() -> None:
        if keys:
            await send(list(keys), np.asarray(times, dtype=np.int64) if time_field else None)
            keys.clear()
            times.clear()
    while True:
        chunk = await asyncio.to_thread(_read_or_pause, fd)
        if chunk is None:                 # a pipe with nothing new for a moment: send what is waiting
            await ship()
            continue
        if not chunk:
            await ship()
            if not regular:
                return
            await asyncio.sleep(0.25)
            continue
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            number += 1
            try:
                got = parse_line(line, number, key_field, time_field, DEFAULTS.live_max_key_bytes, "stdin line")
            except EventError as exc:
                await ship()
                raise _BadLine(f"{exc} (the {totals.sent:,} events before it were ingested)") from None
            if got is not None:
                keys.append(got[0])
                times.append(got[1])
                if len(keys) >= size:
                    await ship()


def _read_or_pause(fd: int, pause: float = 0.25) -> bytes | None:
    """The next bytes of ``fd`` (b"" at its end), or None when a pipe has had nothing for ``pause`` seconds."""
    import select
    if not select.select([fd], [], [], pause)[0]:
        return None
    return os.read(fd, 1 << 20)


def _is_regular(fd: int) -> bool:
    import stat
    return stat.S_ISREG(os.fstat(fd).st_mode)


class _BadLine(Exception):
    pass


@click.command(epilog="""\b
Examples:
  cluster ingest --key query < searches.jsonl              # each event stamped with its arrival time
  cluster ingest --key user --time ts < clicks.jsonl       # ts: epoch seconds or ISO 8601 with an offset
  cluster ingest --key user --time ts --follow < app.log   # keep reading as the file grows (Ctrl-C stops)
""")
@click.option("--key", "key_field", required=True, help="The field holding each event's key (a string or number).")
@click.option("--time", "time_field", help="The field holding each event's time (epoch seconds or ISO 8601 with a "
              "UTC offset); events without it, or all when not given, take their arrival time.")
@click.option("--follow", is_flag=True, help="Keep reading stdin as it grows (a file: like tail -f; a pipe: to its end), "
              "sending each batch as it fills or when the input pauses.")
@click.option("--batch", type=click.IntRange(1, DEFAULTS.live_max_batch), default=5000, show_default=True,
              help="Events per message to a worker.")
@click.option("--json", "as_json", is_flag=True, help="Print the totals as one JSON object.")
@click.option("--cluster-file", type=click.Path(dir_okay=False), help=CLUSTER_FILE_HELP)
def ingest(key_field: str, time_field: str | None, follow: bool, batch: int, as_json: bool,
           cluster_file: str | None) -> None:
    """Stream JSON-lines events from stdin into the live top-K (batches spread over every worker).

    Without --follow the whole input is checked first: a malformed line is reported with its
    number and nothing is sent. Late events (older than the allowance, DEFAULTS.live_allowance
    seconds before their arrival) are counted, not kept.
    """
    from shardstats.cluster.live import IngestTotals
    from shardstats.worker.live.events import EventError, parse_line
    client = _client(cluster_file)
    totals = IngestTotals()
    t0 = time.perf_counter()
    if not follow:
        keys: list[str] = []
        times: list[int] = []
        try:
            for number, line in enumerate(sys.stdin.buffer, 1):
                got = parse_line(line, number, key_field, time_field, DEFAULTS.live_max_key_bytes, "stdin line")
                if got is not None:
                    keys.append(got[0])
                    times.append(got[1])
        except EventError as exc:
            fail(f"{exc} (nothing was ingested)", 2)

        async def go():
            async with client:
                return await client.ingest(_batches_of(keys, times if time_field else None, batch), totals)
        _run(go())
    else:
        async def go_follow():
            async with client:
                async def send(k, t):
                    await client.send_batch(k, t, totals, totals.batches % len(client.addrs))
                await _follow(sys.stdin.fileno(), key_field, time_field, batch, totals, send)
        try:
            _run(go_follow())
        except _BadLine as exc:
            fail(str(exc), 2)
        except KeyboardInterrupt:
            pass
    seconds = time.perf_counter() - t0
    doc = {"events": totals.sent, "accepted": totals.accepted, "late": totals.late, "early": totals.early,
           "batches": totals.batches, "seconds": round(seconds, 3), "per_worker": totals.per_worker}
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"ingested {totals.accepted:,} of {totals.sent:,} events ({totals.late:,} late, {totals.early:,} "
               f"early) in {totals.batches:,} batches to {len(totals.per_worker)} workers in {seconds:.2f} s")


def _last(ctx, param, value: str) -> str:
    from shardstats.worker.live.buckets import parse_last
    try:
        parse_last(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command(epilog="""\b
Examples:
  cluster top                          # the 10 most frequent keys of the last 5 minutes
  cluster top --k 20 --last 1h --json
""")
@click.option("--k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="How many keys.")
@click.option("--last", default="5m", show_default=True, callback=_last,
              help="The window: 5m (five 1-minute buckets), 1h (twelve 5-minute buckets), 24h (24 hourly "
              "buckets), or any duration up to 25h, rounded up to whole buckets of the finest level that holds it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the window, items, warnings...).")
@click.option("--cluster-file", type=click.Path(dir_okay=False), help=CLUSTER_FILE_HELP)
def top(k: int, last: str, as_json: bool, cluster_file: str | None) -> None:
    """The most frequent keys of a recent window, merged from every key's owner.

    The window is whole aligned buckets, the current one included, and the answer says which
    (--json: window.from_ms/to_ms). Counts are of the events flushed to their owners (every
    live_flush_interval seconds). A worker that does not answer is named in a warning: its keys
    are missing from the answer, not counted lower.
    """
    client = _client(cluster_file)

    async def go():
        async with client:
            return await client.top(k, last)
    ans = _run(go())
    if as_json:
        click.echo(json.dumps(ans))
    else:
        from shardstats.worker.live.query import render
        click.echo("\n".join(render(ans)))
    for w in ans["warnings"]:
        click.echo(f"warning: {w}", err=True)


@click.command("live-stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every worker's figures.")
@click.option("--cluster-file", type=click.Path(dir_okay=False), help=CLUSTER_FILE_HELP)
def live_stats(as_json: bool, cluster_file: str | None) -> None:
    """Every worker's live top-K figures: events received vs pairs flushed (the pre-aggregation's saving),
    pairs received as an owner, flush lag, bucket memory, late events, checkpoints."""
    client = _client(cluster_file)

    async def go():
        async with client:
            return await client.stats()
    rows = _run(go())
    if as_json:
        click.echo(json.dumps({"workers": rows}))
    else:
        click.echo(f"{'worker':>6} {'received':>10} {'late':>7} {'flushed':>9} {'owned in':>9} {'lag ms':>7} "
                   f"{'buckets':>10} {'checkpoint':>10}")
        for r in rows:
            if not r["up"]:
                click.echo(f"{r['worker']:>6} down: {r['error']}")
                continue
            click.echo(f"{r['worker']:>6} {r['received']:>10,} {r['late']:>7,} {r['pairs_flushed']:>9,} "
                       f"{r['pairs_received']:>9,} {r['last_flush_lag_ms']:>7,} {r['bucket_bytes']:>10,} "
                       f"{r['checkpoint_bytes']:>10,}")
    if not all(r["up"] for r in rows):
        sys.exit(1)
