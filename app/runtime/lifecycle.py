"""Start-up faults and graceful shutdown around the lifespan.

* A model that cannot be served (missing, truncated or tampered files, a card that does not fit the
  weights, no CUDA when it was required) stops start-up with ONE clear log line and a non-zero exit;
  :class:`QuietStartupFailure` keeps uvicorn from printing the traceback after it.
* SIGTERM: ``/health/ready`` turns 503 at once, the server keeps serving for ``GLIMPSE_SHUTDOWN_DRAIN_S``
  (so load balancers stop sending), then uvicorn's graceful shutdown lets in-flight requests finish and
  the process exits 0.
"""

# The style guide names domain errors for what happened, without "Error".
# ruff: noqa: N818

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("glimpse")

SignalHandler = Callable[[int, FrameType | None], Any]


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist here."""


class StartupFailed(Exception):
    """The service cannot start; the lifespan has already logged why, in one line."""


class QuietStartupFailure:
    """Drop the traceback Starlette attaches to a :class:`StartupFailed` lifespan failure.

    Uvicorn logs the ``lifespan.startup.failed`` message verbatim, and Starlette fills it with the whole
    traceback; for a fault the lifespan already explained, one line is clearer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and scope["app"].state.service.startup_failed:
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet_send)


def drain_on_sigterm(app: FastAPI, drain_s: float) -> Callable[[], None]:
    """Chain the server's SIGTERM handler (see the module docstring); returns a function restoring it.

    Does nothing outside a server that handles SIGTERM itself (tests, tools) or off the main thread.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()

    def stop_server(signum: int, frame: FrameType | None) -> None:
        server: Any = getattr(previous, "__self__", None)
        if hasattr(server, "should_exit"):
            # uvicorn's own handler would re-raise SIGTERM after shutting down (exit status -15);
            # asking it to exit directly ends with status 0 once in-flight requests have finished.
            server.should_exit = True
        else:
            previous(signum, frame)

    def handle(signum: int, frame: FrameType | None) -> None:
        if app.state.service.draining:  # a second SIGTERM: stop now
            stop_server(signum, frame)
            return
        app.state.service.draining = True
        logger.info("SIGTERM: /health/ready now answers 503; shutting down in %.1f s", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, stop_server, signum, frame)

    signal.signal(signal.SIGTERM, handle)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
