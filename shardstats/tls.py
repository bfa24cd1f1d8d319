"""The TLS settings of one process and the ``ssl.SSLContext``s built from them, in one place.

Mutual TLS: a worker's server context demands a client certificate signed by the
cluster CA; every client context (a worker dialing its peers, the coordinator)
presents its own certificate and trusts only the cluster CA, not the system's.
The token handshake still runs inside TLS (protocol/handshake.py): TLS says "a
member of this cluster's PKI", the token says "of this cluster".

Host names are checked (``check_hostname``).  Why: the CA signs every worker's
and every client's certificate, so without a name check any of them (a laptop's
client certificate, say) could stand in for any worker.  A worker's certificate
therefore names every address it is dialed by -- its peer address (IP or DNS
name) and, for published ports and port-forwards, localhost/127.0.0.1/::1 -- which
is what ``cluster tls init --hosts`` writes (cluster/certs.py).  A client
certificate needs no address: servers check only that the CA signed it.

TLS 1.3 only: both ends are this program, and 1.3 has no weak suites to configure.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from shardstats.errors import ConfigError

ENV = {"cert": "CLUSTER_TLS_CERT", "key": "CLUSTER_TLS_KEY", "ca": "CLUSTER_TLS_CA"}


@dataclass(frozen=True)
class TLSFiles:
    """Where this process's certificate, its key and the cluster CA's certificate are (PEM files)."""
    cert: str
    key: str
    ca: str

    @classmethod
    def of(cls, cert: str | None, key: str | None, ca: str | None, where: str = "--tls-cert/--tls-key/--tls-ca"
           ) -> "TLSFiles | None":
        """All three or none (None: plain TCP); one or two of them is a ConfigError naming ``where``."""
        given = {"cert": cert, "key": key, "ca": ca}
        if not any(given.values()):
            return None
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ConfigError(f"TLS needs a certificate, its key and the CA certificate together: "
                              f"{where} lacks {', '.join(missing)}")
        return cls(str(cert), str(key), str(ca))

    @classmethod
    def from_env(cls) -> "TLSFiles | None":
        return cls.of(*(os.environ.get(v) or None for v in ENV.values()), where="$" + "/$".join(ENV.values()))

    @classmethod
    def in_dir(cls, d: str | Path, name: str) -> "TLSFiles":
        """``name``.crt/.key and ca.crt in a directory ``cluster tls init`` wrote."""
        d = Path(d).resolve()
        return cls(str(d / f"{name}.crt"), str(d / f"{name}.key"), str(d / "ca.crt"))

    def as_dict(self) -> dict[str, str]:
        return {"cert": self.cert, "key": self.key, "ca": self.ca}

    def env(self) -> dict[str, str]:
        """The environment that hands these files to a ``cluster worker`` or ``cluster submit`` process."""
        return {ENV[k]: v for k, v in self.as_dict().items()}

    def _load(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        for path in (self.cert, self.key, self.ca):
            if not os.path.isfile(path):
                raise ConfigError(f"{path}: no such TLS file")
        try:
            ctx.load_verify_locations(cafile=self.ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"{self.ca}: not a CA certificate in PEM form ({_reason(exc)})") from None
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"{self.cert} with {self.key}: unusable certificate or key ({_reason(exc)})") from None
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """For a worker's listening side: clients must present a certificate the cluster CA signed."""
        ctx = self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def http_server_context(self) -> ssl.SSLContext:
        """For a worker's HTTP port (metrics): its own certificate, no client certificate asked -- scrapers
        rarely have one; routes that need more ask for the cluster token."""
        ctx = self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For dialing a worker: its certificate must chain to the cluster CA and name the address dialed."""
        ctx = self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))   # check_hostname and CERT_REQUIRED by default
        return ctx


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def failure(addr: str, exc: ssl.SSLError | OSError) -> str:
    """One line on a TLS handshake that failed with ``addr``: which check, and what usually causes it."""
    reason = _reason(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or reason
        if "hostname" in why.lower() or "ip address mismatch" in why.lower():
            return (f"worker at {addr} has a certificate that does not name {addr.rpartition(':')[0]} ({why}); "
                    f"make its certificate with `cluster tls init --hosts` naming the address it is dialed by")
        return (f"worker at {addr} has a certificate this client does not trust ({why}); is it signed by "
                f"this cluster's CA?")
    text = str(reason).lower()
    if "unknown ca" in text or "certificate required" in text or "bad certificate" in text \
            or "certificate unknown" in text:
        return refused(addr, reason)
    return f"TLS with worker at {addr} failed ({reason})"


def refused(addr: str, why: object) -> str:
    return f"worker at {addr} refused this client's certificate ({why}); is it signed by the cluster's CA?"
