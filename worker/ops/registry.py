"""The registry of ops: the built-in ones in this package and third-party ones from the ``shardstats.ops`` entry points.

A module of this package that defines ``OP`` (a ``worker.ops.contract.Op``) is a
built-in op; nothing else lists it.  A third-party package registers an op with

    [project.entry-points."shardstats.ops"]
    myop = "mypackage.myop"          # a module defining OP, or "mypackage.myop:OP"

and it appears in ``cluster submit --help``, in the API (``c.submit("myop", ...)``,
``c.myop(...)``) and on every worker that has the package installed.  A broken
plugin is skipped with a warning, so it cannot take the CLI or a worker down.

``get(name)`` of a built-in op imports that op's module alone: a plugin cannot
replace a built-in, so neither the other modules nor the entry points (reading
every installed distribution's metadata) can change the answer, and a one-value
``cluster submit mode`` does not pay ~25 ms for them.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import types
from functools import cache

from shardstats.errors import UsageError
from shardstats.worker.ops.contract import Op

GROUP = "shardstats.ops"
_log = logging.getLogger("shardstats.ops")


def _op_of(obj: object, where: str) -> Op:
    op = getattr(obj, "OP", obj) if isinstance(obj, types.ModuleType) else obj
    if not isinstance(op, Op):
        raise TypeError(f"{where} does not define an Op")
    return op


@cache
def ops() -> dict[str, Op]:
    """Every op by name: built-ins first (a plugin cannot replace one), then entry points."""
    import pkgutil
    from importlib.metadata import entry_points
    import shardstats.worker.ops as pkg
    found: dict[str, Op] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if isinstance(getattr(module, "OP", None), Op):
            found[module.OP.name] = module.OP
    for ep in entry_points(group=GROUP):
        try:
            op = _op_of(ep.load(), f"entry point {ep.name} ({ep.value})")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the built-in ops
            _log.warning("skipping op plugin %s (%s): %s", ep.name, ep.value, exc)
            continue
        if op.name in found:
            _log.warning("skipping op plugin %s: an op named %r already exists", ep.value, op.name)
            continue
        found[op.name] = op
    return found


@cache
def _builtin(name: str) -> Op | None:
    """The built-in op a module of this package named ``name`` defines, if it defines one by that name."""
    module_name = f"{__package__}.{name}"
    if not name.isidentifier() or importlib.util.find_spec(module_name) is None:
        return None
    op = getattr(importlib.import_module(module_name), "OP", None)
    return op if isinstance(op, Op) and op.name == name else None


def find(name: str) -> Op | None:
    """The op called ``name``, or None: a built-in without looking further (nothing can replace it)."""
    return _builtin(name) or ops().get(name)


def get(name: str) -> Op:
    op = find(name)
    if op is None:
        raise UsageError(f"unknown op {name!r} (known: {', '.join(sorted(ops()))})")
    return op
