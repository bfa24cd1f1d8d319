"""Per-job memory accounting and release for the long-running worker process.

ru_maxrss is a lifetime high-water mark, so the second job on a worker would
report the first job's peak.  Linux lets a process reset its peak RSS (write "5"
to /proc/self/clear_refs) and read it back (VmHWM in /proc/self/status); where
that is unavailable we fall back to ru_maxrss.  After a job, ``release`` hands the
freed heap back to the OS (glibc keeps it otherwise), so an idle worker is small.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import resource
import weakref

from shardstats.lazy import lazy_module, numpy as np

ctypes = lazy_module("ctypes")    # libc only on a worker: the client imports this module with the ops, not ctypes

_libc = None


def _lib():
    global _libc
    if _libc is None:
        import ctypes.util
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
        if _libc and hasattr(_libc, "madvise"):
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_kib(field: str) -> int | None:
    # One read of the raw bytes and a search: a text-mode line loop over the ~55 lines
    # was 17% of a worker's CPU for a one-value job (read at every phase's end).
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        try:
            text = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        at = text.index(field.encode())
        return int(text[at + len(field):text.index(b"kB", at)]) * 1024
    except (OSError, ValueError):
        return None


def peak_rss_bytes() -> int:
    got = _status_kib("VmHWM:")
    return got if got is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """Resident memory now (``cluster status`` shows it); the peak where /proc is missing."""
    got = _status_kib("VmRSS:")
    return got if got is not None else peak_rss_bytes()


def release() -> None:
    """Give freed memory back to the OS between jobs: glibc's heap (``malloc_trim``) and, where a keyed job
    loaded it, Arrow's allocator (mimalloc keeps freed pages for reuse). An idle worker held ~530 MB after a
    db-benchmark q10 (1e7 rows, 10 workers) where it had started at ~255 MB."""
    import sys
    lib = _lib()
    if lib and hasattr(lib, "malloc_trim"):
        lib.malloc_trim(0)
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()


M_MMAP_THRESHOLD = -3


def fixed_mmap_threshold(nbytes: int = 512 * 1024) -> bool:
    """Serve every allocation of ``nbytes`` or more with its own mmap, returned to the OS on free.

    A shuffle receives ~1 MiB frames and frees each once its values are copied
    into the owner's array.  With glibc's default (a threshold that grows once such
    blocks are freed) those frames end up in the heap and stay resident after
    free, so a worker briefly held the received data twice.  A fixed threshold
    keeps the peak at the data plus a few frames.  Returns whether libc accepted it.
    """
    lib = _lib()
    ok = bool(lib and hasattr(lib, "mallopt") and lib.mallopt(M_MMAP_THRESHOLD, nbytes))
    if ok:
        _fixed[:] = [nbytes]
    return ok


M_TRIM_THRESHOLD = -1
GLIBC_TRIM_DEFAULT = 128 * 1024
_fixed: list[int] = []         # the threshold ``fixed_mmap_threshold`` set, to go back to
_reusing = [0]                 # keyed exchanges running now (a worker may run several jobs)


@contextlib.contextmanager
def reusing_heap(nbytes: int = 64 << 20):
    """While a keyed exchange runs, blocks under ``nbytes`` come from glibc's heap and stay there when freed.

    Its transient blocks -- the ~1 MiB frames a sender packs and writes, the hash's temporaries -- are freed
    and allocated again a chunk at a time; each as a fresh mmap (``fixed_mmap_threshold``) faults in zeroed
    pages: 40% of a worker's samples in db-benchmark's join q5 were the kernel clearing pages. The received
    batches are the data itself (held until the reducer), so reusing freed blocks costs no second copy; the
    threshold is restored when the last exchange ends and ``release`` gives the heap back after the job."""
    lib = _lib()
    ok = bool(lib and hasattr(lib, "mallopt"))
    if ok and _reusing[0] == 0:
        lib.mallopt(M_MMAP_THRESHOLD, nbytes)
        lib.mallopt(M_TRIM_THRESHOLD, nbytes)
    _reusing[0] += 1
    try:
        yield
    finally:
        _reusing[0] -= 1
        if ok and _reusing[0] == 0:
            lib.mallopt(M_MMAP_THRESHOLD, _fixed[-1] if _fixed else 128 * 1024)
            lib.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_DEFAULT)


def concat_releasing(arrays: list[np.ndarray]) -> np.ndarray:
    """np.concatenate that empties the list as it copies, so the peak is the result plus one piece, not twice the data.

    The result has the first piece's dtype (int64 when there is none)."""
    out = np.empty(sum(len(a) for a in arrays), dtype=arrays[0].dtype if arrays else np.int64)
    pos = 0
    arrays.reverse()
    while arrays:
        a = arrays.pop()
        out[pos:pos + len(a)] = a
        pos += len(a)
    return out


