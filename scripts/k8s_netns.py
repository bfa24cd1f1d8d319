#!/usr/bin/env python3
"""Runs deploy/kubernetes/ without Kubernetes: one network namespace per pod, then a real job against it.

The Kubernetes front-end of the shared netns runner (``netns_runner.py`` runs the
processes, ``dockerfile.py`` reads the image).  No cluster runs here, so the manifests are
checked three ways:

* rendered by ``kubectl kustomize`` where kubectl exists, else by ``render_kustomization``
  (plain ``resources`` files only: the kustomization is kept that simple so this is honest);
* validated offline against the Kubernetes JSON schemas in strict mode (``kubernetes-validate``),
  which rejects a misspelt field instead of dropping it as ``kubectl apply`` would;
* run: each StatefulSet replica becomes a pod on its own host of a testbed bed, named
  ``<set>-<ordinal>`` (its UTS host name, so ``--id-from-hostname`` sees what it would see in a
  pod), with the stable DNS names the headless Service gives it
  (``<pod>.<service>.<ns>.svc.cluster.local`` and the shorter forms a pod's search path
  resolves) in every namespace's hosts file.  Its container runs the image's ENTRYPOINT/CMD
  replaced by ``command``/``args`` as Kubernetes does, with ``$(VAR)`` expanded; its
  environment is the image's ENV, then ``envFrom`` (ConfigMaps/Secrets, ``optional``
  honoured), then ``env`` (values, ``fieldRef`` metadata.name/namespace/labels,
  ``secretKeyRef``, ``configMapKeyRef``, ``resourceFieldRef``); its volumes (Secret and
  ConfigMap files with ``items``/``defaultMode``, emptyDir) are host directories owned by the
  pod's ``fsGroup`` bind-mounted at their ``mountPath``; it runs as the ``securityContext``'s
  user and groups (``runAsNonRoot`` enforced, ``readOnlyRootFilesystem`` as a read-only root);
  its ``readinessProbe`` (tcpSocket or exec) decides when it is ready.  A missing Secret or key
  fails the pod with the kubelet's words.  Then ``kubectl cp`` (the shards into every pod's
  data volume) and ``kubectl port-forward`` (127.0.0.1 ports to each pod) are emulated and
  ``cluster submit`` runs from the root namespace exactly as the README tells a laptop user,
  compared with numpy.

What is not modelled: the scheduler, resource limits (read and checked by the tests, not
enforced), restarts, liveness probes, Services' virtual IPs, NetworkPolicies.  Needs root.

    sudo .venv/bin/python scripts/k8s_netns.py validate                    # render + strict schema check
    sudo .venv/bin/python scripts/k8s_netns.py run --input shards/         # the job as a laptop runs it
    sudo .venv/bin/python scripts/k8s_netns.py cleanup                     # leftovers of a killed run
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

if __package__ in (None, ""):     # run as a file (python scripts/k8s_netns.py): make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.dockerfile import Image, SpecError, parse_dockerfile, uid_gid  # noqa: E402
from scripts.netns_runner import (REPO, Check, LinkShape, Mount, Publish, Unit, UnitBed,  # noqa: E402,F401
                                  add_run_options, announce, available, check_jobs, command_line, host_values,
                                  maintenance, run_reported)

MANIFESTS = REPO / "deploy" / "kubernetes"
KUBE_VERSION = "1.32"                       # the schemas checked against (kubernetes-validate bundles them)
CLUSTER_DOMAIN = "cluster.local"
IMAGES = {"shardstats-worker": REPO / "Dockerfile"}   # image repository -> the Dockerfile it is built from
TOKEN_SECRET, TOKEN_KEY = "shardstats-token", "token"


class K8sError(SpecError):
    """The manifests are wrong (or use something this emulation does not model); says which object."""


# -- rendering and validation ----------------------------------------------------------
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources"}


def render_kustomization(directory: Path) -> list[dict]:
    """What ``kubectl kustomize DIR`` gives for a kustomization of plain resource files."""
    directory = Path(directory)
    try:
        k = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    except OSError as exc:
        raise K8sError(f"{directory}/kustomization.yaml: {exc.strerror}") from None
    extra = set(k) - KUSTOMIZE_KEYS
    if extra:
        raise K8sError(f"{directory}/kustomization.yaml uses {sorted(extra)}, which only `kubectl kustomize` "
                       f"renders (install kubectl)")
    docs = []
    for res in k.get("resources") or []:
        path = directory / res
        if not path.is_file():
            raise K8sError(f"{directory}/kustomization.yaml: resource {res!r} is not a file here")
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def render(directory: Path = MANIFESTS, use_kubectl: bool | None = None) -> tuple[list[dict], str]:
    """The rendered objects and what rendered them (``kubectl kustomize`` where it exists)."""
    kubectl = shutil.which("kubectl")
    if use_kubectl is False or (use_kubectl is None and kubectl is None):
        return render_kustomization(directory), "python"
    if kubectl is None:
        raise K8sError("kubectl is not installed")
    p = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise K8sError(f"kubectl kustomize {directory}: {p.stderr.strip()}")
    return [d for d in yaml.safe_load_all(p.stdout) if d], "kubectl kustomize"


def validate(docs: list[dict], version: str = KUBE_VERSION) -> list[str]:
    """Strict schema errors, one line each naming the object and the field path; [] when all are valid."""
    import kubernetes_validate as kv
    errors = []
    for d in docs:
        what = f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as exc:
            at = ".".join(str(x) for x in exc.path)
            errors.append(f"{what}: {exc.message}" + (f" (at {at})" if at else ""))
    return errors


# -- the objects ---------------------------------------------------------------------------
def _ns(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("namespace") or "default"


def _name(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name", "")


@dataclass
class Pod:
    name: str
    namespace: str
    ordinal: int
    labels: dict
    spec: dict
    dns: list[str]                   # the names the headless Service gives it


@dataclass
class Manifests:
    """The rendered objects plus those a user creates by hand (the token Secret, the S3 settings)."""
    docs: list[dict]
    extra: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return next((d for d in self.docs + self.extra if d.get("kind") == kind and _ns(d) == namespace
                     and _name(d) == name), None)

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs + self.extra if d.get("kind") == kind]

    def data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's (base64 ``data`` and ``stringData``) or a ConfigMap's entries; None when it does not exist."""
        obj = self.get(kind, namespace, name)
        if obj is None:
            return None
        out = dict(obj.get("data") or {})
        if kind == "Secret":
            out = {k: base64.b64decode(v).decode() for k, v in out.items()}
            out.update(obj.get("stringData") or {})
        return out

    def pods(self) -> list[Pod]:
        out = []
        for sts in self.of_kind("StatefulSet"):
            name, ns, spec = _name(sts), _ns(sts), sts.get("spec") or {}
            tmpl = spec.get("template") or {}
            labels = (tmpl.get("metadata") or {}).get("labels") or {}
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                raise K8sError(f"StatefulSet {ns}/{name}: spec.template.metadata.labels: Invalid value: "
                               f"`selector` does not match template `labels`")
            svc_name = spec.get("serviceName", "")
            svc = self.get("Service", ns, svc_name)
            headless = svc is not None and (svc.get("spec") or {}).get("clusterIP") == "None"
            selects = headless and all(labels.get(k) == v for k, v in ((svc.get("spec") or {}).get("selector")
                                                                       or {"": None}).items())
            if not selects:
                self.warnings.append(f"StatefulSet {ns}/{name}: serviceName {svc_name!r} is not a headless Service "
                                     f"selecting its pods, so the pods get no DNS names")
            elif not (svc.get("spec") or {}).get("publishNotReadyAddresses"):
                self.warnings.append(f"Service {ns}/{svc_name}: without publishNotReadyAddresses a pod's name "
                                     f"resolves only once it is ready (the emulation publishes every name at once)")
            for i in range(int(spec.get("replicas", 1))):
                pod = f"{name}-{i}"
                dns = [f"{pod}.{svc_name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{pod}.{svc_name}.{ns}.svc",
                       f"{pod}.{svc_name}.{ns}", f"{pod}.{svc_name}"] if selects else []
                out.append(Pod(pod, ns, i, labels, tmpl.get("spec") or {}, dns))
        if not out:
            raise K8sError("no StatefulSet in the manifests")
        return out


