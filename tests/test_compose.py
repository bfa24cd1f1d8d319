"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Static checks read both files (and pyproject.toml) directly.  The `netns` tests run the
compose file for real with scripts/compose_netns.py (the compose front-end of the
shared netns runner): one network namespace per service,
service names resolved through /etc/netns hosts files, the volume bind-mounted at its
container path, each service's command run as the image's user, ports published on
127.0.0.1, then `cluster submit mode|median --input shards/` from the host side, compared
with numpy.  Copies of the file broken on purpose (a wrong flag, a wrong peer hostname, a
wrong volume path, a missing variable) must fail with a message that says what is wrong.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from shardstats import reference
import pytest

from scripts import compose_netns as cn
from shardstats.cluster.gen import generate, write_shards
from tests.netns_beds import tracked_beds

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = [f"worker{i}" for i in range(10)]
TOKEN = "compose-test-token-0123456789abcdef"

_OK, _WHY = cn.available()
needs_netns = pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_WHY}")


def raw_compose(text: str | None = None) -> dict:
    import yaml
    return yaml.safe_load(text if text is not None else COMPOSE.read_text())


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- static: the Dockerfile ------------------------------------------------------------
def test_dockerfile_base_user_entrypoint_and_install():
    img = cn.parse_dockerfile(DOCKERFILE)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", img.base), img.base
    uid, _ = cn.uid_gid(img.user)
    assert uid != 0, f"USER {img.user} runs as root"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert img.entrypoint and img.entrypoint[0] in scripts, (img.entrypoint, scripts)
    assert any(re.search(r"\bpip install (\S+ )*\"?\.(\[[\w,]+\])?\"?(\s|$)", r) for r in img.runs), img.runs
    assert "7000" in img.expose


def test_dockerfile_copies_everything_pip_install_needs():
    """Every package setuptools is told to build, and the readme pyproject names, reach the image."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", meta["project"]["readme"], *meta["tool"]["setuptools"]["package-dir"].values()}
    copied = {s.rstrip("/") for c in cn.parse_dockerfile(DOCKERFILE).copies for s in c[:-1]}
    assert needed <= copied, needed - copied
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert not needed & ignored
    assert {".git", ".venv", "bench-data", "shards"} <= ignored


# -- static: the compose file ----------------------------------------------------------
def _project_in(text: str, d: Path) -> cn.Project:
    """The file as the emulation resolves it, in a scratch project directory (with an empty ./shards)."""
    (d / "docker-compose.yml").write_text(text)
    shutil.copy(DOCKERFILE, d / "Dockerfile")
    (d / "shards").mkdir(exist_ok=True)
    return cn.load_project(d / "docker-compose.yml", {"CLUSTER_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _project_in(COMPOSE.read_text(), tmp_path_factory.mktemp("compose-static"))


def test_ten_workers_with_ids_peers_and_root(project):
    assert [s.name for s in project.services] == SERVICES
    for i, s in enumerate(project.services):
        assert s.argv[:2] == ["cluster", "worker"], s.argv
        assert option(s.argv, "--id") == str(i)
        peers = option(s.argv, "--peers").split(",")
        hosts = [p.rsplit(":", 1)[0] for p in peers]
        assert set(hosts) <= set(SERVICES), f"{s.name}: peers {set(hosts) - set(SERVICES)} are not services"
        assert hosts == SERVICES, f"{s.name}: --peers must list every service in id order"
        listen_port = option(s.argv, "--listen").rsplit(":", 1)[1]
        assert all(p.endswith(":" + listen_port) for p in peers)
        assert [p.target for p in s.ports] == [int(listen_port)]


def test_ports_are_published_on_loopback_only(project):
    raw = raw_compose()
    for name, svc in raw["services"].items():
        for p in svc["ports"]:
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    assert all(p.host_ip == "127.0.0.1" for s in project.services for p in s.ports)
    assert not project.warnings


def test_default_ports_are_what_the_readme_tells_the_host(project):
    assert [p.published for s in project.services for p in s.ports] == list(range(7000, 7010))
    workers = ",".join(f"127.0.0.1:{p}" for p in range(7000, 7010))
    assert f"CLUSTER_WORKERS={workers}" in (ROOT / "README.md").read_text()


def test_token_comes_from_the_environment_only(project):
    assert "CLUSTER_TOKEN: ${CLUSTER_TOKEN:?" in COMPOSE.read_text()
    assert "CLUSTER_TOKEN" not in DOCKERFILE.read_text()
    assert all(s.environment["CLUSTER_TOKEN"] == TOKEN for s in project.services)
    for name, svc in raw_compose()["services"].items():   # no literal token anywhere
        assert all("${" in str(v) for k, v in (svc.get("environment") or {}).items() if "TOKEN" in k), name
        assert not any("--token" == a for a in svc["command"]), name


def test_shards_volume_is_read_only_under_root(project):
    for s in project.services:
        root = option(s.argv, "--root")
        assert [(v.target, v.read_only) for v in s.volumes] == [(f"{root}/shards", True)], s.name
        assert [v.source.name for v in s.volumes] == ["shards"]


def test_healthcheck_and_restart_policy():
    for name, svc in raw_compose()["services"].items():
        assert svc["restart"] == "unless-stopped", name
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and "curl" not in " ".join(test), name


def test_interpolation_forms():
    env = {"A": "1", "E": ""}
    assert cn.interpolate("${A}-${A:-x}-${E:-d}-${E-d}-${U-d}-$A-$$A", env) == "1-1-d--d-1-$A"
    assert cn.interpolate("${A:+yes}${E:+no}${E+set}", env) == "yesset"
    with pytest.raises(cn.ComposeError, match="required variable E is missing a value: say E"):
        cn.interpolate("${E:?say E}", env, "x")
    assert cn.interpolate("${E?unset only}", env) == ""
    warnings: list[str] = []
    assert cn.interpolate({"k": ["${NOPE}"]}, env, "s", warnings) == {"k": [""]} and "NOPE" in warnings[0]


def test_loader_reads_the_other_compose_forms(tmp_path):
    """Long-syntax ports and volumes, env_file, list environment, string command, CMD-SHELL, .env, $$."""
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim AS build\nUSER root\nFROM python:3.11-slim\n"
                                         "ENV A=1 B=\"two words\"\nWORKDIR /app\nWORKDIR sub\nUSER 123\n"
                                         "ENTRYPOINT [\"tini\", \"--\"]\nCMD [\"serve\"]\n")
    (tmp_path / "vol").mkdir()
    (tmp_path / "svc.env").write_text("# comment\nexport C=3\nD='quoted # not a comment'\n")
    (tmp_path / ".env").write_text("PUB=7100\nHIDDEN=from-dotenv\n")
    (tmp_path / "docker-compose.yml").write_text("""
