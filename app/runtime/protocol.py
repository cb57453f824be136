"""Connection defences for ``python -m app.serve``: uvicorn's httptools protocol with limits it lacks.

uvicorn keeps every header line a client sends, has no timeout for headers or bodies and no cap on
open connections, so one client with many slow connections can exhaust memory or file descriptors.
This is uvicorn's own protocol (kept for its speed; h11 has a header limit but parses in Python)
plus the limits of :class:`ConnectionLimits`:

* a header section over ``max_header_bytes`` gets 431 and the connection is closed;
* headers must arrive within ``header_timeout_s`` (408, closed), bodies at ``body_min_rate_bytes_s``
  over each ``body_timeout_s`` window (closed);
* at most ``max_connections`` per worker: past it, a new connection displaces the oldest one that
  has waited a while for its headers or sits on a stalled body, and with none such it is answered
  503 (:meth:`Guard.admit`);
* bodies still arriving hold at most ``max_pending_body_bytes`` per worker: past it an upload of
  more than :data:`FREE_BODY_BYTES` waits with its reading paused, such uploads are closed after
  one sweep without progress instead of a window, and when every upload waits, the one nearest
  completion goes on.

The request path gains counters only. The timeouts are checked by one sweep per worker every
:data:`SWEEP_INTERVAL_S`, which also notes when each connection entered its current phase; no timer
per request.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import sys
import termios
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, get_settings

PROTOCOL = "app.runtime.protocol:GuardedProtocol"
SWEEP_INTERVAL_S = 0.5
# Bodies up to this size are never held for the body budget: an ordinary image goes through while
# big uploads wait. Stalled ones are still closed.
FREE_BODY_BYTES = 1024 * 1024
# File descriptors a worker needs besides its connections: the listening socket, the model's files,
# torch's and the decode pool's threads, logs.
FD_RESERVE = 128
REPORT_S = 10.0
logger = logging.getLogger("glimpse")
# What a connection waits for: the client (its headers, its body, reading the answer) or us.
HEADERS, BODY, READING, WORKING = "headers", "body", "reading", "working"
ADMITTED, REFUSED, DROPPED = "admitted", "refused", "dropped"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate_bytes_s: int
    max_connections: int
    max_pending_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_min_rate_bytes_s=settings.body_min_rate_bytes_s,
            max_connections=connection_cap(settings.max_connections),
            max_pending_body_bytes=settings.max_pending_body_bytes,
        )


def raise_file_limit(max_connections: int) -> None:
    """Raise this process's open-file limit (soft, up to the hard one) to fit the connection cap.

    Run before the workers start, which inherit it. A worker that runs out of descriptors cannot
    accept even the connections it would let in.
    """
    if sys.platform == "win32":  # no open-file limit to raise
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(hard, wanted), hard)
        )


def connection_cap(max_connections: int) -> int:
    """``GLIMPSE_MAX_CONNECTIONS``, lowered to what the open-file limit leaves room for."""
    if sys.platform == "win32":
        return max_connections
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= max_connections:
        return max_connections
    cap = max(1, soft - FD_RESERVE)
    logger.warning(
        "open-file limit %d: at most %d connections, not GLIMPSE_MAX_CONNECTIONS=%d",
        soft,
        cap,
        max_connections,
    )
    return cap


def error_response(status: str, code: str, message: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 response in the service's error shape, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status}", "content-type: application/json", f"content-length: {len(body)}"]
    head += [*headers, "connection: close", "", ""]
    return "\r\n".join(head).encode() + body


HEADERS_TOO_LARGE = "431 Request Header Fields Too Large"
TIMED_OUT = error_response("408 Request Timeout", "timeout", "the request's headers did not arrive in time")


CUT_OFF_HEADERS = error_response(
    "400 Bad Request", "invalid_request", "the client closed the connection inside the request's headers"
)
CUT_OFF_BODY = error_response(
    "400 Bad Request", "invalid_request", "the client closed the connection before the body was complete"
)


def body_timed_out(limits: ConnectionLimits) -> bytes:
    """The answer to an upload whose body stopped arriving, before its connection is closed."""
    message = (
        f"the request's body stopped arriving: at least {limits.body_min_rate_bytes_s} bytes a second "
        f"over {limits.body_timeout_s:g} s are needed"
    )
    return error_response("408 Request Timeout", "timeout", message)


async def over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The app of a connection admitted past the cap: 503, and the connection closes."""
    body = b'{"error":{"code":"overloaded","message":"too many open connections; retry later"}}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def unsent_bytes(transport: asyncio.Transport) -> int | None:
    """Bytes of answers the client has not taken yet: the transport's buffer and the kernel's send
    queue (the kernel buffers megabytes on its own, so the transport's buffer alone stands still while
    a slow client reads). None where the send queue cannot be read (``TIOCOUTQ`` is Linux's)."""
    sock = transport.get_extra_info("socket")
    try:
        queued = int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), sys.byteorder)
    except (AttributeError, OSError):
        return None
    return transport.get_write_buffer_size() + queued