def secret_doc(name: str, namespace: str, entries: dict[str, str]) -> dict:
    """What ``kubectl create secret generic NAME --from-literal=K=V ...`` creates."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in entries.items()}}


def config_map_doc(name: str, namespace: str, entries: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": dict(entries)}


# -- a pod's container as a runner unit ----------------------------------------------------
_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40, "m": Decimal("0.001")}


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` in command, args and env values: defined names replaced, ``$$`` a literal ``$``."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, s)


def quantity(q) -> Decimal:
    """A Kubernetes resource quantity (``2Gi``, ``1536Mi``, ``500m``, ``1e3``) as a number."""
    m = re.fullmatch(r"([0-9.]+(?:[eE][-+]?\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m|)", str(q).strip())
    if not m:
        raise K8sError(f"bad resource quantity {q!r}")
    return Decimal(m.group(1)) * _SUFFIX[m.group(2)]


class _PodReader:
    """Builds one pod's unit; every error names the pod, as the kubelet's events do."""

    def __init__(self, m: Manifests, pod: Pod, voldir: Path, images: dict[str, Path]) -> None:
        self.m, self.pod, self.voldir, self.images = m, pod, voldir, images
        self.spec = pod.spec
        containers = self.spec.get("containers") or []
        if len(containers) != 1 or self.spec.get("initContainers"):
            raise K8sError(f"pod {pod.name}: only pods with one container (and no init containers) are emulated")
        self.c = containers[0]
        self.psc = self.spec.get("securityContext") or {}
        self.csc = self.c.get("securityContext") or {}

    def fail(self, msg: str) -> K8sError:
        return K8sError(f"pod {self.pod.name}: {msg}")

    def image(self) -> Image:
        ref = str(self.c.get("image", ""))
        repo = ref.rsplit("@", 1)[0]
        repo = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
        if repo.rsplit("/", 1)[-1] not in self.images:
            raise self.fail(f"image {ref!r} is not emulated (known: {', '.join(sorted(self.images))})")
        return parse_dockerfile(self.images[repo.rsplit("/", 1)[-1]])

    def _lookup(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        data = self.m.data(kind, self.pod.namespace, name)
        if data is None and not optional:
            raise self.fail(f'{kind.lower()} "{name}" not found')
        return data

    def environment(self, img: Image) -> dict[str, str]:
        env = dict(img.env)
        for src in self.c.get("envFrom") or []:
            kind, ref = ("ConfigMap", src["configMapRef"]) if "configMapRef" in src else ("Secret", src["secretRef"])
            data = self._lookup(kind, ref["name"], bool(ref.get("optional")))
            env.update({src.get("prefix", "") + k: v for k, v in (data or {}).items()})
        for e in self.c.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(str(e.get("value", "")), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind, ref = ("Secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else \
                    ("ConfigMap", vf["configMapKeyRef"])
                data = self._lookup(kind, ref["name"], bool(ref.get("optional")))
                if data is not None and ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise self.fail(f"couldn't find key {ref['key']} in {kind} {self.pod.namespace}/{ref['name']}")
            elif "resourceFieldRef" in vf:
                r = vf["resourceFieldRef"]
                kind, _, res = r["resource"].partition(".")
                have = ((self.c.get("resources") or {}).get(kind) or {}).get(res)
                if have is None:
                    raise self.fail(f"resourceFieldRef {r['resource']}: the container sets no {r['resource']} "
                                    f"(a node's allocatable is not emulated)")
                env[name] = str(int(-(-quantity(have) // quantity(r.get("divisor", "1")))))
            else:
                raise self.fail(f"env {name}: valueFrom {sorted(vf)} is not emulated")
        return env

    def _field(self, path: str) -> str:
        m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if m:
            return str(self.pod.labels.get(m.group(1), ""))
        known = {"metadata.name": self.pod.name, "metadata.namespace": self.pod.namespace,
                 "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}
        if path not in known:
            raise self.fail(f"fieldRef {path} is not emulated")
        return known[path]

    def mounts(self, fs_group: int | None) -> list[Mount]:
        vols = {v["name"]: v for v in self.spec.get("volumes") or []}
        out = []
        for i, vm in enumerate(self.c.get("volumeMounts") or []):
            v = vols.get(vm["name"])
            if v is None:
                raise self.fail(f'spec.containers[0].volumeMounts[{i}].name: Not found: "{vm["name"]}"')
            src = self.voldir / self.pod.name / vm["name"]
            read_only = bool(vm.get("readOnly"))
            if not src.exists():
                self._materialise(v, src, fs_group)
            if "secret" in v or "configMap" in v:
                read_only = True              # the kubelet mounts both read-only
            if vm.get("subPath"):
                src = src / vm["subPath"]
            out.append(Mount(src, vm["mountPath"], read_only))
        return out

    def _materialise(self, v: dict, dest: Path, fs_group: int | None) -> None:
        """A volume's contents on the host, as the kubelet writes them (files, modes, fsGroup ownership)."""
        dest.mkdir(parents=True)
        gid = fs_group if fs_group is not None else 0
        if "emptyDir" in v:
            os.chown(dest, 0, gid)
            os.chmod(dest, 0o2777 if fs_group is not None else 0o777)
            return
        if "secret" in v or "configMap" in v:
            kind, src = ("Secret", v["secret"]) if "secret" in v else ("ConfigMap", v["configMap"])
            ref = src.get("secretName") if kind == "Secret" else src.get("name")
            data = self.m.data(kind, self.pod.namespace, ref)
            optional = bool(src.get("optional"))
            setup = f'MountVolume.SetUp failed for volume "{v["name"]}" :'
            if data is None:
                if optional:
                    data = {}
                else:
                    raise self.fail(f'{setup} {kind.lower()} "{ref}" not found')
            items = src.get("items") or [{"key": k, "path": k} for k in sorted(data)]
            default = src.get("defaultMode", 0o644)
            for it in items:
                if it["key"] not in data:
                    if optional:
                        continue
                    raise self.fail(f"{setup} configmap references non-existent config key: {it['key']}"
                                    if kind == "ConfigMap" else f"{setup} references non-existent secret key: "
                                                                f"{it['key']}")
                f = dest / it["path"]
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(data[it["key"]])
                mode = it.get("mode", default) | (0o040 if fs_group is not None else 0)
                os.chown(f, 0, gid)
                os.chmod(f, mode)
            os.chmod(dest, 0o755)
            return
        raise self.fail(f"volume {v['name']}: only secret, configMap and emptyDir volumes are emulated")

    def check(self) -> Check | None:
        probe = self.c.get("readinessProbe")
        if not probe:
            return None
        timeout = float(probe.get("timeoutSeconds", 1))
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            if isinstance(port, str) and not port.isdigit():
                named = {p.get("name"): p["containerPort"] for p in self.c.get("ports") or []}
                if port not in named:
                    raise self.fail(f"readinessProbe port {port!r}: the container declares no port of that name")
                port = named[port]
            return Check(tcp_port=int(port), timeout=timeout)
        if "exec" in probe:
            return Check(argv=[str(a) for a in probe["exec"]["command"]], timeout=timeout)
        raise self.fail(f"readinessProbe {sorted(set(probe) & {'httpGet', 'grpc'})} is not emulated")

    def unit(self) -> Unit:
        img = self.image()
        env = self.environment(img)
        iuid, igid = uid_gid(img.user)
        uid = int(self.csc.get("runAsUser", self.psc.get("runAsUser", iuid)))
        gid = int(self.csc.get("runAsGroup", self.psc.get("runAsGroup", igid)))
        if self.csc.get("runAsNonRoot", self.psc.get("runAsNonRoot")) and uid == 0:
            raise self.fail("container has runAsNonRoot and image will run as root")
        fs_group = self.psc.get("fsGroup")
        groups = ([int(fs_group)] if fs_group is not None else []) + \
            [int(g) for g in self.psc.get("supplementalGroups") or []]
        command, args = self.c.get("command"), self.c.get("args")
        argv = (command + (args or [])) if command else img.entrypoint + (args if args is not None else img.cmd)
        argv = [expand(str(a), env) for a in argv]
        if not argv:
            raise self.fail("no command to run (neither the image nor the container sets one)")
        return Unit(self.pod.name, argv, env, self.mounts(fs_group), uid, gid, groups,
                    self.c.get("workingDir", img.workdir), self.check(), self.pod.dns, hostname=self.pod.name,
                    read_only_root=bool(self.csc.get("readOnlyRootFilesystem")), kind="pod")

    def forward_port(self) -> int:
        """The port ``kubectl port-forward`` targets: the Service's targetPort (a name or number), else the first."""
        ports = self.c.get("ports") or []
        named = {p.get("name"): p["containerPort"] for p in ports}
        for svc in self.m.of_kind("Service"):
            sel = (svc.get("spec") or {}).get("selector") or {}
            if _ns(svc) == self.pod.namespace and sel and all(self.pod.labels.get(k) == v for k, v in sel.items()):
                sp = ((svc.get("spec") or {}).get("ports") or [{}])[0]
                t = sp.get("targetPort", sp.get("port"))
                if isinstance(t, str) and not t.isdigit():
                    if t not in named:
                        raise self.fail(f"Service {_name(svc)} targets port {t!r}, which the container does "
                                        f"not declare")
                    return int(named[t])
                return int(t)
        if not ports:
            raise self.fail("the container declares no port to forward")
        return int(ports[0]["containerPort"])


