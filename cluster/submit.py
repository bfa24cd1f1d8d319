"""``cluster submit <op>``: one command per registered op, generated from its declaration.

Each op's typed parameters become options (name, type, choices, default and help
come from the ``option`` fields); the options every job has (input, column,
deadlines, where the cluster is) are added here once.  Values are checked by the
op's own ``Params`` -- the same validator the API and the workers use -- so a bad
value is one line naming the option and exit 2 whichever way it came in.
The group loads the registry only when ``submit`` is used, so ``cluster status``
and ``cluster --version`` do not pay for importing every op.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from shardstats.errors import ShardstatsError, UsageError
from shardstats.settings import DEFAULTS

_COMMON = ("input_paths", "more_inputs", "column", "header", "local_workers", "as_json", "timeout", "cluster_file",
           "max_retries", "heartbeat", "dead_after", "quiet", "report_path", "pretty", "memory_limit", "spill_dir")


def fail(message: str, code: int) -> None:
    """The CLI's one way out on an error: one line on stderr, the exit code the error's family decides."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _common_options() -> list[click.Parameter]:
    return [
        click.Option(["--input", "input_paths"], multiple=True, metavar="PATH",
                     help="A directory, file or glob of shards (.txt/.npy/.csv/.parquet for the value ops; "
                          ".csv/.tsv/.parquet/.jsonl/.ndjson tables or text documents for the keyed ops), or "
                          "objects in S3 for any op (s3://bucket/prefix/, s3://bucket/key, s3://bucket/prefix/"
                          "*.parquet); repeat it for more (an unquoted glob the shell expanded is taken whole)."),
        click.Argument(["more_inputs"], nargs=-1, required=False),
        click.Option(["--column"], help="Column of .csv/.parquet shards: a header name (implies --header yes) "
                     "or a 0-based index (default: the first column)."),
        click.Option(["--header"], type=click.Choice(["yes", "no"]), default=None,
                     help="Whether the first row of .csv shards is a header (default: only when --column names "
                     "a column; a first row that is not an integer is otherwise an error naming file:1)."),
        click.Option(["--local", "local_workers"], type=int, metavar="N",
                     help="Run on an ephemeral local cluster of N workers, stopped afterwards."),
        click.Option(["--memory-limit"], metavar="SIZE",
                     help="With --local: memory each worker keeps within, e.g. 300M (default: the machine's memory "
                     "or its cgroup's limit, shared by the workers); what exceeds it stays on disk (see `cluster "
                     "worker`). A running cluster's workers are given theirs by `cluster up` or `cluster worker`."),
        click.Option(["--spill-dir"], type=click.Path(file_okay=False),
                     help="With --local: where the workers keep what exceeds --memory-limit (default: the "
                     "temporary folder's shardstats-spill)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print exactly one JSON object on stdout (indented "
                     "on a terminal, one line when piped)."),
        click.Option(["--pretty/--one-line"], default=None,
                     help="With --json: indent it (the default on a terminal) or keep it on one line (when piped)."),
        click.Option(["--timeout"], type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.phase_timeout,
                     show_default=True, metavar="SECONDS",
                     help="Seconds each phase (reading the input, then computing) may take before the job fails."),
        click.Option(["--cluster-file"], type=click.Path(dir_okay=False),
                     help="The cluster to use (default: $CLUSTER_WORKERS, else the file `cluster up` wrote)."),
        click.Option(["--max-retries"], type=int, default=DEFAULTS.max_retries, show_default=True,
                     help="Times the job runs again on the survivors when workers are lost."),
        click.Option(["--heartbeat"], type=float, default=DEFAULTS.heartbeat, show_default=True,
                     help="Seconds between the coordinator's pings to each worker during a job."),
        click.Option(["--dead-after"], type=float, default=DEFAULTS.dead_after, show_default=True,
                     help="Seconds of silence after which a worker is declared lost."),
        click.Option(["--quiet", "-q"], is_flag=True,
                     help="No progress line on stderr (it is shown only when stderr is a terminal anyway)."),
        click.Option(["--report", "report_path"], type=click.Path(dir_okay=False), metavar="FILE.html",
                     help="Also write a picture of the job to this HTML file (self-contained: open it in any "
                     "browser, offline): traffic between workers, a timeline per worker, memory."),
    ]


