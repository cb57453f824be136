"""Serve Glimpse: ``python -m app.serve``, uvicorn with one listening socket per worker process.

``uvicorn --workers N`` binds one socket in a supervisor and shares it with every worker. Whichever
worker wakes first accepts every connection waiting, so a client that opens its connection pool at
once can land it all on one worker while the others idle, at about half the throughput. Here each
worker binds a socket of its own with ``SO_REUSEPORT``, and the kernel spreads new connections over
them by a hash of their addresses (bench/NOTES.md, "Several workers", has the measured splits).

With one worker (the default, or ``WEB_CONCURRENCY=1``) this is plain ``uvicorn app.main:app``.
With several, the supervisor imports the app once and forks the workers from it (on Linux; elsewhere
each starts a fresh interpreter), and ``/health/ready`` waits until every worker listens
(:class:`WorkerGroup`). The supervisor passes SIGTERM and SIGINT on to the workers as SIGTERM, which
drain as uvicorn does (``--timeout-graceful-shutdown``), and starts a worker again that dies while
serving (the OOM killer, say): at once after a worker that ran for a while, later and later after one that
keeps dying soon after its start (:data:`RESTART_DELAYS_S`). A worker that cannot start — a model that
fails to load — stops the service with uvicorn's startup-failure status, 3. Where the platform has no
``SO_REUSEPORT`` (Windows), uvicorn's own workers run.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext, ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import ValidationError

from app.config import Settings, describe_invalid_settings, get_settings
from app.state import service_state

if TYPE_CHECKING:
    from fastapi import FastAPI

APP = "app.main:app"
FORKED_APP: FastAPI | None = None  # the app a forking supervisor made before starting its workers
STARTUP_FAILURE = 3  # uvicorn's exit status when the app cannot start
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# A worker that dies within STABLE_AFTER_S of its start is started again after the next of these delays,
# so that one crashing on every request does not spin a core on restarts and flood the log; one that
# ran longer is replaced at once, and its slot starts from the first delay again.
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 60.0
logger = logging.getLogger("glimpse.serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: WEB_CONCURRENCY, else 1)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    parser.add_argument("--no-server-header", dest="server_header", action="store_false")
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.workers is None:
        environment = os.environ.get("WEB_CONCURRENCY", "1")
        if not environment.strip().isdigit():
            parser.error(f"WEB_CONCURRENCY must be a whole number of workers, not {environment!r}")
        args.workers = int(environment)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's settings from the command line, but the worker count."""
    return {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": args.access_log,
        "server_header": args.server_header,
        "timeout_graceful_shutdown": args.timeout_graceful_shutdown,
    }


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other sockets with ``SO_REUSEPORT`` may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class WorkerGroup:
    """How many of the supervisor's workers have started listening, counted across the processes.

    Any worker may answer ``/health/ready``, and the first one up would say "ready" while the others
    still load the model. A client that opens its connection pool then puts every connection on that
    one worker, and keep-alive keeps them there (a benchmark saw 16 of 16). So readiness waits for the
    count to reach the group's size. It only grows: a worker started again later, after one died, does
    not take the whole service out of rotation while it loads.
    """

    def __init__(self, size: int, context: BaseContext) -> None:
        self.size = size
        self._listening = context.Value("i", 0)

    def mark_listening(self) -> None:
        with self._listening.get_lock():
            self._listening.value += 1

    @property
    def listening(self) -> int:
        return int(self._listening.value)

    def all_listening(self) -> bool:
        return self.listening >= self.size

    def not_ready_reason(self) -> str | None:
        """What /health/ready says while some workers are still starting; None once all listen."""
        return None if self.all_listening() else f"{self.listening} of {self.size} workers are ready"


class GroupServer(uvicorn.Server):
    """A uvicorn server that counts itself in its :class:`WorkerGroup` once it listens."""

    def __init__(self, config: uvicorn.Config, group: WorkerGroup) -> None:
        super().__init__(config)
        self.group = group

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the lifespan succeeded and the socket listens
            self.group.mark_listening()


def make_app(workers: int) -> FastAPI:
    """The app with the environment's settings and this launcher's worker count."""
    from app.main import create_app  # the service's modules load torch: not before a worker is wanted

    return create_app(get_settings().model_copy(update={"workers": workers}))


def run_worker(args: argparse.Namespace, group: WorkerGroup) -> None:
    """One worker process: its own socket, one uvicorn server."""
    # The supervisor starts a worker with the stop signals blocked (Supervisor.start_worker), and a
    # forked one with the supervisor's handlers, which would stop its siblings instead of itself.
    # Until uvicorn installs its own, a stop signal ends the worker at once, as it would end uvicorn.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as exc:
        logging.getLogger("uvicorn.error").error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        sys.exit(STARTUP_FAILURE)
    app = FORKED_APP if FORKED_APP is not None else make_app(args.workers)
    service_state(app).peers_not_ready = group.not_ready_reason
    server = GroupServer(uvicorn.Config(app, **uvicorn_options(args)), group)
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed, e.g. the model did not load
        sys.exit(STARTUP_FAILURE)


