"""The bridge's per-connection buffer (``Feed``) and its JSON-safe values: bounded, in
order, latest value kept when a reader falls behind; timing in virtual time."""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import reactivex
import trio
import trio.testing

from dspex_rx.client.updates import VariableUpdate
from dspex_rx.web.feed import Feed, conflate
from dspex_rx.web.jsonsafe import array_mode, to_json, update_event

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def update(name: str, value: Any, version: int) -> VariableUpdate:
    return VariableUpdate(f"var_{name}", name, value, None, version, version, "value_change",
                          {}, WHEN, "")


def seen(pending: deque[VariableUpdate] | list[VariableUpdate]) -> list[tuple[str, int, bool]]:
    return [(u.name, u.version, u.conflated) for u in pending]


def test_conflate_keeps_each_variables_latest_in_arrival_order_and_marks_dropped_ones() -> None:
    pending = deque([update("a", 1, 1), update("b", 1, 1), update("a", 2, 2),
                     update("c", 1, 1), update("b", 2, 2)])
    assert seen(conflate(pending)) == [("a", 2, True), ("c", 1, False), ("b", 2, True)]


async def test_a_reader_that_keeps_up_gets_every_update_in_order() -> None:
    feed = Feed(max_buffer=4)
    for version in range(1, 4):
        feed.push(update("t", version / 10, version))
        got = await feed.next()
        assert got is not None
        assert (got.version, got.conflated) == (version, False)
    assert (feed.dropped, feed.conflations) == (0, 0)


async def test_a_slow_reader_gets_the_latest_value_of_each_variable_within_the_bound() -> None:
    feed = Feed(max_buffer=3)
    for version in range(1, 101):  # a burst far larger than the buffer
        feed.push(update("t", version, version))
        feed.push(update("u", version, version))
        assert len(feed.pending) <= 3
    got = [await feed.next() for _ in range(len(feed.pending))]
    assert seen([g for g in got if g is not None]) == [("t", 100, True), ("u", 100, True)]
    assert feed.dropped == 0


async def test_more_variables_than_room_drops_the_oldest_and_counts_them() -> None:
    feed = Feed(max_buffer=2)
    for name in "abcd":
        feed.push(update(name, 1, 1))
    assert seen(feed.pending) == [("c", 1, False), ("d", 1, False)]
    assert feed.dropped == 2


async def test_next_waits_for_a_push_and_gives_up_after_its_timeout_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    feed = Feed()
    start = trio.current_time()
    assert await feed.next(timeout=15.0) is None
    assert trio.current_time() - start == pytest.approx(15.0)

    async def later() -> None:
        await trio.sleep(3.0)
        feed.push(update("t", 1, 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        got = await feed.next(timeout=15.0)
    assert got is not None and got.version == 1
    assert trio.current_time() - start == pytest.approx(18.0)


async def test_an_error_of_a_followed_source_ends_the_feed_unless_it_is_not_fatal() -> None:
    # Bug: a source that ended while being subscribed stayed "followed", never re-followed.
    feed = Feed()
    feed.follow(reactivex.throw(PermissionError("revoked")), "quiet", fatal=False)
    assert feed.following == {} and feed.error is None
    feed.follow(reactivex.throw(PermissionError("no read access to 't'")), "t")
    with pytest.raises(PermissionError, match="no read access to 't'"):
        await feed.next()


async def test_close_unsubscribes_every_followed_source() -> None:
    subject: reactivex.subject.Subject[VariableUpdate] = reactivex.subject.Subject()
    feed = Feed()
    feed.follow(subject, "t")
    feed.follow(subject, "t")  # already followed: not a second subscription
    subject.on_next(update("t", 1, 1))
    feed.close()
    subject.on_next(update("t", 2, 2))
    assert seen(feed.pending) == [("t", 1, False)]
    assert feed.following == {}


def test_a_feed_needs_room_for_one_update() -> None:
    with pytest.raises(ValueError, match="max_buffer must be at least 1, got 0"):
        Feed(max_buffer=0)


def test_values_become_plain_json_types() -> None:
    value = {"nan": math.nan, "inf": -math.inf, "n": np.int64(3), "when": WHEN,
             "raw": b"\x00\x01", "pair": (1, 2.5), 4: "four"}
    assert to_json(value) == {
        "nan": "NaN", "inf": "-Infinity", "n": 3, "when": "2026-01-02T03:04:05+00:00",
        "raw": {"type": "bytes", "base64": "AAE="}, "pair": [1, 2.5], "4": "four"}


def test_a_summary_shows_the_first_eight_elements_and_base64_holds_them_all() -> None:
    array = np.arange(20, dtype=">i4")  # big-endian in memory: sent little-endian
    summary = to_json(array)
    assert summary == {"type": "ndarray", "shape": [20], "dtype": ">i4",
                       "head": [0, 1, 2, 3, 4, 5, 6, 7], "size": 20}
    whole = to_json(array, "base64")
    import base64

    assert np.array_equal(np.frombuffer(base64.b64decode(whole["base64"]), "<i4"), array)


def test_array_mode_names_the_choices_when_wrong() -> None:
    assert array_mode("summary") == "summary"
    with pytest.raises(ValueError, match="arrays must be one of summary, base64, got 'raw'"):
        array_mode("raw")


def test_an_update_event_carries_name_value_version_and_revision() -> None:
    event = update_event(VariableUpdate("var_t_1", "t", np.float32(0.5), 0.25, 4, 17,
                                        "value_change", {}, WHEN, "s", True))
    assert event == {"name": "t", "value": 0.5, "version": 4, "revision": 17,
                     "update_type": "value_change", "timestamp": "2026-01-02T03:04:05+00:00",
                     "variable_id": "var_t_1", "conflated": True}
