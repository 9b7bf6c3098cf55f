"""A small stale-while-revalidate cache for the pages whose figures are expensive to
compute at query time (machine states and today's OEE on the board, the OEE page, data
completeness): a request gets the last value at once and, when it is older than the
entry's freshness, starts one background refresh; only the very first request of a key
waits. Figures are therefore at most about one freshness period old (the board: 5 s; OEE:
60 s; completeness: 30 s), a planner's action through the pages clears the cache, and
the page says when it was computed. One cache per app (``app.state.web_cache``)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final

import structlog

log = structlog.get_logger(__name__)
MAX_ENTRIES: Final = 128


class PageCache:
    def __init__(self) -> None:
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self.generation = 0

    async def get(self, key: Hashable, fresh_s: float,
                  compute: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
        """(value, computed at: time.time()) for ``key``."""
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
            if time.monotonic() - hit[0] >= fresh_s and key not in self._tasks:
                self._tasks[key] = asyncio.create_task(self._refresh(key, compute))
            cached: tuple[Any, float] = hit[1]
            return cached
        value = (await compute(), time.time())
        self._store(key, value)
        return value

    async def _refresh(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> None:
        generation = self.generation
        try:
            value = (await compute(), time.time())
            if generation == self.generation:
                self._store(key, value)
        except Exception:  # the stale value stays; the next request tries again
            log.exception("page_cache_refresh_failed", key=str(key))
        finally:
            self._tasks.pop(key, None)

    def _store(self, key: Hashable, value: tuple[Any, float]) -> None:
        self._data[key] = (time.monotonic(), value)
        self._data.move_to_end(key)
        while len(self._data) > MAX_ENTRIES:
            self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (after a change made through the pages)."""
        self.generation += 1
        self._data.clear()


def page_cache(app: Any) -> PageCache:
    cache = getattr(app.state, "web_cache", None)
    if cache is None:
        cache = app.state.web_cache = PageCache()
    return cache
