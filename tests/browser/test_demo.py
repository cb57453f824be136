"""The demo page at / in a real headless Chromium against a real uvicorn server with an API key.

A user opens the page, is told the server needs a key, enters it, then picks, uploads or drops images and
reads the scores, the heatmap and its controls. Every request the page makes must go to the server under
test: anything else is refused and fails the test. Screenshots are saved under build/browser/ (git-ignored)
and their paths printed. Accessibility is checked with axe-core, vendored in tests/browser/vendor/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser.chromium import TIMEOUT_MS
from tests.helpers import E2E_API_KEY, REPO_ROOT, png_bytes

if TYPE_CHECKING:
    from playwright.sync_api import Browser, FilePayload, Page, Route

pytestmark = pytest.mark.browser  # Chromium itself: tests/browser/conftest.py
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

ARTIFACTS = REPO_ROOT / "build" / "browser"
AXE = REPO_ROOT / "tests" / "browser" / "vendor" / "axe-core" / "axe.min.js"
EXAMPLES = {"digit42.png": "0", "digit903.png": "9"}  # the label each example is drawn as


@contextmanager
def open_demo(browser: Browser, server: str, **context: Any) -> Iterator[Page]:
    """The page loaded, with every off-server request refused and reported at the end."""
    browser_context = browser.new_context(viewport={"width": 1200, "height": 900}, **context)
    foreign: list[str] = []
    errors: list[str] = []

    def only_the_server(route: Route) -> None:
        url = route.request.url
        if url.startswith(f"{server}/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    browser_context.route("**/*", only_the_server)
    page = browser_context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{server}/")
        page.locator("body[data-ready=true]").wait_for()
        yield page
    finally:
        browser_context.close()
    assert not foreign, f"the demo page made requests outside the server: {foreign}"
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """The demo page with the server's API key entered."""
    with open_demo(browser, server) as page:
        enter_key(page, E2E_API_KEY)
        yield page


def enter_key(page: Page, key: str) -> None:
    page.get_by_label("API key (when the server requires one)").fill(key)
    page.get_by_role("button", name="Use this key").click()
    page.locator("#target option", has_text="9").wait_for(state="attached")  # /models answered


def wait_result(page: Page) -> None:
    page.locator("#result[data-state=ready]").wait_for()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path


def heatmap_pixels(page: Page) -> str:
    return str(page.locator("#heatmap").evaluate("canvas => canvas.toDataURL()"))


def top_label(page: Page) -> str:
    return page.locator("#scores li .label").first.inner_text().strip()


def check_heatmap_fits(page: Page, width: int, height: int) -> None:
    """The heatmap canvas has the input's pixels and is drawn over the image at the input's aspect ratio."""
    canvas = page.locator("#heatmap")
    image = page.locator("#input-image")
    image.evaluate("img => img.decode()")  # the input image has loaded
    natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [width, height]
    assert canvas.evaluate("c => [c.width, c.height]") == [width, height]
    canvas_box, image_box = canvas.bounding_box(), image.bounding_box()
    assert canvas_box is not None
    assert image_box is not None
    assert canvas_box == image_box  # exactly over the image
    assert canvas_box["width"] / canvas_box["height"] == pytest.approx(width / height, rel=0.01)
    # Small inputs are scaled up, unblurred: 60 px become at least 4 screen pixels each.
    assert canvas_box["width"] >= 4 * 60
    for element in (canvas, image):
        assert element.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"


def test_the_page_asks_for_the_key_in_words(browser: Browser, server: str) -> None:
    with open_demo(browser, server) as page:
        error = page.get_by_role("alert")
        assert "missing API key" in error.inner_text()
        assert "Enter the server's API key" in error.inner_text()
        assert page.locator("#key-panel").evaluate("details => details.open")
        enter_key(page, E2E_API_KEY)
        assert page.locator("#error").is_hidden()
        sync_api.expect(page.locator("#key-panel")).not_to_have_attribute("open", "")  # closed: the key works
        page.reload()
        page.locator("body[data-ready=true]").wait_for()
        assert page.locator("#error").is_hidden()  # the key is kept for the tab (sessionStorage)
        assert page.get_by_label("API key (when the server requires one)").input_value() == E2E_API_KEY