@dataclass(slots=True)
class WorkerSlot:
    """One of the supervisor's workers, and its record of restarts."""

    process: BaseProcess
    started_at: float
    quick_deaths: int = 0  # deaths in a row within STABLE_AFTER_S of a start
    restart_at: float | None = None  # while it waits to start its next worker: when


class Supervisor:
    """Starts the workers, passes stop signals on, and replaces a worker that dies while serving."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # Linux forks the workers from a supervisor that has imported the app, and with it torch, once:
        # N workers importing torch at the same time took longer to become ready than one. Elsewhere
        # (macOS, where forking after such imports is unsafe) each worker starts a fresh interpreter.
        self.forking = sys.platform == "linux"
        self.context: ForkContext | SpawnContext = (
            multiprocessing.get_context("fork") if self.forking else multiprocessing.get_context("spawn")
        )
        self.group = WorkerGroup(args.workers, self.context)
        self.slots: list[WorkerSlot] = []
        self.stopping = False

    def start_worker(self, slot: WorkerSlot | None = None) -> None:
        """Start a worker in a new slot, or in ``slot`` in place of its dead one.

        The stop signals wait until it is listed, so that :meth:`stop` always reaches it.
        """
        process = self.context.Process(target=run_worker, args=(self.args, self.group), name="glimpse-worker")
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
            if slot is None:
                self.slots.append(WorkerSlot(process, time.monotonic()))
            else:
                slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def stop(self, _signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        # Always SIGTERM: after a terminal's Ctrl-C the workers have had SIGINT already, and uvicorn
        # takes a second SIGINT as "exit now" instead of draining.
        self.stopping = True
        for process in self.processes():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        global FORKED_APP
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.forking:
            # The app knows the worker count: each worker takes its share of the cores. Making it touches
            # neither CUDA nor torch's thread pools, which a forked child could not use.
            FORKED_APP = make_app(self.args.workers)
        for _ in range(self.args.workers):
            if not self.stopping:
                self.start_worker()
        status = 0
        while not self.stopping or any(process.is_alive() for process in self.processes()):
            time.sleep(0.1)
            for slot in self.slots:
                if self.stopping:
                    break
                if slot.restart_at is not None:
                    if time.monotonic() >= slot.restart_at:
                        self.start_worker(slot)
                    continue
                code = slot.process.exitcode
                if code is None:
                    continue
                if code == STARTUP_FAILURE:  # e.g. the model did not load: the next one would fail too
                    logger.error("worker %d failed to start; stopping", slot.process.pid)
                    status = code
                    self.stop()
                else:  # killed (the OOM killer, say) or crashed: serve on with a new worker
                    self.schedule_restart(slot, code)
        for process in self.processes():
            process.join()
        return status

    def processes(self) -> list[BaseProcess]:
        return [slot.process for slot in self.slots]

    def schedule_restart(self, slot: WorkerSlot, code: int) -> None:
        """Start the slot's next worker now, or after a growing delay if its workers keep dying young."""
        lived_s = time.monotonic() - slot.started_at
        if lived_s >= STABLE_AFTER_S:
            slot.quick_deaths = 0
            delay_s = 0.0
        else:
            delay_s = RESTART_DELAYS_S[min(slot.quick_deaths, len(RESTART_DELAYS_S) - 1)]
            slot.quick_deaths += 1
        logger.error(
            "worker %d exited (%d) after %.1f s; starting another in %.1f s",
            slot.process.pid, code, lived_s, delay_s,
        )  # fmt: skip
        slot.restart_at = time.monotonic() + delay_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s", level=args.log_level.upper())
    try:
        Settings()
    except ValidationError as error:
        # Here, once: every worker would fail the same way, and be started again, forever.
        logger.error("invalid settings, not starting:\n%s", describe_invalid_settings(error))
        return 1
    if args.workers > 1 and hasattr(socket, "SO_REUSEPORT"):
        return Supervisor(args).run()
    # uvicorn.run exits with STARTUP_FAILURE itself when the app cannot start.
    if args.workers > 1:
        # No SO_REUSEPORT (Windows): uvicorn's own workers import the app, and learn the count only
        # from the environment they inherit.
        os.environ["WEB_CONCURRENCY"] = str(args.workers)
        uvicorn.run(APP, workers=args.workers, **uvicorn_options(args))
    else:
        uvicorn.run(make_app(1), **uvicorn_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
