"""What a Session stream sends: a subscriber's queued frames and control notes packed into
``ServerMessage``s, batched up to a soft size and split where one frame cannot fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dspex_rx.core.limits import Limits
from dspex_rx.server.encode import event_to_pb
from dspex_rx.server.fanout import PendingFrame
from dspex_rx.server.rpc import MESSAGE_SLACK
from dspex_rx.v1 import session_pb2 as spb

MAX_FRAMES_PER_MESSAGE = 256
# A stream message is flushed once its frames pass this size, far below the send limit.
MESSAGE_SOFT_LIMIT = 4 * 1024 * 1024
_CONTROL_FIELDS = {spb.Subscribed: "subscribed", spb.Unsubscribed: "unsubscribed", spb.Pong: "pong"}


def pack(items: list[Any], limits: Limits) -> Iterator[spb.ServerMessage]:
    """The messages that carry ``items`` (``PendingFrame``s and control notes), in order.

    Frames go out up to ``MAX_FRAMES_PER_MESSAGE`` or ``MESSAGE_SOFT_LIMIT`` bytes per
    message; a control note is a message of its own. A frame that cannot fit in one
    message at all (thousands of large events) is split: every part but the last carries
    the revision before the frame's first commit (a snapshot's parts all carry its
    revision), so a resume after a break between parts replays the whole commit instead
    of losing its rest.

    Example:

    >>> [m.WhichOneof("control") for m in pack([spb.Pong(nonce=1)], Limits())]
    ['pong']
    """
    hard = limits.max_message_bytes - MESSAGE_SLACK
    pair = limits.max_value_bytes
    message = spb.ServerMessage()
    size = 0
    for item in items:
        if isinstance(item, PendingFrame):
            frame = message.frames.add(revision=item.revision, conflated=item.conflated)
            size += 32
            for event in item.events:
                out = frame.events.add()
                event_to_pb(event, item.update_type, out, pair)
                event_size = out.ByteSize() + 16
                if size + event_size > hard and size > 32:
                    moved = spb.VariableEvent()
                    moved.CopyFrom(out)
                    del frame.events[-1]
                    if frame.events:
                        if item.update_type is None:
                            frame.revision = item.since
                    else:
                        del message.frames[-1]
                    yield message
                    message = spb.ServerMessage()
                    frame = message.frames.add(
                        revision=item.revision, conflated=item.conflated
                    )
                    frame.events.append(moved)
                    size = 32
                size += event_size
            if len(message.frames) >= MAX_FRAMES_PER_MESSAGE or size >= MESSAGE_SOFT_LIMIT:
                yield message
                message = spb.ServerMessage()
                size = 0
            continue
        if message.frames:
            yield message
            message = spb.ServerMessage()
            size = 0
        control = spb.ServerMessage()
        getattr(control, _CONTROL_FIELDS[type(item)]).CopyFrom(item)
        yield control
    if message.frames:
        yield message
