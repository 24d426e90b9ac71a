"""What a Session stream sends: a subscriber's queued frames and control notes packed into
``ServerMessage``s, batched up to a soft size and split where one frame cannot fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dspex_rx.core.limits import Limits
from dspex_rx.server.encode import event_to_pb
from dspex_rx.server.fanout import PendingFrame
from dspex_rx.server.rpc import MESSAGE_SLACK
from dspex_rx.v1 import session_pb2 as spb

if TYPE_CHECKING:
    from dspex_rx.store import ChangeEvent

MAX_FRAMES_PER_MESSAGE = 256
# A stream message is flushed once its frames pass this size, far below the send limit.
MESSAGE_SOFT_LIMIT = 4 * 1024 * 1024
# Every stream watching a variable is handed the same ChangeEvent object by the commit:
# the first stream to send it encodes it, the others copy those bytes (a few events, so
# only recent commits; the store's log holds them anyway, so the refs cost nothing).
SHARED_EVENTS = 16
SHARE_MAX_BYTES = 64 * 1024
_shared: deque[tuple[ChangeEvent, str | None, int, bytes]] = deque(maxlen=SHARED_EVENTS)
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
                encode_shared(event, item.update_type, out, pair)
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


def encode_shared(
    event: ChangeEvent, update_type: str | None, out: spb.VariableEvent, pair: int
) -> None:
    """``event_to_pb``, encoded once for all the streams that send the same event: a
    recent event (by identity, with the same override and limit) is copied as bytes.

    Example:

    >>> from dspex_rx.store import ChangeEvent, VariableRecord
    >>> record = VariableRecord("var_t_1", "t", "float", 0.5, {}, {}, 2, 3, 3, 0.0, 0.0, "s")
    >>> event = ChangeEvent(record, 0.25, "value_change", {}, "s")
    >>> first, second = spb.VariableEvent(), spb.VariableEvent()
    >>> encode_shared(event, None, first, 1 << 20)
    >>> encode_shared(event, None, second, 1 << 20)
    >>> first == second, second.version
    (True, 2)
    """
    # A snapshot of the deque: a worker thread may pack a large frame meanwhile.
    for cached, kind, limit, data in tuple(_shared):
        if cached is event and kind == update_type and limit == pair:
            out.MergeFromString(data)
            return
    event_to_pb(event, update_type, out, pair)
    if event.record.size <= SHARE_MAX_BYTES:
        _shared.append((event, update_type, pair, out.SerializeToString()))
