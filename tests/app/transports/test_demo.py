"""The demo page's routes: served without the API key, only the files it ships, a CSP that keeps it local.

What the page does in a browser is tested in tests/browser/test_demo.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.pipeline.colormaps import COLORMAPS
from app.transports.routes.demo import EXAMPLES_DIR, STATIC_DIR
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The app with an API key configured; the page needs no model, so the lifespan is not started."""
    app = create_app(Settings(_env_file=None, api_keys=["secret"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_the_page_is_served_without_a_key(http: httpx.AsyncClient) -> None:
    response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (STATIC_DIR / "index.html").read_text()
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert (await http.get("/models")).status_code == 401  # the API itself stays behind the key


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/demo/demo.js", "text/javascript"),
        ("/demo/demo.css", "text/css"),
        ("/demo/examples/digit42.png", "image/png"),
        ("/demo/examples/digit903.png", "image/png"),
    ],
)
async def test_assets_are_served(http: httpx.AsyncClient, path: str, media_type: str) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "etag" in response.headers


@pytest.mark.parametrize(
    "path",
    [
        "/demo/missing.js",
        "/demo/examples/missing.png",
        "/demo/..%2Fmain.py",
        "/demo/examples/..%2F..%2Fmain.py",
    ],
)
async def test_only_shipped_files_are_served(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_colormaps_are_the_servers(http: httpx.AsyncClient) -> None:
    tables = (await http.get("/demo/colormaps.json")).json()
    assert set(tables) == set(COLORMAPS)
    for name, table in COLORMAPS.items():
        assert bytes.fromhex(tables[name]) == table.tobytes()
        assert len(tables[name]) == 256 * 3 * 2


def test_gallery_images_are_the_repositorys_examples() -> None:
    """The gallery ships copies (examples/ is outside the package and the image): they must not drift."""
    shipped = {path.name: path.read_bytes() for path in EXAMPLES_DIR.glob("*.png")}
    originals = {path.name: path.read_bytes() for path in (REPO_ROOT / "examples").glob("*.png")}
    assert shipped == originals
    page = (STATIC_DIR / "index.html").read_text()
    for name in originals:
        assert f'data-src="demo/examples/{name}"' in page


def test_the_page_is_not_in_the_openapi_schema() -> None:
    paths = create_app(Settings(_env_file=None)).openapi()["paths"]
    assert not {"/", "/demo/{name}", "/demo/examples/{name}", "/demo/colormaps.json"} & set(paths)


def test_static_files_are_package_data() -> None:
    """What pyproject's package-data ships for app/ covers every file the page serves."""
    import tomllib
    from fnmatch import fnmatch

    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    app_dir = Path(STATIC_DIR).parent
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            relative = path.relative_to(app_dir).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in patterns["app"]), relative
