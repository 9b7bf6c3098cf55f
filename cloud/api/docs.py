"""The API's own documentation: ``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json``.

``install_docs(app, require_login)``: open to anyone (the default: the schema holds no
data, and a plant's integrators read it before they have an account), or, with
``require_login``, only to a logged-in person or an API token (``plantsync-cloud serve
--docs login``): ``/openapi.json`` then answers 401 like any API route, and the two pages
send a browser without a session to the login page.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response

from cloud.api.deps import Viewer, caller
from cloud.auth import AuthError

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"


def install_docs(app: FastAPI, *, require_login: bool) -> None:
    """Serve the documentation (module docstring). The app must have been made with
    ``docs_url=None, redoc_url=None, openapi_url=None`` when ``require_login``."""
    if not require_login:
        return

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi(_actor: Viewer) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger(request: Request) -> Response:
        return await _page(request, DOCS_URL) or get_swagger_ui_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - API")

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> Response:
        return await _page(request, REDOC_URL) or get_redoc_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - API")


async def _page(request: Request, path: str) -> Response | None:
    """None when the caller may read the docs, else the way to the login page."""
    try:
        await caller(request)
    except AuthError:
        return RedirectResponse(f"/login?next={quote(path, safe='')}", status_code=303)
    return None
