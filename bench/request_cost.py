"""Where one request's CPU goes: CPU time per request of one server process under wrk, layer by layer.

Each variant is served by uvicorn on its own, one process, loaded with wrk at concurrency 16 posting
``bench/canvas60.png`` as multipart; the figure is the process's CPU time (user + system, all threads,
from ``/proc/PID/stat``) over the requests it answered. On a contended VM that moves far less than
requests/s does. Rounds alternate the variants so that the machine's swings hit them alike.

Variants, each doing everything the one before it does:

* ``trivial``: a bare ASGI app that reads the body and answers fixed JSON;
* ``parse``: plus Glimpse's multipart parsing (:func:`app.pipeline.uploads.multipart_files`);
* ``decode``: plus opening and decoding the PNG as Glimpse does (:mod:`app.pipeline.imaging`);
* ``handoff``: plus one round trip to a one-thread pool, as a request's trip to the inference thread;
* ``glimpse-tiny``: the whole service with a tiny random model (two 8-channel layers);
* ``glimpse``: the whole service with the bundled model.

    python -m bench.request_cost --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from bench.run import BENCH, ROOT, wait_ready, write_result, wrk

STUBS = ("trivial", "parse", "decode", "handoff")
VARIANTS = (*STUBS, "glimpse-tiny", "glimpse")
PORT = 8131
_ANSWER = orjson.dumps({"model": {"name": "stub"}, "predictions": [{"label": "0", "score": 1.0}]})
_POOL = ThreadPoolExecutor(1)


async def stub(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app of the stub variants; ``BENCH_STUB`` picks how much of a request it does."""
    from app.pipeline.imaging import convert_image, open_image
    from app.pipeline.uploads import multipart_files, read_body
    from models.checkpoint import Preprocessing

    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    mode = os.environ["BENCH_STUB"] if scope["method"] == "POST" else "trivial"  # GET: the start-up probe
    body = await read_body(receive, 1 << 24)
    if mode != "trivial":
        files = multipart_files(body, dict(scope["headers"])[b"content-type"], 32)
        if mode != "parse":
            images = [convert_image(open_image(data, 1 << 26, 16), Preprocessing()) for data in files]
            if mode == "handoff":
                await asyncio.get_running_loop().run_in_executor(_POOL, len, images)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _ANSWER})


def tiny_model(directory: Path) -> Path:
    """A random two-layer model with the bundled model's card otherwise: the service minus its model."""
    import torch

    from models.attention_net import AttentionNet, AttentionNetConfig
    from models.checkpoint import DEFAULT_MODEL_DIR, ModelCard, read_card, save_model

    bundled = read_card(DEFAULT_MODEL_DIR)
    torch.manual_seed(0)
    config = AttentionNetConfig(in_channels=1, num_classes=len(bundled.labels), stages=((8, 2), (8, 2)))
    card = ModelCard("tiny-random", "0.0.0", config, bundled.labels, bundled.preprocessing)
    save_model(AttentionNet(config).eval(), card, directory)
    return directory


def serve(variant: str, tiny: Path) -> subprocess.Popen[bytes]:
    """Start one variant on :data:`PORT` and wait until it answers."""
    env = {**os.environ, "GLIMPSE_TORCH_THREADS": "1", "GLIMPSE_DECODE_THREADS": "1"}
    target = "app.main:app"
    if variant in STUBS:
        env["BENCH_STUB"], target = variant, "bench.request_cost:stub"
    elif variant == "glimpse-tiny":
        env["GLIMPSE_MODEL_DIR"] = str(tiny)
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(PORT), "--log-level", "warning"]
    process = subprocess.Popen([*command, "--no-access-log"], cwd=ROOT, env=env)
    path = "/health/ready" if variant.startswith("glimpse") else "/"
    try:
        wait_ready(f"http://127.0.0.1:{PORT}{path}", process)
    except RuntimeError:
        process.kill()
        raise
    return process


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(variant: str, tiny: Path, seconds: int) -> dict[str, Any]:
    process = serve(variant, tiny)
    url, image = f"http://127.0.0.1:{PORT}/predict", BENCH / "canvas60.png"
    try:
        wrk(url, 16, 2, 1, image)  # warm the path
        before = cpu_seconds(process.pid)
        run = wrk(url, 16, seconds, 1, image)
        spent = cpu_seconds(process.pid) - before
    finally:
        process.terminate()
        process.wait(30)
    requests = run["raw"]["requests"]
    return {
        "requests": requests,
        "requests_per_s": run["requests_per_s"],
        "errors": run["errors"],
        "cpu_us_per_request": spent / requests * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6, help="wrk seconds per measurement")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.request_cost", *sys.argv[1:]]),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        tiny = tiny_model(Path(scratch) / "tiny")
        for round_ in range(1, args.rounds + 1):
            figures = {variant: measure(variant, tiny, args.seconds) for variant in args.variants}
            result["rounds"].append(figures)
            for variant, figure in figures.items():
                print(
                    f"round {round_}  {variant:13s} {figure['requests_per_s']:8.0f} req/s "
                    f"{figure['cpu_us_per_request']:7.0f} µs of CPU per request",
                    flush=True,
                )
    write_result(args.out, "request-cost-cpu", result)


if __name__ == "__main__":
    main()