@pytest.mark.parametrize(("name", "label"), EXAMPLES.items())
def test_each_example_is_classified_and_explained(page: Page, name: str, label: str) -> None:
    page.get_by_role("button", name=f"Example {name}").click()
    wait_result(page)
    assert top_label(page) == label
    score = page.locator("#scores li .score").first.inner_text().strip()
    assert page.locator("#status").inner_text() == f"{name}: class {label} at {score}."
    assert page.locator("#heatmap").get_attribute("data-target") == label
    check_heatmap_fits(page, 60, 60)
    card = json.loads((REPO_ROOT / "models" / "default" / "card.json").read_text())
    assert page.locator("#model-name").inner_text().startswith(f"{card['name']} {card['version']}")
    accuracy = f"{card['evaluation']['cluttered_60x60']['accuracy'] * 100:.1f} %"
    assert accuracy in page.locator("#model-metrics").inner_text()
    screenshot(page, f"demo-{Path(name).stem}")


def test_an_uploaded_file_keeps_its_aspect_ratio(page: Page, tmp_path: Path) -> None:
    """A 100×60 upload through the file picker: the map has its shape, not the examples' square one."""
    digit = np.asarray(Image.open(REPO_ROOT / "examples" / "digit42.png"))
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_bytes(np.pad(digit, ((0, 0), (0, 40)))))
    page.get_by_label("Choose an image…").set_input_files(wide)
    wait_result(page)
    assert top_label(page) == "0"
    check_heatmap_fits(page, 100, 60)


@pytest.mark.parametrize(
    ("how", "event"),
    [
        ("dropped", 'new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true})'),
        ("pasted", 'new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true})'),
    ],
)
def test_a_dropped_or_pasted_image_is_sent(page: Page, how: str, event: str) -> None:
    data = list((REPO_ROOT / "examples" / "digit903.png").read_bytes())
    page.evaluate(
        f"""bytes => {{
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "{how}.png", {{type: "image/png"}}));
            document.getElementById("dropzone").dispatchEvent({event});
        }}""",
        data,
    )
    wait_result(page)
    assert top_label(page) == "9"
    assert page.locator("#caption").inner_text().startswith(f"{how}.png, 60×60")


def test_another_class_kind_and_colormap_redraw_the_map(page: Page) -> None:
    page.get_by_role("button", name="Example digit42.png").click()
    wait_result(page)
    canvas = page.locator("#heatmap")
    top_map = heatmap_pixels(page)

    page.get_by_label("Explain class").select_option("6")
    page.locator("#heatmap[data-target='6']").wait_for()
    wait_result(page)
    class_6_map = heatmap_pixels(page)
    assert class_6_map != top_map
    assert canvas.get_attribute("aria-label") == "Heatmap of the evidence for class 6"
    assert page.locator("#scores li.target .label").inner_text() == "6"  # the explained class is marked

    page.get_by_label("Attention").check()
    page.locator("#heatmap[data-kind='attention']").wait_for()
    wait_result(page)
    assert heatmap_pixels(page) not in (top_map, class_6_map)

    colormap = canvas.get_attribute("data-colormap")
    before = heatmap_pixels(page)
    page.get_by_label("viridis").check()
    assert canvas.get_attribute("data-colormap") == "viridis" != colormap
    assert heatmap_pixels(page) != before


def test_the_controls_work_from_the_keyboard(page: Page) -> None:
    page.get_by_role("button", name="Example digit42.png").focus()
    page.keyboard.press("Shift+Tab")  # back to the file picker, which shows its focus on its button
    assert page.evaluate("document.activeElement.id") == "file"
    picker = page.locator("label[for=file]")
    assert picker.evaluate("label => getComputedStyle(label).outlineStyle") == "solid"

    page.get_by_role("button", name="Example digit903.png").focus()
    page.keyboard.press("Enter")
    wait_result(page)
    assert top_label(page) == "9"

    slider = page.get_by_label("Heatmap opacity")
    start = int(slider.input_value())
    slider.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert int(slider.input_value()) == start - 10
    assert float(page.locator("#heatmap").evaluate("c => c.style.opacity")) == pytest.approx(
        (start - 10) / 100
    )
    assert page.locator("#opacity-value").inner_text() == f"{start - 10} %"

    page.get_by_label("Explain class").focus()
    page.keyboard.press("ArrowDown")  # from "Top class" to the first label, "0"
    page.locator("#heatmap[data-target='0']").wait_for()
    wait_result(page)
    page.get_by_label("Classes shown").fill("2")
    page.keyboard.press("Tab")  # a number input commits its value on change (blur)
    sync_api.expect(page.locator("#scores li")).to_have_count(2)