services:
  one:
    build: {context: ., dockerfile: Dockerfile}
    command: run --flag "a b" $$HOME
    env_file: svc.env
    environment: [E=5, FROM_SHELL, NOT_SET]
    ports: [{target: 80, published: "${PUB}", host_ip: 127.0.0.1}, "9000"]
    volumes: [{type: bind, source: ./vol, target: /srv/v, read_only: true}, "./vol:/w"]
    healthcheck: {test: "exit 0", interval: 1m30s, timeout: 500ms, retries: 2}
  two:
    build: .
    entrypoint: ["/bin/x"]
    user: "0"
""")
    proj = cn.load_project(tmp_path / "docker-compose.yml", {"FROM_SHELL": "sh", "HIDDEN": "shell wins"})
    one, two = proj.services
    assert one.argv == ["tini", "--", "run", "--flag", "a b", "$HOME"]
    assert one.environment == {"A": "1", "B": "two words", "C": "3", "D": "quoted # not a comment", "E": "5",
                               "FROM_SHELL": "sh"}
    assert [(p.host_ip, p.published, p.target) for p in one.ports] == [("127.0.0.1", 7100, 80), ("0.0.0.0", 0, 9000)]
    assert [(v.target, v.read_only) for v in one.volumes] == [("/srv/v", True), ("/w", False)]
    assert one.health is not None and one.health.test == ["/bin/sh", "-c", "exit 0"]
    assert (one.health.interval, one.health.timeout, one.health.retries) == (90.0, 0.5, 2)
    assert (one.uid, one.gid, one.workdir) == (123, 123, "/app/sub")
    assert proj.env["HIDDEN"] == "shell wins"
    assert two.argv == ["/bin/x"] and (two.uid, two.gid) == (0, 0)
    assert any("9000 on 0.0.0.0" in w for w in proj.warnings)


def test_unknown_service_key_is_rejected(tmp_path):
    text = COMPOSE.read_text().replace("  worker4:\n    <<: *worker\n    command:", "  worker4:\n    <<: *worker\n"
                                       "    comand:", 1)
    with pytest.raises(cn.ComposeError, match="worker4 additional property 'comand'"):
        _project_in(text, tmp_path)


# -- the real run ------------------------------------------------------------------------
def make_dir(tmp: Path, text: str, rows: int, seed: int = 3) -> np.ndarray:
    """A compose project directory: the (possibly broken) file, the Dockerfile, ./shards."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "docker-compose.yml").write_text(text)
    shutil.copy(DOCKERFILE, tmp / "Dockerfile")
    parts = generate(rows, 10, "unique-dup", seed)
    write_shards(parts, tmp / "shards", "npy")
    return np.concatenate(parts)


