"""Errors a job can end with; the worker reports their kind to the coordinator."""


class JobError(Exception):
    kind = "job"


class InputError(JobError):
    """Bad input data: a file that is missing, unreadable or malformed (exit 2 at the CLI)."""
    kind = "input"


class EmptyDataset(InputError):
    kind = "empty"


class PeerFailure(JobError):
    """A peer could not be reached or went silent past a deadline (exit 1 at the CLI)."""
    kind = "peer"


class UsageError(JobError):
    """Job parameters that make no sense (exit 2 at the CLI, like bad input)."""
    kind = "usage"
