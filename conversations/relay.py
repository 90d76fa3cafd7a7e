"""Chat events to sockets: this process's sockets directly, other processes'
through the channel layer, and only those.

Every socket registers here under the groups it joins (a conversation, its
owner), and `publish` hands an event to this process's sockets itself, encoded
once. Going through the channel layer instead cost a queue, a task and a
dispatch per socket per delta in-process, and with Redis a round trip through
the one inbox list that channels_redis gives each process, which overflowed at a
hundred streams (bench/load.py).

With Redis (several processes) each process also has one relay channel. A
Redis set per group (`chat:relay:<group>`) names the relay channels of the
processes with sockets in that group; `publish` sends the event once to each
other process listed, whose relay hands it to its own sockets. A process reads
a group's set at most once a second; a socket that joins mid-answer on another
process is learnt at once from its snapshot request (generation.py). Entries
expire when their process stops refreshing them (it died).

The layer's own groups still carry the events that sync code sends (views).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import orjson
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from django.conf import settings

from .loops import per_loop

log = logging.getLogger(__name__)

_members: dict[str, set] = defaultdict(set)
_remotes: dict[asyncio.AbstractEventLoop, "RemoteRelay"] = {}

KEY = "chat:relay:{}"
ENTRY_TTL = 60  # seconds a process's entry lives without a refresh
CACHE_SECONDS = 1.0


async def join(layer, group: str, consumer) -> None:
    first = not _members.get(group)
    _members[group].add(consumer)
    if first and not is_local(layer):
        await remote(layer).joined(group)


async def leave(layer, group: str, consumer) -> None:
    members = _members.get(group)
    if members is None:
        return
    members.discard(consumer)
    if not members:
        del _members[group]
        if not is_local(layer):
            await remote(layer).left(group)


def is_local(layer) -> bool:
    """Are all sockets in this process (no other process to tell)?"""
    return isinstance(layer, InMemoryChannelLayer)


async def publish(layer, group: str, payload: dict[str, Any]) -> None:
    await deliver(group, payload)
    if not is_local(layer):
        await remote(layer).send(group, payload)


async def deliver(group: str, payload: dict[str, Any]) -> None:
    """To this process's sockets in `group`."""
    members = _members.get(group)
    if members:
        text = orjson.dumps(payload).decode()
        for consumer in list(members):
            try:
                await consumer.send(text_data=text)
            except Exception:  # a socket closing right now: its disconnect removes it
                log.debug("dropping an event for a closing socket", exc_info=True)


def remote(layer) -> "RemoteRelay":
    return per_loop(_remotes, lambda: RemoteRelay(layer))


async def channel_name(layer) -> str | None:
    """This process's relay channel (None with the in-memory layer)."""
    if is_local(layer):
        return None
    relay = remote(layer)
    await relay.start()
    return relay.channel


def learn(layer, group: str, channel: str | None) -> None:
    """A process has a socket in `group` (it asked for a snapshot)."""
    if channel and not is_local(layer):
        remote(layer).learn(group, channel)


class RemoteRelay:
    """This process's side of the Redis relay (one per event loop)."""

    def __init__(self, layer):
        self.layer = layer
        self.channel: str | None = None
        self.redis = None
        self.known: dict[str, tuple[float, set[str]]] = {}
        self.tasks: list[asyncio.Task] = []
        self.starting: asyncio.Lock | None = None

    async def start(self) -> None:
        if self.channel is not None:
            return
        self.starting = self.starting or asyncio.Lock()
        async with self.starting:
            if self.channel is not None:
                return
            import redis.asyncio

            self.redis = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=30, max_connections=200)
            channel = await self.layer.new_channel()
            loop = asyncio.get_running_loop()
            self.tasks = [
                loop.create_task(self._receive_forever(channel), name="relay-receive"),
                loop.create_task(self._refresh_forever(), name="relay-refresh"),
            ]
            self.channel = channel

    async def joined(self, group: str) -> None:
        await self.start()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                await pipe.sadd(KEY.format(group), self.channel).expire(KEY.format(group), ENTRY_TTL).execute()
        except Exception:  # Redis briefly away: the refresh adds it again
            log.warning("could not register relay for %s", group, exc_info=True)

    async def left(self, group: str) -> None:
        if self.channel is None:
            return
        try:
            await self.redis.srem(KEY.format(group), self.channel)
        except Exception:  # it expires anyway
            log.debug("could not unregister relay for %s", group, exc_info=True)

    def learn(self, group: str, channel: str) -> None:
        if channel != self.channel:
            when, channels = self.known.get(group, (0.0, set()))
            self.known[group] = (when, channels | {channel})

    async def others(self, group: str) -> set[str]:
        now = time.monotonic()
        when, channels = self.known.get(group, (0.0, set()))
        if now - when >= CACHE_SECONDS:
            await self.start()
            try:
                listed = await self.redis.smembers(KEY.format(group))
            except Exception:
                log.warning("could not read relay members of %s", group, exc_info=True)
                return channels
            channels = {c.decode() if isinstance(c, bytes) else c for c in listed} - {self.channel}
            if len(self.known) > 10_000:  # groups of long-gone conversations
                self.known.clear()
            self.known[group] = (now, channels)
        return channels

    async def send(self, group: str, payload: dict[str, Any]) -> None:
        for channel in await self.others(group):
            try:
                await self.layer.send(channel, {"type": "relay.event", "group": group, "payload": payload})
            except ChannelFull:  # that process is gone or far behind: its sockets catch up by seq
                log.info("relay channel %s is full; dropped an event for %s", channel, group)

    async def _receive_forever(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except Exception:  # Redis briefly away
                log.warning("relay receive failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") == "relay.event":
                await deliver(message["group"], message["payload"])

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(ENTRY_TTL / 3)
            groups = list(_members)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for group in groups:
                        pipe.sadd(KEY.format(group), self.channel).expire(KEY.format(group), ENTRY_TTL)
                    await pipe.execute()
            except Exception:
                log.warning("could not refresh relay registrations", exc_info=True)
