"""Version history and rollback against a real server.

Proves that every change is recorded (version, value, non-decreasing ``updated_at``,
``updated_by``, the write's metadata, revision) and that ``include_metadata=False`` leaves
the writer fields out; that pages are newest first and ``limit``/``offset`` slice exactly
at every edge, with invalid arguments refused as ``ValueError``; that bounded retention
(``MemoryStore(history_size=5)``) reports what fell out as exactly one ``expired`` entry
with exact numbers, also when a whole page is expired; that ``rollback_variable`` appends
a new version holding the old value (metadata ``rollback_to`` and ``reason``), refuses
unknown and expired versions naming them, reaches watchers as an ordinary change, and
round-trips a float32 768-d embedding exactly, as history does for arrays; and that
deleting a variable drops its history.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from helpers import drain, settle

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore


@pytest.fixture(scope="module")
def small_server() -> Iterator[EmbeddedServer]:
    """A server that keeps only the last 5 versions of each variable."""
    with EmbeddedServer(store=MemoryStore(history_size=5)) as embedded:
        yield embedded


@pytest.fixture
async def small(small_server: EmbeddedServer) -> AsyncIterator[SessionContext]:
    async with dspex_rx.connect(small_server.target) as s:
        yield s


def versions_of(page: list[dict[str, Any]]) -> list[int]:
    return [e["version"] for e in page if not e.get("expired")]


def expired_of(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The expired entries of a page, reduced to the keys the contract fixes."""
    return [
        {k: e[k] for k in ("expired", "versions", "count")} for e in page if e.get("expired")
    ]


# ------------------------------------------------------------------- recording


async def test_every_change_is_recorded_with_its_writer_metadata_and_revision(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, other = two
    name = "hist_rec"
    await writer.register_variable(name, "float", 0.5, constraints={"min": 0.0, "max": 1.0})
    revisions = [writer.revision]
    await writer.set_variable(name, 0.6, metadata={"step": 1, "note": "warmup"})
    revisions.append(writer.revision)
    await other.set_variable(name, 0.7)  # the other connection of the same session
    revisions.append(other.revision)
    await writer.update_variables({name: 0.8}, metadata={"batch": True})
    revisions.append(writer.revision)
    assert await writer.rollback_variable(name, 2, reason="overshoot") == 5
    revisions.append(writer.revision)
    await writer.rollback_variable(name, 1)  # no reason given
    revisions.append(writer.revision)

    history = await other.get_variable_history(name)
    assert [e["version"] for e in history] == [6, 5, 4, 3, 2, 1]
    assert [e["value"] for e in history] == [0.5, 0.6, 0.8, 0.7, 0.6, 0.5]
    assert [e["metadata"] for e in history] == [
        {"rollback_to": 1},
        {"rollback_to": 2, "reason": "overshoot"},
        {"batch": True},
        {},
        {"step": 1, "note": "warmup"},
        {},
    ]
    assert [e["revision"] for e in history] == revisions[::-1]
    assert all(e["updated_by"] == writer.session_id for e in history)
    stamps = [e["updated_at"] for e in reversed(history)]
    assert stamps == sorted(stamps)
    # Aware UTC datetimes, as the spec's history entries ('updated_at': datetime(...)).
    assert all(isinstance(t, datetime.datetime) and t.tzinfo is datetime.UTC for t in stamps)
    assert all(t.year >= 2024 for t in stamps)
    info = (await writer.get_variables([name], include_metadata=True))[name]
    assert history[0]["updated_at"] == info["updated_at"]
    assert history[-1]["updated_at"] == info["created_at"]

    bare = await writer.get_variable_history(name, include_metadata=False)
    assert [set(e) for e in bare] == [{"version", "value", "updated_at"}] * 6
    assert [(e["version"], e["value"], e["updated_at"]) for e in bare] == [
        (e["version"], e["value"], e["updated_at"]) for e in history
    ]


# ------------------------------------------------------------------ pagination


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [
        (100, 0, list(range(10, 0, -1))),  # the default limit holds all
        (1, 0, [10]),
        (3, 0, [10, 9, 8]),
        (3, 3, [7, 6, 5]),
        (3, 7, [3, 2, 1]),  # ends exactly at version 1
        (3, 8, [2, 1]),  # the last page is short, not padded
        (3, 9, [1]),  # offset = current_version - 1
        (1, 9, [1]),
        (10, 0, list(range(10, 0, -1))),  # limit = versions
        (11, 0, list(range(10, 0, -1))),  # limit > versions: no expired entry
        (1000, 5, [5, 4, 3, 2, 1]),
        (1, 10, []),  # offset = current_version
        (5, 11, []),
        (5, 1_000, []),
    ],
)
async def test_pages_are_newest_first_and_sliced_exactly(
    session: SessionContext, limit: int, offset: int, expected: list[int]
) -> None:
    name = "hist_page"
    await session.register_variable(name, "integer", 0)
    for value in range(1, 10):
        await session.set_variable(name, value)  # version v holds v - 1
    page = await session.get_variable_history(name, limit=limit, offset=offset)
    assert page == [e for e in page if not e.get("expired")]  # all retained: none expired
    assert [e["version"] for e in page] == expected
    assert [e["value"] for e in page] == [v - 1 for v in expected]


