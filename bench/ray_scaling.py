"""Ray Serve scaling: Glimpse with 1, 2, 4, 8 replicas against ``python -m app.serve`` with as many workers.

For each replica kind (``cpu``: CPU replicas; ``gpu``: replicas sharing one GPU through fractional
``num_gpus``) and each count N, it deploys ``app.runtime.ray_serve`` with N replicas, loads it with wrk
through Serve's ingress, then starts the standalone service with N workers on the same device and loads
it the same way. Replicas are of one size whatever N (``--replica-size fixed``, the default): ``cores //
max(N)`` CPUs each, 2 on a 16-core host as in the Serve configs, so that adding replicas adds capacity,
and the standalone workers get as many threads each. ``--replica-size split`` divides the host among
the N replicas instead (``cores // N`` CPUs each, and the standalone workers' own sizing). Serve's
controller and ingress take no CPU reservation: what they cost shows in Ray's figures, as it would in
production. Ray and standalone alternate in every round, the order flipped each round, so that both see
the same stretches of the machine. Requests reach the replicas through Serve's HAProxy ingress
(``--ingress haproxy``, the default, as docs/deploy-ray.md recommends) or through Serve's Python HTTP
proxy actor (``--ingress proxy``). With ``--client-cores K``, wrk runs on the last K cores and the side
measured (the replicas with HAProxy and its manager, or the standalone server and its workers) on N
replicas' worth of the others, so that N replicas get N times the cores and the load generator takes
none of theirs; Ray's control plane (GCS, raylet, dashboard, Serve's controller) shares wrk's cores, as
the RayService keeps it on a head node without replicas. It prints and writes req/s and p99 per count
(median over rounds), the scaling efficiency (req/s at N over N × req/s at 1) and Ray's share of the
standalone figure.

    python -m bench.ray_scaling                                  # CPU replicas, 1 2 4 8, 3 rounds
    python -m bench.ray_scaling --replica-cpus 1 --client-cores 8   # a 16-core host: 8 cores for 8 replicas
    python -m bench.ray_scaling --kinds cpu gpu --concurrency 128   # the GPU host (bench/gpu/ray.sh)
    python -m bench.ray_scaling --plot bench/results/…-ray-scaling.json   # the plot again

Needs the ray extra and wrk. Writes bench/results/<stamp>-<host>-ray-scaling.json, and its plot beside it
as .png where matplotlib is installed (the bench extra).
"""

from __future__ import annotations

import os

# One node, on loopback: Ray would otherwise advertise the machine's outward address to itself.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import contextlib
import json
import resource
import socket
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import ray
from ray import serve

from app.runtime.protocol import raise_file_limit
from app.runtime.ray_serve import Glimpse
from bench.run import BENCH, glimpse_server, machine, process_tree, result_header, write_result, wrk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


RAY_PORT, STANDALONE_PORT = free_port(), free_port()
HAPROXY_DEFAULT_MAXCONN = 20_000  # Serve's RAY_SERVE_HAPROXY_MAXCONN default
INGRESS_MIDDLEWARES = "app.runtime.ray_serve:ingress_middlewares"  # as deploy/ray/rayservice.yaml sets it
APPLICATION = "glimpse"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--kinds", nargs="+", choices=["cpu", "gpu"], default=["cpu"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="wrk connections")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=4)
    parser.add_argument(
        "--client-cores",
        type=int,
        default=0,
        help="pin wrk and Ray's control plane to the last K cores, and the side measured (the replicas with "
        "HAProxy, or the standalone server) to replica-CPUs × N of the others; 0: nothing pinned",
    )
    parser.add_argument(
        "--replica-size",
        choices=["fixed", "split"],
        default="fixed",
        help="fixed: cores // max(--replicas) CPUs per replica; split: cores // N for N replicas",
    )
    parser.add_argument(
        "--replica-cpus", type=int, help="CPUs per replica (and threads per standalone worker), any count"
    )
    parser.add_argument("--endpoint", default="/predict")
    parser.add_argument(
        "--get", action="store_true", help="GET the endpoint, no image (/health/live: the per-request cost)"
    )
    parser.add_argument("--image", type=Path, default=BENCH / "canvas60.png")
    parser.add_argument(
        "--max-ongoing-requests", type=int, default=64, help="Serve's per-replica limit (the Serve config's)"
    )
    parser.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        default="haproxy",
        help="Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1) or its Python proxy actor",
    )
    parser.add_argument("--env", nargs="*", default=[], help="GLIMPSE_*=value settings for both sides")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument(
        "--plot", type=Path, metavar="RESULT", help="only plot RESULT.json (beside it, as .png), then exit"
    )
    return parser.parse_args()


