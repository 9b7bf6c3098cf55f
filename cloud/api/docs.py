"""The API's own documentation: ``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json``.

Served entirely from the package: Swagger UI's and ReDoc's scripts and styles come from
the ``fastapi-offline`` distribution (mounted at ``/static-docs``), no CDN and no web
font, since a plant network often has no internet and CDNs are unreliable from mainland
China.

``install_docs(app, require_login)``: open to anyone (the default: the schema holds no
data, and a plant's integrators read it before they have an account), or, with
``require_login``, only to a logged-in person or an API token (``plantsync-cloud serve
--docs login``): ``/openapi.json`` then answers 401 like any API route, and the two pages
send a browser without a session to the login page. The app must be made with
``docs_url=None, redoc_url=None, openapi_url=None`` (``DOCS_OFF``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from cloud.api.deps import caller
from cloud.auth import AuthError

DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
OPENAPI_URL: Final = "/openapi.json"
ASSETS_URL: Final = "/static-docs"
ASSETS: Final = Path(fastapi_offline.__file__).resolve().parent / "static"
#: FastAPI's own documentation routes are off; ``install_docs`` serves them.
DOCS_OFF: Final[dict[str, Any]] = {"docs_url": None, "redoc_url": None, "openapi_url": None}


def install_docs(app: FastAPI, *, require_login: bool) -> None:
    """Serve the documentation (module docstring)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    async def refused(request: Request, path: str) -> Response | None:
        """None when the caller may read the docs, else the way to the login page."""
        if not require_login:
            return None
        try:
            await caller(request)
        except AuthError:
            if path == OPENAPI_URL:
                raise
            return RedirectResponse(f"/login?next={quote(path, safe='')}", status_code=303)
        return None

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi(request: Request) -> Response:
        return await refused(request, OPENAPI_URL) or JSONResponse(app.openapi())

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger(request: Request) -> Response:
        return await refused(request, DOCS_URL) or get_swagger_ui_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png")

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> Response:
        return await refused(request, REDOC_URL) or get_redoc_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)
