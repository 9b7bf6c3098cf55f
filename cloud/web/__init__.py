"""The plant manager's web UI: server-rendered pages in simplified Chinese and English.

``install_web(app)`` adds the pages (cloud/web/pages.py), the forms behind the planner's
buttons (cloud/web/actions.py) and ``/static`` (one CSS file, one small script; no CDN,
no internet: charts are inline SVG drawn on the server). Languages: cloud/web/i18n.py;
sessions, CSRF and roles: cloud/web/context.py; what the pages read and the due-date and
provisional-data rules: cloud/production/status.py and cloud/ingest/status.py;
CSV/XLSX exports: cloud/web/exports.py.

Pages: ``/`` plant board (``?wall=1`` for a wall screen), ``/work-orders`` and
``/work-orders/{number}``, ``/anomalies``, ``/oee``, ``/inventory``, ``/completeness``,
``/login``, ``/account`` (the user's own page and API tokens; cloud/web/account.py),
``/settings`` (the plant's time zone; cloud/web/settings.py). Every page says which time
zone its times are in.
Every table exports with ``?export=csv|xlsx`` (``&table=`` on pages with several), with
the page's filters.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from cloud.web import account, actions, analysis, pages, settings
from cloud.web.context import LoginRequired, WebError, open_page, render
from cloud.web.i18n import N_

__all__ = ["install_web"]

STATIC = Path(__file__).resolve().parent / "static"


def install_web(app: FastAPI) -> None:
    """Add the web UI's routes, its error pages and ``/static`` to ``app``."""
    app.include_router(pages.router)
    app.include_router(analysis.router)
    app.include_router(actions.router)
    app.include_router(account.router)
    app.include_router(settings.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> Response:
        if exc.status == 401:
            return RedirectResponse("/login", status_code=303)
        page = await open_page(request, login=False)
        titles = {403: N_("Not allowed"), 404: N_("Not found")}
        return render(page, "error.html", status_code=exc.status, message=exc.message,
                      detail=exc.detail, title=titles.get(exc.status, N_("Error")))
