"""``sketch``: build any sketch of the values (or of a table's typed column), merge it up the tree, answer, keep it.

The approximate paths of median, topk and distinct answer one question each; this op is
the sketch itself -- count-min (point frequencies), Bloom filter (membership), theta
(distinct counts with set operations between saved sketches), CPC, t-digest, and the
KLL / frequent-items / HyperLogLog sketches too -- built on every rank
(``shardstats.sketchkinds``), merged in one tree reduction (kilobytes a message), answered
at rank 0 for the question asked (``--quantiles``, ``--top``, ``--count``, ``--contains``,
or the distinct count), and written with ``--save-sketch FILE`` for ``cluster sketch
merge|show`` later.
"""
from __future__ import annotations

from dataclasses import dataclass

from shardstats.errors import EmptyDataset, UsageError
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.ops.contract import Op, Params, column_reads, option

# what the user names -> the file kind (frequent items: by the values' type)
KINDS = {"kll": "kll_doubles", "tdigest": "tdigest_double", "frequent": None, "hll": "hll_registers",
         "theta": "theta", "cpc": "cpc", "count_min": "count_min", "bloom": "bloom"}
MAX_SKETCH_BYTES = 2 << 20      # a merged sketch travels the tree in one message (frames: 4 MiB)


@dataclass(frozen=True)
class SketchParams(Params):
    kind: str = option("kll", "The sketch: kll or tdigest (quantiles), frequent (top values with bounds), hll, theta "
                       "or cpc (distinct; theta sketches intersect and subtract), count_min (point frequencies, "
                       "never below the truth), bloom (membership, no false negatives).", choices=tuple(KINDS))
    of: str | None = option(None, "Sketch column COL of table shards (.csv/.tsv/.parquet/.jsonl) as the files type it: "
                            "int64, float64 or string (nulls and NaN skipped); without it, the int64 values of the "
                            "shards (--column picks a .csv/.parquet column).", metavar="COL")
    save_sketch: str | None = option(None, "Rank 0 writes the merged sketch to FILE (relative to the worker's data "
                                     "root); `cluster sketch show|merge` read it.", metavar="FILE")
    quantiles: str = option("0.5,0.99", "kll, tdigest: the quantiles answered.", metavar="Q,Q,...")
    top: int = option(10, "frequent: the values listed.", min=1, max=1_000_000)
    count: tuple = option((), "count_min: how often VALUE occurs (repeat it for more).", metavar="VALUE",
                          multiple=True)
    contains: tuple = option((), "bloom: whether VALUE may be in the set (repeat it for more).", metavar="VALUE",
                             multiple=True)
    k: int = option(200, "kll, tdigest: k (bigger: more accurate and bigger).", min=10, max=65535)
    lg_max_k: int = option(10, "frequent: the map holds 3/4 of 2**LG items.", min=3, max=17, metavar="LG")
    precision: int = option(12, "hll: 2**precision registers.", min=4, max=16)
    lg_k: int = option(12, "theta, cpc: 2**lg_k nominal entries (theta: up to 8 B each on the wire).", min=5, max=18,
                       metavar="LG")
    hashes: int = option(5, "count_min: rows (confidence 1 - e**-hashes).", min=1, max=32)
    buckets: int = option(1024, "count_min: columns (the error: e/buckets of the values).", min=2, max=1 << 24)
    bloom_bytes: int = option(1 << 15, "bloom: the filter's size in bytes, a power of two (7 probes a value; about "
                              "1% false positives at 1.25 bytes a distinct value: 32 KiB for 26,000).", min=8,
                              max=1 << 21)

    def check(self) -> None:
        if self.bloom_bytes & (self.bloom_bytes - 1):
            raise UsageError(f"--bloom-bytes: {self.bloom_bytes} is not a power of two")
        cm = self.hashes * self.buckets * 8
        if self.kind == "count_min" and cm > MAX_SKETCH_BYTES:
            raise UsageError(f"--hashes x --buckets: a count-min sketch of {cm:,} bytes; a sketch travels the tree "
                             f"in one message of at most {MAX_SKETCH_BYTES:,}")
        if self.count and self.kind != "count_min":
            raise UsageError("--count: asks a count_min sketch; add --kind count_min")
        if self.contains and self.kind != "bloom":
            raise UsageError("--contains: asks a Bloom filter; add --kind bloom")
        from shardstats.worker.ops.median import _parse_quantiles
        try:
            _parse_quantiles(self.quantiles)
        except ValueError as exc:
            raise UsageError(f"--quantiles: {exc}") from None

    def kind_params(self, vtype: str) -> tuple[str, dict]:
        """(file kind, its parameters) for values of ``vtype``."""
        from shardstats import sketchkinds as kinds
        from shardstats.worker.engine.bloom import HASHES
        kind = KINDS[self.kind] or {"int64": "frequent_items_i64", "float64": "frequent_items_f64",
                                    "string": "frequent_strings"}[vtype]
        params = {"kll_doubles": {"k": self.k}, "tdigest_double": {"k": self.k}, "hll_registers":
                  {"precision": self.precision}, "theta": {"lg_k": self.lg_k}, "cpc": {"lg_k": self.lg_k},
                  "count_min": {"hashes": self.hashes, "buckets": self.buckets, "seed": kinds.CM_SEED},
                  "bloom": {"bytes": self.bloom_bytes, "hashes": HASHES}}.get(kind, {"lg_max_k": self.lg_max_k})
        return kind, params


