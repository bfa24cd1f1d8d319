"""index: the inverted index -- every word with the sorted list of the documents that contain it.

Each mapper keeps one (word, document) pair per word a document uses (deduplicated
before the shuffle, the combiner of an index); pairs travel to the word's reducer,
which lists the documents in order. ``--out DIR`` writes (word, docs) Parquet parts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from shardstats.worker.comm.collectives import sum_ints, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.engine import counter
from shardstats.worker.engine.tokens import premap_reads
from shardstats.worker.ops.contract import Op, TextParams, text_reads
from shardstats.worker.steps import numpy_step


@dataclass(frozen=True)
class IndexParams(TextParams):
    pass


async def index(comm: Communicator, table, params: IndexParams) -> tuple[dict | None, dict]:
    from shardstats.worker.engine import tokens as tok
    from shardstats.worker.engine.aggregate import run_sql
    from shardstats.worker.engine.answer import count_rows, gather_head, rows_of, schema_of, write_parts
    t1 = time.perf_counter()
    mine, tokens, stats = await tok.tokens_to_reducers(comm, table, params, tok.doc_words)
    del table
    postings = await numpy_step(mine.num_rows, run_sql,
                                "SELECT word, list(DISTINCT doc ORDER BY doc) AS docs FROM t GROUP BY word", mine)
    stats["phases"]["reduce"] = time.perf_counter() - t1 - sum(stats["phases"].values())
    if params.out:
        stats.update(await write_parts(comm, postings, params.out, comm.job, params.overwrite))
    total = await tree_reduce(comm, {"postings": mine.num_rows, "tokens": tokens}, sum_ints, "index.sums")
    if params.out:
        words, t = await count_rows(comm, postings), postings.slice(0, 0)
        if words is None:
            return None, stats
    else:
        head = await gather_head(comm, postings, [("word", "ascending")], params.limit)
        if head is None:
            return None, stats
        t, words = head
    result = {"words": words, "postings": total["postings"], "tokens": total["tokens"], "rows": words,
              "columns": ["word", "docs"], "data": [] if params.out else rows_of(t), "_schema": schema_of(t)}
    if params.out:
        result["out"] = params.out
    return result, stats


def combine_passes(a: dict, b: dict, params: IndexParams) -> dict:
    """Two passes' answers (disjoint words): counts added, the first words of both heads."""
    out = {**a, **{k: a[k] + b[k] for k in ("words", "postings", "tokens", "rows")}}
    if not a.get("out"):
        from shardstats.worker.engine.answer import fit
        out["data"] = fit(sorted(a["data"] + b["data"], key=lambda r: r[0])[:params.limit or None])
    return out


def render(r: dict) -> list[str]:
    lines = [f"{r['words']:,} words in {r['postings']:,} (word, document) postings from {r['tokens']:,} tokens"]
    for w, docs in r["data"]:
        shown = ", ".join(docs[:5]) + (f", ... ({len(docs)} documents)" if len(docs) > 5 else "")
        lines.append(f"  {w}: {shown}")
    if r.get("out"):
        lines.append(f"every word's documents written to {r['out']}/part-*.parquet")
    elif len(r["data"]) < r["words"]:
        lines.append(f"(first {len(r['data']):,} words shown; --limit, or --out DIR for all)")
    return lines


OP = Op(
    name="index",
    summary="The inverted index of text documents: every word with the sorted documents containing it.",
    params=IndexParams,
    run=index,
    render=render,
    phases=("load", "tokenize", "partition", "shuffle", "reduce"),
    examples=("cluster submit index --input docs/ --limit 20", "cluster submit index --input docs/ --out index/"),
    summarize=counter.summarize,
    reads=lambda p: {**text_reads(p), **premap_reads("postings", p)},
    combine_passes=combine_passes,
)
