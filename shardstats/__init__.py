"""shardstats: exact statistics over sharded integer data on a cluster of worker daemons.

    from shardstats import Cluster

    with Cluster.local(4) as c:
        print(c.mode("shards/").value, c.median("shards/").value)

Everything a user of the API needs is here; failures are ``ShardstatsError``
(``UserError`` for bad input or usage, exit 2 at the CLI; ``ClusterError`` for the
cluster, exit 1).
"""
import os as _os

# A source checkout keeps the subpackages in the design card's top-level folders beside this one (a wheel maps
# them inside it: pyproject's package-dir). Searching the checkout too lets an editable install be one path in a
# .pth (setuptools' mapping finder cost ~10 ms of every `cluster` command's start) and `python -m pytest` run
# from the repo root, where this folder shadows any installed copy.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
        _os.path.join(_checkout, "worker", "ops", "contract.py")):
    __path__.append(_checkout)

from shardstats._version import __version__  # noqa: E402
from shardstats.errors import (ClusterError, ConfigError, EmptyDataset, InputError, ShardstatsError, UsageError,
                               UserError)


def __getattr__(name: str):
    # The API pulls in asyncio and the coordinator; `import shardstats` for the version or the errors stays cheap.
    if name in ("Cluster", "Result", "show_sketch", "merge_sketches"):
        from shardstats.cluster import api
        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["Cluster", "Result", "show_sketch", "merge_sketches", "ShardstatsError", "UserError", "ClusterError", "InputError", "EmptyDataset",
           "UsageError", "ConfigError", "__version__"]