def units_of(m: Manifests, voldir: Path, images: dict[str, Path] = IMAGES) -> tuple[list[Unit], list[Publish]]:
    """Every pod as a runner unit (its volumes written under ``voldir``), and a port-forward to each."""
    units, publish = [], []
    for i, pod in enumerate(m.pods()):
        r = _PodReader(m, pod, voldir, images)
        units.append(r.unit())
        publish.append(Publish(i, 0, r.forward_port()))
    return units, publish


# -- the bed -------------------------------------------------------------------------------
class K8sBed(UnitBed):
    """The manifests' pods on a testbed bed, a ``kubectl port-forward`` to each; ``token`` is what the user holds."""

    __test__ = False

    def __init__(self, m: Manifests, *, token: str, cwd: Path, images: dict[str, Path] = IMAGES, **kw) -> None:
        voldir = Path(tempfile.mkdtemp(prefix="k8s-netns-volumes-"))
        os.chmod(voldir, 0o755)
        try:
            units, publish = units_of(m, voldir, images)
            super().__init__(units, publish, token=token, cwd=cwd, owned_dirs=[voldir], **kw)
        except BaseException:
            shutil.rmtree(voldir, ignore_errors=True)
            raise
        self.manifests = m

    def copy_into(self, source: Path, pod_path: str) -> None:
        """``kubectl cp SOURCE <pod>:POD_PATH`` for every pod: into the volume holding POD_PATH, as the pod's user."""
        for u in self.units:
            m = max((m for m in u.mounts if pod_path == m.target or pod_path.startswith(m.target.rstrip("/") + "/")),
                    key=lambda m: len(m.target), default=None)
            if m is None or m.read_only:
                raise K8sError(f"pod {u.name}: {pod_path} is not on a writable volume (kubectl cp needs one)")
            dest = m.source / os.path.relpath(pod_path, m.target)
            shutil.copytree(source, dest, dirs_exist_ok=True)
            for d, _, files in os.walk(dest):
                os.chown(d, u.uid, u.gid)
                for f in files:
                    os.chown(os.path.join(d, f), u.uid, u.gid)


