"""shardstats: exact statistics over sharded integer data on a cluster of worker daemons.

    from shardstats import Cluster

    with Cluster.local(4) as c:
        print(c.mode("shards/").value, c.median("shards/").value)

Everything a user of the API needs is here; failures are ``ShardstatsError``
(``UserError`` for bad input or usage, exit 2 at the CLI; ``ClusterError`` for the
cluster, exit 1).
"""
from shardstats._version import __version__
from shardstats.errors import (ClusterError, ConfigError, EmptyDataset, InputError, ShardstatsError, UsageError,
                               UserError)


def __getattr__(name: str):
    # The API pulls in asyncio and the coordinator; `import shardstats` for the version or the errors stays cheap.
    if name in ("Cluster", "Result"):
        from shardstats.cluster import api
        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["Cluster", "Result", "ShardstatsError", "UserError", "ClusterError", "InputError", "EmptyDataset",
           "UsageError", "ConfigError", "__version__"]
