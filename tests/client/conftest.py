"""A scripted stand-in server on real uvicorn, for what the real service cannot be made to do on cue.

The retry policy is what is under test: the stub answers each request with the next status of its
script (503 with a Retry-After, say, then 200) and records when each request arrived.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from tests.serving import free_port

PREDICTION = {
    "model": {"name": "stub", "version": "0.0.0"},
    "predictions": [{"label": "7", "index": 7, "score": 0.9}],
}


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before answering, to exercise the client's timeout


@dataclass
class Stub:
    url: str
    script: list[Reply] = field(default_factory=list)  # one reply per request; the last one repeats
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request

    def play(self, *replies: Reply) -> None:
        self.script = list(replies)
        self.arrivals.clear()

    def gaps_s(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.arrivals, self.arrivals[1:], strict=False)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        self.arrivals.append(time.monotonic())
        reply = self.script[min(len(self.arrivals), len(self.script)) - 1]
        await asyncio.sleep(reply.delay_s)
        if reply.status == 200:
            body = json.dumps(PREDICTION).encode()
        else:
            body = json.dumps({"error": {"code": "overloaded", "message": "the queue is full"}}).encode()
        headers = [(b"content-type", b"application/json")]
        headers += [(name.lower().encode(), value.encode()) for name, value in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    """The stub served by uvicorn on a loopback port, in a thread of the test process."""
    port = free_port()
    stub = Stub(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(stub, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the stub server did not start"
        time.sleep(0.02)
    yield stub
    server.should_exit = True
    thread.join(timeout=10)
