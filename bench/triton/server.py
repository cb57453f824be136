"""Triton Inference Server serving the Glimpse model through PyTriton, for the v2 side-by-side benchmark.

The same weights (models/default, loaded by ``models.checkpoint.load_model``), the same preprocessing
(Pillow decode, the card's colour mode and normalisation), fused and channels-last as Glimpse serves
them, behind the real ``tritonserver`` binary that the nvidia-pytriton wheel ships. The model speaks the
same tensors as Glimpse's v2 route: input ``image`` (BYTES, one encoded image per batch row); outputs
``probabilities`` (FP32, class-index order), ``label`` (BYTES) and ``heatmap`` (UINT8, the evidence map
of the top class scaled to 0…255, computed only when the request asks for it). Triton's dynamic batcher
forms the batches.

Runs in its own venv (PyTriton needs numpy < 2): ``make -C bench/triton venv``, then
``bench/triton/serve.sh --http-port 8430 --max-batch 16 --queue-delay-us 2000 --instances 2``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from models.attention_net import channels_last, upsample_to_input
from models.checkpoint import DEFAULT_MODEL_DIR, load_model
from models.packing import prepare_cpu_convolutions
from models.preprocessing import to_model_input


class GlimpseModel:
    """The forward pass over one Triton batch: decode, stack by size, run, answer the three outputs."""

    def __init__(self, model_dir: Path, device: str, amp: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        model, self.card = load_model(model_dir, self.device)
        self.model = channels_last(model.fuse_for_inference())
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(amp)
        if self.device.type == "cpu":
            prepare_cpu_convolutions(self.model, self.amp_dtype)
        self.labels = np.array([label.encode() for label in self.card.labels], dtype=np.object_)
        self.stride = self.card.config.feature_stride

    @torch.inference_mode()
    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray[Any, Any]]]:
        wanted = [set(getattr(r, "requested_output_names", None) or ("heatmap",)) for r in requests]
        images = [
            to_model_input(_decode(element), self.card.preprocessing)
            for request in requests
            for element in request["image"].reshape(-1)
        ]
        counts = [request["image"].shape[0] for request in requests]
        with_heatmap = any("heatmap" in names for names in wanted)
        probabilities, heatmaps = self._forward(images, with_heatmap)
        answers: list[dict[str, np.ndarray[Any, Any]]] = []
        start = 0
        for count in counts:
            rows = slice(start, start + count)
            answer = {
                "probabilities": probabilities[rows],
                "label": self.labels[probabilities[rows].argmax(axis=1)].reshape(count, 1),
            }
            if heatmaps is not None:
                answer["heatmap"] = np.stack(heatmaps[rows])
            answers.append(answer)
            start += count
        return answers

    def _forward(
        self, images: list[torch.Tensor], with_heatmap: bool
    ) -> tuple[np.ndarray[Any, Any], list[np.ndarray[Any, Any]] | None]:
        # The benchmark sends one size; several sizes run one forward pass per size.
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(index)
        probabilities = np.empty((len(images), len(self.card.labels)), np.float32)
        heatmaps: list[np.ndarray[Any, Any]] = [np.empty(0, np.uint8)] * len(images)
        for indices in by_size.values():
            stacked = torch.stack([images[i] for i in indices]).to(self.device)
            stacked = stacked.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            )
            with autocast:
                output = self.model(stacked)
            probabilities[indices] = torch.softmax(output.logits.float(), dim=1).cpu().numpy()
            if with_heatmap:
                height, width = stacked.shape[-2:]
                evidence = output.evidence(output.logits.argmax(dim=1)).float().clamp(min=0)
                heat = upsample_to_input(evidence, height, width, self.stride)
                peak = heat.amax(dim=(1, 2), keepdim=True)
                scaled = torch.where(peak > 0, torch.round(heat * (255.0 / peak)), torch.zeros_like(heat))
                for i, map_ in zip(indices, scaled.to(torch.uint8).cpu().numpy(), strict=True):
                    heatmaps[i] = map_
        return probabilities, heatmaps if with_heatmap else None


def _decode(element: Any) -> Image.Image:
    image = Image.open(io.BytesIO(bytes(element)))
    image.load()
    return image


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--http-port", type=int, default=8430)
    parser.add_argument("--grpc-port", type=int, default=8431)
    parser.add_argument("--metrics-port", type=int, default=8432)
    parser.add_argument("--max-batch", type=int, default=16, help="Triton's max_batch_size")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="the dynamic batcher's max delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances (PyTriton proxies)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each instance")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    models = [
        GlimpseModel(args.model_dir, args.device, args.amp, args.threads) for _ in range(args.instances)
    ]
    card = models[0].card
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=card.name,
            model_version=1,
            infer_func=models,  # one per instance; each gets a batch's requests
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(len(card.labels),)),
                Tensor(name="label", dtype=bytes, shape=(1,)),
                Tensor(name="heatmap", dtype=np.uint8, shape=(-1, -1)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )
        print(f"triton serving {card.name} on 127.0.0.1:{args.http_port}, pid {os.getpid()}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
