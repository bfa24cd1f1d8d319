"""Every shell and Python example in the README runs as written.

Fenced blocks marked ``sh`` or ``python`` are run in order, each in a fresh
process, from a scratch directory with the venv's ``bin`` on PATH, a private
cluster file, and ``CLUSTER_BASE_PORT`` pointing at free ports.  A block right
after an HTML comment ``<!-- readme-test: skip (why) -->`` is left out (it needs
Docker, root or Kubernetes, or it runs this very test); the reader never sees
the marker.  Blocks of other languages (output samples) are text.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import free_base


ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!--\s*readme-test:\s*skip[^>]*-->\s*\n)?^```(sh|python)\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return [(lang, body) for skip, lang, body in BLOCK.findall(text) if not skip]


def test_the_readme_has_the_examples_it_promises():
    blocks = runnable_blocks()
    langs = [lang for lang, _ in blocks]
    assert langs.count("sh") >= 2 and "python" in langs
    joined = "\n".join(body for _, body in blocks)
    for cmd in ("cluster up", "cluster gen", "cluster submit mode", "cluster submit median", "cluster status",
                "cluster down", "--local 10", "Cluster.local"):
        assert cmd in joined, cmd


@pytest.mark.slow
def test_every_readme_example_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               CLUSTER_FILE=str(tmp_path / "cluster.json"), CLUSTER_BASE_PORT=str(free_base()),
               PYTHONPATH=str(ROOT))
    try:
        for i, (lang, body) in enumerate(runnable_blocks()):
            cmd = ["bash", "-euo", "pipefail", "-c", body] if lang == "sh" else [sys.executable, "-c", body]
            p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                               stdin=subprocess.DEVNULL)
            assert p.returncode == 0, f"README block {i} ({lang}) failed:\n{body}\n--- stdout\n{p.stdout}" \
                                      f"\n--- stderr\n{p.stderr}"
            assert p.stdout.strip(), f"README block {i} printed nothing:\n{body}"
    finally:
        subprocess.run([str(Path(sys.executable).parent / "cluster"), "down"], env=env, cwd=tmp_path,
                       capture_output=True, timeout=60)