def test_an_api_error_is_shown_in_words(page: Page, server: str, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_bytes(b"these are notes, not pixels\n")
    expected = httpx.post(
        f"{server}/attention-map",
        files={"file": ("notes.txt", not_an_image.read_bytes(), "text/plain")},
        headers={"X-API-Key": E2E_API_KEY},
    )
    error = expected.json()["error"]

    page.get_by_role("button", name="Example digit42.png").click()
    wait_result(page)
    page.get_by_label("Choose an image…").set_input_files(not_an_image)
    page.locator("#result[data-state=error]").wait_for()
    alert = page.get_by_role("alert").inner_text()
    assert error["message"] in alert
    assert f"HTTP {expected.status_code} · {error['code']}" in alert
    assert page.locator("#view").is_hidden()  # the previous image's result is not left beside the error
    assert page.locator("#status").inner_text() == "No result for notes.txt."
    screenshot(page, "demo-error")


def test_the_domain_verdict_is_shown_when_the_server_reports_it(page: Page, server: str) -> None:
    """Results carry ``domain`` (and a ``warning`` when out of domain) on servers that check it; the
    answer here is the real server's, with the two fields set as such a server sets them."""

    def out_of_domain(route: Route) -> None:
        answer = route.fetch()
        body = answer.json() | {
            "domain": {"in_distribution": False, "score": 0.07},
            "warning": "This model reads handwritten digits, white on dark; its scores for this image "
            "are unreliable.",
        }
        route.fulfill(response=answer, json=body)

    page.route(f"{server}/attention-map*", out_of_domain)
    page.get_by_role("button", name="Example digit42.png").click()
    wait_result(page)
    verdict = page.locator("#domain")
    assert verdict.is_visible()
    assert verdict.inner_text() == (
        "Out of domain (score 0.07): This model reads handwritten digits, white on dark; its scores for "
        "this image are unreliable."
    )
    page.unroute(f"{server}/attention-map*")
    page.get_by_role("button", name="Example digit903.png").click()
    wait_result(page)
    assert page.locator("#caption").inner_text().startswith("digit903.png")
    served = page.locator("#domain")  # the real server's own answer: shown when it has the field
    assert served.is_visible() == ("domain" in last_result(server))


def last_result(server: str) -> dict[str, Any]:
    response = httpx.post(
        f"{server}/attention-map",
        files={"file": ("digit903.png", (REPO_ROOT / "examples" / "digit903.png").read_bytes(), "image/png")},
        headers={"X-API-Key": E2E_API_KEY},
    )
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("state", ["result", "error"])
def test_no_serious_accessibility_violations(browser: Browser, server: str, state: str) -> None:
    # axe is injected from the test, so the page's content security policy is lifted for this context.
    with open_demo(browser, server, bypass_csp=True) as page:
        enter_key(page, E2E_API_KEY)
        page.get_by_role("button", name="Example digit42.png").click()
        wait_result(page)
        if state == "error":
            empty: FilePayload = {"name": "empty.png", "mimeType": "image/png", "buffer": b""}
            page.get_by_label("Choose an image…").set_input_files(files=[empty])
            page.locator("#result[data-state=error]").wait_for()
        page.add_script_tag(path=AXE)
        results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        serious = [
            {
                "id": v["id"],
                "impact": v["impact"],
                "help": v["help"],
                "nodes": [n["target"] for n in v["nodes"]],
            }
            for v in results["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not serious, json.dumps(serious, indent=1)
        assert results["testEngine"]["version"] == "4.14.1"
