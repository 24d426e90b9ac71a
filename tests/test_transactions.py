"""Transactions against a real server: compare-and-set writes and batches.

Proves that ``set_variable(expected_version=N)`` applies only at version N and otherwise
raises ``ConflictError`` (a ``ValueError`` with ``.current_version``) writing nothing;
that bad expected versions are refused before any call; that ``update_variables`` with
``expected_versions`` is all-or-nothing when atomic and per-entry otherwise; that an
atomic ``register_variables`` or ``update_variables`` touching one invalid variable leaves
every variable and the revision unchanged; that 20 trio tasks on two connections doing
1,000 compare-and-set increments in all lose none and leave 1,000 consecutive versions in
history (the oldest reported as expired past the 1,000-version retention); and that a
watcher sees compare-and-set writes in version order, exactly once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from helpers import drain, settle

import dspex_rx
from dspex_rx import ConflictError, SessionContext
from dspex_rx.server import EmbeddedServer


def server_revision(server: EmbeddedServer, session: SessionContext) -> int:
    """The session's revision as the server has it (the authoritative counter)."""
    sid = session.session_id
    return server.call(lambda: server.store.session(sid).revision)


async def snapshot(
    server: EmbeddedServer, session: SessionContext
) -> tuple[dict[str, tuple[Any, int, int]], int, int]:
    """Every variable's (value, version, mod revision), the client's and the server's
    session revision."""
    variables = {
        info["name"]: (info["value"], info["version"], info["revision"])
        for info in await session.list_variables()
    }
    return variables, session.revision, server_revision(server, session)


async def current(session: SessionContext, name: str) -> tuple[Any, int]:
    """The server's current (value, version) of a variable, read past the cache."""
    entry = (await session.get_variables([name], include_metadata=True))[name]
    return entry["value"], entry["version"]


# ------------------------------------------------------------- set_variable CAS


async def test_set_variable_with_matching_expected_version_applies(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variable("cas_match", "integer", 0)
    revision = session.revision
    assert await session.set_variable("cas_match", 1, expected_version=1) == 2
    assert session.revision == revision + 1
    assert await session.set_variable("cas_match", 2, expected_version=2) == 3
    assert session.revision == revision + 2 == server_revision(server, session)
    assert await current(session, "cas_match") == (2, 3)


@pytest.mark.parametrize("expected", [2, 4, 1_000])
async def test_set_variable_with_stale_expected_version_conflicts_and_writes_nothing(
    session: SessionContext, server: EmbeddedServer, expected: int
) -> None:
    name = f"cas_stale_{expected}"
    await session.register_variable(name, "integer", 0)
    await session.set_variable(name, 10)
    await session.set_variable(name, 20)  # now at version 3
    before = await snapshot(server, session)
    with pytest.raises(ConflictError) as info:
        await session.set_variable(name, 99, expected_version=expected)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.current_version == 3
    message = str(error)
    assert repr(name) in message
    assert f"expected version {expected}" in message
    assert "version 3" in message
    assert await snapshot(server, session) == before
    assert await current(session, name) == (20, 3)
    assert await session.get_variable(name) == 20  # the cache kept the committed value
    history = await session.get_variable_history(name)
    assert [(e["version"], e["value"]) for e in history] == [(3, 20), (2, 10), (1, 0)]


@pytest.mark.parametrize("bad", [0, -1, True, "3", 1.0])
async def test_set_variable_refuses_a_bad_expected_version(
    session: SessionContext, server: EmbeddedServer, bad: Any
) -> None:
    await session.register_variable("cas_bad_arg", "integer", 0)
    before = await snapshot(server, session)
    with pytest.raises(ValueError, match="expected_version") as info:
        await session.set_variable("cas_bad_arg", 5, expected_version=bad)
    assert not isinstance(info.value, ConflictError)
    assert "'cas_bad_arg'" in str(info.value)
    assert await snapshot(server, session) == before


# ----------------------------------------------------------- update_variables CAS


async def test_atomic_batch_with_one_stale_expected_version_applies_nothing(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0}
         for n in ("txa_one", "txa_two", "txa_three")]
    )
    await session.set_variable("txa_two", 5)  # txa_two is at version 2
    before = await snapshot(server, session)
    # Issue #4: a mismatch in a batch raises ConflictError and applies nothing.
    with pytest.raises(dspex_rx.ConflictError) as info:
        await session.update_variables(
            {"txa_one": 1, "txa_two": 2, "txa_three": 3},
            expected_versions={"txa_one": 1, "txa_two": 1, "txa_three": 1},
        )
    assert isinstance(info.value, ValueError)
    assert info.value.current_version == 2
    assert info.value.details["conflicts"] == {"txa_two": 2}
    message = str(info.value)
    assert "'txa_two'" in message and "expected version 1" in message
    assert "version 2" in message and "nothing in the batch was applied" in message
    assert await snapshot(server, session) == before

    # With the right versions the same batch applies under one revision.
    results = await session.update_variables(
        {"txa_one": 1, "txa_two": 2, "txa_three": 3},
        expected_versions={"txa_one": 1, "txa_two": 2},
    )
    assert results == {"txa_one": True, "txa_two": True, "txa_three": True}
    variables, revision, on_server = await snapshot(server, session)
    assert revision == on_server == before[1] + 1
    assert {n: variables[n] for n in ("txa_one", "txa_two", "txa_three")} == {
        "txa_one": (1, 2, revision),
        "txa_two": (2, 3, revision),
        "txa_three": (3, 2, revision),
    }


