"""What a container takes from its image: the Dockerfile's ENTRYPOINT, CMD, USER, WORKDIR and ENV.

Both netns front-ends run the repository's image without Docker (compose by ``build:``,
Kubernetes by ``image:``), so both read the Dockerfile the same way, here.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

NOBODY = 65534


class SpecError(Exception):
    """A file being emulated (compose file, manifest, Dockerfile) is wrong or uses something not modelled."""


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
            raise SpecError(f"bad JSON array {arg!r} in the Dockerfile") from None
        if not all(isinstance(x, str) for x in v):
            raise SpecError(f"bad exec form {arg!r} in the Dockerfile")
        return v
    return ["/bin/sh", "-c", arg]


def parse_dockerfile(path: Path) -> Image:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the Dockerfile ({exc.strerror})") from None
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

