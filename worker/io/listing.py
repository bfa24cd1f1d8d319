"""What a user's --input names: the shard files of a directory, a file, or a glob (no data is read)."""
from __future__ import annotations

from pathlib import Path

from shardstats.errors import InputError

SUFFIXES = (".txt", ".npy", ".csv", ".parquet")
EXPECTED = "expected .txt, .npy, .csv or .parquet"


def list_shards(path: str) -> list[str]:
    """The shard files a user's --input names: a directory, a file, or a glob."""
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
            entries = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES)
        except PermissionError:
            raise InputError(f"{path}: permission denied") from None
        _refuse_special(entries)
        files = [str(f) for f in entries if f.is_file()]
        if not files:
            raise InputError(f"{path}: directory holds no shard files ({EXPECTED[9:]})")
    elif p.is_file():
        files = [path]
    elif p.exists():
        raise InputError(f"{path}: not a regular file or directory")
    else:
        raise InputError(f"{path}: no such file or directory")
    wrong = [f for f in files if Path(f).suffix.lower() not in SUFFIXES]
    if wrong:
        raise InputError(f"{wrong[0]}: unsupported file type ({EXPECTED})")
    return files


def _refuse_special(entries: list[Path]) -> None:
    """A shard that is neither a regular file nor a directory is an error, not skipped: silently
    dropping a dangling symlink's data would give a wrong answer, and a FIFO would block its reader."""
    for f in entries:
        if f.is_file() or f.is_dir():
            continue
        if f.is_symlink():
            raise InputError(f"{f}: broken symbolic link (its target does not exist or loops)")
        raise InputError(f"{f}: not a regular file (a FIFO, socket or device)")
