"""Round trip against a running Glimpse container, standard library only (runs with any host Python).

POSTs a PNG to /predict and /attention-map and checks the JSON (and, with --model-version, which model
answered), then loads the demo page and its assets; with --stop-command, also checks that a
request in flight when the container gets SIGTERM still completes (graceful stop). Exits non-zero on
any failure. Used by scripts/container_test.sh:

    python scripts/container_smoke.py http://127.0.0.1:8000 [--model-version 1.0.0]
        [--stop-command "docker stop CONTAINER"]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import shlex
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zlib
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CheckError(Exception):
    """The service answered, but not as it should."""


def expect(condition: bool, detail: object) -> None:
    # Not `assert`: the checks must hold under `python -O` too.
    if not condition:
        raise CheckError(detail)


def make_png(width: int, height: int) -> bytes:
    """An 8-bit grayscale PNG: a bright bar on black, enough for the model to produce a real answer."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    left, bar = width // 3, max(2, width // 10)
    lit = b"\x00" + bytes(left) + b"\xff" * bar + bytes(width - left - bar)
    dark = b"\x00" + bytes(width)
    rows = b"".join(lit if height // 5 < y < 4 * height // 5 else dark for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def post_image(url: str, png: bytes, timeout_s: float = 60) -> tuple[int, Any]:
    """POST one PNG as the multipart part ``file``; returns the status and the decoded JSON body."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    )
    body = head.encode() + png + f"\r\n--{boundary}--\r\n".encode()
    # main() accepts only http(s) base URLs.
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        return response.status, json.loads(response.read())


def check_prediction(body: dict[str, Any]) -> None:
    expect(isinstance(body["model"]["name"], str) and body["model"]["name"] != "", body["model"])
    expect(isinstance(body["model"]["version"], str), body["model"])
    predictions = body["predictions"]
    expect(len(predictions) > 0, "no predictions")
    scores = [p["score"] for p in predictions]
    expect(all(isinstance(p["label"], str) and isinstance(p["index"], int) for p in predictions), predictions)
    expect(all(0.0 <= s <= 1.0 for s in scores), scores)
    expect(scores == sorted(scores, reverse=True), f"not sorted: {scores}")
    expect(sum(scores) <= 1.0 + 1e-4, f"scores sum past 1: {scores}")


def check_attention_map(body: dict[str, Any], width: int, height: int) -> None:
    check_prediction(body)
    expect((body["width"], body["height"]) == (width, height), (body["width"], body["height"]))
    expect(body["kind"] in {"evidence", "attention"}, body["kind"])
    heatmap = base64.b64decode(body["heatmap"], validate=True)
    expect(heatmap.startswith(PNG_SIGNATURE), "heatmap is not a PNG")
    expect(struct.unpack(">II", heatmap[16:24]) == (width, height), "heatmap size differs from the input")


def round_trip(base_url: str, model_version: str | None) -> None:
    width, height = 60, 60
    png = make_png(width, height)
    status, body = post_image(f"{base_url}/predict", png)
    expect(status == 200, status)
    check_prediction(body)
    if model_version is not None:
        expect(body["model"]["version"] == model_version, body["model"])
    top = body["predictions"][0]
    print(f"POST /predict -> {status}: model {body['model']['name']} {body['model']['version']}, "
          f"top {top['label']} ({top['score']:.3f}), {len(body['predictions'])} classes")  # fmt: skip

    status, body = post_image(f"{base_url}/attention-map", png)
    expect(status == 200, status)
    check_attention_map(body, width, height)
    print(f"POST /attention-map -> {status}: {body['kind']} map for {body['target']!r}, "
          f"heatmap PNG {body['width']}x{body['height']}, grid stride {body['grid_stride']}")  # fmt: skip


def demo_page(base_url: str) -> None:
    """The demo page and what it loads ship in the image: app/static, with the gallery's examples."""
    assets = {
        "/": b"<!doctype html>",
        "/demo/demo.js": b"",
        "/demo/demo.css": b"",
        "/demo/colormaps.json": b"{",
    }
    assets |= {f"/demo/examples/{name}": PNG_SIGNATURE for name in ("digit42.png", "digit903.png")}
    for path, start in assets.items():
        with urllib.request.urlopen(f"{base_url}{path}", timeout=30) as response:  # noqa: S310
            body = response.read()
            expect(
                response.status == 200 and len(body) > 0 and body.startswith(start), (path, response.status)
            )
    print(f"GET / -> 200: the demo page and its {len(assets) - 1} assets")


def graceful_stop(base_url: str, stop_command: str) -> None:
    """A slow request is sent, the container is stopped while it runs, and the request must still succeed."""
    side = 512
    started = time.monotonic()
    post_image(f"{base_url}/predict", make_png(side, side))
    single_s = time.monotonic() - started
    # Grow the image until one request takes long enough (≥ 1.5 s) to be stopped mid-flight.
    while single_s < 1.5 and side < 4096:
        side = min(4096, int(side * max(1.2, math.sqrt(1.5 / max(single_s, 0.01)))))
        started = time.monotonic()
        post_image(f"{base_url}/predict", make_png(side, side))
        single_s = time.monotonic() - started

    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            outcome["status"], outcome["body"] = post_image(f"{base_url}/predict", make_png(side, side))
        except Exception as error:  # reported below: the point of the check
            outcome["error"] = repr(error)
        outcome["finished"] = time.monotonic()

    worker = threading.Thread(target=slow_request)
    sent = time.monotonic()
    worker.start()
    time.sleep(min(0.5, single_s / 3))
    signalled = time.monotonic()
    subprocess.run(shlex.split(stop_command), check=True, capture_output=True)  # noqa: S603 (our own caller)
    stopped = time.monotonic()
    worker.join(timeout=60)

    expect("error" not in outcome, f"in-flight request failed on SIGTERM: {outcome.get('error')}")
    expect(outcome["status"] == 200, outcome["status"])
    check_prediction(outcome["body"])
    expect(outcome["finished"] > signalled, "the request finished before the stop signal; nothing was tested")
    print(f"graceful stop: {side}x{side} request ({single_s:.1f} s alone) sent, SIGTERM after "
          f"{signalled - sent:.1f} s, answered 200 after {outcome['finished'] - sent:.1f} s; "
          f"container stopped in {stopped - signalled:.1f} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--model-version", help="the model version the service must report")
    parser.add_argument("--stop-command", help="command that stops the container (sends SIGTERM)")
    args = parser.parse_args()
    if not args.base_url.startswith(("http://", "https://")):
        parser.error("base_url must be an http(s) URL")
    try:
        round_trip(args.base_url, args.model_version)
        demo_page(args.base_url)
        if args.stop_command:
            graceful_stop(args.base_url, args.stop_command)
    except (CheckError, KeyError, TypeError, OSError, subprocess.CalledProcessError) as error:
        print(f"FAIL: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
