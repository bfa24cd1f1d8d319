"""Every timeout and limit, with its one default, in one object.

Why one object: the same setting used to be written in several modules (a job's
wait deadline was 60 s in the communicator and 120 s in the daemon), and a
phase deadline travelled down the layers inside an op's parameters.  Now each
layer reads its setting here; a daemon or a coordinator that wants other values
builds ``Settings(...)`` once and passes it down (``dataclasses.replace``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # -- connections (worker and coordinator) ------------------------------------------
    connect_timeout: float = 5.0          # dialing a worker, handshake included
    handshake_timeout: float = 5.0        # a new inbound connection must prove the token within this
    pre_auth_max_frame: int = 4096        # frame limit before the handshake
    max_frame: int = 4 * 1024 * 1024      # frame limit after it (data travels in chunks well under it)
    send_queue_frames: int = 8            # frames queued per peer link before a sender waits
    send_timeout: float = 30.0            # a frame that cannot be handed to a peer's socket within this fails
    pre_auth_max_containers: int = 16     # maps + arrays a frame may decode into before the handshake
    max_containers: int = 1 << 16         # ... after it (data travels as bins; see protocol/frames.py)
    max_pre_auth: int = 64                # connections still in their handshake, per worker; more are closed at once
    max_connections: int = 512            # all inbound connections; the part above max_pre_auth is the reserve
                                          # only authenticated traffic may use
    write_high_water: int = 1 << 20       # a connection whose unread replies exceed this is not read from ...
    write_low_water: int = 256 << 10      # ... until they drain below this
    refusal_log_burst: int = 100          # pre-auth refusals logged in a burst; beyond it ...
    refusal_log_rate: float = 2.0         # ... this many lines a second, each with the count it stands for
    min_token_chars: int = 32             # a cluster token must be at least this long (32 hex chars = 128 bits)
    # -- a job on a worker ----------------------------------------------------------------
    job_timeout: float = 120.0            # any single wait inside a job (a recv, a credit)
    max_job_seconds: float = 24 * 3600.0  # the longest deadline a coordinator may give a job on a worker
    early_limit_bytes: int = 1 << 30      # what peers may send (decoded cost) to the jobs of a worker that
                                          # have not started yet, all jobs together
    max_jobs: int = 64                    # active jobs per worker
    read_timeout: float = 120.0           # a load that finishes no file within this is stuck: the worker is unhealthy
    memory_limit: int | None = None       # the memory a worker keeps within (values held, spill beyond); None: the
                                          # cgroup's limit or the physical memory (worker/memory.py machine_budget)
    keyed_overhead: int = 54 << 20        # what a keyed job takes on a worker beside its rows, its link queues and
                                          # its thinnest slices: DuckDB's, Arrow's and Polars' pools (measured with
                                          # runs on disk: db-benchmark q10, 1e7 unique groups, in 16 slices ran in
                                          # 200 MiB cgroups and was killed in 170 MiB); a budget whose three quarters
                                          # leave less is refused in one line, not killed
    spill_dir: str | None = None          # where a job keeps what exceeds memory_limit (worker/spill.py); None: the
                                          # system's temporary folder /shardstats-spill
    user_code: bool = True                # run mapreduce jobs' own functions (in a child process); False refuses them
    max_jobs_per_connection: int = 16     # active jobs per coordinator connection
    coordinator_silence: float = 10.0     # a worker drops its jobs when their coordinator is silent this long
    # -- a worker's HTTP port (worker/httpd.py: /metrics for Prometheus, and other routes) --
    http_port_offset: int = 1000          # a worker's HTTP port unless --http-port says: its own port plus this
                                          # (7000 -> 8000; `cluster up` worker i: BASE+i -> BASE+1000+i)
    metrics_auth: bool = False            # /metrics answers without the token (Prometheus scrapes it); True: Bearer
    http_max_connections: int = 32        # HTTP connections at once; more are answered 503 and closed
    http_max_header_bytes: int = 16 * 1024   # a request's line and headers (431 above)
    http_max_body: int = 1 << 20          # a request's body unless its route says (413 above, before reading it)
    http_idle_timeout: float = 30.0       # a keep-alive connection with no new request this long is closed
    http_request_timeout: float = 10.0    # a request's head and body arrive within this of its first byte (408)
    http_handler_timeout: float = 30.0    # a route's handler answers within this (503)
    # -- the coordinator ------------------------------------------------------------------
    phase_timeout: float = 300.0          # the load phase and the run phase each finish within this
    max_retries: int = 2                  # re-runs on the survivors when workers are lost
    heartbeat: float = 1.0                # seconds between the coordinator's pings to each worker
    dead_after: float = 5.0               # a worker silent this long is lost
    progress_interval: float = 0.25       # seconds between a worker's progress messages (when asked for)
    status_timeout: float = 2.0           # `cluster status`: how long a ping may take
    # -- object storage (s3://), on the coordinator (listing) and the workers (reading) ------
    s3_connect_timeout: float = 5.0       # an endpoint that does not accept a connection within this fails
    s3_read_timeout: float = 30.0         # a request that gets no bytes back within this fails
    s3_max_attempts: int = 4              # per request, first try included (botocore "standard" retries:
                                          # throttling, 5xx and connection errors, exponential backoff + jitter)
    # -- live top-K (worker/live/): events streamed in, the most frequent keys of the last minutes/hour/day --
    live_flush_interval: float = 2.0      # seconds between a worker's flushes of its local counts to the keys' owners
    live_allowance: float = 60.0          # an event time this many seconds before (or after) its arrival still
                                          # counts in its bucket; beyond, it is counted as late (early) and dropped.
                                          # An event without a time is stamped with its arrival time
    live_checkpoint_interval: float = 30.0   # seconds between checkpoints of an owner's buckets to local disk
    live_dir: str | None = None           # where checkpoints go; None: $XDG_STATE_HOME (or ~/.local/state)
                                          # /shardstats/live/cluster-<token digest>/workerI.ckpt
    live_approx: bool = False             # owners keep count-min + heavy-hitter sketches instead of exact counts
    live_cm_hashes: int = 3               # --approx: count-min rows (failure probability e**-3 = 5%)
    live_cm_buckets: int = 2048           # --approx: count-min columns (error e/2048 = 0.13% of a window's events)
    live_hh_lg_k: int = 10                # --approx: the heavy-hitter sketch keeps 3/4 * 2**10 keys per bucket
    live_max_batch: int = 100_000         # events in one ingest message or request
    live_max_key_bytes: int = 1024        # a key longer than this (UTF-8) is a malformed event
    live_flush_frame_bytes: int = 1 << 20  # a flush to one owner is cut into frames of about this size
    live_query_timeout: float = 2.0       # an owner that does not answer a top query within this is reported missing
    live_query_hedge: float = 0.02        # a worker asked for the top that has not answered within this: ask the next
                                          # one too, the first answer wins (a hedged request)
    live_push_k: int = 100                # each owner pushes its top this-many of 5m, 1h and 24h to every worker (when
                                          # its counts changed, every live_flush_interval / 2); a query within them is
                                          # answered by the one worker asked (0: every query asks every owner)


DEFAULTS = Settings()
