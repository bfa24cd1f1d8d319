"""A bounded, coverage-guided fuzz run (atheris/libFuzzer) of everything that reads outside bytes.

    .venv/bin/pip install atheris          # not a project dependency: only this script needs it
    .venv/bin/python scripts/fuzz.py                     # all targets, 30 s
    .venv/bin/python scripts/fuzz.py --seconds 120 --target text

Targets (the same contracts tests/test_fuzz.py checks with hypothesis):
  wire   bytes -> FrameDecoder (random split) -> validate -> ServerHandshake.receive_hello:
         only ProtocolError may escape
  text   bytes -> shardstats.worker.io.text.parse_text: only InputError may escape, and an accepted
         text equals Python's int() per line
Any other exception is a finding: libFuzzer prints it and writes the input to crash-*.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


try:
    import atheris
except ImportError:
    sys.exit("scripts/fuzz.py needs atheris: .venv/bin/pip install atheris")

import msgpack  # noqa: E402 - third-party code is imported first, so only ours gets instrumented
import numpy  # noqa: E402,F401

with atheris.instrument_imports():
    from shardstats.protocol.errors import ProtocolError
    from shardstats.protocol.frames import HEADER, FrameDecoder
    from shardstats.protocol.handshake import ServerHandshake
    from shardstats.protocol.messages import validate
    from shardstats.errors import InputError
    from shardstats.worker.io.text import parse_text

TOKEN = b"fuzz-token"
_INT = re.compile(rb"[ \t\r]*[+-]?[0-9]+[ \t\r]*")


def wire(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cut = fdp.ConsumeIntInRange(0, 64)
    max_frame = fdp.PickValueInList([64, 4096, 1 << 20])
    framed = fdp.ConsumeBool()
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    if framed:                                   # half the time a well-framed body, so msgpack gets explored
        stream = HEADER.pack(len(stream)) + stream
    dec = FrameDecoder(max_frame=max_frame)
    try:
        msgs = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        for m in msgs:
            try:
                validate(m)
            except ProtocolError:
                pass
            ServerHandshake(TOKEN, 0).receive_hello(m)
    except ProtocolError:
        pass


def text(data: bytes) -> None:
    try:
        got = parse_text(data, "f.txt")
    except InputError:
        return
    expect = []
    for line in data.split(b"\n"):
        if line.strip(b" \t\r"):
            assert _INT.fullmatch(line), line
            expect.append(int(line))
    assert got.tolist() == expect and all(-(2 ** 63) <= v < 2 ** 63 for v in expect)


def both(data: bytes) -> None:
    if not data:
        return
    (wire if data[0] & 1 else text)(data[1:])


SEEDS = [b"\x001\n-2\n+3 \r\n", b"\x009223372036854775807\n",
         b"\x01\x05\x00" + msgpack.packb({"t": "hello", "v": 1}),
         b"\x01\x03\x01" + HEADER.pack(5) + msgpack.packb([1, 2, 3, 4])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=30, help="stop after this many seconds (default 30)")
    ap.add_argument("--target", choices=["wire", "text", "all"], default="all")
    ap.add_argument("--seeds", help=argparse.SUPPRESS)      # set by the parent process for the child
    args, rest = ap.parse_known_args()
    if args.seeds is None:
        # libFuzzer ends the process with exit(), past any cleanup: run it in a child and clean up here.
        seeds = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
        try:
            for i, s in enumerate(SEEDS):
                (seeds / f"seed{i}").write_bytes(s)
            cmd = [sys.executable, __file__, "--seeds", str(seeds), "--seconds", str(args.seconds),
                   "--target", args.target, *rest]
            sys.exit(subprocess.run(cmd, timeout=args.seconds + 120).returncode)
        finally:
            shutil.rmtree(seeds, ignore_errors=True)
    target = {"wire": wire, "text": text, "all": both}[args.target]
    names = ",".join(str(f) for f in sorted(Path(args.seeds).iterdir()))
    # The corpus grows in memory only: nothing is written but the input of a crash (crash-* in the cwd).
    argv = [sys.argv[0], f"-max_total_time={args.seconds}", "-rss_limit_mb=1024", "-timeout=10",
            f"-artifact_prefix={os.getcwd()}/", f"-seed_inputs={names}", *rest]
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
