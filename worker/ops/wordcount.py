"""wordcount: every word of a corpus counted exactly -- tokenize and count on each mapper (the combiner), shuffle
(word, count) pairs by a stable hash of the word, sum on the word's reducer.

With the combiner a worker sends each distinct word it saw once, so the pairs shuffled
are at most the sum over workers of their distinct words (the seeds' bound); without it
(``--no-combine``, to see the difference) every token travels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from shardstats.worker.comm.collectives import sum_ints, tree_reduce
from shardstats.worker.comm.communicator import Communicator
from shardstats.worker.engine import counter
from shardstats.worker.engine.tokens import premap_reads
from shardstats.worker.ops.contract import Op, TextParams, option, text_reads
from shardstats.worker.steps import numpy_step

@dataclass(frozen=True)
class WordcountParams(TextParams):
    top: int = option(10, "How many of the most frequent words to print (count descending, then word).", min=0,
                      max=1_000_000)
    combine: bool = option(True, "Count on each mapper before the shuffle (the combiner); --no-combine sends every "
                           "token, to compare the shuffle counter.", advanced=True)


async def wordcount(comm: Communicator, table, params: WordcountParams) -> tuple[dict | None, dict]:
    from shardstats.worker.engine import tokens as tok
    from shardstats.worker.engine.answer import gather_head, rows_of, write_parts
    t1 = time.perf_counter()
    mine, tokens, stats = await tok.tokens_to_reducers(comm, table, params, tok.count_words, params.combine)
    del table
    counts = await numpy_step(mine.num_rows, tok.sum_counts, mine)
    stats["phases"]["reduce"] = time.perf_counter() - t1 - sum(stats["phases"].values())
    if params.out:
        stats.update(await write_parts(comm, counts, params.out, comm.job, params.overwrite))
    total = await tree_reduce(comm, {"tokens": tokens}, sum_ints, "wordcount.tokens")
    head = await gather_head(comm, counts, [("count", "descending"), ("word", "ascending")], params.top)
    if head is None:
        return None, stats
    top, distinct = head
    result = {"tokens": total["tokens"], "distinct": distinct, "top": rows_of(top.slice(0, params.top))
              if params.top else []}
    if params.out:
        result["out"] = params.out
    return result, stats


def combine_passes(a: dict, b: dict, params: WordcountParams) -> dict:
    """Two passes' answers (disjoint words): tokens and words added, the top of both tops."""
    top = sorted(a["top"] + b["top"], key=lambda r: (-r[1], r[0]))[:params.top]
    return {**a, "tokens": a["tokens"] + b["tokens"], "distinct": a["distinct"] + b["distinct"], "top": top}


def render(r: dict) -> list[str]:
    lines = [f"{r['tokens']:,} tokens, {r['distinct']:,} distinct words"]
    width = max([len(w) for w, _ in r["top"]] + [4])
    lines += [f"  {w.ljust(width)}  {c:,}" for w, c in r["top"]]
    if r.get("out"):
        lines.append(f"every (word, count) written to {r['out']}/part-*.parquet")
    return lines


OP = Op(
    name="wordcount",
    summary="Counts every word of text documents exactly: a combiner on each worker, one shuffle by word.",
    params=WordcountParams,
    run=wordcount,
    render=render,
    phases=("load", "tokenize", "partition", "shuffle", "reduce"),
    examples=("cluster submit wordcount --input docs/ --top 20",
              "cluster submit wordcount --input reviews.parquet --text body --out counts/"),
    summarize=counter.summarize,
    reads=lambda p: {**text_reads(p), **premap_reads("count", p)},
    combine_passes=combine_passes,
)
