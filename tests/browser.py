"""A real browser for tests: headless Chromium driven over the DevTools protocol (CDP).

Why a small client of our own rather than playwright/pyppeteer: those download
their own browser build from the network; Debian's ``chromium`` and the
``websockets`` library are all this needs.  ``load`` opens a page and returns
what a reader of the report would notice: console errors, uncaught exceptions,
requests to anything but the page itself, and a full-page screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


def find_or_install() -> tuple[str | None, str]:
    """The chromium binary, installing Debian's package when missing and we may (root or $CI); else a reason."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe, ""
    if not (os.geteuid() == 0 or os.environ.get("CI")) or not shutil.which("apt-get"):
        return None, "chromium is not installed and this user cannot install it (apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, timeout=900,
                       check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"apt-get install chromium failed: {exc}"
    exe = shutil.which("chromium")
    return (exe, "") if exe else (None, "apt-get install chromium did not provide a chromium binary")


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)        # console errors, exceptions, log errors
    requests: list[str] = field(default_factory=list)      # every URL the page asked for
    value: object = None                                   # what the probe expression returned
    screenshot: bytes = b""


class Browser:
    def __init__(self, exe: str, deadline: float = 30.0) -> None:
        self.profile = tempfile.mkdtemp(prefix="ss-chromium-")
        # Chromium also makes its own org.chromium.Chromium.* folders in TMPDIR and leaves them: inside the
        # profile they go with it.
        tmp = Path(self.profile) / "tmp"
        tmp.mkdir()
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "TMPDIR": str(tmp)})
        port_file = Path(self.profile) / "DevToolsActivePort"
        end = time.monotonic() + deadline
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > end or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        self.deadline = deadline

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def load(self, url: str, probe: str, width: int = 1000) -> PageLoad:
        """Opens ``url``, waits for its load event, evaluates ``probe`` (JS returning JSON-able data), screenshots."""
        from websockets.sync.client import connect
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=self.deadline) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        out = PageLoad()
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=self.deadline) as ws:
            seq = 0

            def call(method: str, **params) -> dict:
                nonlocal seq
                seq += 1
                ws.send(json.dumps({"id": seq, "method": method, "params": params}))
                return pump(lambda m: m.get("id") == seq)["result"]

            def pump(until) -> dict:
                end = time.monotonic() + self.deadline
                while True:
                    m = json.loads(ws.recv(timeout=max(0.1, end - time.monotonic())))
                    note(m)
                    if until(m):
                        if "error" in m:
                            raise RuntimeError(f"CDP error: {m['error']}")
                        return m

            def note(m: dict) -> None:
                meth, p = m.get("method"), m.get("params", {})
                if meth == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                    out.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                             for a in p.get("args", [])))
                elif meth == "Runtime.exceptionThrown":
                    out.errors.append("exception: " + json.dumps(p.get("exceptionDetails"))[:300])
                elif meth == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                    out.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
                elif meth == "Network.requestWillBeSent":
                    out.requests.append(p["request"]["url"])

            for domain in ("Runtime", "Log", "Network", "Page"):
                call(f"{domain}.enable")
            call("Emulation.setDeviceMetricsOverride", width=width, height=800, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            pump(lambda m: m.get("method") == "Page.loadEventFired")
            res = call("Runtime.evaluate", expression=probe, returnByValue=True)
            if "exceptionDetails" in res:
                raise RuntimeError(f"probe failed: {res['exceptionDetails']}")
            out.value = res["result"].get("value")
            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            out.screenshot = base64.b64decode(shot["data"])
        return out
