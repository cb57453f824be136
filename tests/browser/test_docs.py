"""The OpenAPI page as a user's front door, in a real headless Chromium against a real uvicorn server.

A user opens /docs, authorizes with an API key, expands an image endpoint, clicks "Try it out", picks
an image file, clicks "Execute" and reads the rendered response. Nothing may come from the internet:
every request the page makes must go to the server under test (CI and air-gapped hosts have no CDN).

Needs Debian's Chromium (``apt-get install chromium``; ``make browser-test`` installs it) and the
``playwright`` package from the dev extra; ``playwright install`` is never needed.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.helpers import E2E_API_KEY

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

from tests.browser.chromium import TIMEOUT_MS

pytestmark = pytest.mark.browser  # Chromium itself: tests/browser/conftest.py
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")


@pytest.fixture
def docs_page(browser: Browser, server: str) -> Iterator[Page]:
    """/docs loaded and authorized with the e2e server's API key; fails on any off-server request."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    foreign: list[str] = []
    page.on(
        "request", lambda request: None if request.url.startswith(server) else foreign.append(request.url)
    )
    page.goto(f"{server}/docs")
    page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("input").first.fill(E2E_API_KEY)  # X-API-Key; a bearer token is the other scheme
    dialog.get_by_role("button", name="Apply credentials").first.click()  # its "Authorize" button
    dialog.get_by_role("button", name="Close").first.click()
    yield page
    page.close()
    assert not foreign, f"the docs page loaded assets from outside the server: {foreign}"


@pytest.mark.parametrize(("path", "field"), [("/predict", "predictions"), ("/attention-map", "heatmap")])
def test_try_it_out_uploads_an_image(
    docs_page: Page, canvas_png: Callable[[int], bytes], tmp_path: Path, path: str, field: str
) -> None:
    page = docs_page
    image = tmp_path / "digit42.png"  # the README's 60×60 test canvas with a "0"
    image.write_bytes(canvas_png(42))
    operation = page.locator(".opblock-post").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]')
    )
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    assert operation.locator("select.content-type").first.input_value() == "multipart/form-data"
    operation.locator(".opblock-section-request-body input[type=file]").set_input_files(image)
    operation.get_by_role("button", name="Execute").click()

    response = operation.locator(".live-responses-table tr.response")  # the server's answer, rendered
    response.wait_for()
    screenshot = tmp_path / f"docs{path.replace('/', '-')}.png"
    page.screenshot(path=screenshot, full_page=True)
    print(f"screenshot: {screenshot}")
    assert response.locator(".response-col_status").inner_text().strip() == "200", response.inner_text()
    body = json.loads(response.locator(".highlight-code pre").first.inner_text())

    assert field in body, body
    assert body["model"]["name"] == "glimpse-cluttered-mnist"
    assert body["predictions"][0]["label"] == "0"
    if field == "heatmap":
        heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap"])))
        assert (heatmap.mode, heatmap.size) == ("L", (60, 60))