async def test_default_page_is_the_newest_100(session: SessionContext) -> None:
    name = "hist_default"
    await session.register_variable(name, "integer", 0)
    for value in range(1, 120):
        await session.set_variable(name, value)
    page = await session.get_variable_history(name)
    assert [e["version"] for e in page] == list(range(120, 20, -1))


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("limit", 0),
        ("limit", -1),
        ("limit", True),
        ("limit", 1.5),
        ("limit", "10"),
        ("limit", None),
        ("offset", -1),
        ("offset", True),
        ("offset", 1.5),
        ("offset", "1"),
    ],
)
async def test_invalid_limit_or_offset_is_a_value_error(
    session: SessionContext, argument: str, value: Any
) -> None:
    await session.register_variable("hist_args", "integer", 0)
    with pytest.raises(ValueError, match=argument):
        await session.get_variable_history("hist_args", **{argument: value})


async def test_history_of_an_unknown_variable_is_a_key_error(session: SessionContext) -> None:
    with pytest.raises(KeyError, match="hist_ghost"):
        await session.get_variable_history("hist_ghost")


# ------------------------------------------------------------------- retention


@pytest.mark.parametrize(
    ("limit", "offset", "retained", "expired"),
    [
        (100, 0, [13, 12, 11, 10, 9], [1, 8]),
        (5, 0, [13, 12, 11, 10, 9], None),  # exactly the retained versions
        (6, 0, [13, 12, 11, 10, 9], [8, 8]),
        (3, 3, [10, 9], [8, 8]),
        (2, 3, [10, 9], None),
        (3, 4, [9], [7, 8]),
        (3, 5, [], [6, 8]),  # the whole page expired
        (100, 5, [], [1, 8]),
        (5, 10, [], [1, 3]),  # limit beyond version 1
        (1, 12, [], [1, 1]),  # offset = current_version - 1
        (1, 13, [], None),  # offset = current_version: empty, nothing expired
        (5, 40, [], None),
    ],
)
async def test_retention_reports_what_fell_out_exactly(
    small: SessionContext,
    limit: int,
    offset: int,
    retained: list[int],
    expired: list[int] | None,
) -> None:
    name = "hist_kept"
    await small.register_variable(name, "integer", 0)
    for value in range(1, 13):
        await small.set_variable(name, value)  # 12 writes: versions 1..13
    page = await small.get_variable_history(name, limit=limit, offset=offset)
    assert versions_of(page) == retained
    assert [e["value"] for e in page if not e.get("expired")] == [v - 1 for v in retained]
    if expired is None:
        assert expired_of(page) == []
        assert len(page) == len(retained)
    else:
        first, last = expired
        assert expired_of(page) == [
            {"expired": True, "versions": [first, last], "count": last - first + 1}
        ]
        assert page[-1].get("expired") is True  # the expired entry ends the page
        assert "retention" in page[-1]["reason"]
        assert "value" not in page[-1] and "version" not in page[-1]


