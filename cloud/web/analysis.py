"""The pages built on the anomalies/OEE engine: ``/anomalies`` and ``/oee``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloud.web import engine
from cloud.web.context import render
from cloud.web.pages import open_page

router = APIRouter(include_in_schema=False)


@router.get("/anomalies", response_class=HTMLResponse)
async def anomalies_page(request: Request) -> Response:
    page = await open_page(request)
    return render(page, "pending.html", section="anomalies", engine=engine.available())


@router.get("/oee", response_class=HTMLResponse)
async def oee_page(request: Request) -> Response:
    page = await open_page(request)
    return render(page, "pending.html", section="oee", engine=engine.available())
