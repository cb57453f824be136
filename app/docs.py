"""The OpenAPI pages (``/docs``, ``/redoc``) served with local assets, so they work without internet.

FastAPI's defaults load Swagger UI and ReDoc from cdn.jsdelivr.net (and a favicon from
fastapi.tiangolo.com): on an air-gapped host the page stays blank. The assets come from the
``fastapi-offline`` package (Swagger UI 5, which renders OpenAPI 3.1; ``swagger-ui-bundle`` ships 4.x,
which doesn't).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
_ASSETS_DIR = str(files("fastapi_offline") / "static")


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets; create the app with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = "/docs/oauth2-redirect"

    def root(request: Request) -> str:
        """The mount prefix behind a proxy (``--root-path``), as FastAPI's own docs pages use it."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_swagger_ui_html(
            openapi_url=prefix + openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=prefix + oauth2_redirect_url,
            swagger_js_url=f"{prefix}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        prefix = root(request)
        return get_redoc_html(
            openapi_url=prefix + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{prefix}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