def _param_options(op) -> list[click.Option]:
    """One option per parameter field; the op's own fields first, inherited ones (shuffle knobs) after."""
    from shardstats.worker.ops.contract import ShuffleParams, cli_name, param_fields
    shared = {f.name for f, _, _ in param_fields(ShuffleParams)} if issubclass(op.params, ShuffleParams) else set()
    fields = sorted(param_fields(op.params), key=lambda x: x[0].name in shared)
    out = []
    for f, base, optional in fields:
        meta = f.metadata
        choices = meta.get("choices")
        if base is bool:
            out.append(click.Option([f"{cli_name(f.name)}/--no-{f.name.replace('_', '-')}", f.name],
                                    default=f.default, show_default=True, help=meta["help"],
                                    hidden=meta["advanced"]))
            continue
        # Text in, checked by the op's Params: one validator, and one error line naming the option.
        metavar = "[" + "|".join(map(str, choices)) + "]" if choices else \
            meta.get("metavar") or {int: "INTEGER", float: "NUMBER"}.get(base, "TEXT")
        default = None if base is tuple else f.default
        if meta.get("multiple"):
            out.append(click.Option([cli_name(f.name), f.name], type=str, multiple=True, help=meta["help"],
                                    hidden=meta["advanced"], metavar=metavar))
            continue
        out.append(click.Option([cli_name(f.name), f.name], type=str, default=default,
                                show_default=default is not None, help=meta["help"], hidden=meta["advanced"],
                                metavar=metavar))
    return out


def make_command(op) -> click.Command:
    def callback(**kw) -> None:
        common = {k: kw.pop(k) for k in _COMMON}
        try:
            params = op.params.build(**{k: _typed(op, k, v) for k, v in kw.items() if v != ()})
        except UsageError as exc:
            fail(str(exc), 2)
        inputs = tuple(common["input_paths"]) + tuple(common["more_inputs"])
        if not inputs and getattr(params, "left", None):      # a join names its sides: --left is its input
            inputs = (params.left,)
        if not inputs:
            fail(f"--input: name the shards, e.g. `cluster submit {op.name} --input shards/`", 2)
        run_submit(op, params, inputs, **{k: v for k, v in common.items()
                                          if k not in ("input_paths", "more_inputs")})
    examples = "\n".join(f"  {e}" for e in op.examples)
    return click.Command(op.name, params=_common_options() + _param_options(op), callback=callback,
                         help=op.summary, short_help=op.summary,
                         epilog=f"\b\nExamples:\n{examples}" if examples else None)