def laptop_secrets(namespace: str, token: str, s3: dict[str, str] | None = None) -> list[dict]:
    """What the README has a user create by hand: the token Secret (and S3 settings when given)."""
    docs = [secret_doc(TOKEN_SECRET, namespace, {TOKEN_KEY: token})]
    if s3:
        docs.append(config_map_doc("shardstats-s3", namespace, {k: v for k, v in s3.items() if "SECRET" not in k
                                                                 and "ACCESS_KEY" not in k}))
        docs.append(secret_doc("shardstats-s3-credentials", namespace,
                               {k: v for k, v in s3.items() if "SECRET" in k or "ACCESS_KEY" in k}))
    return docs


def run_manifests(m: Manifests, token: str, directory: Path, ops: tuple[str, ...] = ("mode", "median"), *,
                  input_path: str = "shards/", data_path: str = "/data/shards", ready_timeout: float = 120.0,
                  job_timeout: float = 60.0, log_dir: str | None = None,
                  shape: LinkShape = LinkShape(rate="1gbit", delay_ms=0.0), out=sys.stderr) -> list[dict]:
    """Pods up, ``kubectl cp`` DIRECTORY/INPUT to DATA_PATH in each, port-forward, each op vs numpy."""
    values = host_values(directory, input_path)
    with K8sBed(m, token=token, cwd=directory, shape=shape, log_dir=log_dir, ready_timeout=ready_timeout,
                on_start=announce(out)) as bed:
        bed.copy_into(directory / input_path, data_path)
        print(f"{bed.hosts} pods ready on {bed.bridge}; port-forwarded to {bed.addrs[0]} .. {bed.addrs[-1]}",
              file=out, flush=True)
        return check_jobs(bed, values, ops, input_path, job_timeout, out)


