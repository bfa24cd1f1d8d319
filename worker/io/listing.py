"""What a user's --input names: the shard files of a directory, a file, a glob, or objects under an
``s3://`` prefix -- each with its size and version, and no data read.

The version (an object's ETag, a local file's ``mtime_ns``) travels to the worker that reads the
shard, which refuses a shard that is no longer the one listed: versions are never mixed in a job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shardstats.errors import InputError, JobError

SUFFIXES = (".txt", ".npy", ".csv", ".parquet")
EXPECTED = "expected .txt, .npy, .csv or .parquet"


@dataclass(frozen=True)
class ShardRef:
    """One shard as listed: where it is, how many bytes, and which version (None: not known)."""
    path: str
    size: int
    version: str | None = None

    def wire(self) -> list:
        """The load message's form of a shard: ``[path, size, version]``."""
        return [self.path, self.size, self.version]

    @classmethod
    def from_wire(cls, item: object) -> "ShardRef":
        """A load message's shard; a bare path (an older coordinator) has no size or version to check."""
        if isinstance(item, str):
            return cls(item, -1, None)
        if (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)
                and (item[2] is None or isinstance(item[2], str))):
            return cls(item[0], item[1], item[2])
        raise JobError(f"load.files holds {str(item)[:80]!r}, expected [path, size, version]")


def is_object_url(path: str) -> bool:
    return path.startswith("s3://")


def expected_types(suffixes: tuple[str, ...]) -> str:
    """The file types a listing takes as its errors say them ("expected .a, .b or .c"), for files and objects."""
    if suffixes == SUFFIXES:
        return EXPECTED
    return "expected " + ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def list_refs(path: str, suffixes: tuple[str, ...] | None = SUFFIXES) -> list[ShardRef]:
    """Every shard the input names, with its size and version (objects: ETag; files: mtime_ns).

    ``suffixes``: the file types a directory is listed for and a named file may have
    (the int64 ops' by default; a keyed op's tables; None: any file, for text documents)."""
    if is_object_url(path):
        from shardstats.worker.io.objects import list_objects
        return list_objects(path, suffixes=suffixes)
    out = []
    for f in list_shards(path, suffixes):
        try:
            st = os.stat(f)
        except OSError as exc:
            raise InputError(f"{f}: cannot stat ({exc.strerror})") from None
        out.append(ShardRef(f, st.st_size, str(st.st_mtime_ns)))
    return out


def bookkeeping(name: str) -> bool:
    """A file a directory or prefix holds beside its data, never read as a shard: a name starting with ``.``
    or ``_`` (``.DS_Store``, ``_SUCCESS``, ``_dbgen.json``, ``_metadata``), the rule Hadoop's and Spark's
    file listings follow.  A file named on its own is read whatever its name."""
    return name.startswith((".", "_"))


def list_shards(path: str, suffixes: tuple[str, ...] | None = SUFFIXES) -> list[str]:
    """The local shard files a user's --input names: a directory, a file, or a glob."""
    def wanted(f: Path) -> bool:
        return not bookkeeping(f.name) and (suffixes is None or f.suffix.lower() in suffixes)
    import glob
    p = Path(path)
    if any(ch in path for ch in "*?["):
        found = sorted(glob.glob(path, recursive=True))
        _refuse_special([Path(f) for f in found])
        files = [f for f in found if Path(f).is_file()]
        if not files:
            raise InputError(f"{path}: the pattern matches no files")
    elif p.is_dir():
        try:
            entries = sorted(f for f in p.iterdir() if wanted(f) or _compressed(f, suffixes))
        except PermissionError:
            raise InputError(f"{path}: permission denied") from None
        _refuse_special(entries)
        files = [str(f) for f in entries if f.is_file()]
        if not files:
            raise InputError(f"{path}: directory holds no shard files"
                             f"{'' if suffixes is None else ' (' + expected_types(suffixes)[9:] + ')'}")
    elif p.is_file():
        files = [path]
    elif p.exists():
        raise InputError(f"{path}: not a regular file or directory")
    else:
        raise InputError(f"{path}: no such file or directory")
    packed = [f for f in files if _compressed(Path(f), suffixes)]
    if packed:
        raise InputError(f"{packed[0]}: a compressed file, which is not read (decompress it, e.g. gunzip; Parquet "
                         f"compresses inside the file)")
    wrong = [] if suffixes is None else [f for f in files if Path(f).suffix.lower() not in suffixes]
    if wrong:
        raise InputError(f"{wrong[0]}: unsupported file type ({expected_types(suffixes)})")
    return files


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".snappy")


def _compressed(f: Path, suffixes: tuple[str, ...] | None) -> bool:
    """A shard of a type the job reads, compressed whole (``a.csv.gz``): refused by name, never skipped -- a
    directory's other files are passed over, and its compressed data with them would have been, silently."""
    if bookkeeping(f.name) or f.suffix.lower() not in COMPRESSED:
        return False
    inner = Path(f.stem).suffix.lower()
    return bool(inner) and (suffixes is None or inner in suffixes)


def _refuse_special(entries: list[Path]) -> None:
    """A shard that is neither a regular file nor a directory is an error, not skipped: silently
    dropping a dangling symlink's data would give a wrong answer, and a FIFO would block its reader."""
    for f in entries:
        if f.is_file() or f.is_dir():
            continue
        if f.is_symlink():
            raise InputError(f"{f}: broken symbolic link (its target does not exist or loops)")
        raise InputError(f"{f}: not a regular file (a FIFO, socket or device)")