async def sketch(comm: Communicator, values, params: SketchParams) -> tuple[dict | None, dict]:
    import asyncio
    from shardstats import sketchkinds as kinds
    from shardstats.worker.ops import approx
    from shardstats.worker.ops.median import _parse_quantiles, parse_quantile
    vtype, skipped = "int64", 0
    if params.of:
        takes = ("int64", "float64") if params.kind in ("kll", "tdigest") else kinds.VALUE_TYPES
        vtype, values, skipped = await asyncio.to_thread(approx.typed_values, values, params.of, takes,
                                                         f"a {params.kind} sketch")
        skipped = await approx.skipped_total(comm, skipped, "sketch")
    kind, kparams = params.kind_params(vtype)
    qs = _parse_quantiles(params.quantiles)
    question = {"ranks": [float(parse_quantile(q)) for q in qs], "top": params.top, "count": list(params.count),
                "contains": list(params.contains)}
    result, stats = await approx.sketch_job(comm, values, vtype, kind, kparams, question, params.save_sketch,
                                            "sketch", params.of)
    if result is not None:
        n = result.get("n", result.get("total"))
        if n == 0 and kind in ("kll_doubles", "tdigest_double"):
            raise EmptyDataset("the dataset holds no values")
        result.update(asked=params.kind, column=params.of, skipped=skipped)
        if "quantiles" in result and isinstance(result["quantiles"], list):
            result["quantiles"] = {q: a for q, a in zip(qs, result["quantiles"])}
    return result, stats


def render(r: dict) -> list[str]:
    from shardstats.sketchkinds import render_answer
    said = ([f"column {r['column']}"] if r.get("column") else []) + \
        ([f"{r['skipped']:,} nulls/NaN skipped"] if r.get("skipped") else [])
    head = f"{r['kind']} sketch of {r['values']} values" + (f" ({', '.join(said)})" if said else "")
    lines = [head, *render_answer(r["kind"], r)]
    if "saved" in r:
        lines.append(f"sketch saved to {r['saved']}")
    return lines


OP = Op(
    name="sketch",
    summary="Any mergeable sketch of the values (count-min, Bloom, theta, CPC, t-digest, KLL, frequent items, HLL): "
            "built on every worker, merged, answered, kept with --save-sketch.",
    params=SketchParams,
    run=sketch,
    render=render,
    phases=("load", "sketch", "reduce"),
    examples=("cluster submit sketch --input t.parquet --of user --kind count_min --count alice --save-sketch u.cm",
              "cluster submit sketch --input t.parquet --of user --kind bloom --contains bob",
              "cluster submit sketch --input days/mon --kind theta --save-sketch mon.theta"),
    reads_column=column_reads,
)
