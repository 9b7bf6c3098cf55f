"""``/docs`` and ``/redoc`` work on a plant network without internet: every script,
style sheet and icon they load is served by the cloud itself (no CDN, no web font)."""

from __future__ import annotations

import re
from typing import Any

from tests.integration.test_web_pages import EXTERNAL


async def test_docs_load_nothing_from_outside(cloud_client: Any) -> None:
    c = cloud_client
    for path in ("/docs", "/redoc"):
        res = await c.get(path)
        assert res.status_code == 200, path
        html = res.text
        assert not EXTERNAL.search(html), (path, EXTERNAL.search(html))
        assets = re.findall(r"""(?:src|href)\s*=\s*["'](/[^"']+)["']""", html)
        assert assets, html[:500]
        for asset in assets:
            got = await c.get(asset)
            assert got.status_code == 200, asset
            assert len(got.content) > 100, asset
