"""Validation error of trained models, one by one and as an ensemble (averaged probabilities).

Validation split only (the canvases ``models.train`` selects on); the test split is never touched, so
this may choose teachers for ``models.train --teachers``.

    python scripts/validate_ensemble.py runs/t1 runs/t2 runs/t3
    python scripts/validate_ensemble.py runs/* --per-digit 16 --seed-offset 100000   # fresh canvases
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from models.checkpoint import load_model
from models.data import LABELS, load_mnist_splits
from models.train import MNIST_PREPROCESSING, normalize, validation_canvases


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-digit", type=int, default=4, help="canvases per digit and size")
    parser.add_argument(
        "--seed-offset", type=int, default=0, help="0: the canvases training selected on; else fresh ones"
    )
    args = parser.parse_args()
    val_sets = validation_canvases(load_mnist_splits()["validation"], args.per_digit, args.seed_offset)
    totals = [torch.zeros(len(labels), len(LABELS)) for _, labels in val_sets]
    for directory in args.model_dirs:
        model = load_model(directory, args.device)[0]
        errors = []
        for (images, labels), total in zip(val_sets, totals, strict=True):
            x = normalize(images.unsqueeze(1).float().div(255).to(args.device), MNIST_PREPROCESSING)
            chunks = torch.split(x, 500)
            probabilities = torch.cat([F.softmax(model(b).logits.float(), 1).cpu() for b in chunks])
            total += probabilities
            errors.append(float((probabilities.argmax(1) != labels).float().mean()))
        print(f"{directory}: validation error {errors[0]:.2%} / {errors[1]:.2%}  mean {sum(errors) / 2:.2%}")
    errors = [
        float((t.argmax(1) != labels).float().mean()) for t, (_, labels) in zip(totals, val_sets, strict=True)
    ]
    shown = f"{errors[0]:.2%} / {errors[1]:.2%}  mean {sum(errors) / 2:.2%}"
    print(f"ensemble of {len(args.model_dirs)}: validation error {shown}")


if __name__ == "__main__":
    main()
