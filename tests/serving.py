"""Real uvicorn processes with their own settings, for tests that stop, overload or break the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: tempfile._TemporaryFileWrapper[bytes]

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def output(self) -> str:
        """Everything the process printed; waits for it to exit."""
        self.process.wait(timeout=30)
        with self.log:
            self.log.seek(0)
            return self.log.read().decode(errors="replace")


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(env: dict[str, str], port: int | None = None, *, launcher: bool = False) -> Server:
    """Start ``uvicorn app.main:app`` with ``env`` on top of a GLIMPSE_-free environment.

    ``launcher``: start ``python -m app.serve`` instead, as the README does, with its connection
    defences (app/runtime/protocol.py).
    """
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    full_env.update({"GLIMPSE_LOG_LEVEL": "warning", **env})
    entry = ["app.serve", "--log-level", "warning"] if launcher else ["uvicorn", "app.main:app"]
    command = [sys.executable, "-m", *entry, "--host", "127.0.0.1", "--port", str(port)]
    # A file, not a pipe: an unread pipe fills up and then blocks the server's event loop on logging.
    log = tempfile.NamedTemporaryFile(prefix="glimpse-uvicorn-", suffix=".log")  # noqa: SIM115 (closed by output())
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return Server(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not become ready within {timeout_s} s")


@contextmanager
def running(env: dict[str, str], *, launcher: bool = False) -> Iterator[Server]:
    """A ready server (see :func:`launch`); always stopped afterwards (SIGTERM, then SIGKILL)."""
    server = launch(env, launcher=launcher)
    try:
        wait_ready(server)
        yield server
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        server.log.close()
