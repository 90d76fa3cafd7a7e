"""Markdown for streaming answers, rendered in helper processes.

Re-rendering the unfinished tail of every streaming answer is the largest
piece of CPU work of a busy process (bench/load.py), and one Python process
runs its event loop on one core. So tails of some size are rendered by
`CHAT_RENDER_PROCESSES` helper processes (0: in this process), while the loop
goes on relaying text. render_tail() is a pure function of its text; small
tails cost less to render here than to send away.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from django.conf import settings

from .markdown import render_tail

log = logging.getLogger(__name__)

SMALL_TAIL = 400  # characters: rendered here

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_unavailable = False  # helpers could not run here: render in this process from now on


def _get_pool() -> ProcessPoolExecutor | None:
    global _pool
    if settings.CHAT_RENDER_PROCESSES <= 0 or _unavailable:
        return None
    with _pool_lock:
        if _pool is None:
            # forkserver: never fork this multi-threaded process itself.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["conversations.markdown"])
            _pool = ProcessPoolExecutor(max_workers=settings.CHAT_RENDER_PROCESSES, mp_context=context)
        return _pool


def _discard_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def warm_up() -> None:
    """Start the helper processes now (the first answer of the process), so that
    the first large tail does not wait for them to boot."""
    global _unavailable
    pool = _get_pool()
    if pool is not None and not getattr(pool, "warmed", False):
        pool.warmed = True
        try:
            for _ in range(settings.CHAT_RENDER_PROCESSES):
                pool.submit(render_tail, "")
        except Exception:
            log.exception("markdown helper processes are unavailable; rendering in the server process")
            _unavailable = True
            _discard_pool(pool)


async def render_tails(tails: list[str]) -> list[tuple[int, str, str]]:
    """render_tail() of each text, the larger ones in the helper processes."""
    global _unavailable
    pool = _get_pool()
    if pool is None or all(len(tail) < SMALL_TAIL for tail in tails):
        return [render_tail(tail) for tail in tails]
    loop = asyncio.get_running_loop()
    try:
        return list(
            await asyncio.gather(
                *(
                    loop.run_in_executor(pool, render_tail, tail) if len(tail) >= SMALL_TAIL else _done(render_tail(tail))
                    for tail in tails
                )
            )
        )
    except BrokenProcessPool:  # a helper died (killed, out of memory): start afresh, render here meanwhile
        log.warning("a markdown helper process died; starting new ones")
        _discard_pool(pool)
    except Exception:  # helpers cannot run here at all
        log.exception("markdown helper processes are unavailable; rendering in the server process")
        _unavailable = True
        _discard_pool(pool)
    return [render_tail(tail) for tail in tails]


async def _done(value):
    return value
