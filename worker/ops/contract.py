"""The op contract: everything the rest of the system needs to know about a statistic, declared in one place.

An op is one module holding one ``Op``: its name, its parameters as a typed,
validated ``Params`` dataclass, the async function that runs it on every rank over
a ``Communicator``, how its result reads for people (and for the API), and its
progress phases.  The CLI's ``cluster submit <op>``, the Python API, the human
output and the progress line are generated from these declarations
(``worker/ops/registry.py`` finds them), so adding a statistic touches no other file.

Parameters have one validator, used by the CLI, the API *and* the worker (which
rebuilds them from the wire with ``from_wire``): a bad value is a ``UsageError``
whose message names the option the way the CLI spells it (``--fan-in``), exit 2,
wherever it is caught.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shardstats.errors import UsageError
from shardstats.worker.comm.shuffle import CHOICES, ShuffleConfig

P = TypeVar("P", bound="Params")


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, min: float | None = None,
           max: float | None = None, parse: Callable[[Any], Any] | None = None, advanced: bool = False,
           metavar: str | None = None, multiple: bool = False) -> Any:
    """A parameter field: its default, help text and checks.

    ``parse`` turns what a user typed (CLI text, or an API value) into the field's
    value, raising ``ValueError`` with a short reason; ``advanced`` keeps an option
    out of ``--help`` (tuning knobs for tests and benchmarks), not out of validation;
    ``multiple``: a tuple field given by repeating the option (``--agg sum(v1) --agg count()``).
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "max": max,
            "parse": parse, "advanced": advanced, "metavar": metavar, "multiple": multiple}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default (params are immutable)")
    return field(default=default, metadata=meta)


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Params:
    """Base of every op's parameters: a frozen dataclass whose fields are declared with ``option``.

    Construction validates every field (types, choices, ranges, the field's own
    ``parse``), then ``check`` for rules across fields; ``to_wire``/``from_wire`` are
    the form that travels in the job's ``run`` message.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                checked = _check_field(f, hints.get(f.name, Any), value)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"{cli_name(f.name)}: {exc}") from None
            object.__setattr__(self, f.name, checked)
        self.validate()

    def validate(self) -> None:
        """The cross-field rules, run after the fields' own checks: ``check`` (an op whose option is named
        ``--check`` has a field of that name, so it overrides this instead)."""
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise ``UsageError`` naming the options."""

    @classmethod
    def from_wire(cls: type[P], data: object) -> P:
        """The params a job message carries, validated exactly as the CLI validates them."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UsageError(f"job parameters are a {type(data).__name__}, expected a map")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise UsageError(f"unknown parameter {cli_name(unknown[0])} (known: "
                             f"{', '.join(cli_name(n) for n in sorted(names)) or 'none'})")
        return cls(**data)

    @classmethod
    def build(cls: type[P], **given: Any) -> P:
        """From keyword arguments (the API, the CLI): ``None`` means the default."""
        return cls.from_wire({k: v for k, v in given.items() if v is not None})

    def to_wire(self) -> dict:
        return {f.name: _wire(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def stats_fields(self) -> dict:
        """Parameters worth repeating in the job's ``stats`` (how the job ran, e.g. its shuffle settings)."""
        return {}


def _wire(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# The metavars of text options that hold a comma-separated list (--by k,ts; --quantiles 0.5,0.99)
COMMA_LISTS = ("COLS", "Q,Q,...")


def _check_field(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    meta = f.metadata
    if meta.get("multiple") and value is not None and not isinstance(value, (list, tuple)):
        # a repeatable option given once from Python (``agg="sum(v)"``, ``contains=3``) is that one item, as
        # ``--agg sum(v)`` is at the CLI; never a string's characters (an aggregate's own commas stay inside it)
        value = (value,)
    if meta.get("parse") is not None:
        value = meta["parse"](value)
    base, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ValueError("a value is required")
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                value = int(value)
            else:
                raise ValueError(f"{value!r} is not an integer")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{value!r} is not a number") from None
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number")
    elif base is str:
        if meta.get("metavar") in COMMA_LISTS and isinstance(value, (list, tuple)) and \
                all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in value):
            value = ",".join(map(str, value))   # from Python as a list (by=["k", "ts"]): the CLI's "k,ts"
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not text")
    elif base is tuple:
        if isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, tuple):
            raise ValueError(f"{value!r} is not a list")
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, meta['choices']))}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ValueError(f"must be at least {meta['min']:g} (got {value!r})")
    if meta.get("max") is not None and value > meta["max"]:
        raise ValueError(f"must be at most {meta['max']:g} (got {value!r})")
    return value


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the plain type, whether None is allowed) of a field annotation such as ``int | None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        base, _ = _base_type(rest[0]) if len(rest) == 1 else (Any, False)
        return base, type(None) in args
    origin = typing.get_origin(hint)
    return (origin or hint), False