_handed: dict[int, weakref.ref] = {}


def hand_over(values: np.ndarray) -> np.ndarray:
    """Marks ``values`` as given to an op for good: it may give their memory back as it consumes them.

    Only the job (``worker/jobs.py``) says so, for the array it loaded and nobody
    else holds.  An op called with anyone else's array (a test, the API's caller)
    leaves it intact.  Returns ``values``.
    """
    key = id(values)
    _handed[key] = weakref.ref(values, lambda _, key=key: _handed.pop(key, None))
    return values


def owned(values: np.ndarray) -> bool:
    """Whether ``values`` was handed over (``hand_over``) and is still the same array."""
    ref = _handed.get(id(values))
    return ref is not None and ref() is values


RELEASE_UNIT = 2 << 20    # a transparent huge page: releasing whole ones frees them at once, not on a later split


class Releaser:
    """Gives the pages of a consumed prefix of a contiguous array back to the OS as the consumer moves on.

    Partitioning copies every value out of its input; without this the input and its
    partitions coexist whole, twice the data.  ``upto(row)`` says rows before ``row``
    are done with; every whole ``RELEASE_UNIT`` among them is dropped with
    ``madvise(MADV_DONTNEED)`` (the array keeps its address range, the pages read
    as zeros if touched again, and freeing the array later unmaps it as usual).
    Only for an array no one else reads: the op's own copy, or one handed over.
    """

    def __init__(self, values: np.ndarray) -> None:
        lib = _lib()
        usable = (lib and hasattr(lib, "madvise") and hasattr(mmap, "MADV_DONTNEED")
                  and values.flags.c_contiguous and values.nbytes >= 2 * RELEASE_UNIT)
        self.base = values.ctypes.data if usable else 0
        self.itemsize = values.itemsize
        self.end = self.base + values.nbytes
        self.done = -(-self.base // RELEASE_UNIT) * RELEASE_UNIT   # first whole unit inside the array
        self.released = 0

    def upto(self, row: int) -> None:
        if not self.base:
            return
        stop = min(self.base + row * self.itemsize, self.end) // RELEASE_UNIT * RELEASE_UNIT
        if stop > self.done:
            if _lib().madvise(self.done, stop - self.done, mmap.MADV_DONTNEED) == 0:
                self.released += stop - self.done
            self.done = stop


def _cgroup_limit_files(proc_cgroup: str = "/proc/self/cgroup") -> list[str]:
    """This process's memory cgroup and its ancestors' limit files, v2 (``memory.max``) and v1
    (``memory.limit_in_bytes``): the group a process is placed in need not be the hierarchy's root
    (a container sees its own as "/", a process moved into a group on a host does not)."""
    import os
    groups = []
    try:
        with open(proc_cgroup) as f:
            for line in f:
                hid, controllers, path = line.rstrip("\n").split(":", 2)
                if hid == "0" and controllers == "":
                    groups.append(("/sys/fs/cgroup", path, "memory.max"))
                elif "memory" in controllers.split(","):
                    groups.append(("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes"))
    except (OSError, ValueError):
        pass
    files = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    for root, path, name in groups:
        parts = [p for p in path.split("/") if p and p != ".."]
        for i in range(len(parts), 0, -1):
            files.append(os.path.join(root, *parts[:i], name))
    return files


def machine_budget() -> int:
    """The memory this worker may use when ``--memory-limit`` is not given: the limit of its memory cgroup
    (or of a parent group), or the physical memory, the smallest."""
    import os
    limits = []
    for path in _cgroup_limit_files():
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:      # "max" or a huge v1 number: no limit
            limits.append(int(text))
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass
    return min(limits) if limits else 1 << 62


def parse_size(text: str) -> int:
    """ "700M", "2G", "1.5GiB", "1000000" -> bytes; ValueError with a readable message otherwise."""
    import re
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 700M, 2G, 1.5GiB, 1000000)")
    n = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if n < 1 << 20:
        raise ValueError(f"{text!r} is less than 1 MiB")
    return int(n)
