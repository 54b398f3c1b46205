"""Waiting for a condition instead of sleeping: one poller for every test package."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def until(predicate: Callable[[], Any], within: float = 10.0, what: str = "condition", interval: float = 0.05,
                *, seen: Callable[[], Any] | None = None) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy, and return that. An exception counts as
    "not yet" (the thing may not be up); after `within` seconds, TimeoutError naming `what`, the last exception and
    what `seen()` says was last observed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Exception | None = None
    while loop.time() < deadline:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except Exception as exc:  # not there yet
            last = exc
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {within}s waiting for {what}" + (f" (last error: {last!r})" if last else "")
                       + (f"; last seen: {seen()}" if seen else ""))
