"""Where a command finds its cluster: ``--cluster-file``, ``$CLUSTER_WORKERS``, or the file ``cluster up`` wrote.

The cluster file holds the worker addresses, the token, and (for local clusters)
the pids and log directory.  It is written with mode 0600 because of the token.
Environment variables, for clusters started by other means (docker compose):
``CLUSTER_WORKERS=host:port,host:port,...`` and ``CLUSTER_TOKEN`` (or
``CLUSTER_TOKEN_FILE``), and for TLS ``CLUSTER_TLS_CERT``/``CLUSTER_TLS_KEY``/``CLUSTER_TLS_CA``
(they override the paths a cluster file records; ``cluster up --tls DIR`` records them).
"""
from __future__ import annotations

import json
import os
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shardstats.errors import ConfigError
from shardstats.tls import TLSFiles




def default_cluster_file() -> Path:
    env = os.environ.get("CLUSTER_FILE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "cluster" / "cluster.json"


@dataclass
class ClusterInfo:
    workers: list[str]
    token: str
    local: bool = False
    pids: list[int] = field(default_factory=list)
    log_dir: str | None = None
    root: str | None = None
    tls: dict | None = None          # the client's TLS files {cert, key, ca}; None: plain TCP
    starts: list[int | None] = field(default_factory=list)   # each pid's start time (/proc/<pid>/stat field 22)
    own_logs: bool = False           # log_dir is a temporary directory the launcher made (removed on stop)
    http_ports: list[int] = field(default_factory=list)      # worker i's HTTP port (metrics); empty: none
    worker_args: list[str] = field(default_factory=list)     # what every worker was started with beyond its
                                                             # address (--memory-limit, --spill-dir): a restart
                                                             # gives a worker the same

    def tls_files(self) -> TLSFiles | None:
        """The client's TLS files: $CLUSTER_TLS_* if set, else what the cluster file records."""
        env = TLSFiles.from_env()
        if env is not None or not self.tls:
            return env
        try:
            return TLSFiles.of(self.tls.get("cert"), self.tls.get("key"), self.tls.get("ca"), where="the cluster file")
        except AttributeError:
            raise ConfigError(f"the cluster file's tls entry is not a map: {self.tls!r}") from None

    def client_tls(self) -> ssl.SSLContext | None:
        """The context for dialing this cluster's workers (ConfigError naming the file that is wrong)."""
        files = self.tls_files()
        return files.client_context() if files is not None else None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "ClusterInfo":
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable cluster file ({exc})") from None


def token_from_env() -> str | None:
    if os.environ.get("CLUSTER_TOKEN"):
        return os.environ["CLUSTER_TOKEN"]
    tf = os.environ.get("CLUSTER_TOKEN_FILE")
    if tf:
        try:
            return Path(tf).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{tf}: cannot read the token file ({exc.strerror})") from None
    return None


def worker_id_from_hostname(hostname: str) -> int:
    """The ordinal a StatefulSet gives its pod (``shardstats-3`` -> 3), so one manifest serves every worker.

    Only the host name's first label counts (a pod's FQDN is ``shardstats-3.shardstats.ns.svc...``).
    """
    label = hostname.split(".", 1)[0]
    _, dash, ordinal = label.rpartition("-")
    if not dash or not ordinal.isdigit() or (len(ordinal) > 1 and ordinal[0] == "0"):
        raise ConfigError(f"host name {hostname!r} does not end in -<ordinal> (a StatefulSet pod name such as "
                          f"shardstats-3)")
    return int(ordinal)


def find_cluster(cluster_file: str | None = None) -> tuple[ClusterInfo, str]:
    """The cluster to talk to and a description of where it came from."""
    if cluster_file:
        p = Path(cluster_file)
        if not p.exists():
            raise ConfigError(f"{p}: no such cluster file")
        return ClusterInfo.load(p), str(p)
    env = os.environ.get("CLUSTER_WORKERS")
    if env:
        token = token_from_env()
        if not token:
            raise ConfigError("CLUSTER_WORKERS is set but CLUSTER_TOKEN (or CLUSTER_TOKEN_FILE) is not")
        return ClusterInfo(workers=[a.strip() for a in env.split(",") if a.strip()], token=token), "$CLUSTER_WORKERS"
    p = default_cluster_file()
    if not p.exists():
        raise ConfigError("no cluster is running: start one with `cluster up --detach` (or set CLUSTER_WORKERS "
                          "and CLUSTER_TOKEN), or run a one-off job with --local N")
    return ClusterInfo.load(p), str(p)
