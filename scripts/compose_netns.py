#!/usr/bin/env python3
"""Runs docker-compose.yml without Docker: one network namespace per service, then a real job against it.

No Docker engine runs on the machines this project is tested on, yet a typo in the
compose file (a wrong flag, a peer hostname that does not resolve, a volume mounted at
the wrong path, a missing variable) should fail a test, not a user.  So this script does
what ``docker compose up`` would do with the parts of the file that matter here:

* reads the file with PyYAML (anchors and ``<<`` merge keys), interpolates ``$VAR``,
  ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
  ``${VAR:+alt}``, ``${VAR+alt}`` and ``$$`` from the environment (over ``.env`` next to
  the file), and rejects service keys compose does not know (``comand:``) or that this
  emulation does not model;
* reads the Dockerfile of each service's ``build`` for ENTRYPOINT, CMD, USER, WORKDIR and
  ENV;
* builds a bed of hosts with ``scripts/testbed.py`` (namespaces ``sbed<n>-h<i>`` on a
  bridge, 10.77.<n>.0/24), one host per service, and writes ``/etc/netns/<ns>/hosts`` so
  every service name resolves to its host's address in every namespace (and an empty
  ``resolv.conf``, so a name that is not a service fails at once, as it would on a compose
  network without outside DNS);
* starts each service as ``ip netns exec <ns> sh -c SETUP`` where SETUP, inside the private
  mount namespace ``ip netns exec`` gives, mounts a tmpfs as a new root, bind-mounts the
  host's top-level directories into it (so the venv and Python are there), creates the
  image's directories (the WORKDIR, volume targets) in the tmpfs, bind-mounts each
  volume (read-only when ``:ro``), then ``chroot``s and drops to the Dockerfile's USER
  (numeric uid; ``setpriv``) in the WORKDIR and execs ENTRYPOINT + ``command`` with the
  service's ``environment``/``env_file``.  Nothing is created on the host's filesystem
  except one empty temporary directory (the mount point) and the ``/etc/netns`` files.
  Where the image has ``cluster`` and ``python`` on its PATH, the venv's ``bin`` is first
  on the service's PATH;
* publishes each service's ``ports`` on 127.0.0.1 in the root namespace (an asyncio TCP
  forwarder in a thread; socat is not needed), waits until every service's healthcheck
  command (run inside its namespace and root, as the service's user) succeeds, and fails
  with the service's log when one exits or never gets healthy;
* runs ``cluster submit mode|median --input shards/ --json`` from the root namespace, in the
  compose file's directory, with ``CLUSTER_WORKERS`` = the published addresses and
  ``CLUSTER_TOKEN`` from the environment, exactly as the README tells users, and compares
  the answers with numpy on the host's copy of the shards.

Everything (processes, namespaces, links, bridge, forwarder, /etc/netns files, the mount
point) is removed on exit, on errors, on Ctrl-C and on SIGTERM.  Needs root.

    export CLUSTER_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    .venv/bin/cluster gen --out shards --rows 1000000
    sudo -E .venv/bin/python scripts/compose_netns.py run                 # ports 7000-7009 as in the file
    sudo -E .venv/bin/python scripts/compose_netns.py run --free-ports    # every ${VAR} in `ports` -> a free port
    sudo .venv/bin/python scripts/compose_netns.py cleanup                # leftovers of a killed run
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePosixPath

import yaml

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for _p in (str(REPO), str(SCRIPTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import testbed  # noqa: E402
from testbed import BedError, LinkShape, TestBed  # noqa: E402
from shardstats.errors import InputError  # noqa: E402

VENV_BIN = Path(sys.executable).parent        # where `cluster` and `python` come from (the image's PATH)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOBODY = 65534


class ComposeError(Exception):
    """The compose file (or its Dockerfile) is wrong or uses something this emulation does not model."""


# -- interpolation -------------------------------------------------------------
_VAR = re.compile(r"""\$(?:(?P<escaped>\$)
                          |(?P<named>[_A-Za-z][_A-Za-z0-9]*)
                          |\{(?P<braced>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}
                          |(?P<invalid>))""", re.X)


def interpolate(value, env: dict[str, str], where: str = "", warnings: list[str] | None = None):
    """``value`` with compose's variable forms substituted (recursively; returns new objects).

    Unset variables without a default become "" with a warning, as compose does.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k), warnings) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]", warnings) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise ComposeError(f"invalid interpolation format for {where}: {value!r} "
                               f"(write $$ for a literal dollar sign)")
        name = m.group("named") or m.group("braced")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        unset, empty = val is None, not val
        if op in (":-", "-"):
            return arg if (empty if op == ":-" else unset) else val  # type: ignore[return-value]
        if op in (":?", "?"):
            if empty if op == ":?" else unset:
                raise ComposeError(f"error while interpolating {where}: required variable {name} is missing a "
                                   f"value: {arg or name}")
            return val  # type: ignore[return-value]
        if op in (":+", "+"):
            return ("" if (empty if op == ":+" else unset) else arg)
        if unset and warnings is not None:
            warnings.append(f'the "{name}" variable is not set; defaulting to a blank string ({where})')
        return val or ""
    return _VAR.sub(sub, value)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments, blank lines, ``export``, quotes) as compose's env_file and .env read them."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ComposeError(f"env file {path} not found: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[7:].lstrip()
        key, eq, val = s.partition("=")
        key = key.strip()
        if not re.fullmatch(r"[_A-Za-z][_A-Za-z0-9.]*", key):
            raise ComposeError(f"{path}:{n}: bad line {line!r} (expected KEY=VALUE)")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        elif " #" in val:
            val = val.split(" #", 1)[0].rstrip()
        out[key] = val if eq else os.environ.get(key, "")
    return out


