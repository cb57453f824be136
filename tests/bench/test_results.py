"""How bench.run files its servers' figures."""

from __future__ import annotations

from typing import Any

from bench.run import result_key


def test_a_server_repeated_in_one_run_keeps_each_repeats_figures() -> None:
    servers: dict[str, Any] = {}
    for server in ["glimpse:GLIMPSE_CUDA_GRAPHS=false", "glimpse:GLIMPSE_CUDA_GRAPHS=true"] * 2 + ["naive"]:
        servers[result_key(servers, server)] = len(servers)
    assert servers == {
        "glimpse:GLIMPSE_CUDA_GRAPHS=false": 0,
        "glimpse:GLIMPSE_CUDA_GRAPHS=true": 1,
        "glimpse:GLIMPSE_CUDA_GRAPHS=false #2": 2,
        "glimpse:GLIMPSE_CUDA_GRAPHS=true #2": 3,
        "naive": 4,
    }
