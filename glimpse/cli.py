"""The ``glimpse`` command: classify images, save an explanation overlay, describe the served model.

    glimpse predict IMG… [--top-k N]
    glimpse explain IMG [--target LABEL] [--kind evidence|attention] [--out overlay.png]
    glimpse models

Every command takes ``--url`` (default $GLIMPSE_URL, else http://127.0.0.1:8000), ``--api-key`` (default
$GLIMPSE_API_KEY) and ``--timeout``. Exit status: 0 done, 1 the server answered with an error (or an
image could not be read), 2 usage error, 3 no answer from the server.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from glimpse.client import APIError, Client, RequestTimedOut, ServerUnreachable
from glimpse.results import PredictResult

EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_ANSWER = 3


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(args.url, api_key=args.api_key, timeout_s=args.timeout) as client:
            code: int = args.run(client, args)
            return code
    except (ServerUnreachable, RequestTimedOut) as exc:
        hint = "" if args.url else " (start it with `make serve`, or give --url or GLIMPSE_URL)"
        return _fail(f"{exc}{hint}", EXIT_NO_ANSWER)
    except APIError as exc:
        return _fail(_describe(exc), EXIT_API_ERROR)
    except KeyboardInterrupt:
        return 130


def _predict(client: Client, args: argparse.Namespace) -> int:
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    status = 0
    for path in args.images:  # one request each: any number of files, whatever the server's batch limit
        try:
            result = client.predict(_read(path), top_k=args.top_k)
        except (APIError, OSError) as exc:
            notes.append(f"{path}: {_describe(exc)}")
            status = EXIT_API_ERROR
            continue
        for rank, prediction in enumerate(result.predictions, start=1):
            shown = str(path) if rank == 1 else ""
            rows.append((shown, str(rank), prediction.label, f"{prediction.score:.4f}"))
        if _warning(result):
            notes.append(f"{path}: {_warning(result)}")
    if rows:
        print(_table(("image", "rank", "label", "score"), rows))
    for note in notes:
        print(f"glimpse: {note}", file=sys.stderr)
    return status


def _explain(client: Client, args: argparse.Namespace) -> int:
    try:
        image = _read(args.image)
    except OSError as exc:
        return _fail(f"{args.image}: {_describe(exc)}", EXIT_API_ERROR)
    result = client.attention_map(
        image, target=args.target, kind=args.kind, colormap=args.colormap, overlay=True, top_k=1
    )
    assert result.overlay is not None  # asked for
    result.overlay.save(args.out)
    if args.heatmap:
        result.heatmap.save(args.heatmap)
    print(
        f"{args.out}: {result.kind} for class {result.target} over {args.image} "
        f"({result.width}×{result.height}); top class {result.top.label} at {result.top.score:.4f}"
    )
    if _warning(result):
        print(f"glimpse: {args.image}: {_warning(result)}", file=sys.stderr)
    return 0


def _models(client: Client, _: argparse.Namespace) -> int:
    info = client.models()
    spec, runtime = info.input, info.runtime
    print(f"{info.name} {info.version}")
    print(f"labels: {' '.join(info.labels)}")
    if spec:
        print(
            f"input: mode {spec.get('color_mode')}, {spec.get('size_policy')} size, at least "
            f"{spec.get('min_size')} px a side, at most {spec.get('max_pixels')} pixels"
        )
    if runtime:
        print(f"runtime: {runtime.get('device')}, {runtime.get('precision')}")
    rows = [
        (name, f"{metrics['accuracy']:.1%}", str(metrics.get("canvases", "")))
        for name, metrics in info.evaluation.items()
        if isinstance(metrics, dict) and isinstance(metrics.get("accuracy"), int | float)
    ]
    if rows:
        print(_table(("evaluation", "accuracy", "images"), rows))
    return 0


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _warning(result: PredictResult) -> str | None:
    if result.warning:
        return result.warning
    if result.domain is not None and not result.domain.in_distribution:
        return f"out of domain (score {result.domain.score:.2f}): the scores may be meaningless"
    return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, APIError):
        return f"{exc.status} {exc.code}: {exc.message}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    head = "  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in [head, *lines])


def _fail(message: str, code: int) -> int:
    print(f"glimpse: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get("GLIMPSE_URL"), help="server URL (default $GLIMPSE_URL, else "
        "http://127.0.0.1:8000)",
    )  # fmt: skip
    common.add_argument("--api-key", default=None, help="API key (default $GLIMPSE_API_KEY)")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt (default 30)")

    parser = argparse.ArgumentParser(prog="glimpse", description="Client of a Glimpse inference server.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", parents=[common], help="classify images, print a table")
    predict.add_argument("images", nargs="+", metavar="IMG", help="image files (PNG, JPEG, WebP, …)")
    predict.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    predict.set_defaults(run=_predict)

    explain = commands.add_parser("explain", parents=[common], help="save a heatmap overlay of a class")
    explain.add_argument("image", metavar="IMG")
    explain.add_argument("--target", help="label to explain (default: the top class)")
    explain.add_argument("--kind", choices=["evidence", "attention"], default="evidence")
    explain.add_argument("--colormap", default="turbo", help="turbo (default) or viridis")
    explain.add_argument("--out", default="overlay.png", help="where to save the overlay PNG")
    explain.add_argument("--heatmap", help="also save the grayscale heatmap PNG here")
    explain.set_defaults(run=_explain)

    models = commands.add_parser("models", parents=[common], help="describe the served model")
    models.set_defaults(run=_models)
    return parser


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
