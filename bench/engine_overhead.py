"""The engine's cost per request in-process, no HTTP: admission, batching and the forward pass.

Clients on one event loop each send a 60×60 canvas (``bench/canvas60.png``) through the engine as the
predictor does (admit by the declared pixels, then predict) and wait for the answer. Prints one JSON
line per configuration: requests per second and the process's CPU time per request (user + system,
all threads), the best of ``--rounds`` rounds. ``--inline-max-ms`` > 0 lets short passes run on the
event loop, as a worker with one core to itself does; ``--tiny`` swaps in a tiny random model, so that
the engine's own cost is not lost in the forward pass's. ``--scaling`` instead compares the warm-up's
cost estimate (seconds per pixel of a full batch of 60×60 images) with single images of 256² to 2048².

    python -m bench.engine_overhead --tiny --requests 1600 --rounds 3
    python -m bench.engine_overhead --scaling
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from app.config import Settings
from app.engine.engine import EngineConfig, InferenceEngine
from app.engine.forward import ForwardWork
from app.runtime.metrics import Metrics
from models.attention_net import AttentionNet, AttentionNetConfig
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.preprocessing import to_pixels

CANVAS = Path(__file__).with_name("canvas60.png")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    concurrency: int, requests: int, rounds: int, inline_max_s: float, tiny: bool
) -> dict[str, float]:
    model, card = load_model(DEFAULT_MODEL_DIR)
    if tiny:  # the engine's own cost stands out: two 8-channel layers instead of the bundled network
        model = AttentionNet(AttentionNetConfig(stages=((8, 2), (8, 2)))).eval()
    config = EngineConfig.from_settings(Settings(_env_file=None), None)
    config = replace(config, batching=replace(config.batching, inline_max_seconds=inline_max_s))
    engine = InferenceEngine(
        model.fuse_for_inference(), card.preprocessing, torch.device("cpu"), config, Metrics()
    )
    await engine.warm_up(card.config.in_channels, 60, config.batching.max_batch_size)
    engine.start()
    with Image.open(CANVAS) as image:
        pixels = to_pixels(image, card.preprocessing)

    async def client(count: int) -> None:
        for _ in range(count):
            with engine.admit([60 * 60], time.perf_counter() + 10) as admission:
                await asyncio.sleep(0)  # the decoding a request does between the two
                await admission.predict([pixels], 5, None)

    best: dict[str, float] = {}
    for _ in range(rounds):
        cpu, started = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
        wall, used = time.perf_counter() - started, cpu_seconds() - cpu
        figures = {"requests_per_s": requests / wall, "cpu_us_per_request": 1e6 * used / requests}
        if not best or figures["cpu_us_per_request"] < best["cpu_us_per_request"]:
            best = figures
    await engine.stop()
    return best


def scaling() -> None:
    model, card = load_model(DEFAULT_MODEL_DIR)
    config = EngineConfig.from_settings(Settings(_env_file=None), None)
    forward = ForwardWork(model.fuse_for_inference(), card.preprocessing, torch.device("cpu"), config.forward)
    estimate = forward.warm_up(card.config.in_channels, 60, config.batching.max_batch_size)
    print(json.dumps({"estimate_s_per_pixel": estimate}), flush=True)
    for side in (256, 512, 1024, 2048):
        image = [torch.zeros(side, side, card.config.in_channels, dtype=torch.uint8)]
        forward.forward_batch(image, [1], [None])
        seconds = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            forward.forward_batch(image, [1], [None])
            seconds = min(seconds, time.perf_counter() - started)
        measured = seconds / (side * side)
        print(
            json.dumps({"side": side, "s_per_pixel": measured, "over_estimate": measured / estimate}),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--inline-max-ms", type=float, nargs="*", default=[0.0, 20.0])
    parser.add_argument("--scaling", action="store_true", help="check the cost estimate on large images")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the bundled one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scaling:
        scaling()
        return
    for concurrency in (1, 16):
        for inline_ms in args.inline_max_ms:
            figures = asyncio.run(
                measure(concurrency, args.requests, args.rounds, inline_ms / 1000, args.tiny)
            )
            print(
                json.dumps(
                    {"concurrency": concurrency, "inline_max_ms": inline_ms, "tiny": args.tiny, **figures}
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
