"""The worker's small HTTP/1.1 server: metrics for Prometheus, and routes other modules add.

Why a server of our own and not aiohttp: a worker needs a handful of GET routes, and h11
(sans-IO, like our protocol/) does the parsing; this module only carries bytes between
asyncio streams and h11, with the same guards as the worker's own port:

* every read has a deadline: ``http_idle_timeout`` for a keep-alive connection's next
  request, ``http_request_timeout`` for a request's head and body once its first byte came
  (a slowloris client is dropped, with 408 when it can still be told);
* the head is bounded by ``http_max_header_bytes`` (431), a body by the route's ``max_body``
  or ``http_max_body`` (413, refused before it is read), a body without a length on a method
  that carries one is 411, a malformed request 400, an unknown path 404, a known path with
  another method 405 (with ``Allow``), a route with ``auth`` and no valid bearer token 401;
* at most ``http_max_connections`` at once (more get 503 and are closed);
* a handler that raises answers 500, one that runs past ``http_handler_timeout`` 503; no
  client can end the server, and the server never ends the worker (it runs in the worker's
  task group and every connection is a task of its own group).

With TLS the port speaks HTTPS with the worker's own certificate; clients need no
certificate (Prometheus and curl rarely have one; the token guards ``auth`` routes).

The interface (for the routes other modules add; keep it stable)::

    @dataclass
    class Request:  method: str; path: str; query: dict[str, list[str]]
                    headers: dict[str, str]   # names in lower case (repeated headers joined by ", ")
                    body: bytes
    @dataclass
    class Response: status: int; body: bytes = b""; content_type: str = "text/plain; charset=utf-8"
                    headers: dict[str, str] = {}
    Handler = Callable[[Request], Awaitable[Response]]

    server = HttpServer(token, settings=..., ssl_context=...)
    server.route("GET", "/metrics", handler, auth=False)            # before or while serving
    server.route("POST", "/x", handler, max_body=1 << 20)           # auth=True: Bearer <cluster token>
    await server.serve(host, port, ready)                           # until cancelled; .port once ready

A ``HEAD`` request runs the ``GET`` route and sends its headers only.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from shardstats import logs
from shardstats.settings import DEFAULTS, Settings

__all__ = ["Request", "Response", "Handler", "HttpServer"]

_READ = 64 * 1024
_BODY_METHODS = {"POST", "PUT", "PATCH"}


@dataclass
class Request:
    method: str
    path: str                       # percent-decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]         # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    handler: Handler
    auth: bool
    max_body: int


class _Refuse(Exception):
    """A request answered with an error status; ``close``: the connection cannot be reused after it."""

    def __init__(self, status: int, message: str, *, close: bool = False, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.close = close
        self.headers = headers or {}


def _bodiless_end(conn: h11.Connection) -> bool:
    """Whether a refused request's end is already here (a GET without a body): then the connection
    may carry the next request; a body left unread means closing it."""
    try:
        while conn.their_state is h11.SEND_BODY:
            event = conn.next_event()
            if not isinstance(event, h11.EndOfMessage):
                return False
    except h11.ProtocolError:
        return False
    return conn.their_state is h11.DONE


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(status, f"{status} {HTTPStatus(status).phrase}: {message}\n".encode(), headers=headers or {})


class HttpServer:
    """Routes and the accept loop; see the module docstring for the guards and the interface."""

    def __init__(self, token: bytes | None, *, settings: Settings = DEFAULTS,
                 ssl_context: ssl.SSLContext | None = None, name: str = "http") -> None:
        """``token``: what ``auth`` routes demand as ``Authorization: Bearer <token>`` (None: they answer 401)."""
        self.token = token
        self.settings = settings
        self.ssl_context = ssl_context
        self.name = name
        self.port: int | None = None
        self.open = 0                    # connections now
        self.requests = 0                # requests answered, ever (any status)
        self.refused = 0                 # of which with a 4xx/5xx the server chose (not a handler's)
        self._routes: dict[str, dict[str, _Route]] = {}

    def route(self, method: str, path: str, handler: Handler, *, auth: bool = True,
              max_body: int | None = None) -> None:
        """Serves ``method path`` with ``handler``; a second route for the same pair replaces the first."""
        if not path.startswith("/"):
            raise ValueError(f"route path {path!r} must start with /")
        limit = self.settings.http_max_body if max_body is None else max_body
        self._routes.setdefault(path, {})[method.upper()] = _Route(handler, auth, limit)

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        """Listens on ``host:port`` (0: any free port, then in ``self.port``) until cancelled."""
        group: list[asyncio.TaskGroup] = []

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if group:
                group[0].create_task(self._connection(reader, writer))
            else:                             # not serving yet, or no more
                writer.close()
        tls = {} if self.ssl_context is None else {"ssl": self.ssl_context,
                                                   "ssl_handshake_timeout": self.settings.http_request_timeout}
        # Bound before the group: a port in use is this call's OSError, not a group's.
        server = await asyncio.start_server(accepted, host, port, reuse_address=True, **tls)
        try:
            async with asyncio.TaskGroup() as tg:
                group.append(tg)
                self.port = server.sockets[0].getsockname()[1]
                logs.event("http_listening", addr=f"{host}:{self.port}", tls=self.ssl_context is not None)
                if ready is not None:
                    ready.set()
                await asyncio.Future()        # until cancelled: the group then cancels every connection
        finally:
            group.clear()
            server.close()

    # -- one connection ----------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection until it closes, fails or idles; never raises (but cancellation)."""
        peer = writer.get_extra_info("peername")
        st = self.settings
        self.open += 1
        try:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=st.http_max_header_bytes)
            if self.open > st.http_max_connections:
                await self._send(conn, writer, _error(503, f"{self.open - 1} connections open"), close=True)
                return
            while await self._cycle(conn, reader, writer):
                conn.start_next_cycle()
        except (OSError, TimeoutError, ssl.SSLError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
            logs.event("http_connection_lost", logging.DEBUG, remote=peer, error=repr(exc))
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not end the server
            logs.event("http_connection_crashed", logging.ERROR, remote=peer, error=repr(exc))
        finally:
            self.open -= 1
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass

    async def _cycle(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its response; whether the connection may carry another."""
        st = self.settings
        loop = asyncio.get_running_loop()
        try:
            buffered, closed = conn.trailing_data
            if not buffered and not closed:                # keep-alive: wait for the next request's first bytes
                try:
                    async with asyncio.timeout(st.http_idle_timeout):
                        data = await reader.read(_READ)
                except TimeoutError:
                    return False                           # an idle connection: close it quietly
                conn.receive_data(data)
            deadline = loop.time() + st.http_request_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    event = await self._next(conn, reader)
                    if isinstance(event, h11.ConnectionClosed):
                        return False
                    assert isinstance(event, h11.Request), event
                    request, route = self._parse(event)
                    request.body = await self._body(conn, reader, writer, request, route)
            except TimeoutError:
                raise _Refuse(408, f"the request did not arrive within {st.http_request_timeout:g}s",
                              close=True) from None
            except h11.RemoteProtocolError as exc:
                raise _Refuse(exc.error_status_hint, str(exc) or "malformed request", close=True) from None
        except _Refuse as refuse:
            self.refused += 1
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return False
            close = refuse.close or not _bodiless_end(conn)
            await self._send(conn, writer, _error(refuse.status, str(refuse), refuse.headers), close=close)
            return not close and conn.our_state is h11.DONE and conn.their_state is h11.DONE
        response = await self._handle(route, request)
        await self._send(conn, writer, response, head_only=request.method == "HEAD")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader):
        """The next h11 event, reading as it needs (the caller holds the deadline)."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await reader.read(_READ))

    def _parse(self, event: h11.Request) -> tuple[Request, _Route]:
        """The request as our ``Request`` (body still unread) and its route, or ``_Refuse``."""
        size = len(event.method) + len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > self.settings.http_max_header_bytes:      # h11 bounds only a head still incomplete
            raise _Refuse(431, f"the request's head is over {self.settings.http_max_header_bytes} bytes", close=True)
        method = event.method.decode("ascii", "replace").upper()
        target = event.target.decode("ascii", "replace")
        parts = urlsplit(target)
        path = unquote(parts.path or "/")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            k, v = name.decode("ascii", "replace").lower(), value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        request = Request(method, path, parse_qs(parts.query, keep_blank_values=True), headers)
        methods = self._routes.get(path)
        if methods is None:
            raise _Refuse(404, f"no route {path}")
        route = methods.get("GET" if method == "HEAD" else method)
        if route is None:
            allowed = sorted(methods) + (["HEAD"] if "GET" in methods else [])
            raise _Refuse(405, f"{path} takes {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})
        if route.auth and not self._authorized(headers.get("authorization", "")):
            raise _Refuse(401, f"{path} needs Authorization: Bearer <cluster token>",
                          headers={"WWW-Authenticate": 'Bearer realm="shardstats"'})
        return request, route

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.strip().partition(" ")
        if self.token is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1", "replace"), self.token)

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: Request, route: _Route) -> bytes:
        """The request's body within the route's limit: 413 (before reading) above it, 411 without a length."""
        length = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if length is None and not chunked and request.method in _BODY_METHODS:
            raise _Refuse(411, f"{request.method} needs a Content-Length", close=True)
        if length is not None and int(length) > route.max_body:      # h11 checked it is a number
            raise _Refuse(413, f"a body of {length} bytes is over this route's {route.max_body}", close=True)
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > route.max_body:
                    raise _Refuse(413, f"the body is over this route's {route.max_body} bytes", close=True)
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the connection closed inside a request body")

    async def _handle(self, route: _Route, request: Request) -> Response:
        """The handler's response; 500 when it raises, 503 when it runs past ``http_handler_timeout``."""
        try:
            async with asyncio.timeout(self.settings.http_handler_timeout):
                response = await route.handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not a Response")
            return response
        except TimeoutError:
            self.refused += 1
            logs.event("http_handler_timeout", logging.WARNING, path=request.path)
            return _error(503, f"{request.path} did not answer within {self.settings.http_handler_timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - a handler's bug is the client's 500, not the worker's end
            self.refused += 1
            logs.event("http_handler_failed", logging.ERROR, path=request.path, error=repr(exc))
            return _error(500, f"{request.path} failed: {type(exc).__name__}")

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, *,
                    close: bool = False, head_only: bool = False) -> None:
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *response.headers.items()]
        if close:
            headers.append(("Connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=response.status, headers=headers))
            if response.body and not head_only:
                data += conn.send(h11.Data(data=response.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:      # a state h11 will not answer in (a broken request)
            logs.event("http_unanswerable", logging.DEBUG, error=str(exc))
            return
        self.requests += 1
        writer.write(data)
        async with asyncio.timeout(self.settings.http_request_timeout):
            await writer.drain()
