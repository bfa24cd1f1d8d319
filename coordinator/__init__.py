"""The thin coordinator: resolve the input, assign files, start a job on every worker, collect the result.

It never carries the data: workers read their own files and talk to each other.
"""
from shardstats.coordinator.job import JobReport, ping_all, run_job

__all__ = ["JobReport", "run_job", "ping_all"]
