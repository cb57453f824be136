"""Glimpse against Triton Inference Server through the Open Inference Protocol: one binary-BYTES infer
request, byte for byte the same to both, in alternating rounds; Glimpse's multipart ``/predict`` runs in
the same rounds, so the v2 route is measured against Glimpse's own API too.

Triton serves the same weights through PyTriton (bench/triton/server.py) in its own venv, made on first
use by bench/run.sh (``make -C bench/triton venv``). The request is what ``tritonclient`` sends:
``image`` BYTES [1, 1] with bench/canvas60.png, outputs ``probabilities`` and ``label`` as binary data,
built by tritonclient's own ``generate_request_body``. Each round runs every server once, the order
rotated every round, so that all see the same stretches of a shared machine.

    bash bench/run.sh v2-head-to-head --rounds 6 --concurrency 16 64
    bash bench/run.sh v2-head-to-head --device cuda --concurrency 16 64 256 \\
        --glimpse WORKERS=4 --triton INSTANCES=2,MAX_BATCH=64,DELAY_US=1000,AMP=bfloat16

Writes bench/results/<stamp>-<host>-v2-head-to-head.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.run import (
    BENCH,
    ROOT,
    glimpse_server,
    process_tree,
    result_header,
    settings,
    wait_ready,
    write_result,
    wrk,
)

GLIMPSE_PORT, TRITON_PORT = 8440, 8450
TRITON_VENV = Path(os.environ.get("GLIMPSE_TRITON_VENV", BENCH / ".venv-triton"))
# On the offline GPU host (bench/gpu/triton.sh): the host's interpreter, with PyTriton's site folder first.
TRITON_PYTHON = Path(os.environ.get("GLIMPSE_TRITON_PYTHON", TRITON_VENV / "bin" / "python"))
TRITON_SITE = os.environ.get("GLIMPSE_TRITON_SITE", "")
# Triton's dynamic batching unless --triton says otherwise: most rows in a batch, the batcher's wait,
# model instances (each a Python process with its own torch), torch threads in each, autocast.
# The best of a sweep on the 2-core CPU at c=64 (bench/results/20261204-220000-vm-triton-cpu-sweep.txt).
TRITON_DEFAULTS = {"MAX_BATCH": "32", "DELAY_US": "2000", "INSTANCES": "2", "THREADS": "1", "AMP": "float32"}


def request_body(image: Path, out: Path) -> tuple[Path, int]:
    """The infer request tritonclient sends for ``image``, written to ``out``; returns it and its JSON
    header's length (the Inference-Header-Content-Length)."""
    import numpy as np

    if TRITON_SITE:  # the GPU host has tritonclient only in PyTriton's site: after the host's packages
        sys.path.append(TRITON_SITE)
    import tritonclient.http as triton

    tensor = triton.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image.read_bytes()]], dtype=np.object_), binary_data=True)
    outputs = [triton.InferRequestedOutput(name, binary_data=True) for name in ("probabilities", "label")]
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    return out, int(json_size)


