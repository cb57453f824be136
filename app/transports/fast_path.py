"""The fast path: ``POST /predict`` and ``POST /attention-map`` straight to the request core, in raw ASGI.

FastAPI's layers (middleware, routing, dependency solving) cost about as much CPU per request as
decoding a small image does, and the core needs none of them: it authenticates, parses and answers
itself (:mod:`app.pipeline.core`). So this wrapper sits outside all of FastAPI
(:class:`app.main.GlimpseAPI` puts it there) and hands those requests to the core directly. The
FastAPI routes call the same core for what comes to them: requests before the model is ready, and
cross-origin requests when CORS is configured (the CORS middleware adds its headers).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.pipeline.core import Reply
from app.pipeline.query import PATHS
from app.state import ServiceState


class FastPath:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self.cors = bool(state.settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = (
            PATHS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        pipeline = self.state.pipeline
        if (
            operation is None
            or pipeline is None
            or not self.state.ready
            or (self.cors and any(name == b"origin" for name, _ in scope["headers"]))
        ):
            await self.app(scope, receive, send)
            return
        await send_reply(await pipeline.respond(operation, scope, receive), send)


async def send_reply(reply: Reply, send: Send) -> None:
    if reply.status == 499:  # the client is gone: nothing to send
        return
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