# -- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap, sub = command_line(__doc__.split("\n\n")[0])
    for name, help_ in (("validate", "render the kustomization and check every object against the schemas"),
                        ("run", "bring the pods up, run mode and median from the host side, compare with numpy")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-k", "--kustomize", default=str(MANIFESTS), help="the kustomization directory")
        p.add_argument("--kube-version", default=KUBE_VERSION)
        if name == "run":           # --input is relative to the current directory, copied into every pod's /data
            add_run_options(p, ready_timeout=120.0)
    a = ap.parse_args(argv)
    done = maintenance(a.cmd)
    if done is not None:
        return done
    try:
        docs, how = render(Path(a.kustomize))
        errors = validate(docs, a.kube_version)
    except K8sError as exc:
        errors = [str(exc)]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        return 2
    print(f"{len(docs)} objects rendered by {how}, valid for Kubernetes {a.kube_version} (strict)", file=sys.stderr)
    if a.cmd == "validate":
        return 0
    namespaces = {_ns(d) for d in docs if d.get("kind") == "StatefulSet"}
    token = secrets.token_hex(32)
    m = Manifests(docs, [d for ns in sorted(namespaces) for d in laptop_secrets(ns, token)])
    status = run_reported(lambda logs: run_manifests(
        m, token, Path.cwd(), tuple(o for o in a.ops.split(",") if o), input_path=a.input,
        ready_timeout=a.ready_timeout, job_timeout=a.job_timeout, log_dir=logs,
        shape=LinkShape(rate=a.rate, delay_ms=0.0)), a.log_dir, "k8s-netns-logs-")
    for w in m.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
