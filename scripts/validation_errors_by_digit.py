"""Which validation digits the errors come from: per model and for the models' ensemble.

Validation split only, on fresh canvases (as ``scripts/validate_ensemble.py --seed-offset``); the test
split is never touched. A digit that most models get wrong on most of its canvases is hard in itself,
not because of the clutter around it, and no choice among these models will fix it.

    python scripts/validation_errors_by_digit.py models/default runs/t_deep_120 runs/t_wide_112
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from models.checkpoint import load_model
from models.data import LABELS, load_mnist_splits
from models.train import MNIST_PREPROCESSING, normalize, validation_canvases

SIZES = (60, 100)


def sketch(digit: Tensor) -> list[str]:
    """The 28×28 digit as 14 lines of text, one character per 2×2 pixels."""
    pooled = F.avg_pool2d(digit.float()[None, None], 2)[0, 0]
    return ["".join(" .:#"[min(3, int(v) // 64)] for v in row) for row in pooled]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-digit", type=int, default=16, help="canvases per digit and size")
    parser.add_argument("--seed-offset", type=int, default=100000, help="fresh canvases, as in selection")
    parser.add_argument("--show", type=int, default=3, help="digits to draw")
    args = parser.parse_args()
    digits = load_mnist_splits()["validation"]
    count = len(digits)
    val_sets = validation_canvases(digits, args.per_digit, args.seed_offset)
    totals = [torch.zeros(len(labels), len(LABELS)) for _, labels in val_sets]
    rows: list[tuple[str, list[Counter[int]]]] = []
    for directory in args.model_dirs:
        model = load_model(directory, args.device)[0]
        per_size = []
        for (images, labels), total in zip(val_sets, totals, strict=True):
            x = normalize(images.unsqueeze(1).float().div(255).to(args.device), MNIST_PREPROCESSING)
            probabilities = torch.cat(
                [F.softmax(model(b).logits.float(), 1).cpu() for b in torch.split(x, 500)]
            )
            total += probabilities
            per_size.append(wrong_by_digit(probabilities, labels, count))
        rows.append((str(directory), per_size))
    ensemble = [wrong_by_digit(t, labels, count) for t, (_, labels) in zip(totals, val_sets, strict=True)]
    rows.append((f"ensemble of {len(args.model_dirs)}", ensemble))
    hard = [d for d, n in (ensemble[0] + ensemble[1]).most_common() if n >= args.per_digit]  # half or more
    canvases = args.per_digit * count
    print(f"# {count} validation digits, {args.per_digit} fresh canvases each at 60×60 and 100×100")
    print(f"# hard digits (the ensemble wrong on at least half of their canvases): {hard}")
    for name, per_size in rows:
        cells = []
        for size, wrong in zip(SIZES, per_size, strict=True):
            total_wrong, on_hard = sum(wrong.values()), sum(wrong[d] for d in hard)
            without = (total_wrong - on_hard) / (canvases - len(hard) * args.per_digit)
            cells.append(
                f"{size}×{size}: {total_wrong / canvases:.2%} ({total_wrong} wrong,"
                f" {on_hard} on the hard digits; {without:.2%} without them)"
            )
        print(f"{name}: " + "  ".join(cells))
    predicted = [totals[0][[d + k * count for k in range(args.per_digit)]].sum(0).argmax() for d in hard]
    for d, guess in list(zip(hard, predicted, strict=True))[: args.show]:
        label, said = LABELS[int(digits.labels[d])], LABELS[int(guess)]
        print(f"\n# validation digit {d}: labelled {label}, the ensemble says {said}")
        print("\n".join(sketch(digits.images[d])))


def wrong_by_digit(probabilities: Tensor, labels: Tensor, count: int) -> Counter[int]:
    """Wrong canvases per digit; canvases come in blocks of ``count``, one per digit, in digit order."""
    wrong = (probabilities.argmax(1) != labels).nonzero().flatten().tolist()
    return Counter(i % count for i in wrong)


if __name__ == "__main__":
    main()
