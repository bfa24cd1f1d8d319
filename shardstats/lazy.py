"""numpy bound at import, imported at first use: what keeps the ``cluster`` client from paying for it.

An op is one module: its declaration (parameters, how its result reads) and its
numpy algorithm together.  The client reads only the declaration, yet importing
the module would import numpy (~75 ms, a third of a one-value job through the
CLI).  So the op modules, and the helpers they import at the top, write

    from shardstats.lazy import numpy as np

and ``np`` is a module object whose first attribute lookup imports numpy and
takes over its namespace; later lookups are plain dict hits, as fast as on numpy
itself.  A worker touches ``np`` in its first job (or earlier); a client that only
validates parameters, submits and prints never does.  Nothing about numpy is
changed: ``sys.modules["numpy"]`` is numpy itself, imported the ordinary way.

The catch, checked by tests/test_client_imports.py: a module on the client's path
must not use ``np`` at import time (a module-level ``np.zeros(0)``, an
``np.uint64`` constant, a default argument); such a value is made on first use.
"""
from __future__ import annotations

import importlib
import sys
import threading
import types

# A worker's first use may come from a reader thread and the event loop at once; reentrant, because
# importing one stand-in's module may touch another's.
_lock = threading.RLock()


class LazyModule(types.ModuleType):
    """Stands for the module it is named after until an attribute is asked for."""

    def __getattr__(self, name: str):
        # Called only for names not (yet) in this object's namespace: the first use, or a name the module
        # itself makes on demand (numpy's submodules); either is then kept here, so it is asked for once.
        with _lock:
            real = importlib.import_module(self.__name__)
            if self.__dict__.get("__file__") is None:
                self.__dict__.update(real.__dict__)
        value = getattr(real, name)
        self.__dict__[name] = value
        return value


def lazy_module(name: str) -> types.ModuleType:
    """``name`` itself when it is already imported (nothing to save), else a stand-in that imports it on first use."""
    return sys.modules.get(name) or LazyModule(name)


numpy = lazy_module("numpy")
