"""The embedded (single-process) channel layer."""

from __future__ import annotations

import time

from channels import layers


class InMemoryChannelLayer(layers.InMemoryChannelLayer):
    """channels' in-memory layer, cleaning up at most once a second.

    The stock layer walks every channel and every group of the process for
    expired messages on each send and receive, so a process relaying N streams
    did O(N) work per delta (bench/load.py found it among the hot spots). Expiry
    is housekeeping measured in seconds (messages) and days (groups): once a
    second is plenty.
    """

    cleanup_every = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_cleanup = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_cleanup >= self.cleanup_every:
            self._last_cleanup = now
            super()._clean_expired()
