#!/usr/bin/env python3
"""db-benchmark's group-by and join data (h2oai/db-benchmark ``_data/groupby-datagen.R``, ``join-datagen.R``) as Parquet shards, and a
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

The join data (``_data/join-datagen.R``, ``nas=0, sort=0``) are four tables: the left ``x``
(``J1_<N>_NA_0_0``, N rows) and the right ``small``, ``medium``, ``big`` (``J1_<N>_<N/1e6|N/1e3|N>_0_0``)::

    key1 = split_xlr(N/1e6); key2 = split_xlr(N/1e3); key3 = split_xlr(N)
        # split_xlr(n): sample.int(n*1.1) cut into x (0.9n, shared), l (0.1n, left only), r (0.1n, right only)
    x:      id1 = sample_all(c(key1$x, key1$l), N)  id2 = ...key2..., N  id3 = sample_all(c(key3$x, key3$l), N)
            v1 = round(runif(N, max=100), 6)
    small:  id1 = sample_all(c(key1$x, key1$r), N/1e6)                                  v2
    medium: id1 = sample_all(c(key1$x, key1$r), N/1e3), id2 = ...key2..., N/1e3          v2
    big:    id1, id2 as medium's but N rows, id3 = sample_all(c(key3$x, key3$r), N)      v2
    id4, id5, id6 = sprintf("id%.0f", id1, id2, id3); columns id1..id6 then v1 (or v2)
        # sample_all(keys, size): every key once, the rest drawn with replacement, shuffled

So id3 is unique on both sides of x join big and 90% of each side's keys meet the other's; id1..id3
are int32, id4..id6 strings ("id17").  Without the R script's whole permutations in memory:
``sample.int(n*1.1)`` is a seeded pseudo-random bijection of [0, 1.1n) (a Feistel network, cycle-walked,
``permute``) evaluated at a row's position, and ``sample_all``'s final shuffle another over the table's
rows: row j takes element shuffle(j) of c(keys, draws), i.e. key shuffle(j) if it is below the keys'
count, else a uniform draw -- every key exactly as R's, the draws numpy's (PCG64), so the same laws,
not the same rows.  Written like the group-by data: ``DIR/<name>/part-NN.parquet``, ``shards``
files for x and big, one for small and medium, chunk by chunk (one chunk of rows in memory);
``DIR/_dbgen.json`` last.

    python scripts/dbgen.py groupby --rows 1e7 --out /tmp/shardstats-bench/G1_1e7_1e2_0_0
    python scripts/dbgen.py join --rows 1e8 --out /tmp/big/J1_1e8
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


def _partial(out: Path) -> Path:
    """An empty folder beside ``out`` to write into, so a half-written dataset never looks complete."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, out: Path, meta: dict) -> Path:
    """The written dataset in place of ``out``, its marker (written last: what says it is complete) inside."""
    (tmp / MARKER).write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _write_chunks(path: Path, rows: int, chunk_rows: int, chunk) -> None:
    """One Parquet file of ``rows`` rows, ``chunk(c, done, n)`` giving chunk ``c`` (``n`` rows after ``done``),
    each written as a row group as it is made: never more than a chunk in memory."""
    import pyarrow.parquet as pq
    writer, done, c = None, 0, 0
    while done < rows or writer is None:
        n = min(chunk_rows, rows - done)
        t = chunk(c, done, n)
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema, compression="snappy")
        writer.write_table(t, row_group_size=chunk_rows)
        done += n
        c += 1
    writer.close()