class HeldFlowControl(FlowControl):
    """uvicorn's flow control, where a read paused for the body budget stays paused until released.

    uvicorn resumes reading whenever the app asks for more body; an upload held back to bound
    memory must not start again that way.
    """

    held = False

    def resume_reading(self) -> None:
        if not self.held:
            super().resume_reading()

    def hold(self) -> None:
        self.held = True
        self.pause_reading()

    def release(self) -> None:
        self.held = False
        self.resume_reading()


class Guard:
    """One worker's connections, the body budget, and the sweep that enforces the timeouts."""

    def __init__(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        self.connections: dict[GuardedProtocol, None] = {}  # in order of arrival
        self.held: dict[GuardedProtocol, None] = {}  # uploads waiting for the body budget, in order
        self.pending_body_bytes = 0
        self.stopping = False
        self.no_victim_before = 0.0  # loop time before which no connection can be displaced
        # What the defences turned away since the last report (one log line at most every REPORT_S).
        self.shed = dict.fromkeys(
            ("header_timeout", "body_stalled", "answer_unread", "displaced", "refused", "too_large"), 0
        )
        self.reported_at = loop.time()
        loop.call_later(SWEEP_INTERVAL_S, self.sweep)

    def admit(self, protocol: GuardedProtocol) -> str:
        """Count a new connection in: :data:`ADMITTED`, :data:`REFUSED` (503) or :data:`DROPPED`.

        Past the cap it displaces the connection that has waited longest on its client, once that
        wait has lasted a sweep; a connection younger than that is never displaced, so that a burst
        of new connections cannot push out one that is sending its request. With no such connection,
        the newcomer is answered 503, or closed at once past an eighth more than the cap.
        """
        self.connections[protocol] = None
        count = len(self.connections)
        if count <= self.limits.max_connections:
            return ADMITTED
        victim = self.longest_waiting(exclude=protocol)
        if victim is not None:
            self.shed["displaced"] += 1
            victim.close(TIMED_OUT if victim.phase() == HEADERS and victim.partial_headers() else b"")
            return ADMITTED
        self.shed["refused"] += 1
        return DROPPED if count > self.limits.max_connections * 9 // 8 + 16 else REFUSED

    def longest_waiting(self, exclude: GuardedProtocol) -> GuardedProtocol | None:
        """The first connection, in arrival order, that has waited on its client (for its headers, or
        on a stalled body) or for the body budget since before the last sweep; None when none has."""
        now = self.loop.time()
        if now < self.no_victim_before:  # a burst of new connections: nobody has waited long enough
            return None
        settled = now - SWEEP_INTERVAL_S
        first_wait = now
        for protocol in self.connections:
            if protocol is exclude or protocol.closing:
                continue
            phase = protocol.phase()
            if phase == HEADERS or (phase == BODY and protocol.stalled_for_a_sweep) or protocol in self.held:
                # A phase the sweep has not seen yet began just now (a response just finished, say).
                since = protocol.phase_since if (phase, protocol.requests) == protocol.seen else now
                if since < settled:
                    return protocol
                first_wait = min(first_wait, since)
        self.no_victim_before = first_wait + SWEEP_INTERVAL_S
        return None

    def forget(self, protocol: GuardedProtocol) -> None:
        self.connections.pop(protocol, None)
        self.held.pop(protocol, None)
        self.pending_body_bytes -= protocol.body_bytes
        protocol.body_bytes = 0
        if self.held:
            self.release_room()

    def sweep(self) -> None:
        now = self.loop.time()
        pressed = (
            self.stopping or bool(self.held) or self.pending_body_bytes > self.limits.max_pending_body_bytes
        )
        for protocol in list(self.connections):
            if not protocol.closing:
                protocol.check(now, pressed)
        self.release_held()
        if now - self.reported_at >= REPORT_S and any(self.shed.values()):
            counts = ", ".join(
                f"{count} {reason.replace('_', ' ')}" for reason, count in self.shed.items() if count
            )
            logger.warning("connections turned away in the last %.0f s: %s", now - self.reported_at, counts)
            self.shed = dict.fromkeys(self.shed, 0)
            self.reported_at = now
        self.loop.call_later(SWEEP_INTERVAL_S, self.sweep)

    def release_room(self) -> None:
        """Let waiting uploads go on, first come first, while the budget allows."""
        while self.held and self.pending_body_bytes < self.limits.max_pending_body_bytes:
            self.release(next(iter(self.held)))

    def release_held(self) -> None:
        """:meth:`release_room`, and let one go on past the budget when every upload waits."""
        self.release_room()
        if self.held and not any(p.progressing() for p in self.connections):
            nearest = max(self.held, key=lambda p: p.body_bytes)
            self.release(nearest)
            nearest.go_past_budget()

    def hold(self, protocol: GuardedProtocol) -> None:
        self.held[protocol] = None
        protocol.flow.hold()

    def release(self, protocol: GuardedProtocol) -> None:
        del self.held[protocol]
        protocol.flow.release()


_guards: dict[asyncio.AbstractEventLoop, Guard] = {}


def worker_guard(loop: asyncio.AbstractEventLoop) -> Guard:
    """This event loop's guard, made at its first connection with the limits from the settings."""
    guard = _guards.get(loop)
    if guard is None:
        guard = _guards[loop] = Guard(ConnectionLimits.from_settings(get_settings()), loop)
    return guard


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under the limits of its worker's :class:`Guard`.

    Passed by name (:data:`PROTOCOL`) as ``uvicorn.Config(http=...)``.
    """

    flow: HeldFlowControl

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = worker_guard(self.loop)
        self.limits = self.guard.limits
        self.received = 0  # bytes of this connection
        self.headers_from = 0  # self.received when the current request's header section began
        self.reading_headers = True
        self.body_bytes = 0  # of the body still arriving, counted in Guard.pending_body_bytes
        self.past_budget = False  # let go on past the body budget (Guard.release_held)
        self.requests = 0
        self.closing = False
        # Kept by the sweep: the phase it last saw, since when, and the body's progress.
        self.seen = (HEADERS, 0)
        self.phase_since = self.loop.time()
        self.window_start = 0.0
        self.window_bytes = 0
        self.last_sweep_bytes = 0
        self.stalled_for_a_sweep = False

    # Connection events
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = HeldFlowControl(transport)
        admitted = self.guard.admit(self)
        if admitted == REFUSED:
            self.app = over_capacity  # answered once its headers are in; displaced first meanwhile
        elif admitted == DROPPED:
            self.close(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.guard.forget(self)
        super().connection_lost(exc)

    def eof_received(self) -> None:
        """The client closed its side of the connection in the middle of a request: answer 400, saying
        where, before uvicorn closes it.

        After a whole request an end of input stays what uvicorn (and nginx, with its 499) take it for,
        a client that went away, whose work is cancelled (:func:`app.pipeline.core._unless_gone`): a
        half-close (``shutdown(SHUT_WR)``) cannot be told from a close, and computing answers for every
        client that gave up would add to an overload instead of shedding it.
        """
        if self.closing:
            return
        cycle = self.cycle
        if not self.reading_headers and cycle is not None and cycle.more_body:
            self.close(CUT_OFF_BODY)
        elif self.partial_headers() and (cycle is None or cycle.response_complete):
            self.close(CUT_OFF_HEADERS)

    def shutdown(self) -> None:
        self.guard.stopping = True  # stalled uploads are closed after one sweep, not a window
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)
        if self.reading_headers and self.received - self.headers_from > self.limits.max_header_bytes:
            self.refuse_headers()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refuses, in the service's error shape.

        uvicorn calls this inside its ``except HttpParserError``, with a fixed text; the parser's own
        words ("Invalid character in chunk size", "Duplicate Content-Length") say what is wrong.
        """
        error = sys.exc_info()[1]
        reason = str(error) if error is not None and str(error) else msg
        message = f"malformed HTTP request: {reason}"
        self.close(error_response("400 Bad Request", "invalid_request", message))

    # Parser callbacks; after a refusal the parser may still run over the rest of the chunk.
    def on_headers_complete(self) -> None:
        if self.closing:
            return
        self.reading_headers = False
        self.requests += 1
        # Whole chunks are counted; only when they add up to more is the section itself measured.
        limit = self.limits.max_header_bytes
        if self.received - self.headers_from > limit and self.header_size() > limit:
            self.refuse_headers()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        super().on_body(body)
        self.body_bytes += len(body)
        guard = self.guard
        guard.pending_body_bytes += len(body)
        if (
            guard.pending_body_bytes > self.limits.max_pending_body_bytes
            and self.body_bytes > FREE_BODY_BYTES
            and not self.past_budget
            and self not in guard.held
        ):
            guard.hold(self)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        super().on_message_complete()
        self.reading_headers = True
        self.headers_from = self.received
        guard = self.guard
        guard.pending_body_bytes -= self.body_bytes
        self.body_bytes = 0
        self.past_budget = False
        if self in guard.held:  # held by the chunk that also ended its body
            guard.release(self)
        if guard.held:
            guard.release_room()

    # The guard's view
    def progressing(self) -> bool:
        """Receiving a body, and not stalled at the last sweep."""
        return not self.closing and self.phase() == BODY and not self.stalled_for_a_sweep

    def go_past_budget(self) -> None:
        """Let this held upload go on to its end; if it stalls for a sweep, it is closed."""
        self.past_budget = True
        self.seen, self.phase_since = (BODY, self.requests), self.loop.time()
        self.window_start, self.window_bytes = self.phase_since, self.body_bytes
        self.last_sweep_bytes = self.body_bytes

    def phase(self) -> str:
        if self.flow.write_paused:  # more of an answer than the transport buffers waits on the client
            return READING
        cycle = self.cycle
        if self.reading_headers:
            return WORKING if cycle is not None and not cycle.response_complete else HEADERS
        if cycle is not None and cycle.more_body and not self.flow.read_paused:
            return BODY
        return WORKING  # the app is working, or has not read what came (paused: not the client's fault)

    def check(self, now: float, pressed: bool) -> None:
        """The sweep's look at this connection: note phase changes, close what ran out of time."""
        phase = self.phase()
        key = (phase, self.requests)
        if key != self.seen:
            self.seen, self.phase_since = key, now
            self.window_start, self.window_bytes = now, self.body_bytes
            self.last_sweep_bytes = self.body_bytes
        if phase == HEADERS:
            if now - self.phase_since > self.limits.header_timeout_s:
                self.guard.shed["header_timeout"] += 1
                self.close(TIMED_OUT if self.partial_headers() else b"")
            return
        if phase == READING:
            self.check_reading(now)
            return
        min_rate = self.limits.body_min_rate_bytes_s
        swept_bytes, self.last_sweep_bytes = self.last_sweep_bytes, self.body_bytes
        self.stalled_for_a_sweep = (
            phase == BODY
            and now > self.phase_since
            and (self.body_bytes - swept_bytes < min_rate * SWEEP_INTERVAL_S)
        )
        # Under memory pressure a big upload that stalls for one sweep is closed; small ones, which
        # hold little, keep the whole window (a busy client may pause between headers and body).
        shed_now = pressed and self.stalled_for_a_sweep and self.body_bytes > FREE_BODY_BYTES
        if phase != BODY:
            return
        elapsed = now - self.window_start
        stalled = self.body_bytes - self.window_bytes < min_rate * elapsed
        if shed_now or (elapsed >= self.limits.body_timeout_s and stalled):
            self.guard.shed["body_stalled"] += 1
            self.close(body_timed_out(self.limits))
        elif elapsed >= self.limits.body_timeout_s:
            self.window_start, self.window_bytes = now, self.body_bytes

    def check_reading(self, now: float) -> None:
        """An answer must keep leaving, as a body must keep arriving: the client must read at least
        GLIMPSE_BODY_MIN_RATE_BYTES_S over each GLIMPSE_BODY_TIMEOUT_S window. uvicorn hands the whole
        answer to the transport at once, so one that is not read stays in memory for as long as its
        client keeps the connection; close() would wait to flush it, so the connection is aborted."""
        unsent = unsent_bytes(self.transport)
        if unsent is None:  # not measurable here: leave the client be
            return
        if self.phase_since == now:  # the client just stopped keeping up: a new window
            self.window_start, self.window_bytes = now, unsent
        elapsed = now - self.window_start
        if elapsed < self.limits.body_timeout_s:
            return
        if self.window_bytes - unsent < self.limits.body_min_rate_bytes_s * elapsed:
            self.guard.shed["answer_unread"] += 1
            self.closing = True
            self.transport.abort()
        else:
            self.window_start, self.window_bytes = now, unsent

    def partial_headers(self) -> bool:
        """Whether part of a request has come (then a 408 says why it is closed; an idle one just closes)."""
        return self.received > self.headers_from

    def header_size(self) -> int:
        """The size of the header section just parsed, give or take its line ends."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) + 16

    def refuse_headers(self) -> None:
        if self.closing or self.transport.is_closing():
            return
        self.guard.shed["too_large"] += 1
        message = f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
        self.close(error_response(HEADERS_TOO_LARGE, "headers_too_large", message))

    def close(self, response: bytes) -> None:
        """Close the connection, first answering with ``response`` unless an answer has begun."""
        if self.closing:
            return
        self.closing = True
        if response and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(response)
        self.transport.close()
