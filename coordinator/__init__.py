"""The thin coordinator: resolve the input, assign files, start a job on every worker, collect the result.

It never carries the data: workers read their own files and talk to each other.
"""
from coordinator.job import JobFailed, ClusterUnavailable, run_job, ping_all

__all__ = ["JobFailed", "ClusterUnavailable", "run_job", "ping_all"]
