"""One answer from the owners' answers: the merge of their local top-K, and what is missing from it.

Why the merge is exact: a key is counted only by its owner (the keyed engine's hash),
so each owner's counts are the key's whole count, and the global top-K under the order
(count descending, key ascending) is the top-K of the union of the owners' top-K.

What is missing is said, never hidden in lower counts: an owner that did not answer
is named (its keys are absent from the answer), and a gap an owner carries from a
restart (``store.py``) is named when it overlaps the window.
"""
from __future__ import annotations

import heapq
from datetime import datetime, timezone

LEVEL_NAMES = ("1m", "5m", "1h")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def merge(answers: list[dict], missing: list[dict], k: int, last: str, allowance_ms: int = 0) -> dict:
    """``answers``: the owners' ``live_answer`` bodies; ``missing``: ``{"worker", "addr", "error"}`` each."""
    approx = any(a.get("approx") for a in answers)
    spans = {(a["top"]["from_ms"], a["top"]["to_ms"]) for a in answers}
    start, end = min(spans) if spans else (0, 0)
    first = answers[0]["top"] if answers else {"level": 0, "buckets": 0}
    rows = [it for a in answers for it in a["top"]["items"]]
    best = heapq.nsmallest(k, rows, key=lambda r: (-r[1], r[0]))
    if approx:
        items = [{"key": r[0], "estimate": r[1], "lower": r[2], "upper": r[3]} for r in best]
    else:
        items = [{"key": r[0], "count": r[1]} for r in best]
    warnings = []
    for m in missing:
        warnings.append(f"worker {m['worker']} ({m['addr']}) did not answer ({m['error']}): the keys it owns "
                        f"are missing from this answer, not counted as lower; events it received and had not "
                        f"flushed yet (its last flush interval) are missing from every key's count")
    gaps = []
    for a in answers:
        for g0, g1 in a.get("gaps", []):
            if g1 >= start - allowance_ms and g0 <= end:
                gaps.append({"worker": a["worker"], "from": iso(g0), "to": iso(g1), "from_ms": g0, "to_ms": g1})
                warnings.append(f"worker {a['worker']} restarted: the counts it held, and the events it had not "
                                f"flushed, between {iso(g0)} and {iso(g1)} are missing from this window")
    if len(spans) > 1:
        warnings.append("the owners answered for different windows (a bucket boundary passed while asking)")
    out = {"k": k, "last": last,
           "window": {"from": iso(start), "to": iso(end), "from_ms": start, "to_ms": end,
                      "level": LEVEL_NAMES[first["level"]] if first["level"] < len(LEVEL_NAMES) else str(first["level"]),
                      "buckets": first["buckets"]},
           "items": items,
           "total": sum(a["top"]["total"] for a in answers),
           "approx": approx,
           "complete": not missing and not gaps,
           "owners": len(answers), "missing": missing, "gaps": gaps,
           "late": sum(a.get("late", 0) for a in answers), "early": sum(a.get("early", 0) for a in answers),
           "warnings": warnings}
    if approx:
        out["max_error"] = max((a["top"].get("max_error", 0) for a in answers), default=0)
        out["cm_error"] = max((a["top"].get("cm_error", 0.0) for a in answers), default=0.0)
    else:
        out["keys"] = sum(a["top"]["keys"] for a in answers)
    return out


def render(ans: dict) -> list[str]:
    """The answer for people: the window, the keys, then the warnings."""
    w = ans["window"]
    lines = [f"top {ans['k']} of the last {ans['last']}: {w['buckets']} x {w['level']} buckets, "
             f"{w['from']} .. {w['to']} ({ans['total']:,} events"
             + (f", {ans['keys']:,} keys)" if "keys" in ans else ")")]
    width = max((len(i["key"]) for i in ans["items"]), default=3)
    for n, it in enumerate(ans["items"], 1):
        if ans["approx"]:
            lines.append(f"{n:>4}  {it['key']:<{width}}  ~{it['estimate']:,} [{it['lower']:,} .. {it['upper']:,}]")
        else:
            lines.append(f"{n:>4}  {it['key']:<{width}}  {it['count']:,}")
    if not ans["items"]:
        lines.append("  (no events in this window)")
    if ans["approx"]:
        lines.append(f"approximate: any key's count is within {ans['max_error']:,} of its estimate")
    return lines
