#!/usr/bin/env python3
"""db-benchmark's group-by data (h2oai/db-benchmark ``_data/groupby-datagen.R``) as Parquet shards, and a
word-count corpus made of the Python standard library's own sources and docs.

The R script, column for column (``nas=0, sort=0``: the ``G1_<N>_1e2_0_0`` datasets)::

    id1 = sample(sprintf("id%03d",1:K), N, TRUE)       # "id001".."id100"          string
    id2 = sample(sprintf("id%03d",1:K), N, TRUE)       # "id001".."id100"          string
    id3 = sample(sprintf("id%010d",1:(N/K)), N, TRUE)  # "id0000000001".."id<N/K>" string
    id4 = sample(K, N, TRUE)                           # 1..K                      int32
    id5 = sample(K, N, TRUE)                           # 1..K                      int32
    id6 = sample(N/K, N, TRUE)                         # 1..N/K                    int32
    v1  = sample(5, N, TRUE)                           # 1..5                      int32
    v2  = sample(15, N, TRUE)                          # 1..15                     int32
    v3  = round(runif(N,max=100),6)                    # [0,100), 6 decimals       float64

The draws are numpy's (PCG64), not R's: the same laws, not the same rows.  The table is written as
``shards`` files ``DIR/part-NN.parquet`` (one per worker of a 10-worker cluster by default), each in
row groups of ``chunk_rows`` rows generated one at a time, so 1e8 rows never hold more than one
chunk (~50 MB per million rows) in memory.  Chunk ``c`` of shard ``s`` draws from the stream
``SeedSequence([seed, s, c])``: the data depend on (rows, K, seed, shards, chunk_rows) only.
``DIR/_dbgen.json`` (ignored by readers: a leading underscore) records them and is written last,
so a directory that has it is complete and is reused as is.

    python scripts/dbgen.py groupby --rows 1e7 --out /tmp/shardstats-bench/G1_1e7_1e2_0_0
    python scripts/dbgen.py corpus --size 200MB --out /tmp/shardstats-bench/corpus-200MB
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np

BENCH_DIR = Path(os.environ.get("SHARDSTATS_BENCH_DIR", "/tmp/shardstats-bench"))
SEED = 108                      # the R script's set.seed(108)
MARKER = "_dbgen.json"
COLUMNS = ("id1", "id2", "id3", "id4", "id5", "id6", "v1", "v2", "v3")


def parse_count(text: str | int | float) -> int:
    """'1e7', '10000000', '1_000_000', 1e7 -> int; refuses fractions."""
    v = float(str(text).replace("_", ""))
    if v != int(v) or v < 0:
        raise ValueError(f"not a row count: {text!r}")
    return int(v)


def pretty_sci(n: int) -> str:
    """The R script's pretty_sci for the numbers it is given: 1e7 -> '1e7', 100 -> '1e2', 5e6 -> '5e6'."""
    s = f"{n:.0e}"                                  # '1e+07'
    mant, exp = s.split("e")
    if float(mant) * 10 ** int(exp) != n:           # not a one-digit mantissa: write it out
        return str(n)
    return f"{mant}e{int(exp)}"


def dataset_name(rows: int, k: int = 100, nas: int = 0, sort: int = 0) -> str:
    return f"G1_{pretty_sci(rows)}_{pretty_sci(k)}_{nas}_{sort}"


def _labels(fmt: str, n: int):
    """pyarrow string array of sprintf(fmt, 1:n), built without a Python loop over n."""
    import pyarrow as pa
    width = int(re.fullmatch(r"id%0(\d+)d", fmt).group(1))
    digits = np.char.zfill(np.arange(1, n + 1).astype(f"U{max(width, len(str(n)))}"), width)
    return pa.array(np.char.add("id", digits), type=pa.string())


