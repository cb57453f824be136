"""Slow and oversized clients against ``python -m app.serve``, as the README starts it.

Huge header sections, connections that send their headers a line at a time, uploads that stall
mid-body, more connections than a worker takes, and SIGTERM with a stalled upload: each against a
real server (app/runtime/protocol.py holds the defences), at sizes a 2-core CI machine runs in
seconds. The attacks are bench/slow_clients.py's, which measures them at full size
(docs/reliability.md). Asserted: statuses, closed connections, every normal request answered, memory
bounded; never latency, which a busy machine does not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.runtime.launcher import GRACEFUL_SHUTDOWN_S, parse_args
from bench.slow_clients import Target, raise_open_file_limit, run_attacks
from bench.slow_clients import parse_args as attack_args
from tests.helpers import png_bytes
from tests.serving import REPO_ROOT, Server, running

HEADER_LIMIT = 64 * 1024  # the default
UPLOAD_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: g\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    b"Content-Length: %d\r\n\r\n"
)
GUARDED = {
    "GLIMPSE_HEADER_TIMEOUT_S": "2",
    "GLIMPSE_BODY_TIMEOUT_S": "2",
    "GLIMPSE_MAX_CONNECTIONS": "200",
    "GLIMPSE_MAX_PENDING_BODY_BYTES": str(16 * 2**20),
    "GLIMPSE_REQUEST_TIMEOUT_S": "120",  # answers, not latency, on a busy machine
}


@pytest.fixture(scope="module")
def guarded() -> Iterator[Server]:
    raise_open_file_limit()  # hundreds of attacking sockets in this process
    with running(GUARDED, launcher=True) as server:
        yield server


def address(server: Server) -> tuple[str, int]:
    return "127.0.0.1", int(server.url.rsplit(":", 1)[1])


def exchange(server: Server, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server answers until it closes."""
    with socket.create_connection(address(server), timeout=60) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def attack(server: Server, *argv: str) -> dict[str, Any]:
    summary = asyncio.run(run_attacks(Target(server.url, server.process.pid), attack_args(list(argv))))
    print(json.dumps(summary))
    return summary


def assert_normal_client_served(summary: dict[str, Any]) -> None:
    """The normal client is answered throughout. One probe may find its new connection closed: one that
    arrives while the attack's burst fills the cap, before any attacker is old enough to be displaced
    (docs/reliability.md, "Limits and defences"); a client's one retry is then answered."""
    for probe in ("predict", "health_live"):
        assert sum(summary[probe]["failures"].values()) <= 1, summary[probe]
        assert summary[probe]["answered"] >= 1, summary[probe]


def test_a_header_section_just_under_the_limit_is_served_and_one_over_gets_431(guarded: Server) -> None:
    request = b"GET /health/live HTTP/1.1\r\nHost: glimpse\r\nX-Big: %s\r\n\r\n"
    under = exchange(guarded, request % (b"a" * (HEADER_LIMIT - 1024)))
    over = exchange(guarded, request % (b"a" * (HEADER_LIMIT + 1024)))
    assert under.startswith(b"HTTP/1.1 200 "), under[:200]
    head, _, body = over.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), head
    assert b"connection: close" in head
    assert json.loads(body) == {
        "error": {
            "code": "headers_too_large",
            "message": f"the request line and headers exceed {HEADER_LIMIT} bytes",
        }
    }


def test_an_endless_header_is_cut_off_and_holds_no_memory(guarded: Server) -> None:
    """One connection sending header bytes as fast as it can (the review sent 512 MB: RSS +515 MB)."""
    before = guarded.rss_kib()
    sent = 0
    answer = b""
    with socket.create_connection(address(guarded), timeout=60) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: glimpse\r\nX-Flood: ")
        try:
            while sent < 256 * 2**20:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # closed by the server (reset, once it stopped reading)
            pass
        with contextlib.suppress(OSError):
            answer = sock.recv(200)
    grown_mib = (guarded.rss_kib() - before) / 1024
    print(f"sent {sent / 2**20:.1f} MiB before the server closed; RSS {grown_mib:+.1f} MiB; {answer[:40]!r}")
    assert sent < 64 * 2**20  # cut off long before the client's 256 MiB (socket buffers hold some)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert grown_mib < 32
    assert httpx.get(f"{guarded.url}/health/live", timeout=60).status_code == 200


