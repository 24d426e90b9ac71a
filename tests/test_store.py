"""The store on its own (no gRPC): session TTLs and expiry on an injected clock, client
attachment, id/name resolution, and validation before any change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dspex_rx.errors import (
    AlreadyExistsError,
    DspexError,
    InvalidValueError,
    ResourceExhaustedError,
    SessionNotFoundError,
    VariableNotFoundError,
)
from dspex_rx.store import MemoryStore, VariableSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock, default_ttl=10.0)


def test_generated_and_given_session_ids(store: MemoryStore) -> None:
    session, client, created = store.initialize_session()
    assert session.id.startswith("sess_") and client.startswith("cli_") and created
    given, _, created = store.initialize_session("session_123")
    assert given.id == "session_123" and created
    again, other_client, created = store.initialize_session("session_123")
    assert again is given and not created and other_client in given.clients
    with pytest.raises(InvalidValueError, match="session id 'bad id' is not valid"):
        store.initialize_session("bad id")


def test_expiry_drops_silent_clients_then_the_session(
    store: MemoryStore, clock: FakeClock
) -> None:
    session, a, _ = store.initialize_session("s", ttl=10.0)
    _, b, _ = store.initialize_session("s", ttl=30.0)
    store.register("s", [VariableSpec("x", "integer", 1)], actor="a")
    clock.now += 9.0
    assert store.heartbeat("s", a) == clock.now + 10.0
    clock.now += 9.0  # a heartbeated 9 s ago, b has been silent for 18 s (ttl 30)
    assert store.expire() == []
    assert set(session.clients) == {a, b}
    clock.now += 11.0  # a silent 20 s > 10: dropped; b silent 29 s < 30: kept
    assert store.expire() == []
    assert set(session.clients) == {b}
    with pytest.raises(SessionNotFoundError, match="not attached"):
        store.heartbeat("s", a)
    assert store.get("s", "x").value == 1
    clock.now += 2.0
    assert store.expire() == ["s"]
    with pytest.raises(SessionNotFoundError, match="no session 's'"):
        store.get("s", "x")


def test_close_removes_the_session_with_its_last_client(store: MemoryStore) -> None:
    _, a, _ = store.initialize_session("s")
    _, b, _ = store.initialize_session("s")
    assert store.close_session("s", a) is False
    assert "s" in store.session_ids()
    assert store.close_session("s", b) is True
    assert "s" not in store.session_ids()


def test_ids_are_unique_across_sessions_and_reregistration(store: MemoryStore) -> None:
    store.initialize_session("s1")
    store.initialize_session("s2")
    (r1,), _ = store.register("s1", [VariableSpec("x", "integer", 1)], actor="t")
    (r2,), _ = store.register("s2", [VariableSpec("x", "integer", 1)], actor="t")
    store.delete("s1", "x")
    (r3,), _ = store.register("s1", [VariableSpec("x", "integer", 1)], actor="t")
    assert len({r1.id, r2.id, r3.id}) == 3


def test_a_name_equal_to_another_variables_id_is_refused(store: MemoryStore) -> None:
    store.initialize_session("s")
    (record,), _ = store.register("s", [VariableSpec("x", "integer", 1)], actor="t")
    with pytest.raises(AlreadyExistsError, match="id of another variable"):
        store.register("s", [VariableSpec(record.id, "integer", 2)], actor="t")
    assert store.get("s", record.id).name == "x"


def test_register_duplicate_names_in_one_batch(store: MemoryStore) -> None:
    store.initialize_session("s")
    with pytest.raises(AlreadyExistsError, match="'x' already exists"):
        store.register(
            "s", [VariableSpec("x", "integer", 1), VariableSpec("x", "integer", 2)], actor="t"
        )
    assert store.list("s") == []
    assert store.session("s").revision == 0


def test_variable_limit_is_enforced(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_variables_per_session=2)
    store.initialize_session("s")
    store.register("s", [VariableSpec("a", "integer", 1)], actor="t")
    with pytest.raises(ResourceExhaustedError, match="would hold 3 variables, above the "
                       "max_variables_per_session limit of 2"):
        store.register(
            "s", [VariableSpec("b", "integer", 1), VariableSpec("c", "integer", 1)], actor="t"
        )
    assert [r.name for r in store.list("s")] == ["a"]


def test_records_are_immutable_snapshots(store: MemoryStore, clock: FakeClock) -> None:
    store.initialize_session("s")
    (old,), _ = store.register("s", [VariableSpec("x", "list", [1, 2])], actor="t")
    clock.now += 1
    new, revision, _ = store.set("s", "x", [3], actor="u", metadata={"why": "test"})
    assert old.value == [1, 2] and old.version == 1 and old.updated_by == "t"
    assert new.value == [3] and new.version == 2 and new.updated_by == "u"
    assert new.mod_revision == revision == 2 and new.create_revision == 1
    assert new.updated_at == old.updated_at + 1
    assert new.metadata == {"why": "test"}
    with pytest.raises(VariableNotFoundError):
        store.get("s", "y")


# ---------------------------------------------------------------------- in-process misuse


SELF: list[Any] = []
SELF.append(SELF)
Case = Callable[[MemoryStore, str], object]

CASES: dict[str, Case] = {
    "dependencies-none": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], dependencies=None)], actor="t"),  # type: ignore[arg-type]
    "dependencies-int": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], dependencies=5)], actor="t"),  # type: ignore[arg-type]
    "constraints-a-string": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], constraints="ab")], actor="t"),  # type: ignore[arg-type]
    "description-not-unicode": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], description="\ud800")], actor="t"),
    "string-value-not-unicode": lambda s, sid: s.set(sid, "s", "\ud800", actor="t"),
    "metadata-not-unicode": lambda s, sid: s.set(sid, "a", [2], metadata={"k": "\udfff"},
                                                 actor="t"),
    "value-refers-to-itself": lambda s, sid: s.set(sid, "a", SELF, actor="t"),
    "metadata-refers-to-itself": lambda s, sid: s.update_many(
        sid, [("a", [3])], metadata={"k": SELF}, actor="t"),
    "source-not-a-string": lambda s, sid: s.set(sid, "a", [2], source=5, actor="t"),  # type: ignore[arg-type]
    "reason-not-a-string": lambda s, sid: s.rollback(sid, "a", 1, reason=5, actor="t"),  # type: ignore[arg-type]
    "glob-not-a-string": lambda s, sid: s.list(sid, 5),  # type: ignore[arg-type]
    "session-id-not-a-string": lambda s, sid: s.initialize_session(5),  # type: ignore[arg-type]
    "refs-not-a-list": lambda s, sid: s.get_many(sid, None),  # type: ignore[arg-type]
    "update-entry-too-short": lambda s, sid: s.update_many(sid, [("a",)], actor="t"),  # type: ignore[list-item]
}


# Guards: misuse escaped as a builtin error, or was stored though the wire cannot carry it.
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_in_process_misuse_is_refused_with_a_dspex_error_and_changes_nothing(case: str) -> None:
    store = MemoryStore()
    sid = store.initialize_session()[0].id
    store.register(sid, [VariableSpec("a", "list", [1]), VariableSpec("s", "string", "x")],
                   actor="t")
    before = {r.id: r.version for r in store.list(sid)}
    with pytest.raises(DspexError):
        CASES[case](store, sid)
    assert {r.id: r.version for r in store.list(sid)} == before
    store.check_accounts()
