"""What the coordinator's log events say to the person running ``cluster submit``.

Why: the coordinator logs ``key=value`` lines for operators (``2026-11-24T15:47:29
warning event=worker_unreachable worker=3 ...``).  In a submit those used to reach
the terminal through Python's last-resort handler, in internal words, in the middle
of the progress line.  ``NoticeHandler`` words the events a user should know about
(a worker unreachable, lost, the job retried) as one ``warning:`` line each, in the
CLI's terms, and keeps everything else off the terminal; it erases the progress
line first so the two never share a row.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TextIO


def notice(event: str, f: dict) -> str | None:
    """The plain-words line for a coordinator event, or None when a user need not hear of it."""
    if event == "worker_unreachable":
        return (f"worker {f.get('worker')} at {f.get('addr')} did not answer ({f.get('error')}); "
                f"the job runs on the other workers. `cluster status` shows which are up.")
    if event == "worker_lost":
        return f"lost worker {f.get('worker')} during the job ({f.get('reason')})."
    if event == "job_retry":
        return (f"running the job again from the input on the {f.get('workers')} workers left "
                f"(attempt {f.get('attempt')}; --max-retries sets how many).")
    return None


class NoticeHandler(logging.Handler):
    def __init__(self, stream: TextIO, before: Callable[[], None] | None = None) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.before = before          # erases the progress line

    def emit(self, record: logging.LogRecord) -> None:
        text = notice(getattr(record, "event", ""), getattr(record, "fields", {}) or {})
        if text is None:
            return
        if self.before is not None:
            self.before()
        self.stream.write(f"warning: {text}\n")
        self.stream.flush()
