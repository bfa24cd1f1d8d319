"""``cluster tls init``: a cluster CA, one certificate per worker and one for clients, with ``cryptography``.

Why a command of our own and not an openssl recipe: the certificates must carry
what shardstats/tls.py checks -- each worker's certificate names the addresses it
is dialed by (its peer host, and localhost/127.0.0.1/::1 for published ports and
port-forwards), serves as both server and client (workers dial each other), and
chains to a CA that signs nothing else.  Getting those extensions right by hand
is the usual way a first TLS deployment fails.

Keys are ECDSA P-256 (fast handshakes, small files), written with mode 0600;
certificates 0644.  An existing file is never overwritten: a second CA would
silently split the cluster.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from shardstats.errors import UsageError

ALWAYS = ("localhost", "127.0.0.1", "::1")     # published ports and port-forwards dial these


@dataclass(frozen=True)
class Made:
    ca: Path
    workers: list[tuple[Path, list[str]]]    # (certificate, the names in it)
    client: Path


def worker_hosts(specs: list[str], workers: int) -> list[list[str]]:
    """The names of each worker from ``--hosts`` values.

    Each value is a comma-separated list: either templates with ``{i}`` (expanded
    for every worker: ``worker{i}``) or exactly one name per worker, in id order.
    """
    out: list[list[str]] = [[] for _ in range(workers)]
    for spec in specs:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        templated = ["{i}" in n for n in names]
        if names and all(templated):
            for i in range(workers):
                out[i] += [n.replace("{i}", str(i)) for n in names]
        elif not any(templated) and len(names) == workers:
            for i, n in enumerate(names):
                out[i].append(n)
        else:
            raise UsageError(f"--hosts {spec!r}: give one name per worker ({workers}) in id order, "
                             f"or templates with {{i}} such as worker{{i}}")
    return out


def _san(name: str):
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)       # O_CREAT's mode passes through the umask


def init(out: Path, workers: int, hosts: list[str] | None = None, sans: list[str] | None = None,
         days: int = 365) -> Made:
    """Writes ca.crt/key, worker<i>.crt/key for i < ``workers`` and client.crt/key into ``out``."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise UsageError("`cluster tls init` needs the cryptography package: pip install 'shardstats[tls]'") from None
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if days < 1:
        raise UsageError("--days must be at least 1")
    per_worker = worker_hosts(hosts or [], workers)
    names = ["ca", *(f"worker{i}" for i in range(workers)), "client"]
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        for ext in ("crt", "key"):
            if (out / f"{n}.{ext}").exists():
                raise UsageError(f"{out / f'{n}.{ext}'} exists; `cluster tls init` never replaces a CA or a key "
                                 f"(remove the directory's files to start over)")
    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(minutes=5)          # tolerate a little clock skew between hosts

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shardstats"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "shardstats cluster CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(now + dt.timedelta(days=max(days, 3650)))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, dns: list[str], usages: list) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shardstats"),
                                      x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False))
        if dns:
            b = b.add_extension(x509.SubjectAlternativeName([_san(n) for n in dns]), critical=False)
        return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), pem_key(key)

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]   # workers serve and dial
    _write(out / "ca.key", pem_key(ca_key), 0o600)
    _write(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    made = []
    for i in range(workers):
        dns = list(dict.fromkeys([*per_worker[i], *(sans or []), *ALWAYS]))
        crt, key = leaf(f"shardstats worker {i}", dns, both)
        _write(out / f"worker{i}.key", key, 0o600)
        _write(out / f"worker{i}.crt", crt, 0o644)
        made.append((out / f"worker{i}.crt", dns))
    crt, key = leaf("shardstats client", [], [ExtendedKeyUsageOID.CLIENT_AUTH])
    _write(out / "client.key", key, 0o600)
    _write(out / "client.crt", crt, 0o644)
    return Made(out / "ca.crt", made, out / "client.crt")