async def test_rollback_to_an_expired_version_is_refused(small: SessionContext) -> None:
    name = "hist_rb_expired"
    await small.register_variable(name, "integer", 0)
    for value in range(1, 13):
        await small.set_variable(name, value)
    with pytest.raises(ValueError, match=r"version 8 of variable 'hist_rb_expired'") as info:
        await small.rollback_variable(name, 8)
    assert "no longer retained" in str(info.value)
    assert "oldest kept is 9" in str(info.value)
    assert await small.get_variable(name, bypass_cache=True) == 12
    assert await small.rollback_variable(name, 9, reason="oldest kept") == 14
    assert await small.get_variable(name, bypass_cache=True) == 8
    page = await small.get_variable_history(name, limit=5)
    assert versions_of(page) == [14, 13, 12, 11, 10]  # retention slides on


# -------------------------------------------------------------------- rollback


async def test_rollback_appends_a_version_with_the_old_value(
    session: SessionContext,
) -> None:
    name = "hist_rollback"
    await session.register_variable(name, "string", "alpha")
    await session.set_variable(name, "beta")
    await session.set_variable(name, "gamma", metadata={"tuned": True})
    revision = session.revision
    assert await session.rollback_variable(name, 1, reason="regression") == 4
    assert session.revision == revision + 1
    assert await session.get_variable(name) == "alpha"
    assert await session.get_variable(name, bypass_cache=True) == "alpha"
    history = await session.get_variable_history(name)
    assert [(e["version"], e["value"]) for e in history] == [
        (4, "alpha"), (3, "gamma"), (2, "beta"), (1, "alpha")
    ]
    assert history[0]["metadata"] == {"rollback_to": 1, "reason": "regression"}
    assert history[0]["revision"] == session.revision
    assert history[1]["metadata"] == {"tuned": True}  # earlier entries are not rewritten
    # A rollback is itself a version that can be rolled back to.
    assert await session.rollback_variable(name, 3) == 5
    assert await session.get_variable(name) == "gamma"
    assert await session.rollback_variable(name, 4) == 6
    assert await session.get_variable(name) == "alpha"


@pytest.mark.parametrize("version", [0, -1, 4, 100])
async def test_rollback_to_an_unknown_version_is_refused(
    session: SessionContext, version: int
) -> None:
    name = "hist_rb_unknown"
    await session.register_variable(name, "integer", 0)
    await session.set_variable(name, 1)
    await session.set_variable(name, 2)  # versions 1..3
    revision = session.revision
    with pytest.raises(ValueError, match=rf"'hist_rb_unknown' has no version {version}\b"):
        await session.rollback_variable(name, version)
    assert session.revision == revision
    history = await session.get_variable_history(name)
    assert [e["version"] for e in history] == [3, 2, 1]
    assert await session.get_variable(name, bypass_cache=True) == 2


async def test_rollback_of_an_unknown_variable_is_a_key_error(session: SessionContext) -> None:
    with pytest.raises(KeyError, match="hist_rb_ghost"):
        await session.rollback_variable("hist_rb_ghost", 1)


