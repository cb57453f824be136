"""The side-by-side benchmark: Glimpse, a naive FastAPI endpoint and TorchServe 0.12 under wrk, plus
the in-process ceiling and Grad-CAM's cost, in one run on one machine.

    python -m bench.run                       # CPU: concurrency 1 4 16 64, both endpoints, all servers
    python -m bench.run --device cuda --concurrency 256 --endpoints /predict --large   # the GPU host

Writes bench/results/<stamp>-<host>-<device>.json (machine, command, every figure) and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
TS_VENV = Path(os.environ.get("GLIMPSE_TS_VENV", BENCH / ".venv-ts"))
# TorchServe's settings unless a variant gives its own: batch size, max batch delay, torch threads.
TS_BATCH, TS_DELAY_MS, TS_THREADS = 16, 5, 1


def settings(text: str) -> dict[str, str]:
    """``K=V,K=V`` as a dict: a server variant's settings (``glimpse:WORKERS=2,GLIMPSE_X=1``)."""
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def result_key(taken: dict[str, Any], server: str) -> str:
    """``server``, or ``server #2``, ``#3`` … when a run repeats it (off/on/off/on A/B runs), so that
    each repeat keeps its own figures instead of overwriting the last one's."""
    key, repeat = server, 1
    while key in taken:
        repeat += 1
        key = f"{server} #{repeat}"
    return key


def result_header(module: str) -> dict[str, Any]:
    """What every result file starts with: the command that wrote it, the machine, the start time."""
    return {
        "command": " ".join(["python", "-m", module, *sys.argv[1:]]),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_result(out: Path, name: str, result: dict[str, Any]) -> Path:
    """``result`` as out/<stamp>-<host>-<name>.json; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{platform.node()}-{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}", flush=True)
    return path


def wrk(
    url: str,
    connections: int,
    seconds: int,
    threads: int,
    image: Path,
    script: str = "multipart.lua",
    env: dict[str, str] | None = None,
    cpus: str | None = None,
) -> dict[str, Any]:
    """wrk on ``url`` with a script of bench/wrk/ (multipart.lua posts ``image``; v2.lua reads ``env``),
    on the cores ``cpus`` names (taskset's list syntax) where given."""
    command = [
        *(["taskset", "-c", cpus] if cpus else []),
        "wrk",
        "-s",
        str(BENCH / "wrk" / script),
        f"-c{connections}",
        f"-t{min(threads, connections)}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "IMAGE": str(image), **(env or {})}
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "concurrency": connections,
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        **{f"{p}_ms": raw[f"{p}_us"] / 1000 for p in ("p50", "p95", "p99", "max")},
        "errors": errors,
        "load_average_after": os.getloadavg(),  # the machine is shared: judge the figure by this too
        "raw": raw,
    }


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (TorchServe's workers, Glimpse's)."""
    pids = [pid]
    while True:
        found = []
        for p in pids:  # every thread's children: Java starts TorchServe's workers from other threads
            for path in Path(f"/proc/{p}/task").glob("*/children"):
                found += [int(c) for c in path.read_text().split()]
        new = [p for p in found if p not in pids]
        if not new:
            break
        pids += new
    return pids


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, in MiB; pages they share count once for each."""
    return _sum_field(pid, "status", "VmRSS:")


def peak_rss_mib(pid: int) -> float:
    """The highest resident memory each process of the tree has had (VmHWM), summed, in MiB."""
    return _sum_field(pid, "status", "VmHWM:")


def pss_mib(pid: int) -> float:
    """Proportional set size of a process and its children, in MiB: each shared page split among the
    processes that share it, so the sum is the memory the tree takes (forked workers share pages)."""
    return _sum_field(pid, "smaps_rollup", "Pss:")


def gpu_mib_used() -> float | None:
    """Memory in use on GPU 0, every process's together, in MiB (``nvidia-smi``); None without one.

    Device-wide, since inside a container nvidia-smi may not list a process's own usage: the servers
    subtract what was in use before they started.
    """
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def gpu_mib_since(baseline: float | None, when: str) -> dict[str, float]:
    """``{"gpu_mib_after_<when>": …}``: GPU memory in use now beyond ``baseline``; empty without a GPU."""
    used = gpu_mib_used()
    return {} if used is None or baseline is None else {f"gpu_mib_after_{when}": used - baseline}


def _sum_field(pid: int, file: str, field: str) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/{file}").read_text()
        except (FileNotFoundError, ProcessLookupError):  # exited since it was listed
            continue
        total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith(field)), 0)
    return total / 1024