async def test_non_atomic_batch_applies_all_but_the_stale_entry(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0}
         for n in ("txn_one", "txn_two", "txn_three")]
    )
    await session.set_variable("txn_two", 5)
    before = await snapshot(server, session)
    results = await session.update_variables(
        {"txn_one": 1, "txn_two": 2, "txn_three": 3},
        expected_versions={"txn_one": 1, "txn_two": 1},
        atomic=False,
    )
    assert results["txn_one"] is True and results["txn_three"] is True
    assert isinstance(results["txn_two"], str)
    assert "expected version 1" in results["txn_two"] and "version 2" in results["txn_two"]
    variables, revision, on_server = await snapshot(server, session)
    assert revision == on_server == before[1] + 1  # what applied took one revision
    assert variables["txn_one"] == (1, 2, revision)
    assert variables["txn_two"] == before[0]["txn_two"] == (5, 2, before[1])
    assert variables["txn_three"] == (3, 2, revision)


async def test_expected_versions_for_a_variable_not_in_the_batch_is_refused(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("txu_in", "txu_out")]
    )
    before = await snapshot(server, session)
    with pytest.raises(ValueError, match="txu_out"):
        await session.update_variables(
            {"txu_in": 1}, expected_versions={"txu_in": 1, "txu_out": 1}
        )
    assert await snapshot(server, session) == before


# ------------------------------------------------------- concurrent read-modify-write


async def test_twenty_tasks_on_two_connections_increment_exactly_1000_times(
    two: tuple[SessionContext, SessionContext],
) -> None:
    first, second = two
    name = "cas_counter"
    await first.register_variable(name, "integer", 0)
    conflicts = 0
    increments = 0

    async def worker(session: SessionContext) -> None:
        nonlocal conflicts, increments
        for _ in range(50):
            while True:
                value, version = await current(session, name)
                try:
                    new_version = await session.set_variable(
                        name, value + 1, expected_version=version
                    )
                except ConflictError as exc:
                    conflicts += 1
                    assert exc.current_version is not None
                    assert exc.current_version > version
                    continue
                assert new_version == version + 1
                increments += 1
                break

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(worker, first)
            nursery.start_soon(worker, second)

    assert increments == 1000
    assert conflicts > 0  # the tasks really raced
    assert await current(first, name) == (1000, 1001)
    assert await current(second, name) == (1000, 1001)

    history = await first.get_variable_history(name, limit=1000)
    assert len(history) == 1000
    assert [e["version"] for e in history] == list(range(1001, 1, -1))
    assert [e["value"] for e in history] == list(range(1000, 0, -1))
    assert all(e["updated_by"] == first.session_id for e in history)
    revisions = [e["revision"] for e in history]
    assert revisions == sorted(revisions, reverse=True)
    assert len(set(revisions)) == 1000

    # Version 1 (the registration) fell out of the default 1,000-version retention.
    page = await second.get_variable_history(name, limit=1001)
    assert len(page) == 1001
    assert [e["version"] for e in page[:-1]] == list(range(1001, 1, -1))
    expired = page[-1]
    assert {k: expired[k] for k in ("expired", "versions", "count")} == {
        "expired": True, "versions": [1, 1], "count": 1
    }
    assert "version" not in expired


# --------------------------------------------------------- invalid atomic batches