def param_fields(params: type[Params]) -> list[tuple[dataclasses.Field, Any, bool]]:
    """(field, plain type, optional) for each parameter, in declaration order: what the CLI builds options from."""
    hints = _hints(params)
    return [(f, *_base_type(hints[f.name])) for f in dataclasses.fields(params)]


@functools.cache
def _hints(params: type) -> dict[str, Any]:
    """A Params class's resolved annotations, once per class: resolving them compiles every string annotation
    again (``from __future__ import annotations``), ~7% of a worker's CPU for a one-value job."""
    return typing.get_type_hints(params)


INT64_BYTES = 8      # what an int64 op's value costs in its shuffle pieces at most (a (value, count) pair
                     # stands for two or more values)


def int64_bytes(total: int | None) -> int | None:
    """The most an int64 op's pieces hold for a job of ``total`` values (None: not known), for
    ``ShuffleConfig.from_params``: the shuffle itself does not know what it carries."""
    return None if total is None else total * INT64_BYTES


@dataclass(frozen=True)
class ShuffleParams(Params):
    """The options every op that shuffles by key shares (the credit shuffle's knobs, see worker/comm/shuffle.py)."""
    shuffle: str = option("auto", "auto: credit, or tree for a job of at most one chunk in all; credit: "
                          "receiver-driven admission; naive: everyone sends at once; gather: all to one (for "
                          "comparison); tree: up the binomial tree to one owner (a job of one chunk).",
                          choices=CHOICES)
    # The defaults are the shuffle's own (ShuffleConfig): one default per setting.
    fan_in: int = option(ShuffleConfig.fan_in, "Concurrent inbound streams per worker.", min=1, max=1024)
    credits: int = option(ShuffleConfig.credits, "Chunks in flight per stream.", min=1, max=1024)
    chunk_bytes: int = option(ShuffleConfig.chunk_bytes, "Bytes per shuffle chunk (64 B to 2 MiB; frames stay under the 4 MiB limit).",
                              min=64, max=2 << 20)

    def stats_fields(self) -> dict:
        return {"shuffle": self.shuffle, "fan_in": self.fan_in, "credits": self.credits,
                "chunk_bytes": self.chunk_bytes}


def column_list(text: str | None) -> tuple[str, ...]:
    """``a, b,c`` as ("a", "b", "c"): how keyed ops name columns (``--by``, ``--on``, ``--desc``...)."""
    return tuple(c.strip() for c in str(text).split(",") if c.strip()) if text else ()


def parse_salt(text) -> str:
    """``--salt``: auto, off, or a number of reducers per hot key."""
    text = str(text).strip().lower()
    if text in ("auto", "off") or (text.isdigit() and 1 <= int(text) <= 1024):
        return text
    raise ValueError(f"{text!r} is not auto, off or a number of reducers from 1 to 1024")


@dataclass(frozen=True)
class KeyedParams(ShuffleParams):
    """The options every keyed op shares: where its rows go, how many are printed, the input kept warm."""
    out: str | None = option(None, "Write every result row as Parquet part files DIR/part-NNNNN.parquet (one per "
                             "reducer; read them as one dataset with DuckDB, Polars or pyarrow) instead of printing.",
                             metavar="DIR")
    overwrite: bool = option(False, "Replace the part files --out already holds (without it, a folder holding "
                             "part files is refused before anything is read).")
    limit: int = option(100, "Rows printed (and returned with --json) without --out, in order; 0 for as many "
                        "as one answer holds (about 50,000 plain rows; --out DIR writes them all).", min=0)
    cache: str | None = option(None, "Also keep the input in the workers' memory under NAME: later jobs read it "
                               "with --input cache:NAME and skip the files (evicted least-recently-used).",
                               metavar="NAME")
    compression: str = option("none", "Arrow IPC buffer compression of shuffled batches (for slow links).",
                              choices=("none", "lz4", "zstd"), advanced=True)

    def check(self) -> None:
        if self.cache is not None and not (self.cache.replace("-", "_").isidentifier() and len(self.cache) <= 64):
            raise UsageError(f"--cache: {self.cache!r} is not a name (letters, digits, - and _)")


DEFAULT_PATTERN = r"[\p{L}\p{N}_]+"        # worker.engine.tokens.DEFAULT_PATTERN, without importing Polars here


@dataclass(frozen=True)
class TextParams(KeyedParams):
    """What the text ops share: how documents are read and how tokens are cut."""
    pattern: str = option(DEFAULT_PATTERN, "A token: a regular expression (Rust regex syntax). The default is a run "
                          "of letters, digits or _ in any script (Python's \\w).", metavar="REGEX")
    lower: bool = option(True, "Lowercase the text before cutting tokens (Unicode case mapping).")
    text: str | None = option(None, "For table shards (csv/tsv/parquet/jsonl): the column holding each row's "
                              "text; each row is then a document.", metavar="COL")
    id: str | None = option(None, "With --text: the column naming each row's document (default: file#row).",
                            metavar="COL")

    def check(self) -> None:
        super().check()
        if not self.pattern:
            raise UsageError("--pattern: an empty pattern matches no token")
        if self.id is not None and self.text is None:
            raise UsageError("--id: names the documents of a table; give --text COL too")


