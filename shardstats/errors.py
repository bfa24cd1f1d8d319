"""One error hierarchy for the whole package: every failure a user can see is a ``ShardstatsError``.

Two families decide the exit status, in one place (``exit_code``), wherever the
error is raised -- on a worker, in the coordinator, in the CLI or the API:

* ``UserError`` (exit 2): the user's input or usage -- a bad file, a bad option, an
  empty dataset.  Fix the command and run it again; retrying elsewhere cannot help.
* everything else (exit 1): the cluster -- a worker lost, a deadline passed, no
  cluster to talk to, a peer that broke the protocol.

A worker reports an error as ``(kind, message)``; ``from_kind`` rebuilds the same
class on the coordinator's side, so a worker's ``InputError`` is an ``InputError``
for the caller of the API too.
"""
from __future__ import annotations


class ShardstatsError(Exception):
    """The root: everything this package raises on purpose."""
    kind = "cluster"
    exit_code = 1


class UserError(ShardstatsError):
    """The user's input or usage is wrong (exit 2)."""
    kind = "usage"
    exit_code = 2


class ClusterError(ShardstatsError):
    """The cluster could not produce an answer (exit 1)."""
    kind = "cluster"


class JobError(ClusterError):
    """A job ended without an answer for a reason of the cluster's (a worker's failure, an abort)."""
    kind = "job"


class InputError(UserError):
    """Bad input data: a file that is missing, unreadable or malformed."""
    kind = "input"


class EmptyDataset(InputError):
    """The input holds no values: no statistic is defined."""
    kind = "empty"


class UsageError(UserError, ValueError):
    """Parameters that make no sense; the message names the option the way the CLI spells it."""
    kind = "usage"


class PeerFailure(JobError):
    """A peer could not be reached or went silent past a deadline."""
    kind = "peer"


class WorkerLost(JobError):
    """The coordinator lost a worker: its connection closed, or it went silent past the deadline."""
    kind = "lost"

    def __init__(self, message: str, worker: int | None = None) -> None:
        super().__init__(message)
        self.worker = worker


class WorkerUnhealthy(WorkerLost):
    """A worker cannot do its share for reasons of its own (out of file descriptors or memory, reads
    stuck): the job runs again without it, like a lost worker; never the user's input."""
    kind = "unhealthy"


class WorkerBusy(ClusterError):
    """A worker refused a job because it already runs as many as it may (``max_jobs``, or its coordinator
    connection's share): the coordinator tries the job again after a pause, within its ``--timeout``, and
    says so in this error only when the workers stayed busy that long."""
    kind = "busy"


class JobTimeout(JobError):
    """A phase of the job did not finish within its deadline."""
    kind = "timeout"


class ClusterUnavailable(ClusterError):
    """No worker could be reached (or none accepted our token)."""
    kind = "unavailable"


class StoreUnavailable(ClusterError):
    """The object store could not serve a request: no answer, still throttling after the retries, a server error."""
    kind = "store"


class ConfigError(ClusterError):
    """No cluster is configured where a command looked for one, or its description is unreadable."""
    kind = "config"


class LaunchError(ClusterError):
    """A local cluster could not be started."""
    kind = "launch"


class ClusterClosed(UsageError, RuntimeError):
    """A job or a status asked of a ``Cluster`` handle after ``close()`` (or its ``with`` block): the handle's
    workers are gone, so it is the caller's usage (exit 2), one of the package's errors like every other;
    still a ``RuntimeError`` for code written when it was only that."""
    kind = "usage"


_BY_KIND = {c.kind: c for c in (JobError, InputError, EmptyDataset, UsageError, PeerFailure, WorkerLost,
                                 WorkerUnhealthy, WorkerBusy, JobTimeout, ClusterUnavailable, StoreUnavailable)}


def from_kind(kind: str, message: str) -> ShardstatsError:
    """The error a worker reported as ``(kind, message)``, as the class it was raised as there."""
    return _BY_KIND.get(kind, JobError)(message)


__all__ = ["ShardstatsError", "UserError", "ClusterError", "JobError", "InputError", "EmptyDataset", "UsageError",
           "PeerFailure", "WorkerLost", "WorkerUnhealthy", "WorkerBusy", "JobTimeout", "ClusterUnavailable", "StoreUnavailable",
           "ConfigError", "LaunchError", "ClusterClosed", "from_kind"]
