"""What ``cluster status`` prints: the workers table, once or refreshed in place (``--watch``).

Why its own module: the table is drawn by ``status`` and redrawn by ``--watch``;
the watch loop's terminal handling (cursor home, clear each line, clear below)
is a few escape codes, so no curses: on a terminal the table is repainted in
place, and anywhere else (a pipe, a log file) each refresh is printed after the
last under a time stamp, so a log of a watch reads like repeated ``status`` calls.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from shardstats.cluster.progress import human_bytes

HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def table(rows: list[dict], source: str) -> list[str]:
    lines = [f"cluster from {source}",
             f"{'id':>3}  {'address':<22} {'state':<5} {'version':<8} {'jobs':>5} {'failed':>6} {'active':>6} "
             f"{'sent':>10} {'memory':>10} {'budget':>10} {'spilled':>10} {'http':>5}  last job"]
    for r in rows:
        last = r.get("last_job") or {}
        desc = (f"{last.get('op')} {human_bytes(last.get('bytes_sent', 0))} sent, {last.get('seconds', 0):.3f} s"
                if last else "-")
        if not r["up"]:
            lines.append(f"{r['id']:>3}  {r['addr']:<22} {'DOWN':<5} {'-':<8} {'-':>5} {'-':>6} {'-':>6} {'-':>10} "
                         f"{'-':>10} {'-':>10} {'-':>10} {'-':>5}  {r.get('error', '')}")
            continue
        sent, mem, budget, spilled = (human_bytes(r[k]) if isinstance(r.get(k), int) else "-" for k in
                                      ("bytes_sent_total", "rss_bytes", "memory_budget", "spill_written_bytes"))
        http = r.get("http_port") or "-"      # a worker older than the metrics, or one without HTTP
        lines.append(f"{r['id']:>3}  {r['addr']:<22} {'up':<5} {r.get('version', '-'):<8} "
                     f"{r.get('jobs_run', '-'):>5} {r.get('jobs_failed', '-'):>6} {r.get('active_jobs', '-'):>6} "
                     f"{sent:>10} {mem:>10} {budget:>10} {spilled:>10} {http:>5}  {desc}")
    up = sum(1 for r in rows if r["up"])
    lines.append(f"{up} of {len(rows)} workers up")
    cached: dict[str, list[int]] = {}
    for r in rows:
        for c in r.get("cached") or []:
            held = cached.setdefault(c["name"], [0, 0, 0])
            held[0] += c["rows"]
            held[1] += c["bytes"]
            held[2] += 1
    for name, (n, b, workers) in cached.items():
        # a job reads cache:NAME only where every worker holds its part: one that evicted it (or found its
        # part too big) leaves the others' parts listed but of no use, which the listing said nothing of
        short = f" of {up}: evicted or too big on the others, so no job can read it (run --cache {name} again)" \
            if workers < up else ""
        lines.append(f"cached: cache:{name}  {n:,} rows, {human_bytes(b)} on {workers} worker{'s' * (workers != 1)}"
                     f"{short}")
    return lines


def watch(poll: Callable[[], list[dict]], source: str, out: TextIO, interval: float, tty: bool,
          render: Callable[[list[dict]], str] | None = None) -> None:
    """Polls and draws until interrupted (KeyboardInterrupt propagates to the caller, who exits 0)."""
    first = True
    while True:
        rows = poll()
        stamp = time.strftime("%H:%M:%S")
        if render is not None:                 # --json: one document per line (JSON Lines)
            out.write(render(rows) + "\n")
        elif tty:
            lines = table(rows, source) + [f"{stamp}  refreshing every {interval:g} s; Ctrl-C to stop"]
            out.write(("\x1b[2J" if first else "") + HOME + "".join(t + CLEAR_LINE + "\n" for t in lines)
                      + CLEAR_BELOW)
        else:
            out.write(("" if first else "\n") + f"-- {stamp}\n" + "\n".join(table(rows, source)) + "\n")
        out.flush()
        first = False
        time.sleep(interval)
