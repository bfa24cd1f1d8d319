"""The real CLI driving ten real worker processes over TCP, as a user does."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from shardstats.cluster.gen import generate, write_shards
from tests.conftest import cli, free_base, ref_mode


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """`cluster up --workers 10 --detach` on free ports; `cluster down` afterwards."""
    d = tmp_path_factory.mktemp("cluster")
    env = {"CLUSTER_FILE": str(d / "cluster.json")}
    for attempt in range(5):           # a fresh run of free ports each time, if one got taken meanwhile
        r = cli("up", "--workers", "10", "--detach", "--base-port", str(free_base(10)),
                "--log-dir", str(d / "logs"), env=env)
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stderr
    yield env, d
    r = cli("down", env=env)
    assert r.returncode == 0, r.stderr
    assert not (d / "cluster.json").exists()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    parts = generate(200_000, 10, "unique-dup", seed=11)
    write_shards(parts, d / "npy", "npy")
    write_shards(parts, d / "txt", "txt")
    return d, np.concatenate(parts)


def _submit(env, *args):
    r = cli("submit", *args, env=env)
    return r, (json.loads(r.stdout) if r.returncode == 0 and "--json" in args else None)


def test_status_lists_ten_live_workers(running):
    env, _ = running
    r = cli("status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["workers"]
    assert [w["id"] for w in rows] == list(range(10)) and all(w["up"] for w in rows)
    human = cli("status", env=env)
    assert human.returncode == 0 and human.stdout.count(" up ") == 10


@pytest.mark.parametrize("fmt", ["npy", "txt"])
def test_mode_json_contract(running, shards, fmt):
    env, _ = running
    d, allv = shards
    r, doc = _submit(env, "mode", "--input", str(d / fmt), "--json")
    assert r.returncode == 0, r.stderr
    value, count, ties = ref_mode(allv)
    assert doc["op"] == "mode"
    assert doc["result"]["value"] == value and doc["result"]["count"] == count == 2
    assert doc["result"]["ties"] == ties
    st = doc["stats"]
    assert st["workers"] == 10 and st["values"] == len(allv)
    assert st["max_inbound_streams"] == 1
    assert st["max_tree_messages_received"] <= 4            # ceil(log2 10)
    assert st["bytes_sent"] == sum(map(sum, st["traffic_matrix"])) > len(allv) * 8 * 0.8
    assert st["rounds"] >= 1 and st["seconds"] > 0
    assert r.stdout.count("\n") == 1                           # exactly one JSON object


def test_median_json_contract_and_human_output(running, shards):
    env, _ = running
    d, allv = shards
    r, doc = _submit(env, "median", "--input", str(d / "npy"), "--json")
    assert r.returncode == 0, r.stderr
    s = np.sort(allv)
    lo, hi = int(s[(len(s) - 1) // 2]), int(s[len(s) // 2])
    assert doc["result"]["lower"] == lo and doc["result"]["upper"] == hi
    assert doc["result"]["value"] == np.median(allv)
    assert doc["stats"]["bytes_sent"] < 1_000_000 and doc["stats"]["rounds"] <= 4
    r = cli("submit", "median", "--input", str(d / "txt"), "--even", "lower", env=env)
    assert r.returncode == 0 and r.stdout.startswith(f"median: {lo} ")


def test_exact_half_beyond_2_53_in_json(running, tmp_path):
    env, _ = running
    (tmp_path / "a.txt").write_text("9223372036854775807\n")
    (tmp_path / "b.txt").write_text("9223372036854775806\n")
    r, doc = _submit(env, "median", "--input", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert '"value": 9223372036854775806.5' in r.stdout
    assert doc["result"]["lower"] == 2 ** 63 - 2


def test_ties_all_through_the_cli(running, tmp_path):
    env, _ = running
    (tmp_path / "a.txt").write_text("5\n-1\n5\n")
    (tmp_path / "b.txt").write_text("-1\n7\n7\n")
    r, doc = _submit(env, "mode", "--input", str(tmp_path), "--ties", "all", "--json")
    assert r.returncode == 0, r.stderr
    assert doc["result"]["ties"] == [-1, 5, 7] and doc["result"]["value"] == -1


@pytest.mark.parametrize("strategy", ["credit", "naive", "gather"])
def test_strategies_agree_through_the_cli(running, shards, strategy):
    env, _ = running
    d, allv = shards
    r, doc = _submit(env, "mode", "--input", str(d / "npy"), "--shuffle", strategy, "--json")
    assert r.returncode == 0, r.stderr
    assert doc["result"]["value"] == ref_mode(allv)[0]
    m = np.array(doc["stats"]["traffic_matrix"])
    if strategy == "gather":                                   # everyone's data into rank 0
        assert m[:, 0].sum() > 0.95 * m.sum()
    else:                                                      # every directed link carries data
        assert (m + np.eye(10, dtype=int) > 0).all()
    if strategy == "credit":
        assert doc["stats"]["max_inbound_streams"] == 1


def test_bad_input_is_one_line_exit_2_and_the_cluster_serves_the_next_job(running, shards, tmp_path):
    env, _ = running
    d, allv = shards
    (tmp_path / "good.txt").write_text("1\n2\n")
    (tmp_path / "bad.txt").write_text("1\n2\nthree\n")
    r = cli("submit", "mode", "--input", str(tmp_path), env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.txt:3" in lines[0]
    r = cli("submit", "mode", "--input", str(tmp_path / "nope"), env=env)
    assert r.returncode == 2 and "nope" in r.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.txt").write_text("\n\n")
    r = cli("submit", "median", "--input", str(tmp_path / "empty"), env=env)
    assert r.returncode == 2 and "no values" in r.stderr
    r, doc = _submit(env, "mode", "--input", str(d / "npy"), "--json")
    assert r.returncode == 0 and doc["result"]["value"] == ref_mode(allv)[0]


def test_no_cluster_says_how_to_start_one(tmp_path):
    r = cli("submit", "mode", "--input", str(tmp_path), env={"CLUSTER_FILE": str(tmp_path / "none.json"),
                                                             "CLUSTER_WORKERS": ""})
    assert r.returncode == 1 and "cluster up" in r.stderr


def test_unreachable_workers_are_a_cluster_error(tmp_path):
    from shardstats.cluster.launcher import free_ports
    port = free_ports("127.0.0.1", 1)[0]
    (tmp_path / "a.txt").write_text("1\n")
    r = cli("submit", "mode", "--input", str(tmp_path), env={"CLUSTER_WORKERS": f"127.0.0.1:{port}",
                                                             "CLUSTER_TOKEN": "x"})
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr and "cluster up" in r.stderr


def test_local_ephemeral_cluster_with_more_workers_than_shards(tmp_path):
    parts = generate(3000, 3, "zipf", seed=4)
    write_shards(parts, tmp_path / "z", "txt")
    allv = np.concatenate(parts)
    r = cli("submit", "mode", "--input", str(tmp_path / "z"), "--local", "5", "--json",
            env={"CLUSTER_FILE": str(tmp_path / "c.json")})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    value, count, _ = ref_mode(allv)
    assert (doc["result"]["value"], doc["result"]["count"]) == (value, count)
    assert doc["stats"]["workers"] == 5 and "startup_seconds" in doc["stats"]
    assert not (tmp_path / "c.json").exists()


def test_gen_is_reproducible(tmp_path):
    for name in ("a", "b"):
        r = cli("gen", "--out", str(tmp_path / name), "--rows", "5000", "--shards", "4", "--format", "txt",
                "--seed", "9")
        assert r.returncode == 0, r.stderr
    for f in sorted(os.listdir(tmp_path / "a")):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    vals = np.concatenate([np.loadtxt(tmp_path / "a" / f, dtype=np.int64) for f in sorted(os.listdir(tmp_path / "a"))])
    value, count, ties = ref_mode(vals)
    assert count == 2 and len(ties) == 1 and len(vals) == 5000
    # the duplicate sits on two different shards
    holders = [f for f in os.listdir(tmp_path / "a") if value in np.loadtxt(tmp_path / "a" / f, dtype=np.int64)]
    assert len(holders) == 2


def test_the_console_script_keeps_exit_codes_and_output_with_its_fast_exit(running, shards, tmp_path):
    """`cluster` (the installed script) ends a submit with a fast exit: the answer, the exit code
    (0, 2 for bad input, 1 for the cluster) and the one-line error all still arrive."""
    import subprocess
    import sys
    from pathlib import Path
    env, _ = running
    d, allv = shards
    exe = str(Path(sys.executable).with_name("cluster"))

    def run(*args, **kw):
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={**os.environ, **env, **kw})

    r = run("submit", "mode", "--input", str(d / "npy"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["value"] == ref_mode(allv)[0]
    (tmp_path / "bad.txt").write_text("1\nx\n")
    r = run("submit", "mode", "--input", str(tmp_path / "bad.txt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "bad.txt:2" in r.stderr
    r = run("submit", "mode", "--input", str(d / "npy"), CLUSTER_WORKERS="127.0.0.1:1", CLUSTER_TOKEN="x" * 32,
            CLUSTER_FILE=str(tmp_path / "none.json"))
    assert r.returncode == 1 and "127.0.0.1:1" in r.stderr
    # into a pipe closed after the first line: no traceback, and the cluster serves the next job
    p = subprocess.run(f"'{exe}' submit mode --input '{d / 'npy'}' | head -c 1", shell=True, capture_output=True,
                       text=True, timeout=60, env={**os.environ, **env})
    assert p.stdout == "m" and "Traceback" not in p.stderr
    assert run("status").returncode == 0


def test_ctrl_c_during_a_job_is_one_line_and_the_shells_code(tmp_path):
    """SIGINT while the job runs (here: while it dials a worker that never answers) ends the job -- its abort is
    sent and confirmed where a worker answers -- with one line and exit 130.  The old code printed click's
    "Aborted!" with exit 1, a cluster failure's code."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    (tmp_path / "a.txt").write_text("1\n")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(60)
        env = {**os.environ, "CLUSTER_WORKERS": f"127.0.0.1:{srv.getsockname()[1]}", "CLUSTER_TOKEN": "x" * 32}
        p = subprocess.Popen([sys.executable, "-m", "shardstats.cluster.cli", "submit", "mode", "--input",
                              str(tmp_path), "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, stdin=subprocess.DEVNULL)
        try:
            conn, _ = srv.accept()            # the job is dialing: inside the run, past the imports
            with conn:
                time.sleep(0.2)
                p.send_signal(signal.SIGINT)
                out, err = p.communicate(timeout=30)
        finally:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert err.strip() == "error: interrupted: the job was aborted on every worker"
