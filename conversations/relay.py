"""Chat events to sockets: this process's own sockets directly, the others
through the channel layer.

Handing a streamed delta to a socket of the same process through the channel
layer costs a queue, a task and a dispatch per socket per delta (bench/load.py
found the relay among the largest costs of streaming). So every socket also
registers here under the groups it joined, and `publish` sends the event to
those sockets itself, encoded once. Sockets of other processes get it through
the channel layer (Redis), marked with this process's id so that the local
sockets, which already have it, drop their copy. With the in-memory layer every
socket is local and the layer is skipped.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from typing import Any

import orjson
from channels.layers import InMemoryChannelLayer

log = logging.getLogger(__name__)

PROCESS = uuid.uuid4().hex
_members: dict[str, set] = defaultdict(set)


def join(group: str, consumer) -> None:
    _members[group].add(consumer)


def leave(group: str, consumer) -> None:
    members = _members.get(group)
    if members is not None:
        members.discard(consumer)
        if not members:
            del _members[group]


def is_own(event: dict[str, Any]) -> bool:
    """Did this process publish the layer event (so its sockets already have it)?"""
    return event.get("origin") == PROCESS


async def publish(layer, group: str, payload: dict[str, Any]) -> None:
    members = _members.get(group)
    if members:
        text = orjson.dumps(payload).decode()
        for consumer in list(members):
            try:
                await consumer.send(text_data=text)
            except Exception:  # a socket closing right now: its disconnect removes it
                log.debug("dropping an event for a closing socket", exc_info=True)
    if not isinstance(layer, InMemoryChannelLayer):
        await layer.group_send(group, {"type": "chat.event", "payload": payload, "origin": PROCESS})
