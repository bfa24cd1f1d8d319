"""One inbound connection to a worker: the handshake under a small frame limit and a deadline, then routing.

The connection knows the wire; what a message means is the server's business
(``server.deliver_peer`` for peer data, ``server.handle_request`` for the
coordinator's requests), so this module imports nothing of the daemon.

What one client can cost the worker is bounded here: connections still in
their handshake are few (``max_pre_auth``; the oldest is closed to make room,
so an honest client, which answers the challenge in one round trip, still gets
in while a flood holds slots), what a frame decodes into is bounded by the
decoder, a connection whose replies are not read stops being read
(``pause_writing``), and pings are answered inline rather than one task each.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from shardstats import logs
from shardstats.errors import JobError
from shardstats.protocol.errors import HandshakeFailed, ProtocolError
from shardstats.protocol.frames import FrameDecoder, encode_frame
from shardstats.protocol.handshake import ServerHandshake
from shardstats.protocol.messages import LIVE_REQUESTS, validate


class InboundConnection(asyncio.Protocol):
    """One inbound connection: handshake under a small frame limit and a deadline, then routing.

    Anything that breaks the protocol (garbage, a frame over the limit, a message of
    the wrong shape, a peer speaking for another rank, a hello without a valid token
    proof or with an id that is not a peer's) closes this connection only; it is
    logged and the worker keeps serving everyone else.
    """

    def __init__(self, server) -> None:   # a WorkerServer (worker/server.py); not imported: arrows run one way
        self.server = server
        self.decoder = FrameDecoder(max_frame=server.settings.pre_auth_max_frame,
                                    max_containers=server.settings.pre_auth_max_containers)
        self.hs = ServerHandshake(server.token, server.id)
        self.role: str | None = None
        self.peer_id: int | None = None
        self.jobs: set[str] = set()           # coordinator: the jobs it loaded here
        self.used_by: set[str] = set()        # peer: the jobs it delivered messages to
        self.loading = 0                      # coordinator: admitted loads whose job is not registered yet
        self.transport: asyncio.Transport | None = None
        self.peername = None
        self._deadline: asyncio.TimerHandle | None = None
        self._silence_limit: float | None = None     # coordinator connections with jobs: drop them after this
        self._last_rx = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._upgrading = False       # between our "starttls" and the end of the TLS handshake

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        st = self.server.settings
        transport.set_write_buffer_limits(high=st.write_high_water, low=st.write_low_water)
        if not self.server.admit(self):
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        # One deadline covers TLS and the token handshake: a slow or silent client is dropped either way.
        self._deadline = loop.call_later(self.server.settings.handshake_timeout, self._too_slow)
        tls = self.server.tls_context
        if tls is None:
            transport.write(encode_frame(self.hs.challenge()))
            return
        self._upgrading = True        # a byte in the clear before the announcement closes the connection
        self.server.spawn(self._upgrade(transport, tls))

    async def _upgrade(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        """The server side of TLS (protocol/handshake.py says why it starts after a clear announcement).

        The announcement is written here, in the same step that hands the transport to the
        TLS layer, never in ``connection_made``: uvloop starts reading after
        ``connection_made`` returns whatever it paused, so a fast client's ClientHello could
        reach this protocol in the clear before ``start_tls`` took over (1 connection in ~1,000
        on loopback, seen as "refused this client's certificate").
        """
        if raw.is_closing():
            return
        raw.write(encode_frame(self.hs.starttls()))
        try:
            secure = await asyncio.get_running_loop().start_tls(
                raw, self, tls, server_side=True, ssl_handshake_timeout=self.server.settings.handshake_timeout)
        except ssl.SSLError as exc:
            # A client we do not trust, or one that does not trust us: worth a line in the log.
            logs.event("tls_refused", logging.WARNING, remote=self.peername, error=exc.reason or exc)
            raw.close()
            return
        except (OSError, ConnectionError, TimeoutError) as exc:
            # Gone before or during TLS: a plain client that read our announcement, a port probe.
            logs.event("tls_abandoned", logging.DEBUG, remote=self.peername, error=repr(exc))
            raw.close()
            return
        finally:
            self._upgrading = False
        if secure is None or secure.is_closing():
            return
        self.transport = secure
        st = self.server.settings
        secure.set_write_buffer_limits(high=st.write_high_water, low=st.write_low_water)
        secure.write(encode_frame(self.hs.challenge()))

    def _too_slow(self) -> None:
        self.server.refused("handshake_timeout", self.peername, "no valid hello in time")
        self._close()

    # -- write backpressure: a client that does not read its replies is not read from ----
    def pause_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def reply(self, msg: dict) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(msg, self.server.settings.max_frame))

    def data_received(self, data: bytes) -> None:
        if self._upgrading:      # cannot happen (reading is paused); never parse clear bytes meant to be TLS
            self._close()
            return
        self._last_rx = asyncio.get_running_loop().time()
        try:
            for msg, nbytes, cost in self.decoder.feed_costed(data):
                if self.role is None:
                    self._handshake(msg)
                    continue
                validate(msg)
                if self.role == "peer":
                    if msg["t"] == "live":
                        self.server.live.deliver(self.peer_id, msg)       # a flush of live top-K counts
                        continue
                    if msg["t"] != "peer":
                        raise ProtocolError(f"peer sent a {msg['t']} message")
                    self.server.deliver_peer(self.peer_id, msg, nbytes, cost, self)
                elif msg["t"] == "ping":
                    self.server.answer_ping(msg, self.reply)      # inline: no task per ping
                elif msg["t"] in ("load", "run", "abort"):
                    refusal = self.server.admit_request(msg, self) if msg["t"] != "abort" else None
                    if refusal is not None:
                        self.reply(refusal)
                        continue
                    self.server.spawn(self.server.handle_request(msg, self.reply, self))
                elif msg["t"] in LIVE_REQUESTS:
                    self.server.live.request(msg, self.reply)          # inline: bounded work each
                else:
                    raise ProtocolError(f"coordinator sent a {msg['t']} message")
        except ProtocolError as exc:
            if self.role is None:
                self.server.refused("handshake_refused", self.peername, exc)
            else:
                logs.event("protocol_error", logging.WARNING, remote=self.peername, role=self.role,
                           peer=self.peer_id, error=exc)
            self._close()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # A shape validate() let through that the code behind it did not expect: still the peer's fault.
            logs.event("protocol_error", logging.WARNING, remote=self.peername, role=self.role,
                       peer=self.peer_id, error=repr(exc))
            self._close()

    def _handshake(self, msg: dict) -> None:
        welcome = self.hs.receive_hello(msg)
        role, pid = self.hs.peer_role, self.hs.peer_id
        # Checked before the welcome goes out: a refused client learns nothing.
        if role == "peer" and (not 0 <= pid < len(self.server.peers) or pid == self.server.id):
            raise HandshakeFailed(f"peer claims worker id {pid}, which is not a peer of worker {self.server.id}")
        self.reply(welcome)
        self.role, self.peer_id = role, pid
        self.decoder.max_frame = self.server.settings.max_frame
        self.decoder.max_containers = self.server.settings.max_containers
        self.server.authenticated(self)
        if self._deadline is not None:
            self._deadline.cancel()
        logs.event("connection_authenticated", logging.DEBUG, role=role, peer=pid, remote=self.peername)

    # -- the coordinator's liveness ------------------------------------------------
    def watch_job(self, job_id: str, dead_after: object) -> None:
        """Ties a job to this coordinator connection; its silence past ``dead_after`` s drops the job."""
        self.jobs = {j for j in self.jobs if j in self.server.jobs}     # forget the finished ones
        self.jobs.add(job_id)
        limit = float(dead_after) if isinstance(dead_after, (int, float)) and not isinstance(dead_after, bool) \
            and 0 < dead_after < 3600 else self.server.settings.coordinator_silence
        self._silence_limit = limit if self._silence_limit is None else min(limit, self._silence_limit)
        if self._watchdog is None:
            self._arm()

    def _arm(self) -> None:
        assert self._silence_limit is not None
        self._watchdog = asyncio.get_running_loop().call_later(self._silence_limit / 4, self._check_silence)

    def _check_silence(self) -> None:
        self._watchdog = None
        live = [j for j in self.jobs if j in self.server.jobs]
        if not live or self.transport is None or self.transport.is_closing():
            self._silence_limit = None
            return
        assert self._silence_limit is not None
        silent = asyncio.get_running_loop().time() - self._last_rx
        if silent > self._silence_limit:
            logs.event("coordinator_silent", logging.WARNING, remote=self.peername, seconds=round(silent, 2),
                       jobs=",".join(live))
            for job_id in live:
                self.server._drop(job_id, JobError(f"coordinator silent for {silent:.1f}s"))
            self._close()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        for timer in (self._deadline, self._watchdog):
            if timer is not None:
                timer.cancel()
        self.server.forget(self)
        if self.role == "coord":
            # A coordinator that went away leaves no one to collect its jobs: cancel them.
            for job_id in self.jobs:
                self.server._drop(job_id, JobError("coordinator disconnected"))
        elif self.role == "peer" and self.peer_id is not None and self.used_by:
            # A peer connection that carried data for jobs closed: those jobs lost data they need.
            # Only those: a second connection that merely claims the same id and hangs up (or the
            # real peer's idle spare) must not fail jobs that never received a byte through it.
            self.server._peer_failed(self.peer_id, exc or ConnectionError("inbound connection closed"),
                                     only=self.used_by)
