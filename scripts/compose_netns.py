#!/usr/bin/env python3
"""Runs docker-compose.yml without Docker: one network namespace per service, then a real job against it.

The compose front-end of the shared netns runner (``netns_runner.py`` runs the processes,
``dockerfile.py`` reads the image).  It does what ``docker compose up`` would do with the
parts of the file that matter here:

* reads the file with PyYAML (anchors and ``<<`` merge keys), interpolates ``$VAR``,
  ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
  ``${VAR:+alt}``, ``${VAR+alt}`` and ``$$`` from the environment (over ``.env`` next to
  the file), and rejects service keys compose does not know (``comand:``) or that this
  emulation does not model;
* takes ENTRYPOINT, CMD, USER, WORKDIR and ENV from each service's ``build`` Dockerfile;
* turns each service into a runner unit: its name resolves in every namespace, its volumes
  are bind mounts (read-only when ``:ro``), it runs as the image's USER in the WORKDIR with
  the service's ``environment``/``env_file``, its ``ports`` are published on 127.0.0.1 and
  its healthcheck is its readiness check;
* runs ``cluster submit mode|median --input shards/ --json`` from the compose file's
  directory with ``CLUSTER_WORKERS`` = the published addresses and ``CLUSTER_TOKEN`` from
  the environment, exactly as the README tells users, and compares with numpy.

Needs root.

    export CLUSTER_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    .venv/bin/cluster gen --out shards --rows 1000000
    sudo -E .venv/bin/python scripts/compose_netns.py run                 # ports 7000-7009 as in the file
    sudo -E .venv/bin/python scripts/compose_netns.py run --free-ports    # every ${VAR} in `ports` -> a free port
    sudo .venv/bin/python scripts/compose_netns.py cleanup                # leftovers of a killed run
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

if __package__ in (None, ""):     # run as a file (python scripts/compose_netns.py): make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import testbed  # noqa: E402
# Re-exported: the tests and users reach the runner's parts through the front-end they run.
from scripts.dockerfile import Image, SpecError, parse_dockerfile, uid_gid  # noqa: E402,F401
from scripts.netns_runner import (REPO, BedError, Check, JobOutcome, LinkShape, Mount, Publish, Unit, UnitBed,  # noqa: E402,F401
                                  add_run_options, announce, available, check_jobs, cleanup, command_line,
                                  compare, host_values, maintenance, reference, run_reported, submit)


class ComposeError(SpecError):
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


# -- the bed ---------------------------------------------------------------------------
def units_of(project: Project) -> tuple[list[Unit], list[Publish]]:
    """The services as runner units, and their ``ports`` as published ports."""
    units, publish = [], []
    for i, s in enumerate(project.services):
        check = Check(argv=s.health.test, timeout=s.health.timeout) if s.health else None
        units.append(Unit(s.name, s.argv, s.environment, [Mount(v.source, v.target, v.read_only) for v in s.volumes],
                          s.uid, s.gid, [], s.workdir, check, [s.name], kind="service"))
        publish += [Publish(i, p.published, p.target) for p in s.ports]
    return units, publish


class ComposeBed(UnitBed):
    """The compose project's services on a testbed bed: one namespace per service, ports published."""

    __test__ = False

    def __init__(self, project: Project, **kw) -> None:
        units, publish = units_of(project)
        try:
            super().__init__(units, publish, token=project.env.get("CLUSTER_TOKEN", ""), cwd=project.directory, **kw)
        except SpecError as exc:
            raise ComposeError(str(exc).replace("service ", "services.", 1)) from None
        self.project = project


def run_project(project: Project, ops: tuple[str, ...] = ("mode", "median"), *, input_path: str = "shards/",
                ready_timeout: float = 60.0, job_timeout: float = 60.0, log_dir: str | None = None,
                shape: LinkShape = LinkShape(rate="1gbit", delay_ms=0.0), out=sys.stderr) -> list[dict]:
    """Bring the project up, run each op, compare with numpy; raises BedError on any failure."""
    values = host_values(project.directory, input_path)
    with ComposeBed(project, shape=shape, log_dir=log_dir, ready_timeout=ready_timeout,
                    on_start=announce(out)) as bed:
        print(f"{len(project.services)} services healthy on {bed.bridge}; published "
              f"{bed.addrs[0]} .. {bed.addrs[-1]}", file=out, flush=True)
        return check_jobs(bed, values, ops, input_path, job_timeout, out)

# -- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap, sub = command_line(__doc__.split("\n\n")[0])
    for name, help_ in (("config", "print the services as the emulation resolved them"),
                        ("run", "bring the services up, run mode and median, compare with numpy, tear down")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-f", "--file", default=str(REPO / "docker-compose.yml"))
        p.add_argument("--free-ports", action="store_true", help="give every ${VAR} in `ports` a free port")
        p.add_argument("--random-token", action="store_true", help="set CLUSTER_TOKEN to a fresh random token")
        if name == "run":
            add_run_options(p, ready_timeout=60.0)
    a = ap.parse_args(argv)
    done = maintenance(a.cmd)
    if done is not None:
        return done
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
    return run_reported(lambda logs: run_project(
        project, tuple(o for o in a.ops.split(",") if o), input_path=a.input, ready_timeout=a.ready_timeout,
        job_timeout=a.job_timeout, log_dir=logs, shape=LinkShape(rate=a.rate, delay_ms=0.0)),
        a.log_dir, "compose-netns-logs-")


if __name__ == "__main__":
    sys.exit(main())
