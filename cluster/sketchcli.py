"""``cluster sketch merge|show``: saved sketches merged and answered from the files alone (no cluster).

A file is read and checked here (header, length, SHA-256, parameters); the library then
reads each payload in a forked child first, asked everything the command will ask: a
crafted KLL payload crashes DataSketches' reader (a segfault, not an exception), and a
crash in the child is one line and exit 2 here.  Errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sys

import click

from shardstats.errors import ShardstatsError, UsageError

EPILOG = """\b
Examples:
  cluster submit median --input day1/ --approx --save-sketch day1.sketch
  cluster sketch merge day1.sketch day2.sketch -o week.sketch
  cluster sketch show week.sketch --quantiles 0.5,0.99
  cluster sketch show top.sketch --top 10 --json
  cluster sketch show ids.sketch --distinct
  cluster submit sketch --input t.parquet --of user --kind count_min --save-sketch users.cm
  cluster sketch show users.cm --count alice --count bob
  cluster sketch merge --op intersect mon.theta tue.theta -o both.theta
"""


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _guarded(what: str, fn, *args):
    """``fn(*args)`` in a forked child: its result, or a SketchFileError if the library crashed the child."""
    from shardstats.sketches import SketchFileError
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # the child: compute, send, leave without cleanup
        os.close(r)
        try:
            out = ("ok", fn(*args))
        except ShardstatsError as exc:
            out = ("err", str(exc))
        except Exception as exc:  # noqa: BLE001 - the library's own complaint about a payload
            out = ("bad", f"{type(exc).__name__}: {exc}")
        try:
            data = pickle.dumps(out)
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not data:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        name = signal.Signals(sig).name if sig else "no answer"
        raise SketchFileError(f"{what}: corrupt sketch (the DataSketches library crashed reading it: {name})")
    tag, value = pickle.loads(data)
    if tag == "ok":
        return value
    if tag == "err":
        raise SketchFileError(value)
    raise SketchFileError(f"{what}: corrupt sketch ({value[:200]})")


def _checked_then(parts: list[tuple[str, dict, bytes]], fn, *args):
    """In the child: every payload read and asked (``validate_payload``), then ``fn(*args)`` -- one fork for a
    command, however many files (a fork each cost ~1 s on a loaded machine: 30 days merged took 34 s)."""
    from shardstats import sketches as sk
    for name, head, payload in parts:
        try:
            sk.validate_payload(head, payload)
        except Exception as exc:  # noqa: BLE001 - the library's complaint, named by file
            raise sk.SketchFileError(f"{name}: corrupt sketch ({type(exc).__name__}: {str(exc)[:200]})") from None
    return fn(*args)


def _guarded_parts(what: str, parts: list[tuple[str, dict, bytes]], fn, *args):
    """``_checked_then`` in one child; when the library crashes it, each file read in its own child, so the
    error names the file that crashed it."""
    from shardstats import sketches as sk
    try:
        return _guarded(what, _checked_then, parts, fn, *args)
    except sk.SketchFileError as exc:
        if "crashed" not in str(exc) or len(parts) == 1:
            raise
        for name, head, payload in parts:
            _guarded(name, sk.validate_payload, head, payload)
        raise


@click.group(epilog=EPILOG)
def sketch() -> None:
    """Saved sketches (`cluster submit ... --approx --save-sketch FILE`): merge them, answer from them."""


@sketch.command("merge")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--out", required=True, help="The merged sketch file to write.")
@click.option("--op", "set_op", type=click.Choice(["union", "intersect", "minus"]), default="union", show_default=True,
              help="union: every kind; intersect (values in all) and minus (in the first, in none of the others): "
              "theta sketches.")
def merge(files: tuple[str, ...], out: str, set_op: str) -> None:
    """Merge sketch FILES of one kind and parameters into one (as if one job had sketched all their inputs)."""
    try:
        head, payload = merge_files(files, out, set_op)
    except ShardstatsError as exc:
        _fail(str(exc), exc.exit_code)
    said = "merged" if set_op == "union" else {"intersect": "intersected", "minus": "subtracted"}[set_op]
    click.echo(f"{said} {len(files)} {head['kind']} sketches into {out} ({len(payload):,} B)")


def merge_files(files: list[str] | tuple[str, ...], out: str, set_op: str = "union") -> tuple[dict, bytes]:
    """``cluster sketch merge``'s work (the API's ``merge_sketches`` too): FILES merged (or, for theta, a set
    operation) and written to ``out``; returns the written header and payload. Raises ShardstatsError."""
    from shardstats import sketches as sk
    from shardstats import sketchkinds as kinds
    if not files:
        raise UsageError("name at least one sketch file to merge")
    read = [sk.read(f) for f in files]
    for (h, _), f in zip(read[1:], files[1:]):
        sk.compatible(read[0][0], h, files[0], f)
    first = read[0][0]
    if set_op not in ("union", "intersect", "minus"):
        raise UsageError(f"--op {set_op}: not union, intersect or minus")
    if set_op != "union" and first["kind"] != "theta":
        raise UsageError(f"--op {set_op}: set operations are for theta sketches; {files[0]} is a {first['kind']} "
                         f"sketch (make one with `cluster submit sketch --kind theta`)")
    parts = [(f, h, p) for (h, p), f in zip(read, files)]
    if set_op != "union":
        payload = _guarded_parts(" + ".join(files), parts, kinds.theta_set_op, set_op, first["params"]["lg_k"],
                                 [p for _, p in read])
    else:
        payload = _guarded_parts(" + ".join(files), parts, sk.merge_payloads, first["kind"],
                                 [p for _, p in read], first["params"])
    columns = {json.dumps(h.get("column")) for h, _ in read}
    parts = [{"file": os.path.basename(f), "created": h.get("created"), "input": h.get("input")}
             for (h, _), f in zip(read, files)]
    fp = {"merged_from": parts} if set_op == "union" else {f"{set_op}_of": parts}
    pops = [sk.sampling(h).get("population") for h, _ in read]
    head = sk.header(first["kind"], first["params"], payload, fp,
                     first.get("column") if len(columns) == 1 else None,
                     sum(pops) if sk.sampling(first) and None not in pops else None)
    sk.write(out, head, payload)
    return head, payload


def _quantiles(value: str | None) -> list[str]:
    from shardstats.worker.ops.median import _parse_quantiles
    try:
        return list(_parse_quantiles(value)) if value else []
    except ValueError as exc:
        raise UsageError(f"--quantiles: {exc}") from None


@sketch.command("show")
@click.argument("file")
@click.option("--quantiles", metavar="Q,Q,...", help="A quantile sketch: these quantiles (default 0.5,0.99).")
@click.option("--top", type=click.IntRange(1, 1_000_000), help="A frequent-items sketch: the N most frequent values "
              "(default 10).")
@click.option("--distinct", is_flag=True, help="A HyperLogLog, theta or CPC sketch: the number of distinct values "
              "(the default).")
@click.option("--count", "count", multiple=True, metavar="VALUE", help="A count-min sketch: how often VALUE occurs "
              "(never below the truth); repeat it for more.")
@click.option("--contains", "contains", multiple=True, metavar="VALUE", help="A Bloom filter: whether VALUE may be "
              "in the set (no: certainly not); repeat it for more.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def show(file: str, quantiles: str | None, top: int | None, distinct: bool, count: tuple[str, ...],
         contains: tuple[str, ...], as_json: bool) -> None:
    """Answer from a saved sketch FILE alone: its header, and the question its kind answers."""
    try:
        head, ans = answer_file(file, quantiles, top, distinct, count, contains)
    except ShardstatsError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        click.echo(json.dumps({"file": file, "header": head, "answer": ans}))
        return
    from shardstats.sketchkinds import render_answer
    for line in _describe(file, head) + render_answer(head["kind"], ans):
        click.echo(line)


def answer_file(file: str, quantiles: str | None = None, top: int | None = None, distinct: bool = False,
                count: tuple[str, ...] = (), contains: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """``cluster sketch show``'s work (the API's ``show_sketch`` too): (the file's header, the answer to the
    question its kind answers). Raises ShardstatsError."""
    from shardstats import sketches as sk
    from shardstats import sketchkinds as kinds
    qs = _quantiles(quantiles)
    head, payload = sk.read(file)
    checked = [(file, head, payload)]
    kind = head["kind"]
    asked = [name for name, given in (("--quantiles", quantiles is not None), ("--top", top is not None),
                                      ("--distinct", distinct), ("--count", bool(count)),
                                      ("--contains", bool(contains))) if given]
    answers = ANSWERS[kind]
    wrong = [a for a in asked if a != answers]
    if wrong:
        raise UsageError(f"{file} is a {kind} sketch: it answers {answers}, not {wrong[0]}")
    vtype = kinds.values_type(head["params"])
    for v in count + contains:
        try:
            kinds.parse_value(v, vtype)
        except ValueError:
            raise UsageError(f"{answers} {v[:40]!r}: {file} is a sketch of {vtype} values") from None
    from shardstats.worker.ops.median import parse_quantile
    ranks = [float(parse_quantile(q)) for q in (qs or ["0.5", "0.99"])]
    if kind == "kll_doubles":
        qs = qs or ["0.5", "0.99"]
        smp = sk.sampling(head)          # a sampled sketch's bound adds the sample's term
        ans = _guarded_parts(file, checked, sk.kll_answer, payload, ranks, vtype == "int64",
                             smp.get("sample_rate", 1.0), smp.get("population"), head["params"].get("offset", 0))
        ans["quantiles"] = {q: a for q, a in zip(qs, ans["quantiles"])}
    elif kind == "frequent_items_i64":
        ans = _guarded_parts(file, checked, sk.fi_answer, payload, top or 10)
    elif kind == "hll_registers":
        ans = _guarded_parts(file, checked, sk.hll_answer, payload, head["params"]["precision"])
    else:
        ans = _guarded_parts(file, checked, kinds.answer, kind, head["params"], payload,
                             {"ranks": ranks, "top": top or 10, "count": list(count), "contains": list(contains)})
        if kind == "tdigest_double":
            ans["quantiles"] = {q: a for q, a in zip(qs or ["0.5", "0.99"], ans["quantiles"])}
    return head, ans


ANSWERS = {"kll_doubles": "--quantiles", "tdigest_double": "--quantiles", "frequent_items_i64": "--top",
           "frequent_items_f64": "--top", "frequent_strings": "--top", "hll_registers": "--distinct",
           "theta": "--distinct", "cpc": "--distinct", "count_min": "--count", "bloom": "--contains"}


def _describe(file: str, head: dict) -> list[str]:
    """The header for people; its free-form fields are whatever the file says, so shown only when well-formed."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(head["params"].items()))
    fp = head.get("input")
    fp = fp if isinstance(fp, dict) else {}
    said = ""
    if isinstance(fp.get("values"), int):
        said = f"; input: {fp['values']:,} values in [{fp.get('min')}, {fp.get('max')}], hash {fp.get('values_hash')}"
        if isinstance(fp.get("files"), int):
            said += f", {fp['files']} files"
    elif isinstance(fp.get("merged_from"), list):
        said = f"; merged from {len(fp['merged_from'])} sketches"
    column = f", column {head['column']}" if head.get("column") is not None else ""
    text = f"{head['kind']} ({params}{column}), made {head.get('created')} with {head.get('library')}{said}"
    return [f"{file}: {text[:400]}"]