def test_slow_header_connections_are_closed_while_a_normal_client_is_answered(guarded: Server) -> None:
    """600 connections sending a header line every 0.5 s, three times the cap: the oldest are
    displaced (408), the rest time out (408 after 2 s), and new clients get in meanwhile."""
    summary = attack(
        guarded,
        *["--attack", "slow-headers", "--slow-connections", "600", "--line-interval-s", "0.5"],
        *["--duration-s", "8", "--probe-interval-s", "0.5"],
    )
    slow = summary["attacks"]["slow-headers"]
    assert slow["opened"] == 600
    assert slow["closed_by_server"] == 600
    assert set(slow["answers"]) <= {"408", "503"}  # or closed before their request line came
    # The cap and the eighth more answered 503, with room for sockets closed but not yet released
    # (and the listening one, the normal client's): far from the 600 plain uvicorn keeps.
    assert summary["server_sockets_at_most"] <= 200 * 9 // 8 + 16 + 64
    assert slow["open_at_end"] == 0
    assert_normal_client_served(summary)
    assert summary["rss_growth_mib"] < 100


def test_stalled_uploads_are_closed_and_their_memory_bounded(guarded: Server) -> None:
    """12 uploads of 8 MiB that stall after 2 MiB: 24 MiB sent against a 16 MiB body budget."""
    summary = attack(
        guarded,
        *["--attack", "stalled-uploads", "--uploads", "12", "--declared-mib", "8", "--sent-mib", "2"],
        *["--duration-s", "12", "--probe-interval-s", "0.5"],
    )
    uploads = summary["attacks"]["stalled-uploads"]
    assert uploads["opened"] == 12
    assert uploads["closed_by_server"] == 12
    assert uploads["open_at_end"] == 0
    assert_normal_client_served(summary)
    assert summary["rss_growth_mib"] < 16 + 32  # the budget, and room for everything else


def test_past_the_cap_with_no_connection_waiting_a_new_one_gets_503() -> None:
    """Two uploads in progress fill a cap of 2 (a rate of 0 never calls them stalled): the third waits
    on nobody to displace, and is answered 503 in the service's error shape."""
    env = {"GLIMPSE_MAX_CONNECTIONS": "2", "GLIMPSE_BODY_MIN_RATE_BYTES_S": "0"}
    with running(env, launcher=True) as server:
        uploads = [socket.create_connection(address(server), timeout=60) for _ in range(2)]
        try:
            for sock in uploads:
                sock.sendall(UPLOAD_HEAD % 1000 + b".")
            time.sleep(1)  # both in their bodies
            answer = exchange(server, b"GET /health/live HTTP/1.1\r\nHost: glimpse\r\n\r\n")
        finally:
            for sock in uploads:
                sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer[:300]
        assert b"retry-after: 1" in head
        assert json.loads(body) == {
            "error": {"code": "overloaded", "message": "too many open connections; retry later"}
        }
        wait_until(lambda: httpx.get(f"{server.url}/health/live", timeout=60).status_code == 200)


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_stalled_upload_does_not_hold_shutdown() -> None:
    """``python -m app.serve`` waited forever on one; now the body timeout closes it, with the
    graceful-shutdown default as the backstop."""
    assert parse_args([]).timeout_graceful_shutdown == GRACEFUL_SHUTDOWN_S == 20
    with running({}, launcher=True) as server, socket.create_connection(address(server), timeout=120) as sock:
        sock.sendall(UPLOAD_HEAD % 100_000 + b".")
        time.sleep(1)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=120)
        stopped_s = time.monotonic() - sigterm_at
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes it
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]  # its body never came
    print(f"exited {exit_code} {stopped_s:.1f} s after SIGTERM")
    assert exit_code == 0
    assert stopped_s < GRACEFUL_SHUTDOWN_S + 15  # the default bounds it, not the client


MALFORMED_HTTP = {
    "a request line that is not HTTP": (b"HELLO\r\n\r\n", "Invalid method"),
    "a space in a header name": (b"POST /predict HTTP/1.1\r\nHost: g\r\nBad Header: x\r\n\r\n", "header"),
    "two Content-Lengths": (
        b"POST /predict HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}",
        "Content-Length",
    ),
    "a chunk size that is not hexadecimal": (
        b"POST /predict HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
        "chunk size",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED_HTTP))
