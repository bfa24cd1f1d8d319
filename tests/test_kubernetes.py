"""deploy/kubernetes/, checked without a Kubernetes cluster.

Static checks render the kustomization (``kubectl kustomize`` where it exists, and the
plain-resources renderer, which must agree with it), validate every object against the
Kubernetes schemas in strict mode, and read the shape the issue asks for: a headless
Service, ten parallel StatefulSet pods whose ordinal is the worker id, the token only from
a Secret, non-root, memory limits matching the worker's budget, optional S3 settings.
The `netns` tests run the rendered manifests with scripts/k8s_netns.py (the Kubernetes
front-end of the runner the compose tests use): one namespace per pod, pod DNS names in
hosts files, each container's args/env/volumes from the manifest, then `kubectl cp` +
`port-forward` and `cluster submit` from the host side, compared with numpy.  Copies
broken on purpose (a wrong peer name, a missing Secret key, a wrong port) must fail with
a message that says what is wrong.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts import k8s_netns as kn
from scripts.dockerfile import parse_dockerfile, uid_gid
from scripts.netns_runner import BedError, compare, reference, submit
from shardstats.cluster.config import worker_id_from_hostname
from shardstats.cluster.gen import generate, write_shards
from tests.netns_beds import tracked_beds
from shardstats.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
NS = "shardstats"
TOKEN = "k8s-test-token-0123456789abcdef-0123456789abcdef"
S3 = {"AWS_ENDPOINT_URL": "http://minio.storage:9000", "AWS_REGION": "eu-west-1",
      "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}

_OK, _WHY = kn.available()
needs_netns = pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_WHY}")


def _schemas() -> str | None:
    """Why strict validation cannot run here, or None when the bundled schemas load offline."""
    try:
        import kubernetes_validate as kv
        kv.validate({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}, kn.KUBE_VERSION, strict=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load means: skip with its reason
        return f"kubernetes-validate schemas unavailable offline: {exc!r}"
    return None


needs_schemas = pytest.mark.skipif(_schemas() is not None, reason=str(_schemas()))


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return kn.render(K8S)[0]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: list[dict]) -> dict:
    return one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def arg(c: dict, name: str) -> str:
    for a in c["args"]:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return c["args"][c["args"].index(name) + 1]


# -- rendering and schemas -------------------------------------------------------------
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_python_render_is_what_kubectl_kustomize_renders():
    by_kubectl, how = kn.render(K8S)
    assert how == "kubectl kustomize"
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(kn.render_kustomization(K8S), key=key) == sorted(by_kubectl, key=key)


def test_python_renderer_refuses_what_only_kustomize_does(tmp_path):
    shutil.copytree(K8S, tmp_path / "k")
    with open(tmp_path / "k" / "kustomization.yaml", "a") as f:
        f.write("namePrefix: test-\n")
    with pytest.raises(kn.K8sError, match=r"uses \['namePrefix'\], which only `kubectl kustomize` renders"):
        kn.render_kustomization(tmp_path / "k")


@needs_schemas
def test_every_object_is_valid_in_strict_mode(docs):
    job = yaml.safe_load((K8S / "submit-job.yaml").read_text())
    assert kn.validate(docs + [job]) == []
    assert {d["kind"] for d in docs} == {"Namespace", "Service", "StatefulSet"}


@needs_schemas
@pytest.mark.parametrize("field", ["readinessProbe", "fsGroup", "publishNotReadyAddresses", "podManagementPolicy"])
def test_strict_validation_names_a_misspelt_field(docs, field):
    """kubectl apply would drop an unknown field silently; strict validation names the object and the field."""
    text = yaml.safe_dump_all(docs).replace(f"{field}:", f"{field[:-1]}:")
    errors = kn.validate(list(yaml.safe_load_all(text)))
    assert len(errors) == 1 and f"'{field[:-1]}' was unexpected" in errors[0], errors
    assert re.match(r"(StatefulSet|Service)/shardstats: ", errors[0]), errors


# -- the shape the issue asks for ----------------------------------------------------------
def test_headless_service_and_parallel_statefulset(docs):
    svc, sts = one(docs, "Service"), one(docs, "StatefulSet")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    m = kn.Manifests(docs)
    assert [p.name for p in m.pods()] == [f"shardstats-{i}" for i in range(10)] and not m.warnings


def test_peers_are_the_pods_stable_names_in_ordinal_order(docs):
    sts, svc, c = one(docs, "StatefulSet"), one(docs, "Service"), container(docs)
    n = sts["spec"]["replicas"]
    assert n == 10 and "--id-from-hostname" in c["args"] and "--id" not in c["args"]
    port = int(arg(c, "--listen").rsplit(":", 1)[1])
    want = [f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local:{port}"
            for i in range(n)]
    assert arg(c, "--peers").split(",") == want
    ns_env = next(e for e in c["env"] if e["name"] == "POD_NAMESPACE")
    assert ns_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named[svc["spec"]["ports"][0]["targetPort"]] == port == svc["spec"]["ports"][0]["port"]
    assert named[c["readinessProbe"]["tcpSocket"]["port"]] == port
    job = yaml.safe_load((K8S / "submit-job.yaml").read_text())
    workers = next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                   if e["name"] == "CLUSTER_WORKERS")
    assert workers.split(",") == want


def test_token_only_from_a_secret_file(docs):
    c = container(docs)
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert not any(d["kind"] == "Secret" for d in docs), "the token Secret is created by hand, never shipped"
    assert not any("TOKEN" in e["name"] and "value" in e and e["name"] != "CLUSTER_TOKEN_FILE" for e in c["env"])
    path = next(e["value"] for e in c["env"] if e["name"] == "CLUSTER_TOKEN_FILE")
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    item = next(i for i in vol["secret"]["items"] if i["path"] == path[len(mount["mountPath"]) + 1:])
    assert (vol["secret"]["secretName"], item["key"]) == (kn.TOKEN_SECRET, kn.TOKEN_KEY)
    assert vol["secret"]["defaultMode"] & 0o007 == 0, "the token file must not be world-readable"


def test_runs_as_the_images_non_root_user(docs):
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    psc, csc = spec["securityContext"], container(docs)["securityContext"]
    uid, gid = uid_gid(parse_dockerfile(ROOT / "Dockerfile").user)
    assert psc["runAsNonRoot"] is True and (psc["runAsUser"], psc["runAsGroup"]) == (uid, gid) and uid != 0
    assert csc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert spec["automountServiceAccountToken"] is False


def test_memory_budget_fits_the_container_limit(docs):
    c = container(docs)
    req, lim = c["resources"]["requests"], c["resources"]["limits"]
    assert kn.quantity(req["memory"]) == kn.quantity(lim["memory"]), "memory requests == limits (no eviction)"
    budget = int(next(e["value"] for e in c["env"] if e["name"] == "CLUSTER_MEMORY_LIMIT"))
    assert 0.5 * float(kn.quantity(lim["memory"])) <= budget <= 0.8 * float(kn.quantity(lim["memory"]))
    assert kn.quantity(req["cpu"]) <= kn.quantity(lim["cpu"])


def test_prometheus_annotations_name_the_workers_metrics_port(docs):
    from shardstats.settings import DEFAULTS
    sts, c = one(docs, "StatefulSet"), container(docs)
    ann = sts["spec"]["template"]["metadata"]["annotations"]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen = int(arg(c, "--listen").rsplit(":", 1)[1])
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == named["metrics"] == listen + DEFAULTS.http_port_offset
    assert not any(a.startswith(("--http-port", "--no-http", "--metrics-auth")) for a in c["args"])


def test_object_storage_settings_are_optional_env_from(docs):
    refs = container(docs)["envFrom"]
    assert {next(iter(r)) for r in refs} == {"configMapRef", "secretRef"}
    assert all(r[k]["optional"] is True for r in refs for k in r)


def test_quantities_and_expansion():
    assert [kn.quantity(q) for q in ("2Gi", "1536Mi", "500m", "1e3", "3")] == \
        [2 ** 31, 1536 * 2 ** 20, kn.Decimal("0.5"), 1000, 3]
    env = {"A": "x", "B": "y"}
    assert kn.expand("$(A)-$(B)-$(C)-$$(A)-$", env) == "x-y-$(C)-$(A)-$"


def test_id_from_hostname():
    assert worker_id_from_hostname("shardstats-0") == 0
    assert worker_id_from_hostname("shardstats-12.shardstats.ns.svc.cluster.local") == 12
    assert worker_id_from_hostname("my-cluster-3") == 3
    for bad in ("shardstats", "shardstats-", "shardstats-x", "shardstats-01", "vm"):
        with pytest.raises(ConfigError, match="does not end in -<ordinal>"):
            worker_id_from_hostname(bad)


def test_worker_refuses_a_hostname_without_ordinal_and_both_id_forms():
    """One line, exit 2 (in a UTS namespace so the host name is ours to set)."""
    cluster = str(Path(sys.executable).parent / "cluster")
    both = subprocess.run([cluster, "worker", "--id", "1", "--id-from-hostname", "--listen", "127.0.0.1:0",
                           "--peers", "a:1,b:1"], capture_output=True, text=True, timeout=30)
    assert both.returncode == 2 and both.stderr.strip() == "error: give exactly one of --id and --id-from-hostname"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--uts", "true"]).returncode != 0:
        pytest.skip("cannot make a UTS namespace here")
    cmd = "hostname {} && exec {} worker --id-from-hostname --listen 127.0.0.1:0 --peers a:1,b:1"
    r = subprocess.run(["unshare", "--uts", "sh", "-c", cmd.format("worker", cluster)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("error: --id-from-hostname: host name 'worker' does not end in -<ordinal> "
                                "(a StatefulSet pod name such as shardstats-3)")
    r = subprocess.run(["unshare", "--uts", "sh", "-c", cmd.format("shardstats-2", cluster)], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "CLUSTER_TOKEN": TOKEN})
    assert r.returncode == 2 and "worker id 2 is not an index into the 2 peer addresses" in r.stderr, r.stderr


# -- the emulation: what each pod gets -----------------------------------------------------
def manifests(docs: list[dict], *, token: str | None = TOKEN, s3: dict | None = None) -> kn.Manifests:
    extra = kn.laptop_secrets(NS, token, s3) if token is not None else []
    return kn.Manifests(copy.deepcopy(docs), extra)


def test_units_take_args_env_and_volumes_from_the_manifest(docs, tmp_path):
    units, publish = kn.units_of(manifests(docs, s3=S3), tmp_path)
    assert len(units) == 10 and [p.target for p in publish] == [7000] * 10
    img = parse_dockerfile(ROOT / "Dockerfile")
    for i, u in enumerate(units):
        assert u.hostname == u.name == f"shardstats-{i}" and u.kind == "pod"
        assert u.names[0] == f"shardstats-{i}.shardstats.{NS}.svc.cluster.local"
        assert u.argv[:2] == img.entrypoint + ["worker"]
        assert "$(" not in " ".join(u.argv) and f".{NS}.svc.cluster.local:7000" in u.argv[u.argv.index("worker") + 3]
        assert (u.uid, u.gid, u.groups, u.workdir, u.read_only_root) == (10001, 10001, [10001], "/data", True)
        assert {k: u.env[k] for k in S3} == S3, "AWS_* from the ConfigMap and the Secret (envFrom)"
        assert u.env["POD_NAMESPACE"] == NS and img.env.items() <= u.env.items()
        assert u.check is not None and u.check.tcp_port == 7000
        token = next(m for m in u.mounts if m.target == "/var/run/secrets/shardstats")
        f = token.source / "token"
        assert token.read_only and f.read_text() == TOKEN
        assert (f.stat().st_gid, f.stat().st_mode & 0o777) == (10001, 0o440)
        data = next(m for m in u.mounts if m.target == "/data")
        assert not data.read_only and data.source.stat().st_gid == 10001


def test_without_s3_settings_the_pods_still_start(docs, tmp_path):
    units, _ = kn.units_of(manifests(docs), tmp_path)
    assert not any(k.startswith("AWS_") for k in units[0].env)


# -- broken on purpose: refused before anything starts, as the kubelet would ------------------
def test_break_missing_secret_key(docs, tmp_path):
    m = manifests(docs, token=None)
    m.extra = [kn.secret_doc(kn.TOKEN_SECRET, NS, {"tokn": TOKEN})]      # created with a misspelt key
    with pytest.raises(kn.K8sError) as info:
        kn.units_of(m, tmp_path)
    assert str(info.value) == ('pod shardstats-0: MountVolume.SetUp failed for volume "token" : references '
                               'non-existent secret key: token')


def test_break_missing_secret(docs, tmp_path):
    with pytest.raises(kn.K8sError, match=r'^pod shardstats-0: MountVolume.SetUp failed for volume "token" : '
                                          r'secret "shardstats-token" not found$'):
        kn.units_of(manifests(docs, token=None), tmp_path)


def test_break_root_user_with_run_as_non_root(docs, tmp_path):
    d = copy.deepcopy(docs)
    one(d, "StatefulSet")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(kn.K8sError, match="pod shardstats-0: container has runAsNonRoot and image will run as root"):
        kn.units_of(manifests(d), tmp_path)


# -- the real run ------------------------------------------------------------------------
def data_dir(tmp: Path, rows: int, seed: int = 5) -> np.ndarray:
    parts = generate(rows, 10, "unique-dup", seed)
    write_shards(parts, tmp / "shards", "npy")
    return np.concatenate(parts)


@pytest.fixture
def beds(monkeypatch):
    """The beds a test builds; afterwards none of their processes, namespaces, links or files exist."""
    yield from tracked_beds(monkeypatch, kn.K8sBed)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def mount_options(pid: int) -> dict[str, set[str]]:
    """Mount point (as the process sees it) -> its per-mount options, from /proc/PID/mountinfo."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = line.split()
        out[f[4]] = set(f[5].split(","))
    return out