def env_for(path: Path, **extra: str) -> dict[str, str]:
    """The user's shell: the token, and a free published port for every port variable (never fixed)."""
    return {"CLUSTER_TOKEN": TOKEN, **cn.free_port_env(path), **extra}


@pytest.fixture
def beds(monkeypatch):
    """The beds a test builds; afterwards none of their processes, namespaces, links or files exist."""
    yield from tracked_beds(monkeypatch, cn.ComposeBed)


def run_broken(tmp_path: Path, text: str, env: dict | None = None, rows: int = 20_000) -> str:
    """Runs a broken copy of the file (small data, short deadlines); returns the error it failed with."""
    make_dir(tmp_path, text, rows)
    with pytest.raises((cn.BedError, cn.ComposeError)) as info:
        proj = cn.load_project(tmp_path / "docker-compose.yml", env or env_for(tmp_path / "docker-compose.yml"))
        cn.run_project(proj, ("mode",), ready_timeout=180, job_timeout=60, log_dir=str(tmp_path / "logs"))
    return str(info.value)


@pytest.mark.netns
@needs_netns
def test_compose_file_runs_mode_and_median_exactly(tmp_path, beds):
    values = make_dir(tmp_path, COMPOSE.read_text(), 200_000)
    proj = cn.load_project(tmp_path / "docker-compose.yml", env_for(tmp_path / "docker-compose.yml"))
    assert not proj.warnings
    with cn.ComposeBed(proj, log_dir=str(tmp_path / "logs"), ready_timeout=180) as bed:
        # each service runs as the image's non-root user
        for p in bed.procs:
            uids = next(ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ln.startswith("Uid"))
            assert uids.split()[1:] == ["10001"] * 4, uids
        mode = cn.submit(bed, "mode", "shards/", timeout=60)
        median = cn.submit(bed, "median", "shards/", timeout=60)
    assert mode.returncode == 0, mode.stderr
    assert median.returncode == 0, median.stderr
    want = reference.mode(values)
    got = mode.document["result"]
    assert (got["value"], got["count"]) == (want["value"], want["count"]) and got["count"] == 2
    want = reference.median(values)
    lo, hi = want["lower"], want["upper"]
    got = median.document["result"]
    assert (got["lower"], got["upper"]) == (lo, hi) and 2 * got["value"] == lo + hi
    assert mode.document["stats"]["values"] == median.document["stats"]["values"] == len(values)
    assert mode.document["stats"]["workers"] == 10


@pytest.mark.netns
@needs_netns
def test_script_cli_runs_the_file(tmp_path):
    """`compose_netns.py run -f FILE --free-ports` as the README shows it: exit 0, both answers checked."""
    make_dir(tmp_path, COMPOSE.read_text(), 50_000)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "compose_netns.py"), "run", "-f",
                        str(tmp_path / "docker-compose.yml"), "--free-ports", "--random-token",
                        "--log-dir", str(tmp_path / "logs")],
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("matches numpy") == 2, r.stderr


# -- broken on purpose -------------------------------------------------------------------
WORKER3 = '    command: [worker, --id, "3", --listen, "0.0.0.0:7000", --peers, *peers, --root, /data]'


def broken(old: str, new: str, count: int = 1) -> str:
    text = COMPOSE.read_text()
    assert text.count(old) == count, f"{old!r} is not in the compose file {count} time(s)"
    return text.replace(old, new)


@pytest.mark.netns
@needs_netns
def test_break_wrong_flag_in_one_service(tmp_path, beds):
    text = broken(WORKER3, WORKER3.replace("--root", "--rot"))
    msg = run_broken(tmp_path, text)
    assert "service worker3 exited with status 2" in msg and "No such option '--rot'" in msg, msg


@pytest.mark.netns
@needs_netns
def test_break_wrong_peer_hostname(tmp_path, beds):
    peers = ",".join(f"{'wroker' if i == 5 else 'worker'}{i}:7000" for i in range(10))
    text = broken(WORKER3, WORKER3.replace("*peers", f'"{peers}"'))
    msg = run_broken(tmp_path, text, rows=200_000)       # over one chunk: the shuffle uses every link (no tree)
    assert "cluster submit mode failed (status 1)" in msg and "worker 3 lost worker 5" in msg, msg
    assert "wroker5:7000" in msg, msg