def test_a_request_the_http_parser_refuses_gets_a_400_in_the_error_shape_naming_why(
    guarded: Server, name: str
) -> None:
    request, reason = MALFORMED_HTTP[name]
    head, _, body = exchange(guarded, request).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("malformed HTTP request: ")
    assert reason in error["message"]


def test_a_stalled_body_is_answered_408_before_its_connection_closes(guarded: Server) -> None:
    """Headers in, then the body stops: past GLIMPSE_BODY_TIMEOUT_S the client is told why it is cut off."""
    with socket.create_connection(address(guarded), timeout=60) as sock:
        sock.sendall(UPLOAD_HEAD % 100_000 + b"--b\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "timeout"
    assert "body" in error["message"]


def _predict_request() -> bytes:
    image = (REPO_ROOT / "examples" / "digit42.png").read_bytes()
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    body = part + image + b"\r\n--b--\r\n"
    return UPLOAD_HEAD % len(body) + body


@pytest.mark.parametrize(
    ("cut", "words"), [(40, "inside the request's headers"), (-100, "before the body was complete")]
)
def test_a_request_cut_off_by_a_half_close_is_answered_400(guarded: Server, cut: int, words: str) -> None:
    head, _, body = exchange(guarded, _predict_request()[:cut]).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request"
    assert words in error["message"]


def big_map_request() -> bytes:
    """``/attention-map`` with an overlay of a 1200×1200 noise PNG: an answer of about 6 MB."""
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    body = part + png_bytes(noise) + b"\r\n--b--\r\n"
    return UPLOAD_HEAD.replace(b"/predict", b"/attention-map?overlay=true") % len(body) + body


def map_answers(server: Server, status: int) -> float:
    """How many ``/attention-map`` requests the (one-worker) server has answered with ``status``."""
    series = f'glimpse_requests_total{{method="POST",route="/attention-map",status="{status}"}}'
    lines = httpx.get(f"{server.url}/metrics", timeout=60).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(series))


def test_a_client_that_stops_reading_its_answer_is_cut_off_and_frees_it(guarded: Server) -> None:
    """A big answer (a 1200×1200 noise image's map and overlay, about 6 MB) to a client that never reads:
    uvicorn waited on it for good, holding the answer; past GLIMPSE_BODY_TIMEOUT_S without the client
    reading, the connection is aborted."""
    request = big_map_request()
    before = map_answers(guarded, 200)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address(guarded))
        sock.sendall(request)
        # The answer is counted as it is handed to the transport, however long the map took to draw;
        # from then on the client reads nothing for well past the 2 s window and its sweeps.
        wait_until(lambda: map_answers(guarded, 200) == before + 1, timeout_s=120)
        time.sleep(3 * float(GUARDED["GLIMPSE_BODY_TIMEOUT_S"]))
        sock.settimeout(30)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    declared = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
    )
    assert declared > 4_000_000
    assert len(rest) < declared  # cut off, not waited on


def test_a_client_that_reads_its_answer_slowly_gets_all_of_it(guarded: Server) -> None:
    """Reading at about 100 kB/s for three 2-s windows (the minimum is 1 KiB/s) is progress, not a stall."""
    request = big_map_request()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address(guarded))
        sock.sendall(request)
        sock.settimeout(120)
        answer = sock.recv(4096)
        slow_until = time.monotonic() + 6
        while time.monotonic() < slow_until:
            answer += sock.recv(4096)
            time.sleep(0.04)
        head, _, rest = answer.partition(b"\r\n\r\n")
        declared = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
        )
        while len(rest) < declared and (chunk := sock.recv(1 << 20)):
            rest += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert len(rest) == declared
    assert json.loads(rest)["predictions"]


def test_the_work_of_a_client_that_closed_after_its_request_is_cancelled(guarded: Server) -> None:
    """The end of input after a whole request is a client gone (it cannot be told from a half-close):
    its map is not drawn for nobody, which under overload would add to the load instead of shedding it."""
    request = big_map_request()
    before = map_answers(guarded, 499)
    with socket.create_connection(address(guarded), timeout=60) as sock:
        sock.sendall(request)
    wait_until(lambda: map_answers(guarded, 499) == before + 1, timeout_s=60)