def load(
    name: str, base: str, paths: dict[str, str], args: argparse.Namespace, image: Path
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for endpoint, path in paths.items():
        wrk(base + path, max(args.concurrency), 2, args.wrk_threads, image)  # warm the path
        runs[endpoint] = []
        for connections in args.concurrency:
            run = wrk(base + path, connections, args.duration, args.wrk_threads, image)
            print(
                f"  {name:10s} {endpoint:15s} c={connections:<4d} {run['requests_per_s']:8.0f} req/s  "
                f"p50 {run['p50_ms']:7.1f}  p99 {run['p99_ms']:7.1f} ms  errors {run['errors']}",
                flush=True,
            )
            runs[endpoint].append(run)
    return runs


@contextmanager
def glimpse_server(env: dict[str, str], port: int, workers: int = 1) -> Iterator[dict[str, Any]]:
    """A Glimpse server on ``port``, ready: its command, start-up time and memory; stopped on exit."""
    # app.serve: with several workers each listens on a socket of its own (SO_REUSEPORT).
    command = [PY, "-m", "app.serve", "--port", str(port), "--log-level", "warning"]
    command += ["--workers", str(workers)]
    gpu_baseline = gpu_mib_used()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}/health/ready", process)
        yield {
            "command": " ".join(command),
            "env": env,
            "ready_s": ready_s,
            "rss_mib_after_ready": rss_mib(process.pid),
            "pss_mib_after_ready": pss_mib(process.pid),
            "gpu_mib_before": gpu_baseline,
            **gpu_mib_since(gpu_baseline, "ready"),
            "base": f"http://127.0.0.1:{port}",
            "paths": {"/predict": "/predict", "/attention-map": "/attention-map"},
            "pid": process.pid,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def serve_glimpse(
    args: argparse.Namespace, env: dict[str, str], image: Path, port: int, workers: int = 1
) -> dict[str, Any]:
    with glimpse_server(env, port, workers) as server:
        paths = {e: p for e, p in server.pop("paths").items() if e in args.endpoints}
        base = server.pop("base")
        runs = load("glimpse", base, paths, args, image)
        pid = server.pop("pid")
        return {
            **server,
            "rss_mib_after_load": rss_mib(pid),
            "pss_mib_after_load": pss_mib(pid),
            **gpu_mib_since(server["gpu_mib_before"], "load"),
            "runs": runs,
        }


def serve_naive(args: argparse.Namespace, image: Path, port: int) -> dict[str, Any]:
    command = [PY, "-m", "uvicorn", "bench.naive_server:app", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "GLIMPSE_DEVICE": args.device})
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}/health/ready", process)
        paths = {e: e for e in args.endpoints}
        return {
            "command": " ".join(command),
            "ready_s": ready_s,
            "rss_mib_after_ready": rss_mib(process.pid),
            "pss_mib_after_ready": pss_mib(process.pid),
            "runs": load("naive", f"http://127.0.0.1:{port}", paths, args, image),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@contextmanager
def torchserve_server(
    args: argparse.Namespace, model_dir: Path, port: int, variant: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """TorchServe with --ts-* settings, ready; ``variant`` (BATCH, DELAY, WORKERS, THREADS, AMP)
    overrides them. Uses ports ``port`` to ``port + 2``; one at a time: TorchServe keeps one PID file."""
    workers = int(variant.get("WORKERS", args.ts_workers))
    batch = int(variant.get("BATCH", args.ts_batch))
    delay_ms = int(variant.get("DELAY", args.ts_delay_ms))
    threads = int(variant.get("THREADS", args.ts_threads))
    amp = variant.get("AMP", "float32")
    work = BENCH / "results" / "tmp" / "torchserve"
    shutil.rmtree(work, ignore_errors=True)
    (work / "store").mkdir(parents=True)
    bin_dir = TS_VENV / "bin"
    subprocess.run(
        [
            str(bin_dir / "torch-model-archiver"),
            "--model-name",
            "glimpse",
            "--version",
            "1.0",
            "--handler",
            str(BENCH / "torchserve" / "handler.py"),
            "--extra-files",
            f"{model_dir / 'card.json'},{model_dir / 'model.safetensors'}",
            "--export-path",
            str(work / "store"),
            "--force",
        ],
        check=True,
    )
    config = (BENCH / "torchserve" / "config.properties.in").read_text()
    for key, value in {
        "PORT": port,
        "MPORT": port + 1,
        "XPORT": port + 2,
        "WORKERS": workers,
        "BATCH": batch,
        "DELAY": delay_ms,
        "STORE": work / "store",
    }.items():
        config = config.replace(f"@{key}@", str(value))
    (work / "config.properties").write_text(config)
    env = {
        **os.environ,
        # the handler imports models/; an offline host finds TorchServe itself on PYTHONPATH
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "GLIMPSE_TS_THREADS": str(threads),
        "GLIMPSE_TS_AMP": amp,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LOG_LOCATION": str(work / "logs"),
        "METRICS_LOCATION": str(work / "logs"),
    }
    command = [
        str(bin_dir / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--ts-config",
        str(work / "config.properties"),
        "--model-store",
        str(work / "store"),
    ]
    gpu_baseline = gpu_mib_used()
    process = subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        started = time.perf_counter()
        wait_ready(f"http://127.0.0.1:{port + 1}/models/glimpse", process)
        base = f"http://127.0.0.1:{port}"
        while time.perf_counter() - started < 120:  # the model is registered before its workers are up
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/models/glimpse", timeout=2) as r:
                    ready = [w for w in json.loads(r.read())[0]["workers"] if w["status"] == "READY"]
                if len(ready) == workers:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("TorchServe workers not ready in 120 s; see bench/results/tmp/torchserve/logs")
        ready_s = time.perf_counter() - started
        config_text = {
            "workers": workers,
            "batch_size": batch,
            "max_batch_delay_ms": delay_ms,
            "torch_threads_per_worker": threads,
            "amp": amp,
        }
        yield {
            "command": " ".join(command),
            "config": config_text,
            "ready_s": ready_s,
            "rss_mib_after_ready": rss_mib(process.pid),
            "pss_mib_after_ready": pss_mib(process.pid),
            "gpu_mib_before": gpu_baseline,
            **gpu_mib_since(gpu_baseline, "ready"),
            "base": base,
            "paths": {"/predict": "/predictions/glimpse", "/attention-map": "/explanations/glimpse"},
        }
    finally:
        subprocess.run([str(bin_dir / "torchserve"), "--stop"], env=env, capture_output=True)
        process.wait(60)


def serve_torchserve(
    args: argparse.Namespace, model_dir: Path, image: Path, port: int, variant: dict[str, str]
) -> dict[str, Any]:
    with torchserve_server(args, model_dir, port, variant) as server:
        paths = {e: p for e, p in server.pop("paths").items() if e in args.endpoints}
        base = server.pop("base")
        runs = load("torchserve", base, paths, args, image)
        return {**server, **gpu_mib_since(server["gpu_mib_before"], "load"), "runs": runs}


def in_process(args: argparse.Namespace, model_dir: Path, image: Path, batch: int) -> dict[str, Any]:
    command = [
        PY,
        "-m",
        "bench.inprocess",
        "--model-dir",
        str(model_dir),
        "--image",
        str(image),
        "--device",
        args.device,
        "--batch",
        str(batch),
        *(["--cuda-graphs"] if args.device == "cuda" else []),  # as the service does by default
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(f"  in-process {json.dumps(result)}", flush=True)
    return {"command": " ".join(command), **result}


LARGE_STAGES = ((64, 2), (128, 2), (256, 1), *((512, 1),) * 6)


def large_model(directory: Path, stages: tuple[tuple[int, int], ...]) -> tuple[Path, Path]:
    """A 224×224 RGB configuration of the same architecture with random weights, and a request image."""
    import numpy as np
    import torch
    from PIL import Image

    from models.attention_net import AttentionNet, AttentionNetConfig
    from models.checkpoint import ModelCard, Preprocessing, save_model

    torch.manual_seed(0)
    config = AttentionNetConfig(in_channels=3, num_classes=1000, stages=stages)
    card = ModelCard(
        "glimpse-random-224",
        "0.0.0",
        config,
        [str(i) for i in range(1000)],
        Preprocessing("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    )
    save_model(AttentionNet(config).eval(), card, directory)
    image = directory / "random224.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image)
    return directory, image


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        info["load_average_at_start"] = os.getloadavg()
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        info["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    except (StopIteration, OSError, IndexError):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--endpoints", nargs="+", default=["/predict", "/attention-map"])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["glimpse", "naive", "torchserve"],
        help="glimpse, glimpse:WORKERS=2,GLIMPSE_SETTING=value,... (a variant), naive, torchserve, "
        "torchserve:AMP=bfloat16,BATCH=16,DELAY=5,WORKERS=2,THREADS=1 (a variant)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for Glimpse")
    parser.add_argument("--glimpse-env", nargs="*", default=[], help="extra GLIMPSE_*=value settings")
    parser.add_argument("--ts-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ts-batch", type=int, default=TS_BATCH)
    parser.add_argument("--ts-delay-ms", type=int, default=TS_DELAY_MS)
    parser.add_argument("--ts-threads", type=int, default=TS_THREADS)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument(
        "--large",
        nargs="*",
        default=None,
        help="also serve the 224² RGB configuration, once per variant given (glimpse:WORKERS=4,...)",
    )
    parser.add_argument("--large-concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--large-stages",
        type=json.loads,
        default=LARGE_STAGES,
        help="backbone of the 224² configuration as JSON; the default (about 90 GFLOP an image) is wide "
        "enough that the GPU, not HTTP or decoding, bounds the throughput",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--note", default="", help="stored with the results (e.g. 'CUDA MPS on')")
    args = parser.parse_args()
    image = BENCH / "canvas60.png"
    from models.checkpoint import DEFAULT_MODEL_DIR

    env = {"GLIMPSE_DEVICE": args.device, **dict(kv.split("=", 1) for kv in args.glimpse_env)}
    result: dict[str, Any] = {**result_header("bench.run"), "note": args.note, "servers": {}}
    print(f"machine: {result['machine']}", flush=True)
    batch = int(env.get("GLIMPSE_MAX_BATCH_SIZE", 32))
    if not args.skip_in_process:
        result["in_process"] = in_process(args, DEFAULT_MODEL_DIR, image, batch)
    port = 8300
    for server in args.servers:
        key = result_key(result["servers"], server)
        if server.startswith("glimpse"):  # glimpse:WORKERS=2,GLIMPSE_X=1 runs a variant
            variant = settings(server.partition(":")[2])
            workers = int(variant.pop("WORKERS", args.workers))
            result["servers"][key] = serve_glimpse(args, {**env, **variant}, image, port, workers)
            port += 1
        elif server == "naive":
            result["servers"][key] = serve_naive(args, image, port + 10)
        elif server.startswith("torchserve"):  # torchserve:AMP=bfloat16,BATCH=32 runs a variant
            variant = settings(server.partition(":")[2])
            result["servers"][key] = serve_torchserve(args, DEFAULT_MODEL_DIR, image, port + 20, variant)
            port += 3  # TorchServe takes three ports: inference, management, metrics
    if args.large is not None:
        stages = tuple((int(width), int(stride)) for width, stride in args.large_stages)
        model_dir, large_image = large_model(BENCH / "results" / "tmp" / "large", stages)
        large_env = {**env, "GLIMPSE_MODEL_DIR": str(model_dir), "GLIMPSE_WARMUP_IMAGE_SIZE": "224"}
        result["large"] = {"stages": stages, "servers": {}}
        if not args.skip_in_process:
            result["large"]["in_process"] = in_process(args, model_dir, large_image, batch)
        args.concurrency = args.large_concurrency
        for server in args.large or ["glimpse"]:
            variant = settings(server.partition(":")[2])
            workers = int(variant.pop("WORKERS", args.workers))
            result["large"]["servers"][result_key(result["large"]["servers"], server)] = serve_glimpse(
                args, {**large_env, **variant}, large_image, port + 40, workers
            )
            port += 1
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{platform.node()}-{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    try:
        from bench.plot import plot

        plot(result, args.out / f"{stem}.png")
    except ImportError:  # matplotlib is in the bench extra; the GPU host may lack it
        print("no matplotlib: plot skipped (python -m bench.plot RESULT.json makes it later)")
    print(f"wrote {args.out / stem}.json and .png", flush=True)


if __name__ == "__main__":
    main()