def generate_groupby(out: str | Path, rows: int, k: int = 100, shards: int = 10, seed: int = SEED,
                     chunk_rows: int = 1_000_000, force: bool = False, quiet: bool = False) -> Path:
    """Writes G1 data of ``rows`` rows to ``out/part-NN.parquet`` (``shards`` files); reuses a complete ``out``."""
    out = Path(out)
    meta = {"kind": "groupby", "rows": rows, "k": k, "shards": shards, "seed": seed, "chunk_rows": chunk_rows,
            "name": dataset_name(rows, k), "columns": list(COLUMNS)}
    if not force and _complete(out, meta):
        return out
    if rows < k:
        raise ValueError("rows must be at least K")
    tmp = _partial(out)
    id12, id3 = _labels("id%03d", k), _labels("id%010d", max(rows // k, 1))
    per = [rows // shards + (1 if s < rows % shards else 0) for s in range(shards)]
    width = max(2, len(str(shards - 1)))
    for s, n_shard in enumerate(per):
        path = tmp / f"part-{s:0{width}d}.parquet"
        _write_chunks(path, n_shard, chunk_rows,
                      lambda c, done, n, s=s: groupby_chunk(np.random.default_rng(np.random.SeedSequence([seed, s, c])),
                                                            n, rows, k, id12, id3))
        if not quiet:
            print(f"  {path.name}: {n_shard:,} rows", file=sys.stderr, flush=True)
    return _commit(tmp, out, meta)


# -- join data (join-datagen.R) ------------------------------------------------------------------------
M64 = (1 << 64) - 1


def round_keys(seed: int, name: str, rounds: int = 4) -> list[int]:
    """The Feistel round keys of the permutation ``name`` (a table's shuffle, a key set's sample.int)."""
    ints = np.random.SeedSequence([seed, *name.encode()]).generate_state(rounds, np.uint64)
    return [int(k) for k in ints]


def _feistel(i: np.ndarray, half: int, keys: list[int]) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    left, right = i >> np.uint64(half), i & mask
    for k in keys:
        f = (right + np.uint64(k)) * np.uint64(0x9E3779B97F4A7C15)      # wraps mod 2**64, as meant
        f ^= f >> np.uint64(29)
        f *= np.uint64(0xBF58476D1CE4E5B9)
        f ^= f >> np.uint64(32)
        left, right = right, left ^ (f & mask)
    return (left << np.uint64(half)) | right


def permute(i, n: int, keys: list[int]) -> np.ndarray:
    """A pseudo-random bijection of [0, n) (seeded by ``keys``) at the positions ``i``: a Feistel network over
    [0, 4**h) with 4**h >= n, each value outside [0, n) sent through it again (cycle walking, which keeps
    a bijection) -- R's sample.int(n) one position at a time, so no table holds all n."""
    i = np.asarray(i, np.uint64)
    half = max(1, ((max(n, 2) - 1).bit_length() + 1) // 2)
    with np.errstate(over="ignore"):
        out = _feistel(i, half, keys)
        bad = np.flatnonzero(out >= np.uint64(n))
        while bad.size:
            out[bad] = _feistel(out[bad], half, keys)
            bad = bad[out[bad] >= np.uint64(n)]
    return out


class KeySet:
    """split_xlr(n): the keys 1..1.1n in the order of ``sample.int`` (a permutation), cut into x (its first
    0.9n: both sides), l (the next 0.1n: the left only) and r (the last 0.1n: the right only)."""

    def __init__(self, n: int, seed: int, name: str) -> None:
        if n % 10:
            raise ValueError(f"a key set of {n} keys: 0.9n and 0.1n must be whole")
        self.n, self.nx = n, n * 9 // 10
        self.total = n + n // 10
        self.keys = round_keys(seed, name)

    def key(self, j: np.ndarray, side: str) -> np.ndarray:
        """The ``j``-th (0 <= j < n) key of c(x, l) (side "left") or c(x, r) ("right"), as int32 from 1."""
        j = np.asarray(j, np.uint64)
        if side == "right":                 # c(x, r): past x, skip l
            j = np.where(j < np.uint64(self.nx), j, j + np.uint64(self.n - self.nx))
        return (permute(j, self.total, self.keys) + np.uint64(1)).astype(np.int32)


def _id_strings(ids: np.ndarray):
    """sprintf("id%.0f", ids) as an Arrow string array (Arrow's cast and join: no Python loop)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    return pc.binary_join_element_wise(pa.scalar("id"), pc.cast(pa.array(ids), pa.string()), "")


def join_chunk(rng: np.random.Generator, table: str, rows: np.ndarray, n_table: int, sets: dict, shuffle) -> "object":
    """Rows ``rows`` (global positions in the table of ``n_table`` rows) of one join table as a pyarrow Table.
    ``shuffle``: the table's own permutation of [0, n_table) (sample_all's final sample()), or None."""
    import pyarrow as pa
    side = "left" if table == "x" else "right"
    n = len(rows)
    cols = {}
    for c, ks in (("id1", sets["id1"]), ("id2", sets["id2"]), ("id3", sets["id3"])):
        if table == "small" and c != "id1" or table == "medium" and c == "id3":
            continue
        # sample_all(keys, n_table) = sample(c(keys, sample(keys, n_table - m, TRUE))): row j holds element
        # shuffle(j) of that vector -- key shuffle(j) when it is below m, else a draw with replacement
        at = permute(rows, n_table, shuffle[c])
        draw = rng.integers(0, ks.n, n, dtype=np.uint64)
        cols[c] = ks.key(np.where(at < np.uint64(ks.n), at, draw), side)
    out = {c: pa.array(v) for c, v in cols.items()}
    for c, d in (("id1", "id4"), ("id2", "id5"), ("id3", "id6")):
        if c in cols:
            out[d] = _id_strings(cols[c])
    out["v1" if table == "x" else "v2"] = np.round(rng.random(n) * 100.0, 6)
    return pa.table(out)


def join_names(rows: int, ratios=(10**6, 10**3)) -> dict:
    """{table: (dataset name, rows)}, as join-datagen.R names them (J1_1e8_NA_0_0 is x, J1_1e8_1e8_0_0 big)."""
    sizes = {"x": rows, "small": rows // ratios[0], "medium": rows // ratios[1], "big": rows}
    return {t: (f"J1_{pretty_sci(rows)}_{'NA' if t == 'x' else pretty_sci(n)}_0_0", n) for t, n in sizes.items()}


def generate_join(out: str | Path, rows: int, shards: int = 10, seed: int = SEED, chunk_rows: int = 1_000_000,
                  ratios=(10**6, 10**3), force: bool = False, quiet: bool = False) -> Path:
    """Writes J1 data of ``rows`` rows to ``out/<name>/part-NN.parquet`` (x and big in ``shards`` files, small
    and medium in one); reuses a complete ``out``.  ``ratios``: N over small's and medium's rows (the R
    script's 1e6 and 1e3; smaller in tests)."""
    out = Path(out)
    names = join_names(rows, ratios)
    meta = {"kind": "join", "rows": rows, "shards": shards, "seed": seed, "chunk_rows": chunk_rows,
            "ratios": list(ratios), "tables": {t: name for t, (name, _) in names.items()}}
    if not force and _complete(out, meta):
        return out
    if rows // ratios[0] < 10 or rows % (10 * ratios[0]):
        raise ValueError(f"rows must be a multiple of {10 * ratios[0]:,} (0.9 and 0.1 of N/{ratios[0]:g} whole)")
    sets = {"id1": KeySet(rows // ratios[0], seed, "key1"), "id2": KeySet(rows // ratios[1], seed, "key2"),
            "id3": KeySet(rows, seed, "key3")}
    tmp = _partial(out)
    for ti, (table, (name, n_table)) in enumerate(names.items()):
        files = shards if table in ("x", "big") else 1
        shuffle = {c: round_keys(seed, f"{table}.{c}") for c in ("id1", "id2", "id3")}
        (tmp / name).mkdir()
        per = [n_table // files + (1 if s < n_table % files else 0) for s in range(files)]
        width = max(2, len(str(files - 1)))
        start = 0
        for s, n_shard in enumerate(per):
            path = tmp / name / f"part-{s:0{width}d}.parquet"
            _write_chunks(path, n_shard, chunk_rows, lambda c, done, n, s=s, start=start, ti=ti, table=table,
                          n_table=n_table, shuffle=shuffle: join_chunk(
                              np.random.default_rng(np.random.SeedSequence([seed, ti, s, c])), table,
                              np.arange(start + done, start + done + n, dtype=np.uint64), n_table, sets, shuffle))
            start += n_shard
            if not quiet:
                print(f"  {name}/{path.name}: {n_shard:,} rows", file=sys.stderr, flush=True)
    return _commit(tmp, out, meta)


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
    tmp = _partial(out)
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
    return _commit(tmp, out, meta)


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
    j = sub.add_parser("join", help="db-benchmark J1 data (x, small, medium, big) as Parquet shards")
    j.add_argument("--rows", default="1e7")
    j.add_argument("--shards", type=int, default=10)
    j.add_argument("--seed", type=int, default=SEED)
    j.add_argument("--chunk-rows", default="1e6")
    j.add_argument("--out", help=f"default {BENCH_DIR}/J1_<rows>")
    j.add_argument("--force", action="store_true")
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
    elif a.what == "join":
        rows = parse_count(a.rows)
        out = generate_join(a.out or BENCH_DIR / f"J1_{pretty_sci(rows)}", rows, a.shards, a.seed,
                            parse_count(a.chunk_rows), force=a.force)
    else:
        out = build_corpus(a.out or BENCH_DIR / f"corpus-{a.size}", parse_size(a.size), a.files, force=a.force)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
