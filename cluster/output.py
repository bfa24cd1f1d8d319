"""What a job prints: a short human summary, or exactly one JSON object with exact numbers.

Exact numbers: a median of two middle values is a ``Fraction``; it is written as a
plain JSON number with all its digits (…5.5), never through a float, so it stays
exact beyond 2**53.
"""
from __future__ import annotations

import re
from typing import Any

from shardstats.cluster.progress import human_bytes
from shardstats.exact import dumps_exact
from shardstats.worker.ops import registry
from shardstats.coordinator.job import JobReport


def summarize_stats(rep: JobReport, startup_seconds: float | None = None) -> dict:
    ws = rep.workers
    matrix = [w["bytes_sent"] for w in ws]
    stats: dict[str, Any] = {
        "workers": len(ws),
        "values": sum(w["values"] for w in ws),
        "seconds": round(rep.load_seconds + rep.seconds, 4),
        "load_seconds": round(rep.load_seconds, 4),
        "run_seconds": round(rep.seconds, 4),
        "rounds": max(w.get("rounds", 0) for w in ws),
        "bytes_sent": sum(map(sum, matrix)),
        "messages_sent": sum(w["messages_sent"] for w in ws),
        "busiest_link_bytes": max((max(r) for r in matrix), default=0),
        "max_inbound_streams": max(w["max_inbound_streams"] for w in ws),
        "peak_buffered_bytes": max(w["peak_buffered_bytes"] for w in ws),
        "peak_send_queue_bytes": max(w["peak_send_queue_bytes"] for w in ws),
        "max_tree_messages_received": max(w["tree_messages_received"] for w in ws),
        "peak_worker_rss_bytes": max(w["peak_rss_bytes"] for w in ws),
        "traffic_matrix": matrix,
        "job": rep.job,
        "attempts": rep.attempts,
        "lost_workers": rep.lost_workers,
    }
    op = registry.get(rep.op)
    stats.update(op.summarize(ws))
    if rep.spec is not None:
        stats.update(rep.spec.params.stats_fields())
    if any(w.get("spill_bytes_written") for w in ws):      # beyond memory: what went to disk, by phase
        stats["spill_bytes_written"] = sum(w.get("spill_bytes_written", 0) for w in ws)
        stats["spill_bytes_read"] = sum(w.get("spill_bytes_read", 0) for w in ws)
        by_phase: dict = {}
        for w in ws:
            for phase, b in (w.get("spill_by_phase") or {}).items():
                got = by_phase.setdefault(phase, {"written": 0, "read": 0})
                got["written"] += b["written"]
                got["read"] += b["read"]
        stats["spill_by_phase"] = by_phase
        stats["passes"] = max(w.get("passes", 1) for w in ws)
    if ws and all("shuffle" in w for w in ws):      # what ran (``auto`` picks per job), not what was asked
        stats["shuffle"] = ws[0]["shuffle"]
    if startup_seconds is not None:
        stats["startup_seconds"] = round(startup_seconds, 4)
    stats["per_worker"] = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in w.items()
         if k not in ("bytes_sent",)} | {"bytes_sent": sum(w["bytes_sent"])}
        for w in ws]
    return stats


def spill_line(s: dict) -> str:
    """What a job beyond memory kept on disk: written and read back, in how many passes, by phase."""
    phases = ", ".join(f"{k} {human_bytes(v['written'])} written / {human_bytes(v['read'])} read"
                       for k, v in (s.get("spill_by_phase") or {}).items())
    return (f"spilled {human_bytes(s['spill_bytes_written'])} to disk and read {human_bytes(s['spill_bytes_read'])} "
            f"back in {s.get('passes', 1)} pass{'' if s.get('passes', 1) == 1 else 'es'} ({phases})")


def json_document(rep: JobReport, startup_seconds: float | None = None, pretty: bool = False) -> str:
    """The --json document: one line (for pipes and tools), or ``pretty`` for people (a terminal, --pretty)."""
    result = {k: v for k, v in rep.result.items()}
    doc = {"op": rep.op, "result": result, "stats": summarize_stats(rep, startup_seconds)}
    return pretty_json(dumps_exact(doc, indent=2)) if pretty else dumps_exact(doc)


# A JSON array holding only scalars (no nested array or object), as json.dumps(indent=...) spreads it over lines.
_LEAF_ARRAY = re.compile(r"\[\n\s*([^\[\]{}]*?)\n\s*\]")


def pretty_json(indented: str) -> str:
    """Indented JSON with arrays of plain values kept on one line, so a traffic-matrix row or a timeline
    span reads as a row instead of a column of numbers."""
    return _LEAF_ARRAY.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", indented)


def human(rep: JobReport, startup_seconds: float | None = None) -> str:
    s = summarize_stats(rep, startup_seconds)
    op = registry.get(rep.op)
    head = op.render(rep.result)
    unit = "rows" if op.reads is not None else "values"
    lines = [*head,
             f"  {s['values']:,} {unit} on {s['workers']} worker{'' if s['workers'] == 1 else 's'} in {s['seconds']:.3f} s "
             f"(load {s['load_seconds']:.3f} s, run {s['run_seconds']:.3f} s)",
             f"  rounds {s['rounds']}, moved {human_bytes(s['bytes_sent'])} in {s['messages_sent']:,} messages, "
             f"busiest link {human_bytes(s['busiest_link_bytes'])}",
             f"  max inbound streams {s['max_inbound_streams']}, peak buffered {human_bytes(s['peak_buffered_bytes'])}"
             f", peak worker RSS {human_bytes(s['peak_worker_rss_bytes'])}"]
    if s.get("spill_bytes_written"):
        lines.append(f"  {spill_line(s)}")
    from shardstats.worker.engine.counter import line as counter_line
    counter = counter_line(s)
    if counter:
        lines.append(counter)
    if rep.lost_workers:
        gone = ", ".join(f"{w['id']} ({w['reason']})" for w in rep.lost_workers)
        tries = "1 attempt" if rep.attempts == 1 else f"{rep.attempts} attempts"
        lines.append(f"  {tries}; lost workers: {gone}")
    if startup_seconds is not None:
        lines.append(f"  (ephemeral cluster start-up {startup_seconds:.2f} s, not included)")
    return "\n".join(lines)