@pytest.mark.netns
@needs_netns
def test_manifests_run_mode_and_median_exactly(docs, tmp_path, beds):
    values = data_dir(tmp_path, 200_000)
    m = manifests(docs, s3=S3)
    with kn.K8sBed(m, token=TOKEN, cwd=tmp_path, log_dir=str(tmp_path / "logs"), ready_timeout=180) as bed:
        bed.copy_into(tmp_path / "shards", "/data/shards")
        for i, p in enumerate(bed.procs):
            status = Path(f"/proc/{p.pid}/status").read_text()
            assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", status, re.M), status
            assert re.search(r"^Groups:\s+10001\s*$", status, re.M), status
            env = environ(p.pid)
            assert env["HOSTNAME"] == f"shardstats-{i}" and env["AWS_ENDPOINT_URL"] == S3["AWS_ENDPOINT_URL"]
            assert "CLUSTER_TOKEN" not in env and env["CLUSTER_TOKEN_FILE"] == "/var/run/secrets/shardstats/token"
            mounts = mount_options(p.pid)    # readOnlyRootFilesystem; the secret read-only, the data volume not
            assert "ro" in mounts["/"] and "ro" in mounts["/usr"], mounts
            assert "ro" in mounts["/var/run/secrets/shardstats"] and "rw" in mounts["/data"], mounts
        outcomes = {op: submit(bed, op, "shards/", timeout=60) for op in ("mode", "median")}
        for i in range(10):   # each pod took its id from its host name
            assert f"worker={i} " in (tmp_path / "logs" / f"shardstats-{i}.log").read_text()
    for op, outcome in outcomes.items():
        assert compare(outcome, reference(values, op)) is None, outcome.stderr
        assert outcome.document["stats"]["workers"] == 10 and outcome.document["stats"]["values"] == len(values)
    assert outcomes["mode"].document["result"]["count"] == 2