def wait_http(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def deploy(replicas: int, options: dict[str, Any], max_ongoing: int) -> float:
    """``replicas`` Glimpse replicas on the running Serve instance; returns the seconds to ready."""
    started = time.perf_counter()
    application = Glimpse.options(
        num_replicas=replicas,
        ray_actor_options=options,
        max_ongoing_requests=max_ongoing,
        # As the standalone side runs (--log-level warning): no line per request.
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    ).bind()
    serve.run(application, name=APPLICATION, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APPLICATION)
        if status is not None and status.status == "RUNNING":
            break
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploying {replicas} replicas failed: {status.message}")
        time.sleep(0.5)
    else:
        raise RuntimeError(f"{replicas} replicas not running in 600 s: {serve.status()}")
    wait_http(f"http://127.0.0.1:{RAY_PORT}/health/ready")
    return time.perf_counter() - started


def measure(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    cpus = ",".join(map(str, client_cores(args))) or None
    env = {"WRK_GET": "1"} if args.get else None
    wrk(url, args.concurrency, 2, args.wrk_threads, args.image, env=env, cpus=cpus)  # warm every replica
    run = wrk(url, args.concurrency, args.duration, args.wrk_threads, args.image, env=env, cpus=cpus)
    print(
        f"    {name:10s} {run['requests_per_s']:8.0f} req/s  p50 {run['p50_ms']:7.1f}  "
        f"p99 {run['p99_ms']:7.1f} ms  errors {run['errors']}",
        flush=True,
    )
    return run


def host_cores(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """This process's cores as (the sides', wrk's): wrk's the last --client-cores of them."""
    cores = sorted(os.sched_getaffinity(0))
    split = len(cores) - args.client_cores
    return cores[:split], cores[split:]


def client_cores(args: argparse.Namespace) -> list[int]:
    """The cores wrk (and, pinned, Ray's control plane) run on."""
    return host_cores(args)[1]


def replica_cpus(args: argparse.Namespace, replicas: int) -> int:
    if args.replica_cpus is not None:
        cpus: int = args.replica_cpus
        return cpus
    cores = len(host_cores(args)[0])
    return max(1, cores // (max(args.replicas) if args.replica_size == "fixed" else replicas))


def service_cores(args: argparse.Namespace, replicas: int) -> list[int]:
    """The cores of the side measured with N replicas or workers: N replicas' worth, wrk's left out."""
    return host_cores(args)[0][: replica_cpus(args, replicas) * replicas]


def split_ray_processes(pids: list[int]) -> tuple[list[int], list[int]]:
    """Ray's processes as (data path, control plane): the replicas, HAProxy and its manager, which run on
    every node that serves, against GCS, raylet, dashboard, Serve's controller and the rest, which the
    RayService keeps on a head node that holds no replica (``num-cpus: 0``)."""
    data_path: list[int] = []
    control: list[int] = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        serving = b"ray::ServeReplica" in command or b"HAProxyManager" in command or b"bin/haproxy" in command
        (data_path if serving else control).append(pid)
    return data_path, control


def pin(pids: list[int], cores: list[int]) -> None:
    """Every thread of ``pids`` onto ``cores`` (affinity is per thread; new threads inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):  # the thread or process ended meanwhile
                os.sched_setaffinity(int(task.name), cores)


def sized_env(args: argparse.Namespace, replicas: int, env: dict[str, str]) -> dict[str, str]:
    """``env`` for both sides; with fixed-size replicas, the threads of one replica for every worker."""
    if args.replica_size == "split" and not args.replica_cpus:
        return env
    threads = str(replica_cpus(args, replicas))
    return {"GLIMPSE_TORCH_THREADS": threads, "GLIMPSE_DECODE_THREADS": threads} | env


def ray_side(args: argparse.Namespace, kind: str, replicas: int, env: dict[str, str]) -> dict[str, Any]:
    cpus = replica_cpus(args, replicas)
    env = sized_env(args, replicas, env)
    gpu_share = 1 / max(args.replicas) if kind == "gpu" else 0.0  # every count fits on one GPU
    # The settings reach the replicas as the Serve config's env_vars do: the runtime environment.
    options: dict[str, Any] = {"num_cpus": cpus, "runtime_env": {"env_vars": env}}
    if gpu_share:
        options["num_gpus"] = gpu_share
    ready_s = deploy(replicas, options, args.max_ongoing_requests)
    if args.client_cores:
        data_path, control = split_ray_processes(process_tree(os.getpid())[1:])
        pin(data_path, service_cores(args, replicas))
        pin(control, client_cores(args))
    try:
        run = measure("ray", f"http://127.0.0.1:{RAY_PORT}{args.endpoint}", args)
    finally:
        serve.delete(APPLICATION)
    return {"ready_s": ready_s, "num_cpus": cpus, "num_gpus": gpu_share, **run}


def standalone_side(args: argparse.Namespace, workers: int, env: dict[str, str]) -> dict[str, Any]:
    with glimpse_server(sized_env(args, workers, env), STANDALONE_PORT, workers) as server:
        if args.client_cores:
            pin(process_tree(server["pid"]), service_cores(args, workers))
        run = measure("standalone", f"{server['base']}{args.endpoint}", args)
        return {"ready_s": server["ready_s"], **run}


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
    }


def table(kind: str, summary: dict[int, dict[str, dict[str, float]]]) -> str:
    base = summary[min(summary)]["ray"]["requests_per_s"]
    lines = [
        f"{kind} replicas | Ray req/s | Ray p99 ms | scaling efficiency | standalone req/s "
        "| standalone p99 ms | Ray / standalone",
        "---|---|---|---|---|---|---",
    ]
    for count, sides in sorted(summary.items()):
        ray_rps, alone_rps = sides["ray"]["requests_per_s"], sides["standalone"]["requests_per_s"]
        efficiency = ray_rps / (count / min(summary) * base)
        lines.append(
            f"{count} | {ray_rps:.0f} | {sides['ray']['p99_ms']:.1f} | {efficiency:.0%} | {alone_rps:.0f} "
            f"| {sides['standalone']['p99_ms']:.1f} | {ray_rps / alone_rps:.0%}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """req/s (with the linear ideal from 1 replica) and p99 against the replica or worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.4))
    for kind, data in result["kinds"].items():
        summary = {int(count): sides for count, sides in data["summary"].items()}
        counts = sorted(summary)
        for side, style in (("ray", "-"), ("standalone", "--")):
            label = f"{kind}: {'Ray Serve replicas' if side == 'ray' else 'app.serve workers'}"
            rps = [summary[n][side]["requests_per_s"] for n in counts]
            throughput.plot(counts, rps, style, marker="o", label=label)
            latency.plot(counts, [summary[n][side]["p99_ms"] for n in counts], style, marker="o", label=label)
        base = summary[counts[0]]["ray"]["requests_per_s"] / counts[0]
        throughput.plot(counts, [base * n for n in counts], ":", color="grey", label=f"{kind}: Ray, linear")
    counts = sorted({int(n) for data in result["kinds"].values() for n in data["summary"]})
    for axis, title in ((throughput, "requests/s"), (latency, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.set_xlabel("replicas (Ray) or workers (standalone)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    throughput.legend(fontsize=7)
    machine = result["machine"]
    figure.suptitle(
        f"{machine.get('cpu_model', '')} ({machine['cpus']} cores) {machine.get('gpu', '')}, "
        f"Serve ingress: {result.get('ingress', 'proxy')}, replicas: {result.get('replica_size', 'split')}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


def use_haproxy_ingress() -> None:
    """Serve as deploy/ray/rayservice.yaml runs it, for the Ray processes this driver starts (they
    inherit its environment): the HAProxy ingress, the app on each replica's own event loop, the ingress
    metrics from the replicas, and no disconnect watcher per request.

    HAProxy wants about 2.5 descriptors per connection; its default ``maxconn`` (20,000) needs more than
    many hosts' open-file limit, so the limit is raised as far as the hard one allows (the launcher's
    :func:`~app.runtime.protocol.raise_file_limit`) and ``maxconn`` fitted under it.
    """
    raise_file_limit(HAPROXY_DEFAULT_MAXCONN * 3)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fits = HAPROXY_DEFAULT_MAXCONN if soft == resource.RLIM_INFINITY else (soft - 1024) // 3
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    os.environ.setdefault("RAY_SERVE_HAPROXY_MAXCONN", str(min(HAPROXY_DEFAULT_MAXCONN, fits)))
    # Per-request ingress metrics from the replicas instead of HAProxy's log parsed by the Python
    # HAProxyManager, and no disconnect watcher per request (app.runtime.ray_serve.ingress_middlewares).
    # Set either to the other value (an empty path for the callback) around the command to compare.
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", INGRESS_MIDDLEWARES)


def main() -> None:
    args = parse_args()
    largest = max(args.replicas)
    if args.client_cores and len(service_cores(args, largest)) < largest * replica_cpus(args, largest):
        raise SystemExit("--client-cores: wrk's cores and the largest count's replicas don't fit here")
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return
    if args.ingress == "haproxy":
        use_haproxy_ingress()
    extra = dict(pair.split("=", 1) for pair in args.env)
    result: dict[str, Any] = {
        **result_header("bench.ray_scaling"),
        "ray": ray.__version__,
        "ingress": args.ingress,
        "replica_size": args.replica_size,
        "client_cores": client_cores(args),
        "service_cores": {n: service_cores(args, n) for n in args.replicas} if args.client_cores else None,
        "kinds": {},
    }
    # Serve's feature flags (set here for --ingress haproxy, or around the command) reach Ray's processes.
    result["ray_serve_env"] = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    result["machine"] = machine()
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),
        num_gpus=1 if "gpu" in args.kinds else 0,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": RAY_PORT})
        for kind in args.kinds:
            env = {"GLIMPSE_LOG_LEVEL": "warning", "GLIMPSE_DEVICE": "cuda" if kind == "gpu" else "cpu"}
            env |= extra
            runs: dict[int, dict[str, list[dict[str, Any]]]] = {
                n: {"ray": [], "standalone": []} for n in args.replicas
            }
            for round_index in range(args.rounds):
                for count in args.replicas:
                    print(
                        f"{kind} round {round_index + 1}/{args.rounds}, {count} replicas / workers",
                        flush=True,
                    )
                    order = ["ray", "standalone"] if round_index % 2 == 0 else ["standalone", "ray"]
                    for side in order:
                        if side == "ray":
                            runs[count]["ray"].append(ray_side(args, kind, count, env))
                        else:
                            runs[count]["standalone"].append(standalone_side(args, count, env))
            summary = {n: {side: summarise(r) for side, r in sides.items()} for n, sides in runs.items()}
            result["kinds"][kind] = {"runs": runs, "summary": summary, "table": table(kind, summary)}
            print(result["kinds"][kind]["table"], flush=True)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    path = write_result(args.out, "ray-scaling", result)
    try:
        plot(result, path.with_suffix(".png"))
    except ImportError:  # matplotlib is in the bench extra, which the GPU host's wheels leave out
        print(f"no matplotlib here: plot later with python -m bench.ray_scaling --plot {path}")


if __name__ == "__main__":
    main()
