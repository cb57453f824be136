"""A real two-node Ray cluster on this machine: ``ray start --head`` and a second ``ray start --address``.

The test process never joins the cluster as a Ray driver: it deploys and inspects through the head's
dashboard (the REST API that ``serve deploy`` and KubeRay use, and the state API), so nothing Ray does
can end the test process, and a failure reports the nodes' own logs.

Each node is a ``ray start --block`` process in a session of its own, with its own temp dir, ports,
loopback address and custom resource (``node1``, ``node2``). Stopping sends SIGTERM and then SIGKILL
to every process of those sessions (raylet, GCS, agents and the workers they started, which keep the
session), never to Ray processes of anyone else on the machine (``ray stop`` would stop them all).

Ray advertises the machine's outward address instead of 127.0.0.1 (``resolve_ip_for_localhost``), so the
nodes take other loopback addresses, which Ray leaves as they are: all traffic stays on loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.serving import REPO_ROOT, free_port

HEAD_IP, WORKER_IP = "127.0.0.3", "127.0.0.2"
STARTED_LINE = "block forever"  # ray start --block prints it once the node has joined
RAY = Path(sys.executable).with_name("ray")


@dataclass
class Cluster:
    gcs_address: str
    dashboard_url: str  # Serve's REST API and the state API
    temp_dir: Path

    def logs(self, limit: int = 3000) -> str:
        """The tail of each node's output and of the Ray logs that explain a dead node or replica."""
        logs = self.temp_dir.glob("*/session_latest/logs/*")
        ray_logs = [path for path in logs if path.name.startswith(("raylet.", "gcs_server.", "dashboard."))]
        serve_logs = self.temp_dir.glob("*/session_latest/logs/serve/*")  # controller, replicas, HAProxy
        parts = []
        for path in [*self.temp_dir.glob("*.log"), *sorted(ray_logs), *sorted(serve_logs)]:
            if path.is_file() and path.stat().st_size:
                text = path.read_text(errors="replace")[-limit:]
                parts.append(f"--- {path.relative_to(self.temp_dir)}\n{text}")
        return "\n".join(parts)


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def rayservice_env() -> dict[str, str]:
    """The ``RAY_SERVE_*`` variables every node of deploy/ray/rayservice.yaml starts with."""
    manifest = yaml.safe_load((REPO_ROOT / "deploy" / "ray" / "rayservice.yaml").read_text())
    (head,) = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in head["env"] if item["name"].startswith("RAY_SERVE_")}


def cluster_env(temp_dir: Path, pod_env: Mapping[str, str]) -> dict[str, str]:
    """The nodes' environment: workers import the repository; no GLIMPSE_* from the developer's shell,
    only ``pod_env`` (what the RayService's pods would get, such as the keys from their Secret);
    HAProxy's files under ``temp_dir`` (Serve's default is a fixed /tmp/haproxy-serve)."""
    haproxy = temp_dir / "h"  # short: HAProxy's sockets live here, under a 56-character node id
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLIMPSE_", "RAY_"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        RAY_USAGE_STATS_ENABLED="0",
        # On a busy 2-core machine an agent can take more than the default 30 s to import; the raylet
        # would then give up on its node.
        RAY_agent_register_timeout_ms="300000",
        RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT="300",  # the dashboard's modules, likewise
        # Serve as deploy/ray/rayservice.yaml runs it (HAProxy ingress, the app on the replica's loop, …);
        # a small maxconn fits any host's open-file limit, and the side ports are chosen free.
        **rayservice_env(),
        RAY_SERVE_HAPROXY_MAXCONN="256",
        RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
        RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()),
        RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()),
        RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(haproxy / "haproxy.cfg"),
        RAY_SERVE_HAPROXY_SOCKET_PATH=str(haproxy / "admin.sock"),
        RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=str(haproxy / "metrics.sock"),
        RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(haproxy),
        RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(haproxy / "server-state"),
    )
    env.update(pod_env)
    return env


def node_ports() -> list[str]:
    """Every port a node listens on, chosen free: two nodes on one machine must not share defaults."""
    options = [
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
        "--node-manager-port",
        "--object-manager-port",
    ]
    return [part for option in options for part in (option, str(free_port()))]


def start_node(arguments: list[str], env: dict[str, str], log: Path, timeout_s: float) -> Node:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", *arguments],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = Node(process, log)
    deadline = time.monotonic() + timeout_s
    while STARTED_LINE not in node.output():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_node(node)
            raise RuntimeError(f"ray start did not bring the node up:\n{node.output()[-3000:]}")
        time.sleep(0.5)
    return node


def session_members(session_id: int) -> list[int]:
    """Process ids whose session is ``session_id`` (field 6 of /proc/PID/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":  # a zombie is gone but for its parent's wait
            members.append(int(entry.name))
    return members


def stop_session(session_id: int, grace_s: float = 10) -> None:
    """SIGTERM to every process of the session, SIGKILL to those left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in session_members(session_id):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while session_members(session_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_members(session_id):
            return


def stop_node(node: Node) -> None:
    stop_session(node.process.pid)
    node.process.wait(timeout=10)


@contextmanager
def two_node_cluster(
    temp_dir: Path, pod_env: Mapping[str, str], cpus_per_node: int = 1, timeout_s: float = 240
) -> Iterator[Cluster]:
    """A head and a worker node, each with ``cpus_per_node`` CPUs and ``pod_env`` in its environment."""
    gcs_address = f"{HEAD_IP}:{free_port()}"
    dashboard_port = free_port()
    # One environment for both nodes: the same Serve flags and side ports.
    env = cluster_env(temp_dir, pod_env)
    with ExitStack() as stack:
        head = start_node(
            [
                "--head",
                "--node-ip-address", HEAD_IP,
                "--port", gcs_address.rsplit(":", 1)[1],
                "--num-cpus", str(cpus_per_node),
                "--resources", '{"node1": 1}',
                "--include-dashboard", "true",  # Serve's REST API and the state API
                "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard_port),
                "--ray-client-server-port", str(free_port()),
                "--object-store-memory", str(100 * 1024 * 1024),
                "--temp-dir", str(temp_dir / "head"),
                *node_ports(),
            ],
            env,
            temp_dir / "head.log",
            timeout_s,
        )  # fmt: skip
        stack.callback(stop_node, head)
        worker = start_node(
            [
                "--address", gcs_address,
                "--node-ip-address", WORKER_IP,
                "--num-cpus", str(cpus_per_node),
                "--resources", '{"node2": 1}',
                "--object-store-memory", str(100 * 1024 * 1024),
                "--temp-dir", str(temp_dir / "worker"),
                *node_ports(),
            ],
            env,
            temp_dir / "worker.log",
            timeout_s,
        )  # fmt: skip
        stack.callback(stop_node, worker)
        yield Cluster(gcs_address, f"http://127.0.0.1:{dashboard_port}", temp_dir)
