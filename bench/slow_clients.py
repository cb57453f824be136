"""Slow and oversized clients against a real Glimpse server: its memory, a normal client, /health/live.

Each attack runs for ``--duration-s`` against a server this script starts (``--server serve`` is
``python -m app.serve``, as the README starts it; ``--server uvicorn`` is plain ``uvicorn
app.main:app``, the service without its connection defences), while a normal client sends one small
``/predict`` and one ``/health/live`` every ``--probe-interval-s``, each on a new connection.

* ``header-flood``: connections sending header bytes as fast as the server takes them, never ending
  the header section (``--header-mib`` each at most);
* ``slow-headers``: connections sending one header line every ``--line-interval-s``;
* ``stalled-uploads``: ``POST /predict`` declaring ``--declared-mib``, sending ``--sent-mib`` of it,
  then nothing.

Prints one JSON object: resident memory of the server before, at its peak and after; the normal
client's and /health/live's latencies (median, p99, max) and failures; how many attack connections
the server closed, and the most sockets it held at once. ``--attack`` takes several, comma-separated,
run together.

    .venv/bin/python bench/slow_clients.py --attack slow-headers,stalled-uploads --server serve
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    """The server under attack: where it listens, and its process for memory and sockets."""

    url: str
    pid: int

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")


def start_server(launcher: bool, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Target]:
    """``python -m app.serve`` (``launcher``) or plain ``uvicorn app.main:app`` on a free port, ready."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    full_env.update({"GLIMPSE_LOG_LEVEL": "warning", **env})
    entry = ["app.serve", "--log-level", "warning"] if launcher else ["uvicorn", "app.main:app"]
    command = [sys.executable, "-m", *entry, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=subprocess.DEVNULL)
    target = Target(f"http://127.0.0.1:{port}", process.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{target.url}/health/ready", timeout=1).status_code == 200:
                return process, target
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not become ready (exit {process.poll()})")


Sender = Callable[[asyncio.StreamWriter], Coroutine[Any, Any, None]]


def open_sockets(pid: int) -> int:
    """Sockets the process holds open (Linux: /proc/PID/fd)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += fd.readlink().name.startswith("socket:")
    return count


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to the hard one (servers started later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class AttackStats:
    opened: int = 0
    connect_failed: int = 0
    closed_by_server: int = 0  # the server closed it (or answered and closed) while it attacked
    answers: Counter[str] = field(default_factory=Counter)  # first status line seen, if any
    open_now: int = 0
    sent_bytes: int = 0


async def _watch(reader: asyncio.StreamReader, stats: AttackStats) -> None:
    """Wait for the server's answer or close; note the status line."""
    try:
        line = await reader.readline()
        if line:
            stats.answers[line.decode(errors="replace").split(" ", 2)[1] if b" " in line else "?"] += 1
            await reader.read()  # until the server closes
    except (OSError, ConnectionError):
        pass


async def _attacker(
    host: str,
    port: int,
    stop: asyncio.Event,
    stats: AttackStats,
    body: Sender,
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats.connect_failed += 1
        return
    stats.opened += 1
    stats.open_now += 1
    watcher = asyncio.create_task(_watch(reader, stats))
    sending = asyncio.create_task(body(writer))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({watcher, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done() and not stop.is_set():
            stats.closed_by_server += 1
    finally:
        for task in (sending, watcher, stopped):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(sending, watcher, stopped, return_exceptions=True)
        writer.transport.abort()
        stats.open_now -= 1


def header_flood(stats: AttackStats, mib: float) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: glimpse\r\nX-Flood: ")
        chunk = b"a" * 65536
        with contextlib.suppress(OSError, ConnectionError):
            for _ in range(int(mib * 16)):
                writer.write(chunk)
                await writer.drain()
                stats.sent_bytes += len(chunk)
            await asyncio.Event().wait()  # hold the connection

    return send


def slow_headers(stats: AttackStats, interval_s: float) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: glimpse\r\n")
            number = 0
            while True:
                await asyncio.sleep(interval_s)
                writer.write(b"X-Slow-%d: %d\r\n" % (number, number))
                await writer.drain()
                number += 1

    return send


def stalled_upload(stats: AttackStats, declared_mib: float, sent_mib: float) -> Sender:
    async def send(writer: asyncio.StreamWriter) -> None:
        declared = int(declared_mib * 2**20)
        head = (
            "POST /predict HTTP/1.1\r\nHost: glimpse\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        writer.write(
            head.encode() + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        )
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError, ConnectionError):
            for _ in range(int(sent_mib * 16)):
                writer.write(chunk)
                await writer.drain()
                stats.sent_bytes += len(chunk)
            await asyncio.Event().wait()  # stall

    return send


@dataclass
class Probe:
    seconds: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        values = np.array(self.seconds) if self.seconds else np.array([np.nan])
        return {
            "answered": len(self.seconds),
            "failures": dict(self.failures),
            "median_ms": round(float(np.median(values)) * 1000, 1),
            "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1),
            "max_ms": round(float(np.max(values)) * 1000, 1),
        }


async def probe(
    url: str, request: dict[str, Any], expected: int, stop: asyncio.Event, interval_s: float
) -> Probe:
    """A normal client: one request at a time, each on a new connection, until ``stop``."""
    result = Probe()
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=no_keep_alive) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await client.request(**request)
                if response.status_code == expected:
                    result.seconds.append(time.perf_counter() - started)
                else:
                    result.failures[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                result.failures[type(exc).__name__] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    return result


def normal_requests() -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((60, 60)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    image = buffer.getvalue()
    predict = {"method": "POST", "url": "/predict", "files": {"file": ("a.png", image, "image/png")}}
    return predict, {"method": "GET", "url": "/health/live"}


async def run_attacks(server: Target, args: argparse.Namespace) -> dict[str, Any]:
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    predict, live = normal_requests()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for _ in range(10):  # the normal client's first requests build oneDNN's kernels
            await client.request(**predict)
    rss_before = server.rss_kib()
    stop = asyncio.Event()
    stats: dict[str, AttackStats] = {}
    tasks: list[asyncio.Task[None]] = []
    peak = rss_before
    for attack in args.attack.split(","):
        if attack == "none":  # the probes alone: the figures to compare with
            continue
        stats[attack] = AttackStats()
        if attack == "header-flood":
            count, body = args.flood_connections, header_flood(stats[attack], args.header_mib)
        elif attack == "slow-headers":
            count, body = args.slow_connections, slow_headers(stats[attack], args.line_interval_s)
        elif attack == "stalled-uploads":
            count, body = args.uploads, stalled_upload(stats[attack], args.declared_mib, args.sent_mib)
        else:
            raise SystemExit(f"unknown attack {attack!r}")
        for number in range(count):
            tasks.append(asyncio.create_task(_attacker(host, port, stop, stats[attack], body)))
            if number % 200 == 199:  # open them at a pace the listen backlog takes
                await asyncio.sleep(0.05)
                peak = max(peak, server.rss_kib())
    open_at_most = {name: 0 for name in stats}
    sockets_at_most = open_sockets(server.pid)
    # The normal client starts once every attack connection is under way: its figures are those of
    # a service under attack, not of one taking a burst of new connections.
    probes = [
        asyncio.create_task(probe(server.url, predict, 200, stop, args.probe_interval_s)),
        asyncio.create_task(probe(server.url, live, 200, stop, args.probe_interval_s)),
    ]
    started = time.monotonic()
    while time.monotonic() < started + args.duration_s:
        await asyncio.sleep(0.2)
        peak = max(peak, server.rss_kib())
        sockets_at_most = max(sockets_at_most, open_sockets(server.pid))
        for name, attack_stats in stats.items():
            open_at_most[name] = max(open_at_most[name], attack_stats.open_now)
    open_at_end = {name: attack_stats.open_now for name, attack_stats in stats.items()}
    stop.set()
    predict_probe, live_probe = await asyncio.gather(*probes)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    return {
        "server": args.server,
        "attacks": {
            name: {
                "opened": s.opened,
                "connect_failed": s.connect_failed,
                "closed_by_server": s.closed_by_server,
                "answers": dict(s.answers),
                "open_at_most": open_at_most[name],
                "open_at_end": open_at_end[name],
                "sent_mib": round(s.sent_bytes / 2**20, 1),
            }
            for name, s in stats.items()
        },
        "duration_s": args.duration_s,
        "server_sockets_at_most": sockets_at_most,
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_mib": round((peak - rss_before) / 1024, 1),
        "rss_after_mib": round(server.rss_kib() / 1024, 1),
        "predict": predict_probe.summary(),
        "health_live": live_probe.summary(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attack", default="slow-headers,stalled-uploads")
    parser.add_argument("--server", choices=["serve", "uvicorn"], default="serve")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--probe-interval-s", type=float, default=0.25)
    parser.add_argument("--flood-connections", type=int, default=4)
    parser.add_argument("--header-mib", type=float, default=128.0)
    parser.add_argument("--slow-connections", type=int, default=5000)
    parser.add_argument("--line-interval-s", type=float, default=5.0)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--declared-mib", type=float, default=16.0)
    parser.add_argument("--sent-mib", type=float, default=14.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server settings")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_file_limit()
    env = dict(item.split("=", 1) for item in args.env)
    process, target = start_server(args.server == "serve", env)
    try:
        summary = asyncio.run(run_attacks(target, args))
    finally:
        process.terminate()
        try:
            exit_code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            exit_code = process.wait()
    summary["server_exit_code"] = exit_code
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