def _typed(op, name: str, value):
    """Option text for an int field whose choices are ints (``--ddof 1``): its int, when it is one."""
    import dataclasses
    f = next(f for f in dataclasses.fields(op.params) if f.name == name)
    choices = f.metadata.get("choices")
    if choices and isinstance(choices[0], int) and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def run_submit(op, params, inputs: tuple[str, ...], *, column, header=None, local_workers, as_json, timeout,
               cluster_file, max_retries, heartbeat, dead_after, quiet, report_path=None, pretty=None,
               memory_limit=None, spill_dir=None) -> None:
    from shardstats.cluster.config import find_cluster
    from shardstats.cluster.notices import NoticeHandler
    from shardstats.cluster.output import human, json_document
    from shardstats.cluster.progress import ProgressLine, progress_enabled
    from shardstats.cluster.runner import run_async
    from shardstats.coordinator.job import run_job
    from shardstats.coordinator.spec import JobSpec
    if column is not None and column.isdigit():
        column = int(column)
    try:
        spec = JobSpec(op=op.name, params=params, inputs=inputs, column=column,
                       header=None if header is None else header == "yes", timeout=timeout,
                       max_retries=max_retries, heartbeat=heartbeat, dead_after=dead_after)
    except UsageError as exc:
        fail(str(exc), 2)
    if local_workers is not None and local_workers < 1:
        fail("--local: needs at least 1 worker", 2)
    worker_args = _local_worker_args(local_workers, memory_limit, spill_dir)
    if report_path and not Path(report_path).resolve().parent.is_dir():
        fail(f"--report {report_path}: the folder {Path(report_path).resolve().parent} does not exist", 2)
    startup = None
    info = None
    if local_workers is not None:
        from shardstats.cluster import launcher      # subprocesses and all: only for an ephemeral cluster
    try:
        if local_workers is not None:
            t = time.perf_counter()
            info = launcher.start(local_workers, "127.0.0.1", None, None, "warning", extra_args=worker_args,
                                  exit_with_parent=True)
            startup = time.perf_counter() - t
        else:
            info, _ = find_cluster(cluster_file)
        # an ephemeral --local cluster is plain; any other is dialed with its TLS files, if any
        tls = info.client_tls() if local_workers is None else None
    except ShardstatsError as exc:
        if info is not None and local_workers is not None:
            launcher.stop(info)
        fail(str(exc), exc.exit_code)
    assert info is not None
    # Progress goes to stderr only, so stdout holds nothing but the result (one JSON object with --json).
    line = ProgressLine(sys.stderr, op.name, workers=len(info.workers)) if progress_enabled(sys.stderr, quiet) \
        else None
    # The coordinator's log events reach the user as plain `warning:` lines (cluster/notices.py), never as
    # key=value log lines, and never in the middle of the progress line.
    handler = NoticeHandler(sys.stderr, line.close if line is not None else None)
    log = logging.getLogger("cluster")
    log.addHandler(handler)
    log.propagate = False
    try:
        job = run_job(info.workers, info.token.encode(), spec, absolute_paths=info.local, on_progress=line,
                      tls=tls)
        rep = run_async(job if line is None else line.ticking(job))
    except ShardstatsError as exc:
        if line is not None:
            line.close()
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        # asyncio.run cancelled the job, whose abort the workers confirmed (their spill folders gone): one
        # line and the shell's code for SIGINT, not click's "Aborted!" with exit 1 (a cluster failure's code)
        if line is not None:
            line.close()
        fail("interrupted: the job was aborted on every worker", 130)
    finally:
        log.removeHandler(handler)
        if line is not None:
            line.close()
        if local_workers is not None:
            launcher.stop(info)
    for warning in (rep.result or {}).get("warnings") or ():     # what the job did other than asked (--json too)
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        indent = sys.stdout.isatty() if pretty is None else pretty
        click.echo(json_document(rep, startup, pretty=indent))
    else:
        click.echo(human(rep, startup))
    if report_path:
        _write_report(json_document(rep, startup), report_path)


def _local_worker_args(local_workers, memory_limit: str | None, spill_dir: str | None) -> list[str]:
    """The ephemeral cluster's worker options, as `cluster up` gives them: a budget a job beyond memory is
    tried under without starting a cluster first.  Without --local they would silently do nothing (the
    workers' budget is theirs), so they are refused."""
    if local_workers is None:
        given = [n for n, v in (("--memory-limit", memory_limit), ("--spill-dir", spill_dir)) if v]
        if given:
            fail(f"{given[0]}: only with --local N (a running cluster's workers take theirs from `cluster up` "
                 f"or `cluster worker`)", 2)
        return []
    from shardstats.worker.memory import parse_size
    args = []
    if memory_limit:
        try:
            args += ["--memory-limit", str(parse_size(memory_limit))]
        except ValueError as exc:
            fail(f"--memory-limit: {exc}", 2)
    if spill_dir:
        args += ["--spill-dir", str(Path(spill_dir).absolute())]
    return args


def _write_report(document: str, path: str) -> None:
    """The job's picture (cluster/report.py) from the --json document, its numbers kept exact."""
    import json
    from decimal import Decimal
    from shardstats.cluster import report
    try:
        report.write(json.loads(document, parse_float=Decimal), path)
    except OSError as exc:
        fail(f"cannot write the report to {path}: {exc.strerror or exc} (the job itself succeeded)", 1)


class SubmitGroup(click.Group):
    """``cluster submit``: its commands are the registry's ops, built when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from shardstats.worker.ops import registry
        return sorted(registry.ops())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from shardstats.worker.ops import registry
        op = registry.find(name)
        return make_command(op) if op is not None else None
