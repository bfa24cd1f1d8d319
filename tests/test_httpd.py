"""The worker's HTTP server (worker/httpd.py): what it answers to good, bad, slow and hostile clients.

Raw bytes over real sockets on 127.0.0.1 (the server under test runs in the test's loop), so
each refusal is checked the way a client sees it: the status line, and whether the connection
stays open for the next request.  The server must keep serving after every case.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace

import pytest

from shardstats.settings import DEFAULTS
from shardstats.worker.httpd import HttpServer, Request, Response

pytestmark = pytest.mark.timeout(30)

TOKEN = b"http-test-token-0123456789abcdef-0123456789"


async def _echo(req: Request) -> Response:
    return Response(200, f"{req.method} {req.path} {sorted(req.query.items())} {len(req.body)}".encode(),
                    headers={"X-Seen-Auth": str("authorization" in req.headers)})


async def _boom(req: Request) -> Response:
    raise RuntimeError("handler bug")


async def _slow(req: Request) -> Response:
    await asyncio.sleep(60)
    return Response(200)


class Served:
    def __init__(self, server: HttpServer, task: asyncio.Task) -> None:
        self.server, self.task = server, task

    async def open(self, ssl_ctx: ssl.SSLContext | None = None):
        return await asyncio.open_connection("127.0.0.1", self.server.port, ssl=ssl_ctx)


@pytest.fixture
async def served():
    st = replace(DEFAULTS, http_request_timeout=0.5, http_idle_timeout=1.0, http_handler_timeout=0.3,
                 http_max_header_bytes=2048, http_max_body=1000, http_max_connections=4)
    server = HttpServer(TOKEN, settings=st)
    server.route("GET", "/open", _echo, auth=False)
    server.route("GET", "/secret", _echo)
    server.route("POST", "/upload", _echo, auth=False, max_body=100)
    server.route("GET", "/boom", _boom, auth=False)
    server.route("GET", "/slow", _slow, auth=False)
    ready = asyncio.Event()
    task = asyncio.create_task(server.serve("127.0.0.1", 0, ready))
    async with asyncio.timeout(5):
        await ready.wait()
    s = Served(server, task)
    yield s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.open == 0          # every connection task ended with the server


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def exchange(s: Served, raw: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Sends ``raw``, reads one response; also whether the server closed the connection after it."""
    reader, writer = await s.open()
    try:
        writer.write(raw)
        await writer.drain()
        status, headers, body = await read_response(reader)
        try:
            async with asyncio.timeout(3):
                closed = headers.get("connection") == "close" and await reader.read(1) == b""
        except ConnectionResetError:      # closed with the request unread: a reset is a close too
            closed = True
        return status, headers, body, closed
    finally:
        writer.close()


async def still_serving(s: Served) -> None:
    status, _, body, _ = await exchange(s, b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body.startswith(b"GET /open")


async def test_keep_alive_serves_several_requests_on_one_connection(served):
    reader, writer = await served.open()
    for i in range(3):
        writer.write(f"GET /open?i={i}&i=x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status == 200 and body == f"GET /open [('i', ['{i}', 'x'])] 0".encode()
        assert headers["content-type"].startswith("text/plain")
    writer.write(b"GET /open HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")   # pipelined
    assert (await read_response(reader))[0] == 200
    assert (await read_response(reader))[0] == 404
    writer.write(b"HEAD /open HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 15" in head.lower()
    writer.write(b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n")    # no body came after the HEAD's headers
    assert (await read_response(reader))[2] == b"GET /open [] 0"
    writer.close()


@pytest.mark.parametrize("raw, status, closes", [
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, False),
    (b"DELETE /open HTTP/1.1\r\nHost: x\r\n\r\n", 405, False),
    (b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n", 401, False),
    (b"GET /secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n", 401, False),
    (b"GET /secret HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + TOKEN + b"\r\n\r\n", 401, False),
    (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413, True),
    (b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"a" * 101 + b"\r\n0\r\n\r\n",
     413, True),
    (b"POST /upload HTTP/1.1\r\nHost: x\r\n\r\n", 411, True),
    (b"GET /open HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n", 431, True),
    (b"GARBAGE\r\n\r\n", 400, True),
    (b"GET /open HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400, True),
    (b"GET /open HTTP/1.1\r\n\r\n", 400, True),                 # HTTP/1.1 without Host
    (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", 500, False),
    (b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", 503, False),
])
async def test_bad_requests_get_a_clear_status_and_the_server_goes_on(served, raw, status, closes):
    got, headers, body, closed = await exchange(served, raw)
    assert got == status, body
    assert body.startswith(f"{status} ".encode())       # a one-line reason for people
    assert closed == closes
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    if status == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    await still_serving(served)


async def test_the_token_opens_auth_routes_and_bodies_within_the_limit_arrive(served):
    status, headers, body, _ = await exchange(
        served, b"GET /secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\n\r\n")
    assert status == 200 and headers["x-seen-auth"] == "True"
    status, _, body, _ = await exchange(served, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                                        + b"b" * 100)
    assert status == 200 and body.endswith(b" 100")
    status, _, body, _ = await exchange(served, b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                        b"Content-Length: 3\r\n\r\nabc")
    assert status in (100, 200)


async def test_slow_and_idle_clients_are_dropped(served):
    # A request that never finishes its head: 408 after http_request_timeout, then closed.
    reader, writer = await served.open()
    writer.write(b"GET /open HTTP/1.1\r\nHost: x\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 408 and headers["connection"] == "close"
    async with asyncio.timeout(3):
        assert await reader.read(1) == b""
    writer.close()
    # A body that stops short, and an idle keep-alive connection: closed without a word.
    reader, writer = await served.open()
    writer.write(b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    async with asyncio.timeout(3):
        assert await reader.read(1) == b""      # http_idle_timeout (1 s) passed
    writer.close()
    await still_serving(served)


async def test_connections_beyond_the_limit_get_503_and_the_rest_are_served(served):
    held = [await served.open() for _ in range(4)]
    await asyncio.sleep(0.05)
    status, _, body, closed = await exchange(served, b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and closed
    for _, w in held:
        w.close()
    for _ in range(50):
        if served.server.open == 0:
            break
        await asyncio.sleep(0.02)
    await still_serving(served)


async def test_a_client_that_vanishes_mid_request_costs_nothing(served):
    for raw in (b"GET /op", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc", b"\x16\x03\x01"):
        reader, writer = await served.open()
        writer.write(raw)
        await writer.drain()
        writer.transport.abort()
    await still_serving(served)
    for _ in range(50):
        if served.server.open == 0:
            break
        await asyncio.sleep(0.02)
    assert served.server.open == 0


def test_routes_must_be_paths():
    with pytest.raises(ValueError, match="must start with /"):
        HttpServer(TOKEN).route("GET", "metrics", _echo)
