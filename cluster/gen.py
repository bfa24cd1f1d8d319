"""Sample datasets, seeded and reproducible.

``unique-dup`` is the problem's hard case: every value unique (drawn from
range(0, 4N)) except one value that appears twice, on two different shards.
``zipf`` is zipf(1.3) (a few very hot keys); ``uniform`` is uniform on [0, N).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DISTS = ("unique-dup", "zipf", "uniform")
FORMATS = ("txt", "npy")


def unique_dup(n: int, shards: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n values: n - 1 distinct ones from an affine permutation of range(4n), plus one repeat on another shard."""
    if n < 2 or shards < 2:
        raise ValueError("unique-dup needs at least 2 rows and 2 shards (the duplicate lives on two shards)")
    m = 4 * n
    a = int(rng.integers(m // 3, m)) | 1
    while np.gcd(a, m) != 1:
        a += 2
    b = int(rng.integers(0, m))
    vals = (np.arange(n - 1, dtype=np.int64) * a + b) % m
    parts = [p.copy() for p in np.array_split(vals, shards)]
    dup_from = int(rng.integers(0, shards))
    dup_to = (dup_from + 1 + int(rng.integers(0, shards - 1))) % shards
    if len(parts[dup_from]) == 0:
        raise ValueError("too few rows for this many shards")
    parts[dup_to] = np.append(parts[dup_to], parts[dup_from][int(rng.integers(0, len(parts[dup_from])))])
    return [rng.permutation(p) for p in parts]


def generate(n: int, shards: int, dist: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if dist == "unique-dup":
        return unique_dup(n, shards, rng)
    if dist == "zipf":
        vals = rng.zipf(1.3, n).astype(np.int64)
    elif dist == "uniform":
        vals = rng.integers(0, max(n, 1), n, dtype=np.int64)
    else:
        raise ValueError(f"unknown distribution {dist!r} (choose from {', '.join(DISTS)})")
    return list(np.array_split(vals, shards))


OWNED = re.compile(r"shard-[0-9]+\.(txt|npy)")


def prepare_target(out: str | Path, force: bool) -> tuple[int, list[str]]:
    """Makes ``out`` ready for new shards: (shard files of a previous ``gen`` removed, other entries kept).

    A directory that already holds anything is refused without ``force``: a job reads every shard in a
    directory, so old shards left next to new ones would be counted too.  With ``force`` only the files
    ``gen`` writes (``shard-N.txt`` / ``shard-N.npy``) are replaced; anything else stays and is reported.
    """
    out = Path(out)
    if not out.exists():
        return 0, []
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    entries = sorted(out.iterdir())
    if entries and not force:
        raise ValueError(f"--out {out}: the directory is not empty ({len(entries)} entries); jobs would read "
                         f"old shards too. Pick an empty directory, or pass --force to replace the shard-N "
                         f"files an earlier `cluster gen` wrote")
    owned = [e for e in entries if e.is_file() and OWNED.fullmatch(e.name)]
    for e in owned:
        e.unlink()
    return len(owned), [e.name for e in entries if e not in owned]


def write_shards(parts: list[np.ndarray], out: str | Path, fmt: str) -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = len(str(len(parts) - 1))
    paths = []
    for i, p in enumerate(parts):
        path = out / f"shard-{i:0{width}d}.{fmt}"
        if fmt == "npy":
            np.save(path, p)
        else:
            with open(path, "w") as f:
                if len(p):
                    f.write("\n".join(map(str, p.tolist())))
                    f.write("\n")
        paths.append(path)
    return paths
