"""A Python API for notebooks and scripts: the same jobs, results and stats as ``cluster submit --json``.

    from shardstats import Cluster

    with Cluster.local(4) as c:                 # an ephemeral local cluster, stopped on exit
        r = c.mode("shards/")
        print(r.value, r.count, r.stats["bytes_sent"])
        m = c.median("shards/", even="mean", quantiles=[0.9])
        print(m.value, m.quantiles["0.9"])
        s = c.submit("stats", "shards/", ddof=1)   # any registered op by name

    c = Cluster.connect()                       # a running cluster: --cluster-file, $CLUSTER_WORKERS, `cluster up`

Why a thin layer: an op's parameters are built and checked by its own ``Params``
(the CLI and the workers use the same), the job is ``coordinator.job.run_job``,
and the stats dict is ``cluster.output.summarize_stats`` -- so the API cannot
drift from the CLI's JSON.  Every op in the registry (built-in or a plugin) is a
method: ``c.mode(...)``, ``c.stats(...)``, and ``await c.mode_async(...)``.

The methods are synchronous and work from a plain script and also from inside a
running event loop such as Jupyter's (there the job runs on a helper thread).
Failures raise ``shardstats.ShardstatsError``: ``UserError`` (bad input or
parameters; ``exit_code`` 2) or ``ClusterError`` (``exit_code`` 1).
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TextIO

from shardstats.cluster import launcher
from shardstats.cluster.config import ClusterInfo, find_cluster
from shardstats.cluster.output import json_document, summarize_stats
from shardstats.cluster.runner import in_sync, run_sync
from shardstats.coordinator.job import JobReport, ping_all, run_job
from shardstats.coordinator.spec import JobSpec
from shardstats.errors import ClusterClosed, ShardstatsError
from shardstats.settings import DEFAULTS
from shardstats.worker.ops import registry

_JOB_OPTIONS = ("column", "header", "timeout", "max_retries", "heartbeat", "dead_after")


def _exact(x: Any) -> Any:
    """An integral Fraction as an int; other values unchanged (a Fraction stays exact)."""
    return x.numerator if isinstance(x, Fraction) and x.denominator == 1 else x


class Quantiles(dict):
    """A median's quantiles: keys as the job was asked (text such as "0.9"), looked up by any spelling of
    the same number -- 0.9, "0.90", Fraction(9, 10) -- because people type floats."""

    @staticmethod
    def _number(q: object) -> Fraction | None:
        """0.9, "0.90", "9/10", Fraction(9, 10) -> Fraction(9, 10); a float by its shortest repr, as typed."""
        try:
            if isinstance(q, float):
                return Fraction(repr(q))
            if isinstance(q, str):
                return Fraction(q.strip())
            if isinstance(q, (int, Fraction)) and not isinstance(q, bool):
                return Fraction(q)
        except (ValueError, ZeroDivisionError):
            pass
        return None

    def _key(self, q: object) -> object:
        if dict.__contains__(self, q):
            return q
        want = self._number(q)
        return next((k for k in self if want is not None and self._number(k) == want), q)

    def __getitem__(self, q: object) -> Any:
        k = self._key(q)
        if not dict.__contains__(self, k):
            raise KeyError(f"no quantile {q!r} in this result (it has {', '.join(self) or 'none'}; ask for it "
                           f"with quantiles=[...])")
        return dict.__getitem__(self, k)

    def __contains__(self, q: object) -> bool:
        return dict.__contains__(self, self._key(q))

    def get(self, q: object, default: Any = None) -> Any:
        return self[q] if q in self else default


def _column(values: list, type_: Any):
    """One answer column back in its Arrow type.  Numbers, text and bools travel as they are; a decimal travels
    as its exact text (an int when integral), a time or date as ISO text (``worker.engine.answer.plain``):
    Arrow parses those back by a cast from text.  What no cast brings back (a duration's seconds) stays as it
    travelled.  The per-value work here is over one answer's head (at most ~50,000 rows), never a dataset."""
    import pyarrow as pa
    if type_ is not None:
        try:
            return pa.array(values, type=type_)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        try:
            return pa.array(_texts(values), type=_as_text(type_)).cast(type_)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array(_texts(values))        # mixed kinds (an int beside a decimal's text): as the text shows


def _texts(values: list) -> list:
    """Values as text, lists kept as lists and nulls as nulls: what a cast from text parses."""
    return [v if v is None else _texts(v) if isinstance(v, list) else str(v) for v in values]


def _as_text(type_: Any):
    """``type_`` with every leaf type text (list<decimal> -> list<string>): the shape ``_texts`` gives."""
    import pyarrow as pa
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return pa.list_(_as_text(type_.value_type))
    return pa.string()


def _read_parts(out: str, schema: Any):
    """The part files a job wrote under ``out``, in name order, as one table (``schema``: the answer's)."""
    import glob
    import pyarrow as pa
    import pyarrow.parquet as pq
    from shardstats.errors import UsageError
    parts = sorted(glob.glob(os.path.join(glob.escape(out), "part-*.parquet")))
    if "://" in out or not os.path.isdir(out):
        raise UsageError(f"the rows were written to {out} on the workers, which this machine cannot read: "
                         f"read its part-*.parquet there (DuckDB, Polars or pyarrow)")
    if not parts:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


@dataclass(frozen=True)
class Result:
    """One job's answer.  ``result`` and ``stats`` are exactly the CLI's JSON ``result`` and ``stats``;
    the result's keys read as attributes (``r.value``, ``r.count``, ``r.variance``...)."""
    op: str
    result: dict
    stats: dict
    report: JobReport

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        view = registry.get(self.op).view(self.result)
        if name not in view:
            raise AttributeError(f"a {self.op} result has no {name!r} (it has: {', '.join(sorted(view))})")
        return _exact(view[name])

    @property
    def quantiles(self) -> "Quantiles":
        """q -> exact value (a median's optional quantiles); ``m.quantiles[0.9]`` and ``m.quantiles["0.9"]`` both work."""
        return Quantiles({q: _exact(v["value"]) for q, v in (self.result.get("quantiles") or {}).items()})

    def __repr__(self) -> str:
        """The answer as the CLI prints it (800001.5, not Fraction(1600003, 2)), then the job's size."""
        try:
            said = "; ".join(line.strip() for line in registry.get(self.op).render(self.result))
        except (KeyError, TypeError, ValueError, ShardstatsError):
            said = f"{self.op}: {self.result!r}"
        s = self.stats
        unit = "rows" if registry.get(self.op).reads is not None else "values"     # as the CLI says it
        return (f"<Result {said} | {s.get('values', 0):,} {unit} on {s.get('workers', 0)} "
                f"worker{'' if s.get('workers') == 1 else 's'} "
                f"in {s.get('seconds', 0):.3f} s>")

    def to_arrow(self):
        """A keyed job's rows as a ``pyarrow.Table``, typed as the job's answer was (a decimal, a timestamp or
        a date column as such, not as the text the --json rows hold): up to ``limit`` rows; wordcount's top
        words as (word, count).  A job run with ``out=DIR`` returns every row it wrote, read from DIR's part
        files in name order (a sort's order) when DIR is on this machine."""
        import pyarrow as pa
        r = self.result
        schema = pa.ipc.read_schema(pa.py_buffer(self.report.schema)) if self.report.schema else None
        if isinstance(r.get("out"), str):
            return _read_parts(r["out"], schema)
        if "columns" in r and "data" in r:
            columns = list(r["columns"])
            types = schema.types if schema is not None and schema.names == columns else [None] * len(columns)
            return pa.Table.from_arrays([_column([row[i] for row in r["data"]], t) for i, t in enumerate(types)],
                                        names=columns)
        if "top" in r and (not r["top"] or isinstance(r["top"][0], list) and isinstance(r["top"][0][0], str)):
            return pa.table({"word": pa.array([w for w, _ in r["top"]], pa.string()),
                             "count": pa.array([c for _, c in r["top"]], pa.int64())})
        raise AttributeError(f"a {self.op} result is not a table")

    def to_pandas(self):
        """``to_arrow()`` as a pandas DataFrame. pandas is no dependency of ours: without it, one line saying so
        (pyarrow's own error is a ModuleNotFoundError deep in its shim)."""
        import importlib.util
        if importlib.util.find_spec("pandas") is None:
            from shardstats.errors import UsageError
            raise UsageError("to_pandas() needs pandas, which is not installed (pip install pandas), "
                             "or use to_arrow()")
        return self.to_arrow().to_pandas()

    def json(self) -> str:
        """The document ``cluster submit ... --json`` prints for this job (exact numbers)."""
        return json_document(self.report)

    def document(self) -> dict:
        """The ``--json`` document as a dict (the answer's numbers exact)."""
        return {"op": self.op, "result": self.result, "stats": self.stats}

    def report_html(self, path: str | None = None) -> str:
        """The job's picture (what ``--report FILE.html`` writes) as a complete HTML page; also saved to ``path``."""
        from shardstats.cluster import report
        page = report.render(self.document())
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page

    def _repr_html_(self) -> str:
        """What Jupyter shows for a result: the report, inline."""
        from shardstats.cluster import report
        return report.fragment(self.document())

    @classmethod
    def from_report(cls, rep: JobReport) -> "Result":
        return cls(op=rep.op, result=dict(rep.result), stats=summarize_stats(rep), report=rep)


class Cluster:
    """A handle on a cluster.  ``Cluster.local(n)`` owns its workers and stops them on ``close()``."""

    def __init__(self, info: ClusterInfo, *, owned: bool = False, timeout: float = DEFAULTS.phase_timeout,
                 source: str = "") -> None:
        self.info = info
        self.owned = owned
        self.timeout = timeout
        self.source = source
        # An owned cluster is stopped even if the caller forgets close() (at garbage collection or exit).
        self._finalizer = weakref.finalize(self, launcher.stop, info) if owned else None

    @classmethod
    def local(cls, workers: int = 4, *, log_level: str = "warning", log_dir: str | None = None,
              timeout: float = DEFAULTS.phase_timeout, tls_dir: str | None = None,
              memory_limit: str | int | None = None, spill_dir: str | None = None) -> "Cluster":
        """Starts ``workers`` worker processes on 127.0.0.1 (ports chosen by the OS); with mutual TLS when
        ``tls_dir`` holds what ``cluster tls init`` wrote; each worker keeping within ``memory_limit`` (bytes,
        or "300M"; default: its share of the machine) and spilling under ``spill_dir``, as `cluster up` has it."""
        from shardstats.errors import UsageError
        from shardstats.worker.memory import parse_size
        try:
            args = ["--memory-limit", str(memory_limit if isinstance(memory_limit, int) else
                                          parse_size(memory_limit))] if memory_limit is not None else []
        except ValueError as exc:
            raise UsageError(f"memory_limit: {exc}") from None
        args += ["--spill-dir", os.path.abspath(spill_dir)] if spill_dir is not None else []
        info = in_sync(lambda: launcher.start(workers, "127.0.0.1", None, log_dir, log_level, extra_args=args,
                                              tls_dir=tls_dir, exit_with_parent=True), undo=launcher.stop)
        try:
            return cls(info, owned=True, timeout=timeout, source="local")
        except BaseException:       # Ctrl-C before the handle owns the workers: nobody else would stop them
            launcher.stop(info)
            raise

    @classmethod
    def connect(cls, cluster_file: str | None = None, *, timeout: float = DEFAULTS.phase_timeout) -> "Cluster":
        """An existing cluster, found the way the CLI finds it (raises ``shardstats.ConfigError``)."""
        info, source = find_cluster(cluster_file)
        return cls(info, owned=False, timeout=timeout, source=source)

    @property
    def workers(self) -> list[str]:
        return list(self.info.workers)

    def _check_open(self) -> None:
        if self._finalizer is not None and not self._finalizer.alive:
            raise ClusterClosed(f"this cluster was closed (its {len(self.info.workers)} workers stopped): start "
                                f"another with Cluster.local(n), or use a running one with Cluster.connect()")

    def close(self) -> None:
        """Stops the workers of a cluster this handle started; a connected cluster is left running."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({len(self.info.workers)} workers, {'owned' if self.owned else self.source})"

    # -- jobs ------------------------------------------------------------------------------
    def spec(self, op: str, path: str | list[str], **kw: Any) -> JobSpec:
        """The job ``submit`` would run: ``kw`` holds the op's parameters and the job options
        (``column``, ``header``, ``timeout``, ``max_retries``, ``heartbeat``, ``dead_after``)."""
        self._check_open()
        options = {k: v for k in _JOB_OPTIONS if (v := kw.pop(k, None)) is not None}   # None: the default
        if options.get("header") in ("yes", "no"):         # as the CLI spells it; True/False as Python does
            options["header"] = options["header"] == "yes"
        options.setdefault("timeout", self.timeout)
        # a notebook's paths are often pathlib.Path: right=, out=, save_sketch=, job= take them as the CLI's text
        kw = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in kw.items()}
        params = registry.get(op).params.build(**kw)
        inputs = (str(path),) if isinstance(path, (str, bytes)) or not hasattr(path, "__iter__") \
            else tuple(str(p) for p in path)
        return JobSpec(op=op, params=params, inputs=inputs, **options)

    async def submit_async(self, op: str, path: str | list[str], *, progress: bool | TextIO = False,
                           **kw: Any) -> Result:
        spec = self.spec(op, path, **kw)
        return await self._run_spec(spec, progress)

    def submit(self, op: str, path: str | list[str], *, progress: bool | TextIO = False, **kw: Any) -> Result:
        """Runs ``op`` (any registered op) over the shards ``path`` names (a directory, file, glob, or a list).
        ``progress``: draw the CLI's progress line (phase, files and bytes read, chunks shuffled) on stderr, or
        on the stream given, while the job runs -- a notebook is no terminal, so it is never drawn unasked."""
        spec = self.spec(op, path, **kw)           # bad parameters raise here, in the caller's thread
        return run_sync(lambda: self._run_spec(spec, progress))

    async def _run_spec(self, spec: JobSpec, progress: bool | TextIO = False) -> Result:
        line = None
        if progress:
            import sys
            from shardstats.cluster.progress import ProgressLine
            line = ProgressLine(sys.stderr if progress is True else progress, spec.op,
                                workers=len(self.info.workers))
        job = run_job(self.info.workers, self.info.token.encode(), spec, absolute_paths=self.info.local,
                      tls=self.info.client_tls(), on_progress=line)
        try:
            rep = await (job if line is None else line.ticking(job))
        finally:
            if line is not None:
                line.close()
        return Result.from_report(rep)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """``c.<op>(path, **params)`` and ``await c.<op>_async(path, **params)`` for every registered op."""
        if name.startswith("_"):
            raise AttributeError(name)
        is_async = name.endswith("_async")
        op_name = name[:-len("_async")] if is_async else name
        op = registry.find(op_name)         # a built-in imports its own module only (registry.find)
        if op is None:
            raise AttributeError(f"Cluster has no attribute {name!r} (ops: {', '.join(sorted(registry.ops()))})")

        def method(path: str | list[str], *more: Any, **kw: Any):
            # a join's two inputs read as ``c.join(left, right, on=...)``; every other parameter goes by name
            if more:
                if len(more) > 1 or "right" not in {f.name for f in _fields(op)} or "right" in kw:
                    raise TypeError(f"{name}(path, **params): pass {op_name}'s parameters by name "
                                    f"({', '.join(f.name for f in _fields(op) if not f.name.startswith('_'))})")
                kw["right"] = more[0]
            return self.submit_async(op_name, path, **kw) if is_async else self.submit(op_name, path, **kw)
        method.__name__ = name
        method.__doc__ = f"{op.summary}\n\nParameters: {', '.join(f.name for f in _fields(op))}; job options: " \
                         f"{', '.join(_JOB_OPTIONS)}, progress."
        return method

    def __dir__(self) -> list[str]:
        names = list(registry.ops())
        return sorted(set(super().__dir__()) | set(names) | {f"{n}_async" for n in names})

    def status(self, timeout: float = DEFAULTS.status_timeout) -> list[dict]:
        """One row per worker, as ``cluster status --json`` lists them."""
        self._check_open()
        return run_sync(lambda: ping_all(self.info.workers, self.info.token.encode(), timeout=timeout,
                                         tls=self.info.client_tls()))


def _fields(op) -> list:
    import dataclasses
    return list(dataclasses.fields(op.params))


def show_sketch(file: str | os.PathLike, *, quantiles: str | list | None = None, top: int | None = None,
                distinct: bool = False, count: Any = (), contains: Any = ()) -> dict:
    """What ``cluster sketch show FILE --json`` prints, as a dict: ``{"file", "header", "answer"}`` -- a saved
    sketch (``save_sketch=``) answered from the file alone, no cluster.  Ask what its kind answers:
    ``quantiles=[0.5, 0.99]`` (kll, tdigest), ``top=10`` (frequent), ``distinct=True`` (hll, theta, cpc),
    ``count=VALUE or [...]`` (count_min), ``contains=VALUE or [...]`` (bloom).  Errors as the CLI's, raised."""
    from shardstats.cluster.sketchcli import answer_file
    if isinstance(quantiles, (list, tuple)):
        quantiles = ",".join(map(str, quantiles))
    count, contains = (tuple(str(v) for v in (x if isinstance(x, (list, tuple)) else (x,)))
                       for x in (count, contains))
    head, ans = answer_file(os.fspath(file), quantiles, top, distinct, count, contains)
    return {"file": os.fspath(file), "header": head, "answer": ans}


def merge_sketches(files: list, out: str | os.PathLike, *, op: str = "union") -> dict:
    """``cluster sketch merge FILES -o OUT [--op union|intersect|minus]``: compatible sketches merged (theta:
    a set operation) into ``out``; returns the written header.  Incompatible ones raise, as the CLI refuses."""
    from shardstats.cluster.sketchcli import merge_files
    head, _ = merge_files([os.fspath(f) for f in files], os.fspath(out), op)
    return head
