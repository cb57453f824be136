"""The hot path: ``POST /predict`` and ``POST /attention-map`` with a multipart body, served in raw ASGI.

FastAPI's layers (middleware, routing, dependency solving, query validation, Starlette's form parser)
cost about as much CPU per request as decoding the image does. This wrapper sits outside all of them
(:class:`app.main.GlimpseAPI` puts it there) and answers the common request itself: a multipart upload
whose query parameters are all plainly valid. It calls the same predictor, raises the same domain
errors (turned into the same JSON shape by :func:`app.errors.error_response`), serialises the same
dicts and counts the request in the same metrics. Everything else — JSON bodies, unusual or invalid
parameters, a missing or wrong API key, a cross-origin request when CORS is configured, a body the
simple parser does not accept — goes to the full stack unchanged (the body replayed when it was already
read), so the FastAPI routes stay the one documented, complete implementation and word every error.
``tests/test_app_hotpath.py`` checks that both paths answer byte for byte alike.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import GlimpseError, TooManyImages, error_response
from app.pipeline.predictor import MapOptions, Predictor
from app.pipeline.uploads import check_declared_length, read_body, simple_multipart_files

logger = logging.getLogger("glimpse.hotpath")

# Spellings pydantic reads as booleans; any other spelling goes to the route, which validates it.
_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class _Query:
    top_k: int = 5
    target: str | None = None
    kind: str = "evidence"
    overlay: bool = False
    colormap: str = "turbo"
    include_grid: bool = False


class HotPath:
    """Pure ASGI, outside every middleware: serves the two image routes' common case (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in ("/predict", "/attention-map"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        predictor: Predictor | None = state.predictor
        settings: Settings = state.settings
        query = _parse_query(scope["query_string"], attention=path == "/attention-map")
        headers = _headers(scope)
        if (
            not state.ready
            or predictor is None
            or query is None
            or not headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
            or not _authorised(settings, headers)
            or (settings.cors_origins and b"origin" in headers)  # the CORS middleware adds its headers
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # as the metrics middleware counts a request that ends before its response starts
        replay: bytes | None = None
        try:
            body, replay = await self._answer(scope, receive, send, predictor, settings, query, headers)
        except GlimpseError as exc:
            status = exc.status_code
            await error_response(exc.status_code, exc.code, exc.message, exc.headers)(scope, receive, send)
        except Exception as exc:
            logger.error("unhandled error on POST %s", path, exc_info=exc)
            await error_response(500, "internal_error", "internal server error")(scope, receive, send)
        else:
            if replay is None:
                status = 200
                await send({"type": "http.response.start", "status": 200, "headers": [
                    *_JSON_HEADERS, (b"content-length", str(len(body)).encode()),
                ]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
        finally:
            if replay is None:  # a replayed request is counted by the metrics middleware instead
                state.metrics.observe_request(path, "POST", status, time.perf_counter() - started)
        if replay is not None:
            await self.app(scope, _replaying(replay), send)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        predictor: Predictor,
        settings: Settings,
        query: _Query,
        headers: dict[bytes, bytes],
    ) -> tuple[bytes, bytes | None]:
        """The JSON body of the answer, or the request body to replay through FastAPI instead."""
        attention = scope["path"] == "/attention-map"
        options = None
        if attention:  # the same order of checks as the route: parameters, then the body
            target = predictor.target_index(query.target)
            colormap = query.colormap if query.overlay else None
            options = MapOptions(query.kind, target, colormap, query.include_grid)  # type: ignore[arg-type]
        predictor.check_top_k(query.top_k)
        check_declared_length(_text(headers.get(b"content-length")), settings.max_body_bytes)
        body = await read_body(receive, settings.max_body_bytes)
        images = simple_multipart_files(body, headers[b"content-type"])
        if images is None:
            return b"", body
        if len(images) > settings.max_images_per_request:
            raise TooManyImages(
                f"{len(images)} images in one request; the limit is {settings.max_images_per_request}"
            )
        predictor.engine.metrics.observe_images(scope["path"], len(images))
        results: list[dict[str, Any]]
        if options is None:
            results = await predictor.predict(images, query.top_k)
        else:
            results = await predictor.attention_maps(images, query.top_k, options)
        return orjson.dumps({"results": results} if len(images) > 1 else results[0]), None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name: value for name, value in scope["headers"]}


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _authorised(settings: Settings, headers: dict[bytes, bytes]) -> bool:
    """True when no keys are configured or a valid one is presented; otherwise the route answers 401."""
    if not settings.api_keys:
        return True
    presented = headers.get(b"x-api-key")
    if presented is None:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        presented = token.strip()
    matched = False
    for key in settings.api_keys:  # compare against every key so timing does not tell which one matched
        matched |= hmac.compare_digest(presented, key.encode())
    return matched


def _parse_query(query_string: bytes, attention: bool) -> _Query | None:
    """The parameters when every one is plainly valid, else None (the route then validates them)."""
    query = _Query()
    if not query_string:
        return query
    seen: set[str] = set()
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None
        seen.add(name)
        if name == "top_k":
            # The route's own validation words a value below 1, and one too long for int() to parse.
            if not value.isdigit() or not value.isascii() or len(value) > 9 or int(value) < 1:
                return None
            query.top_k = int(value)
        elif not attention:
            continue  # FastAPI ignores parameters a route does not declare
        elif name == "target":
            query.target = value
        elif name == "kind" and value in ("evidence", "attention"):
            query.kind = value
        elif name == "colormap" and value in ("turbo", "viridis"):
            query.colormap = value
        elif name in ("overlay", "include_grid") and value in _BOOLS:
            setattr(query, name, _BOOLS[value])
        elif name in ("kind", "colormap", "overlay", "include_grid"):
            return None
    return query


def _replaying(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