@pytest.mark.netns
@needs_netns
def test_break_wrong_volume_container_path(tmp_path, beds):
    text = broken("./shards:/data/shards:ro", "./shards:/srv/shards:ro")
    msg = run_broken(tmp_path, text)
    assert "cluster submit mode failed (status 2)" in msg and "/data/shards/shard-" in msg, msg


@pytest.mark.netns
@needs_netns
def test_break_missing_token_variable_in_services(tmp_path, beds):
    text = broken("  environment:\n    CLUSTER_TOKEN: ${CLUSTER_TOKEN:?set CLUSTER_TOKEN to the cluster's shared "
                  "secret}\n", "")
    msg = run_broken(tmp_path, text)
    assert re.search(r"service worker\d exited with status 2", msg) and "no cluster token" in msg, msg


def test_break_token_unset_in_the_shell(tmp_path):
    """Like `docker compose up` without CLUSTER_TOKEN exported: refused before anything starts."""
    make_dir(tmp_path, COMPOSE.read_text(), 100)
    with pytest.raises(cn.ComposeError, match="required variable CLUSTER_TOKEN is missing a value"):
        cn.load_project(tmp_path / "docker-compose.yml", cn.free_port_env(tmp_path / "docker-compose.yml"))


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_nothing(tmp_path, sig):
    """Ctrl-C or SIGTERM while services run (their healthcheck never passes): everything is removed."""
    text = broken("""    test: ["CMD", "python", "-c", "import socket; socket.create_connection(('127.0.0.1', 7000), """
                  """timeout=2).close()"]""", """    test: ["CMD", "false"]""")
    make_dir(tmp_path, text, 1000)
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "compose_netns.py"), "run", "-f",
                              str(tmp_path / "docker-compose.yml"), "--free-ports", "--random-token",
                              # Far beyond the test's own wait: the signal, not this timeout, must end the run
                              # (a fresh clone's workers, as uid 10001, compile every module at start-up).
                              "--ready-timeout", "600", "--log-dir", str(tmp_path / "logs")],
                             stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL)
    prefix = None
    try:
        deadline = time.monotonic() + 180
        listening = 0
        while time.monotonic() < deadline and listening < 10 and p.poll() is None:
            time.sleep(0.2)
            listening = sum("worker_listening" in f.read_text() for f in (tmp_path / "logs").glob("*.log"))
        assert listening == 10, err.read_text()
        prefix = re.search(r"namespaces (sbed\d+-)h0", err.read_text()).group(1)
        p.send_signal(sig)
        assert p.wait(60) == 130, err.read_text()
    finally:
        if p.poll() is None:
            p.kill()          # it did not stop on the signal: the test fails, but leaves nothing behind
            p.wait()
            if prefix is not None:
                cn.cleanup(prefix)    # only this run's bed: others may be running beds
    assert cn.testbed.leftovers(prefix) == {"namespaces": [], "links": [], "pids": []}
    assert not list(Path("/etc/netns").glob(f"{prefix}*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"{prefix}root-*"))
    assert "torn down" in err.read_text()


def test_workers_expose_the_metrics_port_and_the_commented_prometheus_scrapes_every_one(project):
    """The commented Prometheus service, uncommented as its comment says, is valid YAML whose scrape
    targets are every service at its HTTP port (--listen's port + http_port_offset, the worker's default)."""
    from shardstats.settings import DEFAULTS
    raw = raw_compose()
    lines = COMPOSE.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("#  prometheus:"))
    block = [ln[1:] for ln in lines[start:] if ln.startswith("#")]
    uncommented = "\n".join(lines[:start] + block) + "\n"
    doc = raw_compose(uncommented)
    assert set(doc["services"]) == {*SERVICES, "prometheus"}
    prom = yaml_load(doc["configs"]["prometheus"]["content"])
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    want = []
    for s in project.services:
        port = int(option(s.argv, "--listen").rsplit(":", 1)[1]) + DEFAULTS.http_port_offset
        assert "--no-http" not in s.argv and "--http-port" not in s.argv
        assert [str(port)] == raw["services"][s.name]["expose"]
        want.append(f"{s.name}:{port}")
    assert targets == want
    assert doc["services"]["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert str(8000) in cn.parse_dockerfile(DOCKERFILE).expose


def yaml_load(text: str):
    import yaml
    return yaml.safe_load(text)