@pytest.mark.netns
@needs_netns
def test_script_cli_validates_and_runs_the_manifests(tmp_path):
    """`k8s_netns.py run` from the directory holding shards/, as the README shows it: exit 0, both checked."""
    data_dir(tmp_path, 50_000)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "k8s_netns.py"), "run", "--log-dir",
                        str(tmp_path / "logs")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "valid for Kubernetes" in r.stderr and r.stderr.count("matches numpy") == 2, r.stderr


def run_broken(docs: list[dict], tmp_path: Path, ready_timeout: float = 180, rows: int = 20_000) -> str:
    data_dir(tmp_path, rows)
    with pytest.raises((BedError, kn.K8sError)) as info:
        kn.run_manifests(manifests(docs), TOKEN, tmp_path, ("mode",), ready_timeout=ready_timeout,
                         log_dir=str(tmp_path / "logs"))
    return str(info.value)


@pytest.mark.netns
@needs_netns
def test_break_wrong_peer_name(docs, tmp_path, beds):
    d = copy.deepcopy(docs)
    c = container(d)
    i = next(k for k, a in enumerate(c["args"]) if a.startswith("--peers="))
    c["args"][i] = c["args"][i].replace("shardstats-5.shardstats.", "shardstats-5.shardstat.")
    msg = run_broken(d, tmp_path, rows=200_000)      # over one chunk: the shuffle uses every link (no tree)
    assert "cluster submit mode failed (status 1)" in msg and "lost worker 5" in msg, msg
    assert "shardstats-5.shardstat.shardstats.svc.cluster.local:7000" in msg, msg


@pytest.mark.netns
@needs_netns
def test_break_wrong_container_port(docs, tmp_path, beds):
    """The worker listens on 7000 but the manifest declares 7001: the readiness probe never passes."""
    d = copy.deepcopy(docs)
    container(d)["ports"][0]["containerPort"] = 7001
    msg = run_broken(d, tmp_path, ready_timeout=10)
    assert re.match(r"pod shardstats-\d is not ready after 10s \(tcp port 7001: tcp 10\.77\.\d+\.\d+:7001: "
                    r"Connection refused\)", msg), msg
    assert "worker_listening" in msg and "addr=0.0.0.0:7000" in msg, msg
