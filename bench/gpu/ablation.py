"""GPU ablation: what cuDNN's benchmark mode and the malloc_trim thread cost a multi-worker GPU server.

Serves the bundled model (or, with ``large``, the 224² configuration) with 12 uvicorn workers on the GPU
in four variants — both switches on, each off, both off (the defaults) — and prints /predict figures at
concurrency 16 and 256 with the machine's busy CPU share. First it checks that the engine's CUDA
forward pass makes no implicit host synchronisation (``torch.cuda.set_sync_debug_mode("error")``).
``bench/gpu/ablation.sh`` runs it with and without CUDA MPS.

    python -m bench.gpu.ablation default|large
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from bench.run import BENCH, LARGE_STAGES, large_model, wrk

SWITCHES = {
    "both on": {"GLIMPSE_CUDNN_BENCHMARK": "true", "GLIMPSE_MEMORY_TRIM_INTERVAL_S": "10"},
    "no trim": {"GLIMPSE_CUDNN_BENCHMARK": "true", "GLIMPSE_MEMORY_TRIM_INTERVAL_S": "0"},
    "no benchmark": {"GLIMPSE_CUDNN_BENCHMARK": "false", "GLIMPSE_MEMORY_TRIM_INTERVAL_S": "10"},
    "both off": {"GLIMPSE_CUDNN_BENCHMARK": "false", "GLIMPSE_MEMORY_TRIM_INTERVAL_S": "0"},
}


def check_no_implicit_sync() -> None:
    from app.config import Settings
    from app.engine.engine import EngineConfig
    from app.engine.forward import ForwardWork
    from app.engine.work import MapRequest
    from models.checkpoint import DEFAULT_MODEL_DIR, load_model

    model, card = load_model(DEFAULT_MODEL_DIR, "cuda")
    config = EngineConfig.from_settings(Settings(cuda_graphs=False), torch.bfloat16).forward
    model = model.fuse_for_inference()
    engine = ForwardWork(model, card.preprocessing, torch.device("cuda"), config)
    images = [torch.zeros(60, 60, 1, dtype=torch.uint8)] * 8
    padded = [torch.zeros(60 + i, 61 - i, 1, dtype=torch.uint8) for i in range(8)]  # one padded batch
    for batch in (images, padded):  # warm: first calls may sync
        engine.forward_batch(batch, [5] * 8, [MapRequest("evidence")] * 8)
    torch.cuda.set_sync_debug_mode("error")
    try:
        cases: list[tuple[str, list[torch.Tensor], list[MapRequest | None]]] = [
            ("predict", images, [None] * 8),
            ("evidence maps", images, [MapRequest("evidence")] * 8),
            ("mixed", images, [MapRequest("attention", 3), None] * 4),
            ("padded, mixed sizes and maps", padded, [MapRequest("evidence"), None] * 4),
        ]
        for name, batch, requests in cases:
            try:
                engine.forward_batch(batch, [5] * 8, requests)
                print(f"no implicit sync: {name}", flush=True)
            except RuntimeError as exc:
                print(f"IMPLICIT SYNC in {name}: {str(exc).splitlines()[0]}", flush=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def busy_share(before: list[int], after: list[int]) -> float:
    total = sum(after) - sum(before)
    idle = (after[3] + after[4]) - (before[3] + before[4])
    return 1 - idle / total


def cpu_times() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
    command += ["--log-level", "warning", "--workers", "12"]
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    started = time.time()
    while time.time() - started < 90:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    time.sleep(2)  # every worker ready, not only the one that answered
    return process


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "default"
    env = {"GLIMPSE_DEVICE": "cuda", "GLIMPSE_TORCH_THREADS": "1", "GLIMPSE_DECODE_THREADS": "1"}
    image = BENCH / "canvas60.png"
    if which == "large":
        model_dir, image = large_model(BENCH / "results" / "tmp" / "large", LARGE_STAGES)
        env |= {"GLIMPSE_MODEL_DIR": str(model_dir), "GLIMPSE_WARMUP_IMAGE_SIZE": "224"}
    else:
        check_no_implicit_sync()
    for port, (name, switches) in enumerate(SWITCHES.items(), start=8500):
        process = serve({**env, **switches}, port)
        url = f"http://127.0.0.1:{port}/predict"
        wrk(url, 256, 2, 4, Path(image))  # warm the path
        figures = []
        for connections in (16, 256):
            before = cpu_times()
            run = wrk(url, connections, 6, 4, Path(image))
            share = busy_share(before, cpu_times())
            figures.append(
                f"c={connections} {run['requests_per_s']:.0f} req/s p50 {run['p50_ms']:.1f} "
                f"p99 {run['p99_ms']:.1f} max {run['max_ms']:.0f} cpu {share:.0%}"
            )
        print(f"{which} {name:12s} " + " | ".join(figures), flush=True)
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
