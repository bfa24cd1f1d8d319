"""What a user reads: usage errors exit 2 with the option named, help with examples and units, coordinator
notices in plain words (never key=value log lines), and deadlines explained in CLI terms."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli
from shardstats.cluster import launcher
from shardstats.coordinator.job import _expect
from shardstats.coordinator.liveness import Liveness
from shardstats.errors import JobTimeout


def test_up_with_no_workers_is_a_usage_error(cluster_env):
    r = cli("up", "--workers", "0", "--detach")
    assert r.returncode == 2 and "--workers" in r.stderr and "x>=1" in r.stderr
    assert not (cluster_env / "cluster.json").exists()        # nothing was started


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_zero_or_negative_timeout_is_refused_before_anything_runs(tmp_path, value):
    r = cli("submit", "mode", "--input", str(tmp_path), "--local", "1", "--timeout", value)
    assert r.returncode == 2 and "--timeout" in r.stderr and "x>0" in r.stderr


def test_up_help_shows_the_base_port_the_environment_sets():
    assert "[default: (7000)]" in cli("up", "--help", env={"CLUSTER_BASE_PORT": ""}).stdout
    shown = cli("up", "--help", env={"CLUSTER_BASE_PORT": "7555"}).stdout
    assert "7555 from $CLUSTER_BASE_PORT" in re.sub(r"\s+", " ", shown)


@pytest.mark.parametrize("text,rows", [("1e4", 10_000), ("10k", 10_000), ("12_345", 12_345), ("2M", 2_000_000),
                                       ("1,000", 1_000)])
def test_gen_takes_rows_the_way_bench_does(tmp_path, text, rows):
    r = cli("gen", "--out", str(tmp_path / "d"), "--rows", text, "--shards", "3")
    assert r.returncode == 0, r.stderr
    got = sum(len(np.load(p)) for p in sorted((tmp_path / "d").glob("*.npy")))
    assert got == rows


@pytest.mark.parametrize("text", ["1.5", "-3", "lots", "1e-3"])
def test_gen_refuses_rows_that_are_not_a_whole_count(tmp_path, text):
    r = cli("gen", "--out", str(tmp_path / "d"), "--rows", text)
    assert r.returncode == 2 and "--rows" in r.stderr and "whole number" in r.stderr


def _options(help_text: str) -> dict[str, str]:
    """Option -> its help text, from click's help layout."""
    out: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)(?: [A-Z\[][^ ]*(?: [A-Z]+)?)?\s*(.*)$", line)
        if m:
            current = m.group(2)
            out[current] = m.group(3).strip()
        elif current and line.startswith("      "):
            out[current] += " " + line.strip()
        elif not line.strip():
            current = None
    return out


@pytest.mark.parametrize("command", [["up"], ["down"], ["status"], ["gen"], ["worker"], []])
def test_every_command_but_submit_shows_an_example_and_every_option_a_help_text(command):
    r = cli(*command, "--help")
    assert r.returncode == 0
    assert re.search(r"^  Examples?", r.stdout, re.M), r.stdout
    opts = _options(r.stdout)
    assert opts, r.stdout
    empty = [o for o, text in opts.items() if not text.strip(" []") or text.startswith("[default")]
    assert empty == [], f"options without help in `cluster {' '.join(command)}`: {empty}"


def test_shell_completion_is_documented_and_works():
    assert "_CLUSTER_COMPLETE=bash_source" in cli("--help").stdout
    import os
    import subprocess
    import sys
    exe = Path(sys.executable).with_name("cluster")             # the console script the docs name
    script = subprocess.run([str(exe)], env={**os.environ, "_CLUSTER_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "complete " in script.stdout and "_cluster_completion" in script.stdout


@pytest.mark.parametrize("command", [["submit", "mode"], ["submit", "median"]])
def test_timeout_help_names_its_unit(command):
    assert "Seconds each phase" in re.sub(r"\s+", " ", cli(*command, "--help").stdout)


class _Silent:
    """A worker connection that never answers."""
    worker_id, addr = 3, "10.0.0.3:7003"

    async def recv(self, timeout: float) -> dict:
        await asyncio.sleep(timeout)
        raise TimeoutError


@pytest.mark.parametrize("want,doing", [("loaded", "reading its share of the input"), ("done", "its part of the job")])
def test_a_deadline_says_what_did_not_finish_and_what_to_do(want, doing):
    with pytest.raises(JobTimeout) as exc:
        asyncio.run(_expect(_Silent(), "j", want, 0.05, Liveness(heartbeat=1.0, dead_after=5.0)))
    text = str(exc.value)
    assert f"worker 3 at 10.0.0.3:7003 did not finish {doing} within the --timeout of 0.05 s" in text
    assert "--timeout SECONDS" in text and "sent no" not in text


def test_an_unreachable_worker_is_a_plain_warning_not_a_log_line(tmp_path):
    """A cluster file naming a worker that is not there: the job runs on the others, the user reads one
    `warning:` line in plain words, the summary says "1 attempt", and no key=value log line reaches stderr."""
    from shardstats.cluster.gen import generate, write_shards
    parts = generate(20_000, 4, "unique-dup", seed=9)
    write_shards(parts, tmp_path / "in", "npy")
    info = launcher.start(2, "127.0.0.1", None, str(tmp_path / "logs"), "info")
    try:
        dead = f"127.0.0.1:{launcher.free_ports('127.0.0.1', 1)[0]}"
        info.workers.append(dead)
        info.save(tmp_path / "cluster.json")
        r = cli("submit", "mode", "--input", str(tmp_path / "in"), "--cluster-file", str(tmp_path / "cluster.json"),
                env={"CLUSTER_WORKERS": "", "CLUSTER_PROGRESS": "never"})
    finally:
        launcher.stop(info)
    assert r.returncode == 0, r.stderr
    values, counts = np.unique(np.concatenate(parts), return_counts=True)
    assert r.stdout.startswith(f"mode: {values[counts == counts.max()].min()}  (count {counts.max()})")
    assert "event=" not in r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"warning: worker 2 at {dead} did not answer (") and "runs on the other workers" in line
    assert "  1 attempt; lost workers: 2 (unreachable at the start" in r.stdout


def test_json_is_one_line_when_piped_and_indented_with_pretty(tmp_path):
    import json
    from shardstats.cluster.gen import generate, write_shards
    from shardstats.cluster.output import pretty_json
    parts = generate(5_000, 2, "unique-dup", seed=2)
    write_shards(parts, tmp_path / "in", "npy")
    one = cli("submit", "median", "--input", str(tmp_path / "in"), "--local", "2", "--json")
    pretty = cli("submit", "median", "--input", str(tmp_path / "in"), "--local", "2", "--json", "--pretty")
    assert one.returncode == 0 and pretty.returncode == 0, one.stderr + pretty.stderr
    assert one.stdout.count("\n") == 1
    a, b = json.loads(one.stdout), json.loads(pretty.stdout)
    assert a["result"] == b["result"] and a["stats"].keys() == b["stats"].keys()
    lines = pretty.stdout.splitlines()
    assert lines[0] == "{" and lines[1] == '  "op": "median",' and len(lines) > 30
    w = len(b["stats"]["traffic_matrix"])
    assert sum(1 for ln in lines if re.fullmatch(r"\s+\[\d+(, \d+)*\],?", ln)) >= w     # a matrix row per line
    # exact numbers survive: a .5 beyond 2**53 is not turned into a float on the way
    big = '{\n  "v": [\n    1,\n    2\n  ],\n  "m": 9007199254740993.5\n}'
    assert pretty_json(big) == '{\n  "v": [1, 2],\n  "m": 9007199254740993.5\n}'


def test_one_worker_is_one_worker(tmp_path):
    from shardstats.cluster.gen import generate, write_shards
    write_shards(generate(1_000, 2, "unique-dup", seed=1), tmp_path / "in", "npy")
    r = cli("submit", "mode", "--input", str(tmp_path / "in"), "--local", "1")
    assert r.returncode == 0 and "  1,000 values on 1 worker in " in r.stdout
