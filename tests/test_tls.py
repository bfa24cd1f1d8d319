"""Mutual TLS on every connection: certificates, the STARTTLS-style announcement, and what is refused.

Real servers on 127.0.0.1: worker processes started by the launcher (``cluster up --tls``
does the same) for the exact answers and the CLI's one-line errors, and workers in the
test's own event loop where the test must look at the sockets (is a peer link TLS?).
"""
from __future__ import annotations

import asyncio
import json
import ssl
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shardstats.cluster import certs, launcher
from shardstats.cluster.api import Cluster
from shardstats.coordinator.job import run_job
from shardstats.coordinator.spec import job_spec
from shardstats.errors import ConfigError, UsageError
from shardstats.protocol.errors import HandshakeFailed, TLSError, TLSMismatch
from shardstats.protocol.handshake import ServerHandshake, check_tls
from shardstats.tls import TLSFiles
from shardstats.worker.net.dial import client_connect
from shardstats.worker.server import WorkerServer
from tests.conftest import cli, nasty_datasets, ref_mode, shard_files

TOKEN = "tls-test-token-0123456789abcdef-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two independent clusters' certificates: ``ours`` (the one the workers use) and ``other``."""
    base = tmp_path_factory.mktemp("pki")
    certs.init(base / "ours", 3, hosts=["worker{i}"])
    certs.init(base / "other", 3)
    return base


@pytest.fixture(scope="module")
def tls3(pki, tmp_path_factory):
    """Three TLS worker processes (what `cluster up --tls DIR` starts)."""
    info = launcher.start(3, "127.0.0.1", None, str(tmp_path_factory.mktemp("logs")), "info",
                          tls_dir=pki / "ours")
    yield info
    launcher.stop(info)


def env_for(info, tls: TLSFiles | None, token: str | None = None) -> dict[str, str]:
    """A shell pointed at ``info``'s workers by environment, with ``tls`` as the client's files (or none)."""
    env = {"CLUSTER_WORKERS": ",".join(info.workers), "CLUSTER_TOKEN": token or info.token,
           "CLUSTER_FILE": "/nonexistent/cluster.json", "CLUSTER_TLS_CERT": "", "CLUSTER_TLS_KEY": "",
           "CLUSTER_TLS_CA": ""}
    env.update(tls.env() if tls is not None else {})
    return env


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- cluster tls init ----------------------------------------------------------------------
def test_init_writes_a_ca_worker_and_client_certificates_with_private_keys(pki):
    d = pki / "ours"
    for name in ("ca", "worker0", "worker1", "worker2", "client"):
        assert stat.S_IMODE((d / f"{name}.key").stat().st_mode) == 0o600, name
        assert stat.S_IMODE((d / f"{name}.crt").stat().st_mode) == 0o644, name
    from cryptography import x509
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    for i in range(3):
        crt = x509.load_pem_x509_certificate((d / f"worker{i}.crt").read_bytes())
        crt.verify_directly_issued_by(ca)
        names = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [f"worker{i}", "localhost"]
        assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    # OpenSSL's own strict check, for the roles each certificate plays
    ctx = TLSFiles.in_dir(d, "worker0").server_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_init_never_replaces_a_ca(pki):
    before = (pki / "ours" / "ca.key").read_bytes()
    with pytest.raises(UsageError, match="ca.crt exists"):
        certs.init(pki / "ours", 3)
    assert (pki / "ours" / "ca.key").read_bytes() == before


def test_hosts_one_per_worker_or_templates():
    assert certs.worker_hosts(["a,b,c"], 3) == [["a"], ["b"], ["c"]]
    assert certs.worker_hosts(["w{i},w{i}.svc", "10.0.0.{i}"], 2) == [["w0", "w0.svc", "10.0.0.0"],
                                                                      ["w1", "w1.svc", "10.0.0.1"]]
    for bad in (["a,b"], ["w{i},x"]):
        with pytest.raises(UsageError, match="one name per worker"):
            certs.worker_hosts(bad, 3)


def test_cli_init_and_its_usage_errors(tmp_path):
    r = cli("tls", "init", str(tmp_path / "t"), "--workers", "2", "--hosts", "10.1.0.5,db-2.example")
    assert r.returncode == 0, r.stderr
    assert "worker0.crt: 10.1.0.5, localhost, 127.0.0.1, ::1" in r.stdout
    assert "worker1.crt: db-2.example, localhost" in r.stdout
    r = cli("tls", "init", str(tmp_path / "u"), "--workers", "3", "--hosts", "a,b")
    assert r.returncode == 2 and "one name per worker" in one_error_line(r)
    r = cli("tls", "init", str(tmp_path / "t"), "--workers", "2")
    assert r.returncode == 2 and "exists" in one_error_line(r)