async def _seed(session: SessionContext, prefix: str) -> None:
    await session.register_variables(
        [
            {"name": f"{prefix}_t", "type": "float", "initial_value": 0.5,
             "constraints": {"min": 0.0, "max": 1.0}},
            {"name": f"{prefix}_n", "type": "integer", "initial_value": 1},
            {"name": f"{prefix}_m", "type": "choice", "initial_value": "a",
             "constraints": {"choices": ["a", "b"]}},
        ]
    )
    await session.set_variable(f"{prefix}_n", 2)  # versions and revisions differ


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"name": "rbad_b", "type": "float", "initial_value": 5.0,
          "constraints": {"max": 1.0}}, ValueError, "above max"),
        ({"name": "rbad_b", "type": "integer", "initial_value": "x"}, TypeError,
         "expected integer"),
        ({"name": "rb_n", "type": "integer", "initial_value": 1}, ValueError,
         "already exists"),
        ({"name": "rbad_b", "type": "integer", "initial_value": 1,
          "dependencies": ["rbad_ghost"]}, KeyError, "rbad_ghost"),
    ],
)
async def test_register_batch_with_one_invalid_variable_changes_nothing(
    session: SessionContext, server: EmbeddedServer, bad: dict[str, Any],
    error: type[Exception], match: str,
) -> None:
    await _seed(session, "rb")
    before = await snapshot(server, session)
    with pytest.raises(error, match=match):
        await session.register_variables(
            [
                {"name": "rbad_a", "type": "integer", "initial_value": 1},
                bad,
                {"name": "rbad_c", "type": "string", "initial_value": "c"},
            ]
        )
    assert await snapshot(server, session) == before
    for name in ("rbad_a", "rbad_b", "rbad_c"):
        assert await session.get_variable(name, default="absent") == "absent"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (("ub_t", 1.5), "above max"),
        (("ub_n", "many"), "expected integer"),
        (("ub_m", "z"), "ub_m"),
        (("ub_ghost", 1), "ub_ghost"),
    ],
)
async def test_atomic_update_with_one_invalid_variable_changes_nothing(
    session: SessionContext, server: EmbeddedServer, bad: tuple[str, Any], match: str
) -> None:
    await _seed(session, "ub")
    before = await snapshot(server, session)
    updates = {"ub_t": 0.25, "ub_n": 3, "ub_m": "b"}
    updates[bad[0]] = bad[1]
    results = await session.update_variables(updates)
    assert isinstance(results[bad[0]], str)
    assert match in results[bad[0]]
    for name, result in results.items():
        if name != bad[0]:
            assert isinstance(result, str) and result.startswith("not applied"), result
    assert await snapshot(server, session) == before


# ------------------------------------------------------------------- watching CAS


async def test_watcher_sees_cas_writes_in_order_exactly_once(
    two: tuple[SessionContext, SessionContext], server: EmbeddedServer
) -> None:
    writer, watcher = two
    name = "cas_watched"
    await writer.register_variable(name, "integer", 0)
    watch = await watcher.watch_variable(name, include_initial=False)
    refused = 0

    async def increment(times: int) -> None:
        nonlocal refused
        for _ in range(times):
            while True:
                value, version = await current(writer, name)
                try:
                    await writer.set_variable(name, value + 1, expected_version=version)
                    break
                except ConflictError:
                    refused += 1

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(increment, 25)
    # Refused writes are deliberate here too: a stale one must not reach the watcher.
    for stale in (1, 50, 100):
        with pytest.raises(ConflictError):
            await writer.set_variable(name, -1, expected_version=stale)
    await writer.set_variable(name, 101, expected_version=101)
    await settle(watcher)
    got = drain(watch)
    assert [u.version for u in got] == list(range(2, 103))
    assert [u.value for u in got] == list(range(1, 102))
    assert [u.old_value for u in got] == list(range(0, 101))
    assert {u.update_type for u in got} == {"value_change"}
    revisions = [u.revision for u in got]
    assert revisions == sorted(set(revisions))
    assert await watcher.get_variable(name) == 101
    watch.cancel()


# ------------------------------------------------------ compare-and-set of a new variable


# Guards: a compare-and-set against version 7 of a missing variable created version 1.
async def test_create_if_missing_honours_expected_version(
    session: SessionContext,
) -> None:
    # A compare-and-set against version 7 of a variable that does not exist must not
    # silently create version 1.
    with pytest.raises(ConflictError):
        await session.set_variable("fresh", 1, create_if_missing=True, expected_version=7)
    assert await session.get_variable("fresh", default="<absent>", bypass_cache=True) == "<absent>"
