"""The shuffle counter every keyed job reports: pairs out of the map, after the combiner, across the wire, per reducer.

Per worker the ops record ``map_pairs``, ``combined_pairs``, ``shuffled_pairs``,
``shuffled_bytes`` and ``reducer_pairs``; ``summarize`` makes the job's figures:
the sums, ``reducer_pairs`` as one entry per worker (rank order), and
``busiest_reducer_share`` = the busiest reducer's pairs / the mean (1.0: perfectly
even; W: one reducer got everything).
"""
from __future__ import annotations

FIELDS = ("map_pairs", "combined_pairs", "shuffled_pairs", "shuffled_bytes")


def share(counts: list) -> float:
    """The busiest rank's load against the mean of ``counts`` (1.0 for none): the counter's imbalance figure."""
    mean = sum(counts) / len(counts) if counts else 0
    return round(max(counts) / mean, 4) if mean else 1.0


def summarize(workers: list[dict]) -> dict:
    ws = sorted(workers, key=lambda w: w.get("rank", 0))
    out = {f: sum(w.get(f, 0) for w in ws) for f in FIELDS}
    per = [w.get("reducer_pairs", 0) for w in ws]
    out["reducer_pairs"] = per
    out["busiest_reducer_share"] = share(per)
    staged = [w["stages"] for w in ws if "stages" in w]
    if staged:                    # a chained job: each stage's counters summed over the workers
        out["stages"] = [{k: sum(s[i][k] for s in staged) for k in staged[0][i]} for i in range(len(staged[0]))]
    for extra in ("hot_keys", "salted_keys", "salt", "combiner", "reducers", "reducers_asked"):
        vals = [w[extra] for w in ws if extra in w]
        if vals:
            out[extra] = vals[0]
    rounded = [w["approx_rounded_groups"] for w in ws if "approx_rounded_groups" in w]
    if rounded:                   # groupby's groups sketched rounded (sketchagg._kll_answer), counted by each reducer
        out["approx_rounded_groups"] = {k: sum(r.get(k, 0) for r in rounded) for k in sorted(set().union(*rounded))}
    return out


def line(s: dict) -> str | None:
    """The counter in one line of the human output (None for a job without one)."""
    if "shuffled_pairs" not in s:
        return None
    from shardstats.cluster.progress import human_bytes
    out = (f"  shuffle counter: map {s['map_pairs']:,} pairs, after the combiner {s['combined_pairs']:,}, "
           f"shuffled {s['shuffled_pairs']:,} ({human_bytes(s['shuffled_bytes'])}), "
           f"busiest reducer {s['busiest_reducer_share']:.2f}x the mean")
    for name, groups in (s.get("approx_rounded_groups") or {}).items():
        out += (f"\n  {name}: {groups:,} group{'' if groups == 1 else 's'} of integers beyond +-2**53 spread wider "
                f"than 2**53, sketched as doubles: {name}_err widened by the values tied there")
    return out


def sum_phases(dicts) -> dict:
    """Seconds per phase added up over several steps (a join's two exchanges, a chained job's stages)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out