# -- the announcement, as plain objects ------------------------------------------------------
def test_check_tls_both_or_neither():
    challenge = ServerHandshake(b"t", 0).challenge()
    assert check_tls(challenge, "h:1", client_tls=False) is False
    assert check_tls(ServerHandshake.starttls(), "h:1", client_tls=True) is True
    with pytest.raises(TLSMismatch, match="worker at h:1 requires TLS, but this client does not use TLS"):
        check_tls(ServerHandshake.starttls(), "h:1", client_tls=False)
    with pytest.raises(TLSMismatch, match="worker at h:1 does not use TLS, but this client expects TLS"):
        check_tls(challenge, "h:1", client_tls=True)
    assert issubclass(TLSMismatch, HandshakeFailed)


# -- exact answers over TLS (real processes) -----------------------------------------------------
def write_case(d: Path, shards: list[np.ndarray]) -> np.ndarray:
    d.mkdir(parents=True)
    for i, s in enumerate(shards):
        np.save(d / f"s{i:02d}.npy", s.astype(np.int64))
    return np.concatenate(shards).astype(np.int64)


def test_local_tls_cluster_answers_exactly(tls3, tmp_path):
    """The API reads the TLS files from the cluster record, as `cluster up --tls` writes it."""
    c = Cluster(tls3, source="test")
    cases = {k: v for k, v in nasty_datasets().items()
             if k in ("int64 extremes", "extremes, even count", "dup split across shards", "all equal", "ties",
                      "many empty shards", "even count")}
    path, ref = shard_files(tmp_path / "unique-dup", 300_000, 7, seed=5)
    for name, shards in [("unique-dup", None), *cases.items()]:
        if shards is None:
            d = path
        else:
            d = tmp_path / name.replace(" ", "_").replace(",", "")
            values = np.sort(write_case(d, shards))
            n = len(values)
            ref = {"mode": ref_mode(values)[:2], "median": (int(values[(n - 1) // 2]), int(values[n // 2]))}
        m = c.mode(str(d))
        assert (m.value, m.count) == ref["mode"], name
        med = c.median(str(d))
        assert (med.lower, med.upper) == ref["median"], name
        assert 2 * med.value == med.lower + med.upper, name


def test_cli_over_tls_from_the_cluster_file(tls3, tmp_path):
    tls3.save(tmp_path / "cluster.json")
    path, ref = shard_files(tmp_path / "shards", 100_000, 5, seed=9)
    r = cli("submit", "mode", "--input", str(path), "--json", "--cluster-file", str(tmp_path / "cluster.json"),
            env={"CLUSTER_TLS_CERT": "", "CLUSTER_TLS_KEY": "", "CLUSTER_TLS_CA": ""})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["result"]
    assert (got["value"], got["count"]) == ref["mode"]


# -- refusals, each one line naming the address, and the cluster still serves ---------------------
def test_plain_client_against_tls_workers(tls3, tmp_path):
    path, _ = shard_files(tmp_path / "shards", 1000, 3, seed=1)
    r = cli("submit", "mode", "--input", str(path), env=env_for(tls3, None))
    assert r.returncode == 1
    line = one_error_line(r)
    assert f"worker at {tls3.workers[0]} requires TLS, but this client does not use TLS" in line, line
    r = cli("status", "--json", env=env_for(tls3, None))
    assert r.returncode == 1
    rows = json.loads(r.stdout)["workers"]
    assert all(not w["up"] and f"worker at {w['addr']} requires TLS" in w["error"] for w in rows), rows
    r = cli("status", env=env_for(tls3, TLSFiles.in_dir(Path(tls3.tls["ca"]).parent, "client")))
    assert r.returncode == 0, r.stdout + r.stderr


def test_tls_client_against_plain_workers(pki, tmp_path):
    info = launcher.start(2, "127.0.0.1", None, str(tmp_path / "logs"), "warning")
    try:
        path, ref = shard_files(tmp_path / "shards", 1000, 3, seed=1)
        r = cli("submit", "mode", "--input", str(path), env=env_for(info, TLSFiles.in_dir(pki / "ours", "client")))
        assert r.returncode == 1
        line = one_error_line(r)
        assert f"worker at {info.workers[0]} does not use TLS, but this client expects TLS" in line, line
        r = cli("submit", "mode", "--input", str(path), "--json", env=env_for(info, None))
        assert r.returncode == 0 and json.loads(r.stdout)["result"]["value"] == ref["mode"][0], r.stderr
    finally:
        launcher.stop(info)


def test_certificates_of_another_ca_are_refused_both_ways(tls3, pki, tmp_path):
    path, ref = shard_files(tmp_path / "shards", 2000, 3, seed=2)
    ours, other = pki / "ours", pki / "other"
    # the client does not trust the workers' CA
    r = cli("submit", "mode", "--input", str(path), env=env_for(tls3, TLSFiles.in_dir(other, "client")))
    assert r.returncode == 1
    line = one_error_line(r)
    assert f"worker at {tls3.workers[0]} has a certificate this client does not trust" in line, line
    # the client trusts them, but its own certificate comes from another CA: the workers refuse it
    stranger = TLSFiles(str(other / "client.crt"), str(other / "client.key"), str(ours / "ca.crt"))
    r = cli("submit", "mode", "--input", str(path), env=env_for(tls3, stranger))
    assert r.returncode == 1
    line = one_error_line(r)
    assert f"worker at {tls3.workers[0]} refused this client's certificate" in line, line
    # the cluster is unharmed: the right client gets the exact answer next
    r = cli("submit", "mode", "--input", str(path), "--json", env=env_for(tls3, TLSFiles.in_dir(ours, "client")))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["value"] == ref["mode"][0]


def test_token_is_still_checked_under_tls(tls3, pki, tmp_path):
    path, _ = shard_files(tmp_path / "shards", 1000, 3, seed=1)
    r = cli("submit", "mode", "--input", str(path),
            env=env_for(tls3, TLSFiles.in_dir(pki / "ours", "client"), token="not-the-token"))
    assert r.returncode == 1
    line = one_error_line(r)
    assert f"worker at {tls3.workers[0]} refused the handshake" in line and "CLUSTER_TOKEN" in line, line


def test_a_client_hello_sent_at_once_is_never_read_in_the_clear(pki, monkeypatch):
    """A worker announces TLS in the step that hands the socket to TLS, not in ``connection_made``.

    uvloop resumes reading after ``connection_made`` returns, whatever that method paused.
    When the announcement went out there, a client answering it before the worker's loop
    came back (another connection's work, the GIL) had its ClientHello read in the clear
    and the connection closed: ~1 handshake in 1,000 on loopback, a job or a peer link
    failing as "refused this client's certificate". Here the worker's loop is made slow
    to come back (50 ms), which made every handshake fail before the fix.
    """
    uvloop = pytest.importorskip("uvloop")
    from shardstats.worker.net.inbound import InboundConnection
    made = InboundConnection.connection_made

    def slow_to_come_back(self, transport):
        made(self, transport)
        time.sleep(0.05)

    monkeypatch.setattr(InboundConnection, "connection_made", slow_to_come_back)
    up, addr, loop = threading.Event(), [], []

    async def worker() -> None:
        servers, tasks = await _serve(1, pki / "ours")
        addr.append(servers[0].listen)
        loop.append((asyncio.get_running_loop(), servers[0]))
        up.set()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)

    thread = threading.Thread(target=uvloop.run, args=(worker(),), daemon=True)
    thread.start()
    assert up.wait(10)
    ctx = TLSFiles.in_dir(pki / "ours", "client").client_context()

    async def handshakes() -> list[str]:
        out = []
        for token in [TOKEN.encode()] * 5 + [b"not-the-token"] * 5:
            try:
                _, writer, _ = await client_connect(addr[0], token, "coord", -1, 5.0, max_frame=1 << 20, tls=ctx)
                writer.close()
                out.append("welcome")
            except HandshakeFailed:
                out.append("token refused")
            except (TLSError, ConnectionError, TimeoutError) as exc:
                out.append(f"lost: {exc}")
        return out

    try:
        assert asyncio.run(handshakes()) == ["welcome"] * 5 + ["token refused"] * 5
    finally:
        wloop, server = loop[0]
        wloop.call_soon_threadsafe(server.stop)
        thread.join(10)


def test_partial_or_missing_tls_settings_are_usage_errors(pki, tmp_path):
    ours = pki / "ours"
    base = ["worker", "--id", "0", "--listen", "127.0.0.1:0", "--peers", "127.0.0.1:0"]
    r = cli(*base, "--tls-cert", str(ours / "worker0.crt"), env={"CLUSTER_TOKEN": TOKEN})
    assert r.returncode == 2 and "lacks key, ca" in one_error_line(r)
    r = cli(*base, "--tls-cert", str(ours / "worker0.crt"), "--tls-key", str(ours / "worker1.key"),
            "--tls-ca", str(ours / "ca.crt"), env={"CLUSTER_TOKEN": TOKEN})
    assert r.returncode == 2 and "unusable certificate or key" in one_error_line(r)
    r = cli(*base, env={"CLUSTER_TOKEN": TOKEN, "CLUSTER_TLS_CERT": str(tmp_path / "nope.crt"),
                        "CLUSTER_TLS_KEY": str(ours / "worker0.key"), "CLUSTER_TLS_CA": str(ours / "ca.crt")})
    assert r.returncode == 2 and "nope.crt: no such TLS file" in one_error_line(r)


# -- in the test's loop: every link is TLS, and names are checked ---------------------------------
async def _serve(n: int, tls_dir: Path, host: str = "127.0.0.1") -> tuple[list[WorkerServer], list[asyncio.Task]]:
    addrs = [f"{host}:{p}" for p in launcher.free_ports(host, n)]
    servers = [WorkerServer(i, addrs[i], addrs, TOKEN.encode(), tls=TLSFiles.in_dir(tls_dir, f"worker{i}"))
               for i in range(n)]
    ready = [asyncio.Event() for _ in servers]
    tasks = [asyncio.create_task(s.serve(r)) for s, r in zip(servers, ready)]
    async with asyncio.timeout(10):
        for r in ready:
            await r.wait()
    return servers, tasks


async def _stop(servers, tasks) -> None:
    for s in servers:
        s.stop()
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)


async def test_every_peer_link_and_the_coordinator_link_are_tls_1_3(pki, tmp_path):
    path, ref = shard_files(tmp_path / "shards", 50_000, 6, seed=4)
    servers, tasks = await _serve(3, pki / "ours")
    try:
        client = TLSFiles.in_dir(pki / "ours", "client").client_context()
        rep = await run_job([s.peers[s.id] for s in servers], TOKEN.encode(),
                            job_spec("mode", str(path), {"ties": "smallest", "shuffle": "credit"}), tls=client)
        assert (rep.result["value"], rep.result["count"]) == ref["mode"]
        links = [link for s in servers for link in s.links.values()]
        assert len(links) == 6 and all(link._writer is not None for link in links)   # the shuffle used them all
        assert {link._writer.get_extra_info("ssl_object").version() for link in links} == {"TLSv1.3"}
        _, writer, wid = await client_connect(servers[1].peers[1], TOKEN.encode(), "coord", -1, tls=client)
        assert wid == 1 and writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert writer.get_extra_info("ssl_object").getpeercert()["subject"][-1] == \
            (("commonName", "shardstats worker 1"),)
        writer.close()
    finally:
        await _stop(servers, tasks)


async def test_a_name_missing_from_the_certificate_is_refused(pki):
    """Certificates name 127.0.0.1, not 127.0.0.2: a worker dialed there cannot prove who it is."""
    servers, tasks = await _serve(1, pki / "ours", host="127.0.0.2")
    try:
        addr = servers[0].peers[0]
        with pytest.raises(TLSError, match=f"worker at {addr} has a certificate that does not name 127.0.0.2"):
            await client_connect(addr, TOKEN.encode(), "coord", -1,
                                 tls=TLSFiles.in_dir(pki / "ours", "client").client_context())
        with pytest.raises(TLSMismatch, match="requires TLS"):          # and a plain peer cannot join
            await client_connect(addr, TOKEN.encode(), "peer", 1)
    finally:
        await _stop(servers, tasks)


def test_client_tls_settings_come_from_env_before_the_cluster_file(pki, monkeypatch):
    from shardstats.cluster.config import ClusterInfo
    info = ClusterInfo(workers=["h:1"], token="t", tls=TLSFiles.in_dir(pki / "ours", "client").as_dict())
    for k in ("CLUSTER_TLS_CERT", "CLUSTER_TLS_KEY", "CLUSTER_TLS_CA"):
        monkeypatch.delenv(k, raising=False)
    assert info.tls_files() == TLSFiles.in_dir(pki / "ours", "client")
    monkeypatch.setenv("CLUSTER_TLS_CERT", str(pki / "other" / "client.crt"))
    with pytest.raises(ConfigError, match="lacks key, ca"):
        info.tls_files()
    for k, f in (("CLUSTER_TLS_KEY", "client.key"), ("CLUSTER_TLS_CA", "ca.crt")):
        monkeypatch.setenv(k, str(pki / "other" / f))
    assert info.tls_files() == TLSFiles.in_dir(pki / "other", "client")
    assert ClusterInfo(workers=["h:1"], token="t").client_tls() is not None    # env alone is enough


# -- docker compose: docker-compose.tls.yml over docker-compose.yml ------------------------------
def _handshake_in_memory(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> str:
    """A TLS handshake between two contexts through memory buffers, the client asking for ``name``;
    returns the server's certificate's common name as the client saw it (ssl.SSLError if refused)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli_obj = client.wrap_bio(c_in, c_out, server_hostname=name)
    srv_obj = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for key, obj in (("c", cli_obj), ("s", srv_obj)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    return dict(x[0] for x in cli_obj.getpeercert()["subject"])["commonName"]


def test_compose_tls_file_gives_each_worker_its_own_certificate(tmp_path):
    import yaml
    from shardstats.tls import ENV
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "scripts"))
    import compose_netns as cn     # its compose interpolation, as tests/test_compose.py uses it
    base = yaml.safe_load((root / "docker-compose.yml").read_text())
    over = cn.interpolate(yaml.safe_load((root / "docker-compose.tls.yml").read_text()), {})
    assert set(over["services"]) == set(base["services"])
    # the certificates the file's own instructions make, where its default CLUSTER_TLS_DIR points
    r = cli("tls", "init", "tls", "--workers", "10", "--hosts", "worker{i}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    client = TLSFiles.in_dir(tmp_path / "tls", "client").client_context()
    for name, svc in over["services"].items():
        env = svc["environment"]
        assert set(env) == set(ENV.values()), name                     # what `cluster worker` reads
        mounted = {f"/run/secrets/{s['target']}": over["secrets"][s["source"]]["file"] for s in svc["secrets"]}
        files = {k: tmp_path / mounted[env[v]] for k, v in ENV.items()}   # env -> secret -> host file
        assert files["cert"].name == f"{name}.crt" and files["key"].name == f"{name}.key", (name, files)
        assert files["ca"].name == "ca.crt"
        server = TLSFiles(*(str(files[k]) for k in ("cert", "key", "ca"))).server_context()
        # peers dial it by the host name in --peers, the host by 127.0.0.1 (published ports)
        peers = base["services"][name]["command"][base["services"][name]["command"].index("--peers") + 1]
        host = [p.rsplit(":", 1)[0] for p in peers.split(",")][int(name.removeprefix("worker"))]
        for dialed in (host, "127.0.0.1"):
            assert _handshake_in_memory(server, client, dialed) == f"shardstats worker {name[6:]}"
        with pytest.raises(ssl.SSLCertVerificationError):          # but not another worker's name
            _handshake_in_memory(server, client, "worker10" if name == "worker1" else "worker1")
    # the base file is untouched by TLS: without the override it runs on plain TCP
    assert not any("TLS" in k for s in base["services"].values() for k in (s.get("environment") or {}))


async def test_silent_or_garbage_speakers_after_the_announcement_are_dropped_and_the_worker_serves_on(pki):
    """The handshake deadline covers TLS too (slowloris), and clear bytes where a ClientHello belongs end the
    connection; neither touches the next client."""
    from shardstats.protocol.frames import FrameDecoder
    from shardstats.settings import Settings
    addrs = [f"127.0.0.1:{p}" for p in launcher.free_ports("127.0.0.1", 1)]
    server = WorkerServer(0, addrs[0], addrs, TOKEN.encode(), settings=Settings(handshake_timeout=0.5),
                          tls=TLSFiles.in_dir(pki / "ours", "worker0"))
    ready = asyncio.Event()
    task = asyncio.create_task(server.serve(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        loop = asyncio.get_running_loop()
        for payload in (b"", b"\x00\x00\x00\x10" + b"x" * 16):      # silence; a plain frame instead of TLS
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            assert FrameDecoder().feed(await asyncio.wait_for(r.read(64), 5)) == [ServerHandshake.starttls()]
            w.write(payload)
            t0 = loop.time()
            assert await asyncio.wait_for(r.read(1 << 16), 5) == b""          # closed by the worker
            assert loop.time() - t0 < 3
            w.close()
        _, w, wid = await client_connect(addrs[0], TOKEN.encode(), "coord", -1,
                                         tls=TLSFiles.in_dir(pki / "ours", "client").client_context())
        assert wid == 0
        w.close()
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