async def test_watcher_sees_a_rollback_as_an_ordinary_change(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    name = "hist_rb_watch"
    await writer.register_variable(name, "integer", 10)
    await writer.set_variable(name, 20)
    await writer.set_variable(name, 30)
    watch = await watcher.watch_variable(name)
    await writer.rollback_variable(name, 1, reason="undo")
    await writer.set_variable(name, 40)
    await settle(watcher)
    got = drain(watch)
    assert [(u.update_type, u.version, u.old_value, u.value) for u in got] == [
        ("initial", 3, None, 30),
        ("value_change", 4, 30, 10),
        ("value_change", 5, 10, 40),
    ]
    assert got[1].metadata == {"rollback_to": 1, "reason": "undo"}
    assert got[1].source == writer.session_id
    assert got[1].revision < got[2].revision
    assert await watcher.get_variable(name) == 40
    watch.cancel()


async def test_rollback_of_an_embedding_round_trips_exactly(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    name = "hist_emb"
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(768).astype(np.float32) for _ in range(3)]
    arrays[0][:4] = [np.float32(1) / np.float32(3), -0.0, 1e-38, 3.4e38]  # awkward floats
    await writer.register_variable(
        name, "embedding", arrays[0], constraints={"dimensions": 768, "normalize": False}
    )
    for array in arrays[1:]:
        await writer.set_variable(name, array)
    watch = await watcher.watch_variable(name, include_initial=False)
    assert await writer.rollback_variable(name, 1, reason="bad epoch") == 4

    def exact(value: Any, expected: np.ndarray) -> bool:
        return (
            isinstance(value, np.ndarray)
            and value.dtype == np.float32
            and value.shape == (768,)
            and value.tobytes() == expected.tobytes()
        )

    assert exact(await writer.get_variable(name), arrays[0])
    assert exact(await writer.get_variable(name, bypass_cache=True), arrays[0])
    assert exact(await watcher.get_variable(name, bypass_cache=True), arrays[0])
    await settle(watcher)
    [update] = drain(watch)
    assert exact(update.value, arrays[0]) and exact(update.old_value, arrays[2])

    history = await watcher.get_variable_history(name)
    assert [e["version"] for e in history] == [4, 3, 2, 1]
    for entry, expected in zip(history, [arrays[0], arrays[2], arrays[1], arrays[0]],
                               strict=True):
        assert exact(entry["value"], expected), entry["version"]
    watch.cancel()


async def test_history_of_a_tensor_returns_exact_arrays(session: SessionContext) -> None:
    name = "hist_tensor"
    values = [np.arange(24, dtype=np.int16).reshape(2, 3, 4) * k for k in range(1, 4)]
    await session.register_variable(
        name, "tensor", values[0], constraints={"shape": [2, 3, 4], "dtype": "int16"}
    )
    for value in values[1:]:
        await session.set_variable(name, value)
    history = await session.get_variable_history(name)
    for entry, expected in zip(history, values[::-1], strict=True):
        assert entry["value"].dtype == np.int16
        assert entry["value"].shape == (2, 3, 4)
        assert np.array_equal(entry["value"], expected)


# ---------------------------------------------------------------------- delete


async def test_deleting_a_variable_drops_its_history(
    session: SessionContext, server: EmbeddedServer
) -> None:
    name = "hist_deleted"
    old_id = await session.register_variable(name, "integer", 0)
    for value in (1, 2, 3):
        await session.set_variable(name, value)
    assert len(await session.get_variable_history(name)) == 4
    await session.delete_variable(name)
    with pytest.raises(KeyError, match=name):
        await session.get_variable_history(name)
    sid = session.session_id
    assert server.call(lambda: old_id in server.store.session(sid).history) is False

    new_id = await session.register_variable(name, "integer", 100)
    assert new_id != old_id
    history = await session.get_variable_history(name, limit=10)
    assert [(e["version"], e["value"]) for e in history] == [(1, 100)]
    with pytest.raises(ValueError, match="has no version 2"):
        await session.rollback_variable(name, 2)
    await session.set_variable(name, 101)
    assert [e["version"] for e in await session.get_variable_history(name)] == [2, 1]


# -------------------------------------------------------------- rollback restores exactly


# Guards: rollback re-normalized an embedding and restored a value off in the last bits.
async def test_rollback_of_a_normalized_float64_embedding_restores_the_exact_value(
    session: SessionContext,
) -> None:
    # Rollback re-runs validation, and normalize=True divides by the norm again: for many
    # float64 vectors that is not idempotent, so the "restored" value differs in the last
    # bits from the version it claims to restore.
    vector = np.random.default_rng(0).normal(size=8)
    await session.register_variable(
        "emb", "embedding", vector, constraints={"dimensions": 8, "normalize": True}
    )
    await session.set_variable("emb", np.ones(8))
    version = await session.rollback_variable("emb", 1, reason="restore")
    assert version == 3
    page = await session.get_variable_history("emb", limit=3)
    by_version = {e["version"]: e["value"] for e in page}
    assert by_version[3].dtype == by_version[1].dtype
    assert np.array_equal(by_version[3], by_version[1]), by_version[3] - by_version[1]