# -- the Dockerfile ----------------------------------------------------------------
@dataclass
class Image:
    """What a running container takes from its Dockerfile (the last stage)."""
    base: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = "root"
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    expose: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf.strip():
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(arg: str) -> list[str]:
    """ENTRYPOINT/CMD: the JSON (exec) form, or the shell form as ``/bin/sh -c``."""
    if arg.startswith("["):
        try:
            v = json.loads(arg)
        except ValueError:
            raise ComposeError(f"bad JSON array {arg!r} in the Dockerfile") from None
        if not all(isinstance(x, str) for x in v):
            raise ComposeError(f"bad exec form {arg!r} in the Dockerfile")
        return v
    return ["/bin/sh", "-c", arg]


def parse_dockerfile(path: Path) -> Image:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ComposeError(f"{path}: cannot read the Dockerfile ({exc.strerror})") from None
    img = Image()
    for word, arg in dockerfile_instructions(text):
        if word == "FROM":
            img = Image(base=arg.split()[0])          # a new stage starts from scratch (multi-stage builds)
        elif word == "ENTRYPOINT":
            img.entrypoint = _exec_form(arg)
            img.cmd = []                              # as Docker does: a new ENTRYPOINT resets CMD
        elif word == "CMD":
            img.cmd = _exec_form(arg)
        elif word == "USER":
            img.user = arg
        elif word == "WORKDIR":
            img.workdir = str(PurePosixPath(img.workdir) / arg)
        elif word == "ENV":
            parts = shlex.split(arg)
            if parts and "=" not in parts[0]:         # legacy `ENV KEY value`
                img.env[parts[0]] = " ".join(parts[1:])
            else:
                img.env.update(p.split("=", 1) for p in parts)  # type: ignore[arg-type]
        elif word == "EXPOSE":
            img.expose += arg.split()
        elif word == "RUN":
            img.runs.append(arg)
        elif word in ("COPY", "ADD"):
            img.copies.append([a for a in shlex.split(arg) if not a.startswith("--")])
    return img


def uid_gid(user: str) -> tuple[int, int]:
    """A Dockerfile USER as numbers: numeric forms as written, root as 0, other names as nobody."""
    name, _, group = user.partition(":")
    if name in ("", "root", "0"):
        return 0, 0 if not group or group in ("root", "0") else NOBODY
    uid = int(name) if name.isdigit() else NOBODY
    gid = int(group) if group.isdigit() else (uid if not group else NOBODY)
    return uid, gid


# -- the compose file ----------------------------------------------------------------
EMULATED = {"build", "image", "command", "entrypoint", "environment", "env_file", "ports", "volumes",
            "healthcheck", "user", "working_dir"}
NO_EFFECT_HERE = {"restart", "depends_on", "init", "stop_grace_period", "stop_signal", "labels", "logging",
                  "container_name", "deploy", "ulimits", "cap_drop", "cap_add", "security_opt", "read_only",
                  "mem_limit", "mem_reservation", "cpus", "cpu_shares", "pids_limit", "tty", "stdin_open",
                  "expose", "pull_policy", "platform", "annotations", "oom_score_adj", "shm_size"}
NOT_EMULATED = {"attach", "blkio_config", "cgroup", "cgroup_parent", "configs", "cpu_count", "cpu_percent",
                "cpu_quota", "cpu_period", "cpu_rt_period", "cpu_rt_runtime", "cpuset", "credential_spec",
                "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
                "extends", "external_links", "extra_hosts", "gpus", "group_add", "hostname", "ipc", "isolation",
                "label_file", "links", "mac_address", "mem_swappiness", "memswap_limit", "network_mode",
                "networks", "oom_kill_disable", "pid", "post_start", "pre_stop", "privileged", "profiles",
                "provider", "runtime", "scale", "secrets", "storage_opt", "sysctls", "tmpfs", "userns_mode",
                "uts", "volumes_from"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}


@dataclass
class Port:
    host_ip: str
    published: int
    target: int


@dataclass
class Volume:
    source: Path
    target: str
    read_only: bool