def reader_of(op: "Op", params: Any) -> dict | None:
    """The reader options a job of ``op`` with ``params`` loads with (None: the int64 values)."""
    if op.reads is not None:
        return op.reads(params)
    return op.reads_column(params) if op.reads_column is not None else None


def column_reads(p: Params) -> dict | None:
    """The reader options of an approximate job over a table's column (``--of COL``); None: int64 values."""
    return {"kind": "table", "columns": [p.of], "cache": None} if getattr(p, "of", None) else None


def approx_only(p: Params) -> None:
    """The rule of the ops with an approximate path: --check and --save-sketch are about the sketch, so need --approx."""
    if not getattr(p, "approx", False):
        for name in ("check", "save_sketch"):
            if getattr(p, name, None):
                raise UsageError(f"{cli_name(name)}: compares or saves the sketch of --approx; add --approx")
        if getattr(p, "of", None):
            raise UsageError("--of: sketches a table's column with --approx; add --approx (the exact op reads "
                             "int64 values: --column)")
    if getattr(p, "save_sketch", None) == "":
        raise UsageError("--save-sketch: name a file")


def text_reads(p: TextParams) -> dict:
    return {"kind": "documents", "text": p.text, "id": p.id, "cache": p.cache}


Run = Callable[[Any, Any, Any], Awaitable[tuple[dict | None, dict]]]


def _no_summary(workers: list[dict]) -> dict:
    return {}


def _same(result: dict) -> dict:
    return result


@dataclass(frozen=True)
class Op:
    """One statistic.  ``run(comm, values, params)`` runs on every rank and returns
    (the result at rank 0, else None; this rank's stats)."""
    name: str
    summary: str                                  # one line: CLI help, API docstring
    params: type[Params]
    run: Run
    render: Callable[[dict], list[str]]           # the result for people: the first lines of the human output
    phases: tuple[str, ...]                       # progress phases, in order (the progress line and the report)
    examples: tuple[str, ...] = ()                # command lines shown in `cluster submit <op> --help`
    summarize: Callable[[list[dict]], dict] = _no_summary   # op-specific job stats from the per-worker stats
    view: Callable[[dict], dict] = _same          # the result as the API's Result attributes read it
    out_of_core: bool = False     # works from values kept on disk (worker/io/ondisk.py): passes or blocks
    # A keyed op taken in range slices beyond memory (the sort): (comm, this rank's sample, params, passes) ->
    # slots(table, side, passes), each row's range; and how two passes' answers combine when they are not rows (None: as rows).
    slice_ranges: Callable[..., Any] | None = None
    combine_passes: Callable[[dict, dict, Any], dict] | None = None     # (a, b, params)
    # Keyed ops read records: the reader options for these params ({"kind": "table"|"documents", "columns": [...],
    # "text": COL, "id": COL, "cache": NAME}); None: the int64 values of today's statistics.
    reads: Callable[[Any], dict] | None = None
    # An int64 op that may read one typed column of table shards instead (``--of COL`` of the approximate
    # paths: int64, float64 or string values): params -> those reader options, or None for the int64 values.
    reads_column: Callable[[Any], dict | None] | None = None
    # Run where the job is asked for (CLI, API), before it is sent: params -> the params that travel (a
    # mapreduce job's file read, its functions pickled). None: the params travel as given.
    prepare: Callable[[Any], Any] | None = None
    # What a worker learns of its int64 share while it loads: values -> (a small map of plain numbers and lists,
    # e.g. count, min, max, a sample's heaviest repeats; anything the rank keeps for its run, never sent), and
    # how two ranks' maps combine.  The coordinator combines every rank's (it waits for all the loads anyway)
    # and hands the result to every rank with the run (``comm.facts``; this rank's own: ``comm.own_facts``,
    # ``comm.kept``): a decision read from it costs no round between the workers.  Without a coordinator (the
    # in-memory tests) the op reduces them itself.
    load_facts: Callable[[Any], tuple[dict, Any]] | None = None
    merge_facts: Callable[[dict, dict], dict] | None = None
    # Runs the user's own functions: a worker started with --no-user-code refuses it at the load, before it reads
    # a byte (beyond memory the mapper runs as the share is read: the run's refusal came after it had run)
    user_code: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name.startswith("_"):
            raise ValueError(f"op name {self.name!r} must be a Python identifier (it becomes an API method)")