def groupby_chunk(rng: np.random.Generator, n: int, n_rows_total: int, k: int, id12, id3):
    """One chunk of ``n`` rows of G1_<n_rows_total>_<k>: a pyarrow Table with the R script's columns."""
    import pyarrow as pa
    groups_small = max(n_rows_total // k, 1)        # N/K
    i32 = np.int32
    # sample(K, N, TRUE) is uniform on 1..K; integers(0, K) indexes the label tables directly.
    return pa.table({
        "id1": id12.take(pa.array(rng.integers(0, k, n, dtype=i32))),
        "id2": id12.take(pa.array(rng.integers(0, k, n, dtype=i32))),
        "id3": id3.take(pa.array(rng.integers(0, groups_small, n, dtype=i32))),
        "id4": rng.integers(1, k + 1, n, dtype=i32),
        "id5": rng.integers(1, k + 1, n, dtype=i32),
        "id6": rng.integers(1, groups_small + 1, n, dtype=i32),
        "v1": rng.integers(1, 6, n, dtype=i32),
        "v2": rng.integers(1, 16, n, dtype=i32),
        "v3": np.round(rng.random(n) * 100.0, 6),
    })


def _complete(out: Path, meta: dict) -> bool:
    try:
        return json.loads((out / MARKER).read_text()) == meta
    except (OSError, ValueError):
        return False


def generate_groupby(out: str | Path, rows: int, k: int = 100, shards: int = 10, seed: int = SEED,
                     chunk_rows: int = 1_000_000, force: bool = False, quiet: bool = False) -> Path:
    """Writes G1 data of ``rows`` rows to ``out/part-NN.parquet`` (``shards`` files); reuses a complete ``out``."""
    import pyarrow.parquet as pq
    out = Path(out)
    meta = {"kind": "groupby", "rows": rows, "k": k, "shards": shards, "seed": seed, "chunk_rows": chunk_rows,
            "name": dataset_name(rows, k), "columns": list(COLUMNS)}
    if not force and _complete(out, meta):
        return out
    if rows < k:
        raise ValueError("rows must be at least K")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    id12, id3 = _labels("id%03d", k), _labels("id%010d", max(rows // k, 1))
    per = [rows // shards + (1 if s < rows % shards else 0) for s in range(shards)]
    width = max(2, len(str(shards - 1)))
    for s, n_shard in enumerate(per):
        path = tmp / f"part-{s:0{width}d}.parquet"
        writer = None
        done, c = 0, 0
        while done < n_shard or writer is None:
            n = min(chunk_rows, n_shard - done)
            rng = np.random.default_rng(np.random.SeedSequence([seed, s, c]))
            t = groupby_chunk(rng, n, rows, k, id12, id3)
            if writer is None:
                writer = pq.ParquetWriter(path, t.schema, compression="snappy")
            writer.write_table(t, row_group_size=chunk_rows)
            done += n
            c += 1
        writer.close()
        if not quiet:
            print(f"  {path.name}: {n_shard:,} rows", file=sys.stderr, flush=True)
    (tmp / MARKER).write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# -- word-count corpus ---------------------------------------------------------------------------------
CORPUS_SUFFIXES = (".py", ".txt", ".rst", ".html", ".md")


def parse_size(text: str | int) -> int:
    """'200MB', '1GiB', '1.5GB', '1048576' -> bytes (MB/GB decimal, MiB/GiB binary)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?i?b?)\s*", str(text), re.I)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = m.group(2).lower().rstrip("b")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}[unit]
    return int(float(m.group(1)) * mult)


def stdlib_texts(root: str | None = None) -> list[str]:
    """The standard library's sources and docs (utf-8 text files under the interpreter's lib dir, not
    site-packages), sorted by path; files that are not clean UTF-8 text, or hold NUL, \\x1f or \\r, are
    left out so every reader (line-based or whole-file) sees the same lines."""
    root = root or sysconfig.get_paths()["stdlib"]
    texts = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for f in sorted(filenames):
            if not f.endswith(CORPUS_SUFFIXES):
                continue
            try:
                text = Path(dirpath, f).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if any(ch in text for ch in ("\x00", "\x1f", "\r")):
                continue
            if text and not text.endswith("\n"):
                text += "\n"
            texts.append(text)
    return texts


def build_corpus(out: str | Path, size: int, files: int = 10, force: bool = False, quiet: bool = False) -> Path:
    """``files`` text files ``out/part-NN.txt`` of about ``size`` bytes in all: the standard library's text
    files concatenated, repeated as often as it takes (each file cut at a line end)."""
    out = Path(out)
    meta = {"kind": "corpus", "size": size, "files": files, "python": sys.version.split()[0]}
    if not force and _complete(out, meta):
        return out
    base = "".join(stdlib_texts()).encode("utf-8")
    if not base:
        raise RuntimeError("no standard-library text found")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    per = max(size // files, 1)
    pos = 0                                         # where in `base` the next file starts (it wraps around)
    width = max(2, len(str(files - 1)))
    for i in range(files):
        path = tmp / f"part-{i:0{width}d}.txt"
        written = 0
        with open(path, "wb") as f:
            while written < per:
                take = min(per - written, len(base) - pos)
                end = base.find(b"\n", pos + take - 1)      # finish the line
                end = len(base) if end < 0 else end + 1
                f.write(base[pos:end])
                written += end - pos
                pos = 0 if end >= len(base) else end
        if not quiet:
            print(f"  {path.name}: {written:,} bytes", file=sys.stderr, flush=True)
    (tmp / MARKER).write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def shard_files(d: str | Path, suffix: str) -> list[str]:
    return sorted(str(p) for p in Path(d).glob(f"part-*{suffix}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("groupby", help="db-benchmark G1 data as Parquet shards")
    g.add_argument("--rows", default="1e7")
    g.add_argument("--k", default="1e2")
    g.add_argument("--shards", type=int, default=10)
    g.add_argument("--seed", type=int, default=SEED)
    g.add_argument("--chunk-rows", default="1e6")
    g.add_argument("--out", help=f"default {BENCH_DIR}/G1_<rows>_<k>_0_0")
    g.add_argument("--force", action="store_true")
    c = sub.add_parser("corpus", help="word-count corpus from the standard library's text")
    c.add_argument("--size", default="200MB")
    c.add_argument("--files", type=int, default=10)
    c.add_argument("--out", help=f"default {BENCH_DIR}/corpus-<size>")
    c.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    if a.what == "groupby":
        rows, k = parse_count(a.rows), parse_count(a.k)
        out = generate_groupby(a.out or BENCH_DIR / dataset_name(rows, k), rows, k, a.shards, a.seed,
                               parse_count(a.chunk_rows), force=a.force)
    else:
        out = build_corpus(a.out or BENCH_DIR / f"corpus-{a.size}", parse_size(a.size), a.files, force=a.force)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
