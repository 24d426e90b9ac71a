"""A refused flush undone without reading the whole store back: the live state returns to
the stored rows, re-reading only what the live objects cannot give back.

The live tails (histories, evaluations, logs) hold every item the rows hold, plus what the
undone changes appended, minus what they trimmed; the image's shadows (rolled back) say
which items the rows hold. So only the small rows (counters, session headers, variables,
retired ids) and the trimmed tail items are read; the tails' other items are kept as the
same objects. A full read of a long session costs milliseconds per thousand rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from dspex_rx.store.durable.image import Image, live_tail, newest_held
from dspex_rx.store.durable.load import Loaded, load
from dspex_rx.store.durable.rows import (
    ENTRIES,
    META,
    RETIRED,
    SESSIONS,
    VARIABLES,
    encode_key,
    prefix_range,
)
from dspex_rx.store.state import Session

TailKey = tuple[str, int, str]
# A range of row keys, [start, end).
Span = tuple[bytes, bytes]


def _seq_span(key: TailKey, first: int, upto: int) -> Span:
    # The rows of one tail with sequence numbers in [first, upto).
    return encode_key(ENTRIES, (*key, first)), encode_key(ENTRIES, (*key, upto))


def plan(sessions: Mapping[str, Session], image: Image) -> tuple[list[Span],
                                                               dict[TailKey, list[Any]]]:
    """What to read back, and what to keep: the ranges of rows to read (the small tables
    whole, and per tail the items the rows hold that are not live any more), and per tail
    the live items the rows hold, oldest first.

    ``image`` must be rolled back to the stored rows first.

    >>> spans, kept = plan({}, Image())
    >>> len(spans), kept
    (4, {})
    """
    spans = [prefix_range(table, ()) for table in (META, SESSIONS, VARIABLES, RETIRED)]
    kept: dict[TailKey, list[Any]] = {}
    for key, first, next_, last in image.tails():
        sid, kind, var_id = key
        session = sessions.get(sid)
        live = live_tail(session, kind, var_id) if session is not None else None
        held = newest_held(live, last) if live is not None else -1
        if live is None or held < 0:
            spans.append(_seq_span(key, first, next_))  # nothing stored is live: read it
            kept[key] = []
            continue
        items = list(itertools.islice(live, held + 1))
        live_first = next_ - 1 - held  # the sequence number of the oldest live item
        if live_first > first:
            spans.append(_seq_span(key, first, live_first))  # trimmed by undone changes
        elif live_first < first:
            items = items[first - live_first:]  # cannot happen; keep only what is stored
        kept[key] = items
    return spans, kept


def rebuild(rows: Iterable[tuple[bytes, bytes]], kept: Mapping[TailKey, list[Any]],
            image: Image) -> Loaded:
    """The stored state from the rows read (in key order) and the kept live items: the
    rows' tail items go before the kept ones of the same tail. The image is the rolled
    back one, which describes exactly that state.

    >>> rebuild([], {}, Image()).sessions
    {}
    """
    loaded = load(rows, None)
    for key, items in kept.items():
        sid, kind, var_id = key
        session = loaded.sessions.get(sid)
        if session is None:
            continue
        found = live_tail(session, kind, var_id, create=bool(items))
        if found is not None:
            found.extend(items)
    loaded.image = image
    return loaded


async def revert(sessions: Mapping[str, Session], image: Image,
                 read: Callable[[list[Span]], Awaitable[Iterable[tuple[bytes, bytes]]]],
                 ) -> Loaded:
    """The stored state, from ``read`` (the rows in the given key ranges, at the stored
    revision) and the live objects; ``image`` is rolled back first. Awaited while a flush
    is in flight, so nothing else moves the image meanwhile; what the live objects gain
    meanwhile is undone with the rest (the kept items were copied before).

    Example: ``loaded = await revert(backend.sessions, image, read_at_head)``.
    """
    image.rollback()
    spans, kept = plan(sessions, image)
    rows = sorted(await read(spans))
    return rebuild(rows, kept, image)

