"""Is ``torch.compile`` worth offering? The bundled model's bf16 forward pass, eager against compiled.

Measures images/s on the CPU (2 threads, batch 16, then a batch of 7, which static compilation must
compile again), and tries ``dynamic=True`` too, the only way to serve any batch size and image size
without a compilation per shape. Prints one line per measurement.

    python -m bench.compile_check
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from models.checkpoint import DEFAULT_MODEL_DIR, load_model


def images_per_s(forward: Callable[[torch.Tensor], object], x: torch.Tensor, seconds: float = 3.0) -> float:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        forward(x)
        forward(x)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            forward(x)
            done += x.shape[0]
    return done / (time.perf_counter() - started)


def main() -> None:
    torch.set_num_threads(2)
    model, _ = load_model(DEFAULT_MODEL_DIR)
    model = model.fuse_for_inference().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    batch16 = torch.randn(16, 1, 60, 60).contiguous(memory_format=torch.channels_last)
    batch7 = torch.randn(7, 1, 60, 60).contiguous(memory_format=torch.channels_last)
    print(f"eager      batch 16: {images_per_s(model, batch16):,.0f} images/s", flush=True)
    print(f"eager      batch 7:  {images_per_s(model, batch7):,.0f} images/s", flush=True)
    compiled = torch.compile(model, dynamic=False)
    for name, x in (("batch 16", batch16), ("batch 7", batch7)):
        started = time.perf_counter()
        rate = images_per_s(compiled, x)
        took = time.perf_counter() - started - 3.0
        print(f"compiled   {name}: {rate:,.0f} images/s (compiling took about {took:.0f} s)", flush=True)
    print(f"eager      batch 16: {images_per_s(model, batch16):,.0f} images/s (again)", flush=True)
    try:
        images_per_s(torch.compile(model, dynamic=True), batch16)
        print("dynamic=True: compiled", flush=True)
    except Exception as exc:  # report whatever inductor raises; this is a measurement, not the service
        print(f"dynamic=True: fails: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)


if __name__ == "__main__":
    main()