def libpython_dir(python: Path) -> str:
    """Where the venv's interpreter keeps libpython: Triton's Python backend stub links against it."""
    if python.resolve() == Path(sys.executable).resolve():
        return str(sysconfig.get_config_var("LIBDIR"))
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def triton_server(variant: dict[str, str], port: int, device: str) -> Iterator[dict[str, Any]]:
    """Triton with the Glimpse model through PyTriton, ready; stopped on exit."""
    config = {**TRITON_DEFAULTS, **variant}
    python = TRITON_PYTHON
    command = [
        str(python), str(BENCH / "triton" / "server.py"), "--device", device,
        "--http-port", str(port), "--grpc-port", str(port + 1), "--metrics-port", str(port + 2),
        "--max-batch", config["MAX_BATCH"], "--queue-delay-us", config["DELAY_US"],
        "--instances", config["INSTANCES"], "--threads", config["THREADS"], "--amp", config["AMP"],
    ]  # fmt: skip
    library_path = os.pathsep.join(p for p in (libpython_dir(python), os.environ.get("LD_LIBRARY_PATH")) if p)
    python_path = os.pathsep.join(p for p in (TRITON_SITE, str(ROOT)) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "LD_LIBRARY_PATH": library_path}
    log = BENCH / "results" / "tmp" / "triton.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, start_new_session=True, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        from models.checkpoint import DEFAULT_MODEL_DIR, read_card

        name = read_card(DEFAULT_MODEL_DIR).name
        try:
            ready_s = wait_ready(f"http://127.0.0.1:{port}/v2/models/{name}/ready", process, timeout_s=300)
        except RuntimeError as exc:
            raise RuntimeError(f"Triton did not start ({exc}); its log: {log}") from None
        yield {
            "command": " ".join(command),
            "config": config,
            "pid": process.pid,
            "ready_s": ready_s,
            "url": f"http://127.0.0.1:{port}/v2/models/{name}/infer",
        }
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the server's process group: PyTriton then stops tritonserver and its proxies."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(60)
    except ProcessLookupError:  # it had exited already
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (Triton's stubs, Glimpse's workers)."""
    ticks = 0
    for process in process_tree(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def v2_wrk(
    url: str, connections: int, seconds: int, threads: int, body: Path, header_length: int
) -> dict[str, Any]:
    env = {"BODY": str(body), "HEADER_LENGTH": str(header_length)}
    return wrk(url, connections, seconds, threads, body, script="v2.lua", env=env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--glimpse", type=settings, default={}, help="WORKERS=2,GLIMPSE_SETTING=value,...")
    parser.add_argument(
        "--triton", type=settings, default={}, help="MAX_BATCH=32,DELAY_US=2000,INSTANCES=2,..."
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-predict", action="store_true", help="leave Glimpse's multipart /predict out")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    image = BENCH / "canvas60.png"
    body, header_length = request_body(image, BENCH / "results" / "tmp" / "v2-request.bin")
    glimpse_env = {"GLIMPSE_DEVICE": args.device, **args.glimpse}
    workers = int(glimpse_env.pop("WORKERS", "1"))
    result: dict[str, Any] = {**result_header("bench.v2_head_to_head"), "request_bytes": body.stat().st_size}
    with (
        glimpse_server(glimpse_env, GLIMPSE_PORT, workers) as glimpse,
        triton_server(args.triton, TRITON_PORT, args.device) as triton,
    ):
        from models.checkpoint import DEFAULT_MODEL_DIR, read_card

        name = read_card(DEFAULT_MODEL_DIR).name
        urls = {
            "glimpse-v2": f"{glimpse['base']}/v2/models/{name}/infer",
            "triton": triton["url"],
            "glimpse-predict": f"{glimpse['base']}/predict",  # multipart, as bench.run sends it
        }
        if args.skip_predict:
            del urls["glimpse-predict"]

        pids = {"glimpse-v2": glimpse["pid"], "triton": triton["pid"], "glimpse-predict": glimpse["pid"]}

        def load(server: str, connections: int, seconds: int) -> dict[str, Any]:
            """One wrk run, with the server's CPU time per request: on a shared VM that moves far less
            than requests/s does."""
            before = cpu_seconds(pids[server])
            if server == "glimpse-predict":
                run = wrk(urls[server], connections, seconds, args.wrk_threads, image)
            else:
                run = v2_wrk(urls[server], connections, seconds, args.wrk_threads, body, header_length)
            run["cpu_ms_per_request"] = (
                1000 * (cpu_seconds(pids[server]) - before) / max(run["raw"]["requests"], 1)
            )
            return run

        result["glimpse"] = {k: glimpse[k] for k in ("command", "env", "ready_s", "rss_mib_after_ready")}
        result["triton"] = {k: triton[k] for k in ("command", "config", "ready_s")}
        result["by_concurrency"] = {}
        for connections in args.concurrency:
            for server in urls:
                load(server, connections, 2)  # warm the path
            rounds = []
            for round_ in range(args.rounds):
                names = list(urls)
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                runs = {}
                for server in order:
                    runs[server] = load(server, connections, args.duration)
                    del runs[server]["raw"]
                rounds.append({"order": order, **runs, **ratios(runs)})
                print(f"c={connections} round {round_ + 1}: " + describe(runs), flush=True)
            result["by_concurrency"][str(connections)] = {"rounds": rounds, **medians(rounds)}
            print(f"c={connections} medians: {medians(rounds)}", flush=True)
    write_result(args.out, "v2-head-to-head", result)


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    ours, theirs = runs["glimpse-v2"], runs["triton"]
    figures = {
        "ratio_vs_triton": ours["requests_per_s"] / theirs["requests_per_s"],
        "p99_ratio_vs_triton": ours["p99_ms"] / theirs["p99_ms"],
    }
    if "glimpse-predict" in runs:
        figures["ratio_vs_predict"] = ours["requests_per_s"] / runs["glimpse-predict"]["requests_per_s"]
    return figures


def medians(rounds: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in rounds[0] if k.startswith(("ratio", "p99_ratio"))]
    figures = {f"median_{k}": statistics.median(r[k] for r in rounds) for k in keys}
    for server in ("glimpse-v2", "triton", "glimpse-predict"):
        if server in rounds[0]:
            figures[f"median_{server}_req_s"] = statistics.median(r[server]["requests_per_s"] for r in rounds)
            figures[f"median_{server}_p99_ms"] = statistics.median(r[server]["p99_ms"] for r in rounds)
            figures[f"median_{server}_cpu_ms_per_request"] = statistics.median(
                r[server].get("cpu_ms_per_request", float("nan")) for r in rounds
            )
    return figures


def describe(runs: dict[str, dict[str, Any]]) -> str:
    return "; ".join(
        f"{name} {run['requests_per_s']:,.0f} req/s p99 {run['p99_ms']:.1f} ms "
        f"CPU {run.get('cpu_ms_per_request', float('nan')):.2f} ms/request errors {run['errors']}"
        for name, run in runs.items()
    )


if __name__ == "__main__":
    main()