@dataclass
class Health:
    test: list[str]                   # argv to run inside the service
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass
class Service:
    name: str
    argv: list[str]                   # entrypoint + command, as the container runs it
    environment: dict[str, str]
    ports: list[Port]
    volumes: list[Volume]
    health: Health | None
    uid: int
    gid: int
    workdir: str
    image: Image


@dataclass
class Project:
    path: Path
    services: list[Service]
    env: dict[str, str]               # what interpolation saw (the shell's environment over .env)
    warnings: list[str]

    @property
    def directory(self) -> Path:
        return self.path.parent

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


def _duration(v, where: str) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    total, pos, s = 0.0, 0, str(v).strip()
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ComposeError(f"{where}: bad duration {v!r} (e.g. 10s, 1m30s, 500ms)")
    return total


def _argv(v, where: str) -> list[str]:
    if isinstance(v, str):
        return shlex.split(v)
    if isinstance(v, list) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v):
        return [str(x) for x in v]
    raise ComposeError(f"{where} must be a string or a list of strings")


def _environment(raw, directory: Path, shell: dict[str, str], where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    files = raw.get("env_file") or []
    for f in [files] if isinstance(files, (str, dict)) else files:
        path, required = (f, True) if isinstance(f, str) else (f.get("path"), f.get("required", True))
        p = (directory / path).resolve()
        if p.exists() or required:
            env.update(read_env_file(p))
    e = raw.get("environment") or {}
    if isinstance(e, list):
        for item in e:
            k, eq, v = str(item).partition("=")
            if eq:
                env[k] = v
            elif k in shell:
                env[k] = shell[k]
    elif isinstance(e, dict):
        for k, v in e.items():
            if v is None:
                if k in shell:
                    env[k] = shell[k]
            elif isinstance(v, (str, int, float, bool)):
                env[k] = str(v).lower() if isinstance(v, bool) else str(v)
            else:
                raise ComposeError(f"{where}.environment.{k} must be a string, number or boolean")
    else:
        raise ComposeError(f"{where}.environment must be a mapping or a list")
    return env


def _ports(raw, where: str) -> list[Port]:
    out = []
    for i, p in enumerate(raw or []):
        w = f"{where}.ports[{i}]"
        if isinstance(p, dict):
            if p.get("protocol", "tcp") != "tcp":
                raise ComposeError(f"{w}: only tcp ports are emulated")
            try:
                out.append(Port(str(p.get("host_ip", "0.0.0.0")), int(p.get("published") or 0), int(p["target"])))
            except (KeyError, ValueError):
                raise ComposeError(f"{w}: needs an integer target (and published)") from None
            continue
        s = str(p)
        s, _, proto = s.partition("/")
        if proto not in ("", "tcp"):
            raise ComposeError(f"{w}: only tcp ports are emulated")
        parts = s.rsplit(":", 2)
        if len(parts) == 3:
            ip, pub, tgt = parts
        elif len(parts) == 2:
            ip, (pub, tgt) = "0.0.0.0", parts
        else:
            ip, pub, tgt = "0.0.0.0", "", parts[0]
        if not tgt.isdigit() or (pub and not pub.isdigit()):
            raise ComposeError(f"{w}: bad port {p!r} (expected [IP:]HOST:CONTAINER, no ranges)")
        out.append(Port(ip.strip("[]") or "0.0.0.0", int(pub) if pub else 0, int(tgt)))
    return out


def _volumes(raw, directory: Path, where: str) -> list[Volume]:
    out = []
    for i, v in enumerate(raw or []):
        w = f"{where}.volumes[{i}]"
        if isinstance(v, dict):
            if v.get("type") != "bind":
                raise ComposeError(f"{w}: only bind mounts are emulated (type: bind)")
            src, tgt, ro = str(v.get("source", "")), str(v.get("target", "")), bool(v.get("read_only"))
        else:
            parts = str(v).split(":")
            if len(parts) == 2:
                (src, tgt), mode = parts, ""
            elif len(parts) == 3:
                src, tgt, mode = parts
            else:
                raise ComposeError(f"{w}: bad volume {v!r} (expected SOURCE:TARGET[:ro])")
            opts = set(mode.split(",")) - {""}
            if opts - {"ro", "rw", "z", "Z"}:
                raise ComposeError(f"{w}: unknown volume option(s) {sorted(opts - {'ro', 'rw', 'z', 'Z'})}")
            ro = "ro" in opts
        if not src.startswith(("/", "./", "../", "~", ".")):
            raise ComposeError(f"{w}: named volume {src!r} is not emulated (use a host path: ./dir)")
        if not tgt.startswith("/"):
            raise ComposeError(f"{w}: the container path {tgt!r} must be absolute")
        source = (directory / os.path.expanduser(src)).resolve()
        if not source.exists():
            raise ComposeError(f"{w}: the host path {source} does not exist")
        out.append(Volume(source, str(PurePosixPath(tgt)), ro))
    return out


def _health(raw, where: str) -> Health | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ComposeError(f"{where}.healthcheck must be a mapping")
    if raw.get("disable"):
        return None
    test = raw.get("test")
    if isinstance(test, str):
        argv = ["/bin/sh", "-c", test]
    elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"):
        if test[0] == "NONE":
            return None
        argv = [str(x) for x in test[1:]] if test[0] == "CMD" else ["/bin/sh", "-c", " ".join(map(str, test[1:]))]
    else:
        raise ComposeError(f"{where}.healthcheck.test must be a string or a list starting with CMD, CMD-SHELL "
                           f"or NONE")
    if not argv:
        raise ComposeError(f"{where}.healthcheck.test has no command")
    h = Health(argv)
    for key in ("interval", "timeout", "start_period"):
        if key in raw:
            setattr(h, key, _duration(raw[key], f"{where}.healthcheck.{key}"))
    if "retries" in raw:
        h.retries = int(raw["retries"])
    return h


def load_project(path: str | os.PathLike, env: dict[str, str] | None = None) -> Project:
    """The compose file as this emulation runs it; raises ComposeError with compose-like messages."""
    path = Path(path).resolve()
    directory = path.parent
    shell = dict(os.environ if env is None else env)
    dotenv = directory / ".env"
    ienv = {**(read_env_file(dotenv) if dotenv.is_file() else {}), **shell}
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ComposeError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise ComposeError(f"{path}: no services")
    for key in doc:
        if not (key in ("services", "name", "version") or str(key).startswith("x-")):
            raise ComposeError(f"{path}: top-level {key!r} is not emulated")
    warnings: list[str] = []
    services_raw = interpolate(doc["services"], ienv, "services", warnings)
    images: dict[Path, Image] = {}
    services = []
    for name, raw in services_raw.items():
        where = f"services.{name}"
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", str(name)):
            raise ComposeError(f"{where}: invalid service name")
        if not isinstance(raw, dict):
            raise ComposeError(f"{where} must be a mapping")
        for key in raw:
            if str(key).startswith("x-"):
                continue
            if key in NOT_EMULATED:
                raise ComposeError(f"{where}.{key} is valid compose but not emulated by compose_netns")
            if key not in EMULATED | NO_EFFECT_HERE:
                raise ComposeError(f"{where} additional property {key!r} is not allowed")
        if "restart" in raw and str(raw["restart"]).split(":")[0] not in RESTART:
            raise ComposeError(f"{where}.restart: invalid policy {raw['restart']!r}")
        build = raw.get("build")
        if build is None:
            raise ComposeError(f"{where}: no build section (an image from a registry is not emulated)")
        ctx, dfile = (build, "Dockerfile") if isinstance(build, str) else \
            (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        dpath = (directory / ctx / dfile).resolve()
        if dpath not in images:
            images[dpath] = parse_dockerfile(dpath)
        image = images[dpath]
        entry = _argv(raw["entrypoint"], f"{where}.entrypoint") if "entrypoint" in raw else image.entrypoint
        if "command" in raw:
            command = _argv(raw["command"], f"{where}.command")
        else:
            command = [] if "entrypoint" in raw else image.cmd
        argv = entry + command
        if not argv:
            raise ComposeError(f"{where}: no command to run (neither entrypoint nor command)")
        uid, gid = uid_gid(str(raw.get("user", image.user)))
        workdir = str(raw.get("working_dir", image.workdir))
        env = {**image.env, **_environment(raw, directory, shell, where)}
        ports = _ports(raw.get("ports"), where)
        warnings += [f"{where} publishes {p.target} on {p.host_ip}, beyond this host; emulated on 127.0.0.1 only"
                     for p in ports if p.host_ip not in ("127.0.0.1", "localhost")]
        services.append(Service(str(name), argv, env, ports,
                                _volumes(raw.get("volumes"), directory, where),
                                _health(raw.get("healthcheck"), where), uid, gid, workdir, image))
    return Project(path, services, ienv, warnings)


def port_variables(path: str | os.PathLike) -> list[str]:
    """The variables the file's ``ports`` entries use (to give each a free port in tests)."""
    doc = yaml.safe_load(Path(path).read_text())
    names: list[str] = []
    for svc in (doc.get("services") or {}).values():
        for p in (svc or {}).get("ports") or []:
            for m in _VAR.finditer(str(p) if not isinstance(p, dict) else str(p.get("published", ""))):
                n = m.group("named") or m.group("braced")
                if n and n not in names:
                    names.append(n)
    return names


def free_port_env(path: str | os.PathLike) -> dict[str, str]:
    """Each port variable of the file set to a port the OS just reported free on 127.0.0.1."""
    from shardstats.cluster.launcher import free_ports
    names = port_variables(path)
    return dict(zip(names, map(str, free_ports("127.0.0.1", len(names)))))


# -- publishing ports ----------------------------------------------------------------
class Forwarder:
    """``ports:`` in the root namespace: listens on 127.0.0.1:published, pipes each connection to host:target.

    Runs its own event loop in a thread, so the caller can stay synchronous (and run
    ``cluster submit`` as a subprocess meanwhile).
    """

    CONNECT_TIMEOUT = 5.0

    def __init__(self, routes: list[tuple[int, str, int]]) -> None:
        self.routes = routes          # (published port on 127.0.0.1, upstream host, upstream port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="compose-ports", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self.stop()
            raise BedError(f"cannot publish ports: {self._error}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        writers: set[asyncio.StreamWriter] = set()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()
            except (OSError, ConnectionError):
                w.close()

        def handler(host: str, port: int):
            async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
                writers.add(cw)
                try:
                    ur, uw = await asyncio.wait_for(asyncio.open_connection(host, port), self.CONNECT_TIMEOUT)
                except (OSError, TimeoutError):
                    cw.close()
                    writers.discard(cw)
                    return
                writers.add(uw)
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(pipe(cr, uw))
                        tg.create_task(pipe(ur, cw))
                finally:
                    for w in (cw, uw):
                        w.close()
                        writers.discard(w)
            return handle

        servers = []
        try:
            for published, host, port in self.routes:
                try:
                    servers.append(await asyncio.start_server(handler(host, port), "127.0.0.1", published,
                                                              reuse_address=True))
                except OSError as exc:
                    raise BedError(f"127.0.0.1:{published}: {exc.strerror or exc}") from None
            self._ready.set()
            await self._stop.wait()
        finally:
            for s in servers:
                s.close()
            for w in list(writers):
                w.close()


# -- the bed ---------------------------------------------------------------------------
def _top(path: str) -> str:
    parts = PurePosixPath(path).parts
    return parts[1] if len(parts) > 1 else ""


def _traversable(p: Path) -> bool:
    try:
        return bool(p.stat().st_mode & stat.S_IXOTH)
    except OSError:
        return False


class ComposeBed(TestBed):
    """The compose project's services on a testbed bed: one namespace per service, ports published."""

    __test__ = False

    def __init__(self, project: Project, *, shape: LinkShape = LinkShape(rate="1gbit", delay_ms=0.0),
                 log_dir: str | None = None, ready_timeout: float = 60.0, health_poll: float = 0.3,
                 on_start=None) -> None:
        super().__init__(len(project.services), shape, log_dir=log_dir, ready_timeout=ready_timeout)
        self.project = project
        self.on_start = on_start      # called with the bed once its names are known, before services start
        self.health_poll = health_poll
        self.published: list[tuple[str, int, int]] = []      # (service, published port, target)
        self.forwarder: Forwarder | None = None
        self.mount_point: Path | None = None
        self._netns_dirs: list[Path] = []
        self._check_layout()

    # names -------------------------------------------------------------------------
    @property
    def addrs(self) -> list[str]:
        """The published addresses, in service order: what CLUSTER_WORKERS lists on the host."""
        return [f"127.0.0.1:{pub}" for _, pub, _ in self.published]

    def env(self) -> dict[str, str]:
        return {"CLUSTER_WORKERS": ",".join(self.addrs), "CLUSTER_TOKEN": self.project.env.get("CLUSTER_TOKEN", "")}

    # the private root of a service ---------------------------------------------------
    def _exposed(self) -> list[str]:
        """Host paths the service needs even under a top-level directory it could not traverse (/root 0700)."""
        need = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(VENV_BIN.parent), str(REPO)})
        return [p for p in need if not any(p != q and p.startswith(q + "/") for q in need)]

    def _check_layout(self) -> None:
        for s in self.project.services:
            for v in s.volumes:
                for e in self._exposed():
                    if v.target == e or v.target.startswith(e + "/"):
                        raise ComposeError(f"services.{s.name}: volume target {v.target} lies inside {e}, which "
                                           f"the emulation needs from the host")

    def setup_script(self, svc: Service, argv: list[str]) -> list[str]:
        """``sh -c`` argv that builds the service's root in a tmpfs, mounts its volumes and execs ``argv``."""
        assert self.mount_point is not None
        q = shlex.quote
        new = str(self.mount_point)
        image_dirs = [svc.workdir] + [v.target for v in svc.volumes]
        image_tops = {_top(d) for d in image_dirs} - {""}
        exposed = self._exposed()
        lines = ["set -eu", f"new={q(new)}",
                 'mount -t tmpfs -o mode=0755 compose-root "$new"',
                 'mount --make-unbindable "$new"']          # so the /tmp bind below does not copy it
        for entry in sorted(set(os.listdir("/")) | image_tops):
            host, dst = Path("/") / entry, f'"$new"/{q(entry)}'
            if entry in image_tops or (host.is_dir() and not host.is_symlink() and not _traversable(host)):
                # The image owns it (or the service user could not enter it): an empty directory,
                # holding only what the service needs from the host.
                lines.append(f"mkdir -m 0755 {dst}")
                for e in exposed:
                    if _top(e) == entry:
                        lines.append(f'mkdir -p "$new"{q(e)} && mount --rbind {q(e)} "$new"{q(e)}')
            elif host.is_symlink():
                lines.append(f"ln -s {q(os.readlink(host))} {dst}")
            elif host.is_dir():
                lines.append(f"mkdir {dst} && mount --rbind {q(str(host))} {dst}")
        for d in image_dirs:
            lines.append(f'mkdir -p "$new"{q(d)}')
        for v in sorted(svc.volumes, key=lambda v: len(PurePosixPath(v.target).parts)):
            dst = f'"$new"{q(v.target)}'
            lines.append(f"mount --bind {q(str(v.source))} {dst}")
            if v.read_only:
                lines.append(f"mount -o remount,bind,ro {dst}")
        drop = ["setpriv", f"--reuid={svc.uid}", f"--regid={svc.gid}", "--clear-groups"] if svc.uid else []
        inner = [*drop, "/bin/sh", "-c", 'cd "$0" && exec "$@"', svc.workdir, *argv]
        lines.append('exec chroot "$new" ' + " ".join(q(a) for a in inner))
        return ["sh", "-c", "\n".join(lines)]

    def service_env(self, svc: Service) -> dict[str, str]:
        home = "/root" if svc.uid == 0 else "/"
        return {"PATH": f"{VENV_BIN}:{SYSTEM_PATH}", "HOME": home, "HOSTNAME": svc.name, **svc.environment}

    # lifecycle (called by TestBed.start) -----------------------------------------------
    def _start_workers(self) -> None:
        if self.on_start is not None:
            self.on_start(self)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.mount_point = Path(tempfile.mkdtemp(prefix=f"{self.prefix}root-"))
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(
            f"{self.host_ip(i)}\t{s.name}\n" for i, s in enumerate(self.project.services))
        for i in range(self.hosts):
            d = Path("/etc/netns") / self.ns(i)
            d.mkdir(parents=True, exist_ok=True)
            self._netns_dirs.append(d)
            (d / "hosts").write_text(hosts)
            (d / "resolv.conf").write_text("# compose_netns: no DNS server; service names are in /etc/hosts\n"
                                           "options timeout:1 attempts:1\n")
        for i, svc in enumerate(self.project.services):
            cmd = ["ip", "netns", "exec", self.ns(i), *self.setup_script(svc, svc.argv)]
            with open(self.log_dir / f"{svc.name}.log", "ab") as log:
                # `ip netns exec`, sh, chroot and setpriv all exec: this pid is the service's process.
                self.procs.append(subprocess.Popen(cmd, env=self.service_env(svc), stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=log, start_new_session=True))
        routes = []
        for i, svc in enumerate(self.project.services):
            for p in svc.ports:
                published = p.published or _free_port()
                self.published.append((svc.name, published, p.target))
                routes.append((published, self.host_ip(i), p.target))
        self.forwarder = Forwarder(routes)
        self.forwarder.start()

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def log_errors(self, per_service: int = 3) -> str:
        """The services' own error lines (not the echo of the coordinator's abort), for a failure message."""
        out = []
        for s in self.project.services:
            lines = [ln for ln in self.log_tail(s.name, 200).splitlines()
                     if re.search(r"\b(error|warning|Error)\b", ln) and "aborted by the coordinator" not in ln]
            out += [f"  {s.name}: {ln}" for ln in lines[-per_service:]]
        return "\nservice log lines with errors:\n" + "\n".join(out) if out else ""

    def _health_cmd(self, i: int) -> list[str]:
        svc = self.project.services[i]
        assert svc.health is not None
        return ["ip", "netns", "exec", self.ns(i), *self.setup_script(svc, svc.health.test)]

    def check_health(self, i: int) -> tuple[bool, str]:
        """Runs service i's healthcheck command once, inside its namespace and root, as its user."""
        return self._check_many([i])[i]

    def _check_many(self, hosts: list[int]) -> dict[int, tuple[bool, str]]:
        """Healthchecks of several services at once (each is a process start; in parallel they cost one)."""
        out: dict[int, tuple[bool, str]] = {}
        procs = {}
        for i in hosts:
            svc = self.project.services[i]
            if svc.health is None:
                out[i] = (True, "no healthcheck")
                continue
            procs[i] = subprocess.Popen(self._health_cmd(i), env=self.service_env(svc), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            for i, p in procs.items():
                limit = min(self.project.services[i].health.timeout, 10.0) + 5.0  # type: ignore[union-attr]
                try:
                    stdout, stderr = p.communicate(timeout=limit)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    out[i] = (False, f"healthcheck did not finish within {limit:g}s")
                    continue
                lines = (stderr or stdout).strip().splitlines()
                out[i] = (p.returncode == 0, lines[-1] if lines else f"exit status {p.returncode}")
        finally:                                      # interrupted: no check outlives the wait
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return out

    def _listening(self, i: int) -> bool:
        """Whether service i accepts TCP on every published target (cheap, from the root namespace).

        Only decides when its healthcheck is worth running; the healthcheck decides health.
        """
        for p in self.project.services[i].ports:
            try:
                socket.create_connection((self.host_ip(i), p.target), timeout=1.0).close()
            except OSError:
                return False
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = set(range(self.hosts))
        why = {i: "not listening yet" for i in pending}
        while True:
            self._check_running()
            due = [i for i in sorted(pending) if self._listening(i)]
            for i, (ok, why[i]) in self._check_many(due).items():
                if ok:
                    pending.discard(i)
            if not pending:
                return
            self._check_running()
            if time.monotonic() > deadline:
                i = min(pending)
                name = self.project.services[i].name
                raise BedError(f"service {name} is not healthy after {self.ready_timeout:g}s "
                               f"(healthcheck: {why[i]}); its log:\n{self.log_tail(name)}")
            time.sleep(self.health_poll)

    def _check_running(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                name = self.project.services[i].name
                raise BedError(f"service {name} exited with status {p.returncode}; its log "
                               f"({self.log_dir / (name + '.log')}):\n{self.log_tail(name)}")

    def stop(self) -> None:
        held = threading.current_thread() is threading.main_thread()
        if held:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            if self.forwarder is not None:
                self.forwarder.stop()
                self.forwarder = None
            super().stop()
            for d in self._netns_dirs:
                shutil.rmtree(d, ignore_errors=True)
            self._netns_dirs = []
            if self.mount_point is not None:
                try:
                    self.mount_point.rmdir()     # the tmpfs roots vanished with their mount namespaces
                except OSError:
                    pass
                self.mount_point = None
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

    def leftovers(self) -> dict:
        found = super().leftovers()
        found["files"] = [str(p) for p in self._netns_dirs if p.exists()] + \
            ([str(self.mount_point)] if self.mount_point is not None and self.mount_point.exists() else [])
        return found


def _free_port() -> int:
    from shardstats.cluster.launcher import free_ports
    return free_ports("127.0.0.1", 1)[0]


def cleanup() -> dict:
    """Leftovers of killed runs: testbed's namespaces/links/processes, then /etc/netns files and mount points."""
    found = testbed.cleanup()
    files = []
    for d in Path("/etc/netns").glob(f"{testbed.PREFIX}*") if Path("/etc/netns").is_dir() else []:
        if d.name not in testbed.namespaces():
            shutil.rmtree(d, ignore_errors=True)
            files.append(str(d))
    for d in Path(tempfile.gettempdir()).glob(f"{testbed.PREFIX}*-root-*"):
        try:
            d.rmdir()
            files.append(str(d))
        except OSError:
            pass
    found["files"] = files
    return found


# -- the job and the reference ------------------------------------------------------------
@dataclass
class JobOutcome:
    op: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def document(self) -> dict:
        return json.loads(self.stdout, parse_float=Decimal)


def submit(bed: ComposeBed, op: str, input_path: str = "shards/", timeout: float = 60.0,
           extra: list[str] | None = None) -> JobOutcome:
    """``cluster submit OP --input INPUT --json`` from the compose directory, as the README's user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(bed.env())
    cmd = [str(VENV_BIN / "cluster"), "submit", op, "--input", input_path, "--json", "--timeout", f"{timeout:g}",
           *(extra or [])]
    try:
        p = subprocess.run(cmd, env=env, cwd=bed.project.directory, capture_output=True, text=True,
                           timeout=timeout * 2 + 30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return JobOutcome(op, 124, "", f"`{' '.join(cmd)}` did not finish within {timeout * 2 + 30:g}s")
    return JobOutcome(op, p.returncode, p.stdout, p.stderr)


def reference(values, op: str) -> dict:
    """numpy's answer: mode (smallest of the tied values) with its count; median exactly (a Fraction)."""
    import numpy as np
    if op == "mode":
        u, c = np.unique(values, return_counts=True)
        return {"value": int(u[c == c.max()].min()), "count": int(c.max())}
    s = np.sort(values)
    n = len(s)
    lo, hi = int(s[(n - 1) // 2]), int(s[n // 2])
    return {"value": Fraction(lo + hi, 2), "lower": lo, "upper": hi}


def host_values(project: Project, input_path: str = "shards/"):
    """The values the job should see, read on the host from the same files (the volume's source)."""
    import numpy as np
    from shardstats.worker.io.listing import list_shards
    from shardstats.worker.io.shards import read_shard
    files = list_shards(os.path.join(project.directory, input_path))
    return np.concatenate([read_shard(f) for f in files])


def compare(outcome: JobOutcome, ref: dict) -> str | None:
    """None when the job's answer equals the reference, else what differs."""
    if outcome.returncode != 0:
        return f"cluster submit {outcome.op} failed (status {outcome.returncode}): {outcome.stderr.strip()}"
    got = outcome.document["result"]
    for k, want in ref.items():
        have = Fraction(str(got.get(k))) if isinstance(want, Fraction) else got.get(k)
        if have != want:
            return f"{outcome.op}: {k} is {got.get(k)}, numpy says {want}"
    return None


def run_project(project: Project, ops: tuple[str, ...] = ("mode", "median"), *, input_path: str = "shards/",
                ready_timeout: float = 60.0, job_timeout: float = 60.0, log_dir: str | None = None,
                shape: LinkShape = LinkShape(rate="1gbit", delay_ms=0.0), out=sys.stderr) -> list[dict]:
    """Bring the project up, run each op, compare with numpy; raises BedError on any failure."""
    values = host_values(project, input_path)
    rows = []
    def starting(bed: ComposeBed) -> None:
        print(f"starting {bed.hosts} services in namespaces {bed.ns(0)}..{bed.ns(bed.hosts - 1)} "
              f"(logs in {bed.log_dir})", file=out, flush=True)

    with ComposeBed(project, shape=shape, log_dir=log_dir, ready_timeout=ready_timeout, on_start=starting) as bed:
        print(f"{len(project.services)} services healthy on {bed.bridge}; published "
              f"{bed.addrs[0]} .. {bed.addrs[-1]}", file=out, flush=True)
        for op in ops:
            outcome = submit(bed, op, input_path, job_timeout)
            why = compare(outcome, reference(values, op))
            if why is not None:
                raise BedError(why + bed.log_errors())
            doc = outcome.document
            rows.append({"op": op, "result": doc["result"], "values": doc["stats"]["values"],
                         "workers": doc["stats"]["workers"], "seconds": doc["stats"]["seconds"]})
            shown = " ".join(f"{k}={v}" for k, v in doc["result"].items())
            print(f"{op}: {shown} on {doc['stats']['workers']} workers, "
                  f"{doc['stats']['values']:,} values: matches numpy", file=out)
    return rows


# -- CLI -----------------------------------------------------------------------------------
def available() -> tuple[bool, str]:
    ok, why = testbed.available()
    if not ok:
        return ok, why
    for tool in ("chroot", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed"
    return True, "ok"


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must tear the bed down even when we were started with SIGINT ignored (a background
    # job of a non-interactive shell, as CI may start us): Python then leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="say whether the emulation can run here")
    for name, help_ in (("config", "print the services as the emulation resolved them"),
                        ("run", "bring the services up, run mode and median, compare with numpy, tear down")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-f", "--file", default=str(REPO / "docker-compose.yml"))
        p.add_argument("--free-ports", action="store_true", help="give every ${VAR} in `ports` a free port")
        p.add_argument("--random-token", action="store_true", help="set CLUSTER_TOKEN to a fresh random token")
        if name == "run":
            p.add_argument("--input", default="shards/", help="what `cluster submit --input` gets (default shards/)")
            p.add_argument("--ops", default="mode,median")
            p.add_argument("--ready-timeout", type=float, default=60.0)
            p.add_argument("--job-timeout", type=float, default=60.0)
            p.add_argument("--rate", default="1gbit", help="per direction of each service's link (tc syntax)")
            p.add_argument("--log-dir")
    sub.add_parser("cleanup", help="remove leftovers of killed runs (shared with testbed.py)")
    a = ap.parse_args(argv)

    if a.cmd == "check":
        ok, why = available()
        print(f"{'available' if ok else 'unavailable'}: {why}")
        return 0 if ok else 1
    if a.cmd == "cleanup":
        found = cleanup()
        print(f"removed {len(found['namespaces'])} namespaces, {len(found['links'])} links, "
              f"{len(found['pids'])} processes, {len(found['files'])} files")
        return 0
    env = dict(os.environ)
    if a.random_token:
        import secrets
        env["CLUSTER_TOKEN"] = secrets.token_hex(32)
    if a.free_ports:
        env.update(free_port_env(a.file))
    try:
        project = load_project(a.file, env)
    except ComposeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in project.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.cmd == "config":
        for s in project.services:
            print(json.dumps({"service": s.name, "argv": s.argv, "user": f"{s.uid}:{s.gid}", "workdir": s.workdir,
                              "environment": sorted(s.environment),
                              "ports": [f"{p.host_ip}:{p.published}:{p.target}" for p in s.ports],
                              "volumes": [f"{v.source}:{v.target}{':ro' if v.read_only else ''}" for v in s.volumes],
                              "healthcheck": s.health.test if s.health else None}))
        return 0
    ok, why = available()
    if not ok:
        print(f"error: {why}", file=sys.stderr)
        return 1
    # Service logs are kept when something fails (the error names them), removed after a clean run.
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="compose-netns-logs-")
    try:
        run_project(project, tuple(o for o in a.ops.split(",") if o), input_path=a.input,
                    ready_timeout=a.ready_timeout, job_timeout=a.job_timeout, log_dir=log_dir,
                    shape=LinkShape(rate=a.rate, delay_ms=0.0))
    except KeyboardInterrupt:
        print("interrupted; torn down", file=sys.stderr)
        return 130
    except (BedError, ComposeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:             # the host's shards/ is missing or unreadable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not a.log_dir:
        shutil.rmtree(log_dir, ignore_errors=True)
    print("all jobs match numpy; torn down", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
