"""The API examples of the docs: the ```console blocks of the pages in ``PAGES``, run against a live server.

Each block holds ``$ curl …`` commands run from the repository's root, each followed by what it
printed, as ``shown`` presents it: long base64 strings and the ``grid`` cut with "…", and for
``curl -i`` only the status line and the body. ``tests/docs/test_readme_examples.py`` runs every
command against a fresh server per page and requires the page to show what the server answers now.
When the answers change on purpose, rewrite the pages from a live server in one go:

    .venv/bin/python -m tests.docs.examples          # also redraws docs/images/overlay.png
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from tests.serving import running

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", ROOT / "docs" / "api.md")
FIGURE = ROOT / "docs" / "images" / "overlay.png"
FIGURE_INPUT = ROOT / "examples" / "digit42.png"
FIGURE_SCALE = 4
# float32 on every CPU (auto picks bfloat16 on CPUs with AMX), so the scores shown do not depend on
# which CPU ran the examples beyond float rounding, which `same_output` tolerates.
SERVER_ENV = {"GLIMPSE_AMP_DTYPE": "float32", "GLIMPSE_DEVICE": "cpu"}
DOCUMENTED_ADDRESS = "localhost:8000"

_BLOCK = re.compile(r"^```console\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_BASE64 = re.compile(r'"([A-Za-z0-9+/]{40})[A-Za-z0-9+/=]+"')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_GRID_ROWS, _GRID_COLUMNS = 2, 4


@dataclass
class Example:
    command: list[str]  # the command's lines as written, continuation backslashes included
    output: list[str]
    blank_lines_after: int

    @property
    def shell(self) -> str:
        return "\n".join(self.command)


def parse_block(text: str) -> list[Example]:
    """The examples of one console block; every line before the first ``$ `` is an error."""
    examples: list[Example] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("$ "):
            raise ValueError(f"a console block must start with a '$ ' command, not {line!r}")
        command = [line.removeprefix("$ ")]
        while command[-1].endswith("\\"):
            index += 1
            command.append(lines[index])
        index += 1
        output: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        blanks = 0
        while output and not output[-1]:
            output.pop()
            blanks += 1
        examples.append(Example(command, output, blanks))
    return examples


def render_block(examples: list[Example]) -> str:
    lines: list[str] = []
    for example in examples:
        lines += ["$ " + example.command[0], *example.command[1:], *example.output]
        lines += [""] * example.blank_lines_after
    return "\n".join(lines) + "\n"


def blocks(page: Path) -> list[tuple[re.Match[str], list[Example]]]:
    text = page.read_text()
    return [(match, parse_block(match.group(1))) for match in _BLOCK.finditer(text)]


def _cut_grid(body: str) -> str:
    start = body.find('"grid":[[')
    if start < 0:
        return body
    inner_start = start + len('"grid":[[')
    end = body.index("]]", inner_start)
    rows = body[inner_start:end].split("],[")
    cut = []
    for row in rows[:_GRID_ROWS]:
        cells = row.split(",")
        cut.append(
            "[" + ",".join(cells[:_GRID_COLUMNS] + (["…"] if len(cells) > _GRID_COLUMNS else [])) + "]"
        )
    if len(rows) > _GRID_ROWS:
        cut.append("…")
    return body[:start] + '"grid":[' + ",".join(cut) + "]" + body[end + 2 :]


def shown(raw: str) -> list[str]:
    """What a page shows of a command's output: the status line and body of a response with headers,
    long base64 strings and the map grid cut with "…"."""
    text = raw.replace("\r\n", "\n")
    if text.startswith("HTTP/"):
        head, _, body = text.partition("\n\n")
        text = head.split("\n", 1)[0].rstrip() + "\n" + body
    text = _cut_grid(_BASE64.sub(lambda match: f'"{match.group(1)}…"', text))
    return text.rstrip("\n").split("\n")


def _numbers_agree(documented: str, actual: str) -> bool:
    """Equal, or two computed floats (five or more significant digits) within float rounding."""
    if documented == actual:
        return True
    digits = min(
        len(re.sub(r"\D|^-?0\.0*", "", token.split("e")[0].split("E")[0])) for token in (documented, actual)
    )
    if digits < 5:
        return False
    return math.isclose(float(documented), float(actual), rel_tol=1e-3, abs_tol=1e-6)


def same_output(documented: list[str], actual: list[str]) -> bool:
    """The same text, byte for byte, except that computed floats may differ by float rounding."""
    left, right = "\n".join(documented), "\n".join(actual)
    if _NUMBER.sub("#", left) != _NUMBER.sub("#", right):
        return False
    return all(
        _numbers_agree(a, b) for a, b in zip(_NUMBER.findall(left), _NUMBER.findall(right), strict=True)
    )


def run(example: Example, base_url: str) -> list[str]:
    """Run one example's command from the repository's root against the server at ``base_url``."""
    command = example.shell.replace(DOCUMENTED_ADDRESS, base_url.removeprefix("http://"))
    if not command.startswith("curl "):
        raise ValueError(f"the API examples run curl only, not: {example.shell}")
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{example.shell!r} exited {done.returncode}: {done.stderr}")
    return shown(done.stdout)


def check_page(page: Path) -> list[str]:
    """Every example of ``page`` run in order on a fresh server; a message for each that differs."""
    problems = []
    with running(SERVER_ENV) as server:
        for _, examples in blocks(page):
            for example in examples:
                actual = run(example, server.url)
                if not same_output(example.output, actual):
                    problems.append(
                        f"{page.relative_to(ROOT)}: $ {example.shell}\n  documented: "
                        + "\n              ".join(example.output)
                        + "\n  answered:   "
                        + "\n              ".join(actual)
                    )
    return problems


def rewrite_page(page: Path) -> None:
    """Replace every example's output on ``page`` with what a fresh server answers now."""
    text = page.read_text()
    with running(SERVER_ENV) as server:
        pieces, last = [], 0
        for match, examples in blocks(page):
            for example in examples:
                example.output = run(example, server.url)
            pieces += [text[last : match.start(1)], render_block(examples)]
            last = match.end(1)
    page.write_text("".join([*pieces, text[last:]]))


def draw_figure() -> None:
    """``FIGURE``: the input, the evidence map and the overlay from the live service, side by side."""
    with running(SERVER_ENV) as server:
        answer = httpx.post(
            f"{server.url}/attention-map",
            params={"overlay": "true"},
            files={"file": (FIGURE_INPUT.name, FIGURE_INPUT.read_bytes(), "image/png")},
            timeout=30,
        ).json()
    pictures = [Image.open(FIGURE_INPUT).convert("RGB")] + [
        Image.open(io.BytesIO(base64.b64decode(answer[key]))).convert("RGB") for key in ("heatmap", "overlay")
    ]
    width, height = pictures[0].size
    gap = 8
    figure = Image.new("RGB", (3 * width * FIGURE_SCALE + 2 * gap, height * FIGURE_SCALE), "white")
    for index, picture in enumerate(pictures):
        scaled = picture.resize((width * FIGURE_SCALE, height * FIGURE_SCALE), Image.Resampling.NEAREST)
        figure.paste(scaled, (index * (width * FIGURE_SCALE + gap), 0))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure.save(FIGURE, optimize=True)


def main() -> None:
    for page in PAGES:
        rewrite_page(page)
        print(f"rewrote the examples of {page.relative_to(ROOT)}")
    draw_figure()
    print(f"drew {FIGURE.relative_to(ROOT)}: {json.dumps(FIGURE.stat().st_size)} bytes")
    sys.exit(0)


if __name__ == "__main__":
    main()
