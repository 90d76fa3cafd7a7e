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
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from django.conf import settings

from .markdown import render_tail

log = logging.getLogger(__name__)

SMALL_TAIL = 400  # characters: rendered here
PARENT_CHECK_INTERVAL = 1.0  # seconds: how soon helpers notice the server is gone
# A first rendering that loads the renderer's lazy parts (a code highlighter
# loads on first use: a slow first render made the answer wait longer for its next).
WARM_UP = "**Warm** `up`:\n\n- item\n\n```python\nx = 1\n```\n\nText"

_pool: ProcessPoolExecutor | None = None  # started helpers; None: render in this process
_pool_lock = threading.Lock()
_starting = False
_unavailable = False  # helpers could not run here: render in this process from now on
_tasks: set[asyncio.Task] = set()


def _start_pool() -> None:
    """Start the helper processes and wait until they run (blocking: in a thread)."""
    global _pool, _starting, _unavailable
    pool = None
    try:
        # forkserver: never fork this multi-threaded process itself.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["conversations.markdown"])
        pool = ProcessPoolExecutor(
            max_workers=settings.CHAT_RENDER_PROCESSES,
            mp_context=context,
            initializer=_end_with,
            initargs=(os.getpid(),),
        )
        for _ in range(settings.CHAT_RENDER_PROCESSES):  # each helper renders once, loading what it needs
            pool.submit(render_tail, WARM_UP)
        with _pool_lock:
            _pool = pool
    except Exception:
        log.exception("markdown helper processes are unavailable; rendering in the server process")
        _unavailable = True
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    finally:
        _starting = False


def _end_with(server_pid: int) -> None:
    """In a helper: exit once the server process is gone. A server that is
    killed never shuts its pool down, and the helpers (and their forkserver,
    which lives while they do) would wait for work forever."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_INTERVAL)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # alive, under another user
                pass

    threading.Thread(target=watch, name="end-with-server", daemon=True).start()


def _needed() -> bool:
    return _pool is None and not _starting and not _unavailable and settings.CHAT_RENDER_PROCESSES > 0


async def start() -> None:
    """Start the helper processes, once per process (and again after one died).
    Starting them blocks for tens of milliseconds (the forkserver boots and
    imports the renderer), so it happens in a thread while the event loop goes
    on; tails are rendered here until the helpers run."""
    global _starting
    if not _needed():
        return
    _starting = True
    await asyncio.get_running_loop().run_in_executor(None, _start_pool)


def start_soon() -> None:
    """start() in a task of its own (held here until done)."""
    if _needed():
        task = asyncio.get_running_loop().create_task(start())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


def _discard_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


async def render_tails(tails: list[str]) -> list[tuple[int, str, str]]:
    """render_tail() of each text, the larger ones in the helper processes."""
    global _unavailable
    pool = _pool if settings.CHAT_RENDER_PROCESSES > 0 and not _unavailable else None
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
        start_soon()
    except Exception:  # helpers cannot run here at all
        log.exception("markdown helper processes are unavailable; rendering in the server process")
        _unavailable = True
        _discard_pool(pool)
    return [render_tail(tail) for tail in tails]


async def _done(value):
    return value
