"""State kept per asyncio event loop: a server has one loop, the test suite one
per test, and a task, client or connection belongs to the loop that made it."""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

T = TypeVar("T")


def per_loop(registry: dict[asyncio.AbstractEventLoop, T], create: Callable[[], T]) -> T:
    """The running loop's entry of `registry`, made by `create()` when missing.
    Entries of loops that have closed are dropped."""
    loop = asyncio.get_running_loop()
    for stale in [key for key in registry if key.is_closed()]:
        del registry[stale]
    entry = registry.get(loop)
    if entry is None:
        entry = registry[loop] = create()
    return entry
