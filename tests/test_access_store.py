"""Access rules enforced by the store itself (no gRPC): what a resume replays, what live notes
and optimization events say, foreign leases and fencing tokens, names against foreign ids.

Tests drive one ``MemoryStore`` and the server adapter's subscribe (``VariablesService._subscribe``
with a ``Subscriber``) synchronously, as on the server's loop: A owns the variables, B is another
session matched by some rule."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import Clock, grant

from dspex_rx import AccessDeniedError
from dspex_rx.errors import OptimizationLockedError
from dspex_rx.server import VariablesService
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.v1 import session_pb2 as spb


def world() -> tuple[MemoryStore, str, str]:
    """A store with an owner session ``a`` (one attached client) and a session ``b``."""
    store = MemoryStore(clock=Clock())
    _, a_client, _ = store.initialize_session("a")
    store.initialize_session("b")
    return store, "a", a_client


def subscribe(
    store: MemoryStore, session_id: str, refs: list[str], from_revision: int = 0
) -> tuple[Subscriber, list[Any]]:
    """The server adapter's subscribe, as a stream of ``session_id`` would run it."""
    sub = Subscriber(
        session_id=session_id, listen=store.add_listener,
        may_observe=lambda i: store.may(session_id, i, "observe"),
        revision=lambda: store.revision,
    )
    store.add_listener(session_id, sub.on_commit)
    VariablesService(store)._subscribe(session_id, sub, spb.Subscribe(
        request_id=1, refs=refs, include_initial=True, from_revision=from_revision))
    return sub, sub.drain()


def events(items: list[Any]) -> list[Any]:
    return [e for f in items if isinstance(f, PendingFrame) for e in f.events]


# ------------------------------------------------------------------ what a resume replays


# Guards: the 'deleted since' resume fallback replayed a foreign variable unchecked.
def test_a_resume_replays_nothing_of_a_deleted_variable_the_stream_may_not_see() -> None:
    """A resume (``from_revision``) naming another session's variable that the stream has
    no right to at all, next to one it may observe, replays that variable's logged values
    (and its delete) once it has been deleted: the "deleted since your last revision"
    fallback looks for any ``deleted`` event in the merged owner log, without a permission
    check. The stream learns the variable existed and every value it had."""
    store, a, _ = world()
    (seen,), _ = store.register(a, [VariableSpec(
        "seen", "integer", 1, access_rules=grant(["observe"]))], actor=a)
    (secret,), _ = store.register(a, [VariableSpec("secret", "string", "public")], actor=a)
    start = store.revision
    store.set(a, "secret", "the launch code is 0000", actor=a)
    store.delete(a, "secret")

    sub, items = subscribe(store, "b", [seen.id, secret.id], from_revision=start)
    leaked = [(e.update_type, e.record.value) for e in events(items)
              if e.record.id == secret.id]
    assert leaked == [], f"stream b replayed a variable it may not see: {leaked}"
    (ack,) = [i for i in items if isinstance(i, spb.Subscribed)]
    assert secret.id not in ack.variable_ids
    sub.close()


# Guards: a resume replayed values committed before the session was granted observe.
def test_a_resume_does_not_replay_values_written_before_observe_was_granted() -> None:
    """Replay hands a foreign variable's logged events to the stream without asking whether
    it could observe them when they were committed: a session granted ``observe`` (not
    ``read``, so no history) after a value was written resumes from an old revision and
    receives that value (and its ``old_value``) anyway. Only a permissions commit in the
    replayed range tells the server the rights changed; it should resync (current value
    only) instead of replaying past it."""
    store, a, _ = world()
    (x,), _ = store.register(a, [VariableSpec("x", "string", "v1")], actor=a)
    start = store.revision
    store.set(a, "x", "confidential draft", actor=a)
    store.set(a, "x", "v3", actor=a)
    store.set_permissions(a, "x", grant(["observe"]))
    with pytest.raises(AccessDeniedError):
        store.history("b", x.id)  # what b may not do: read the past values

    sub, items = subscribe(store, "b", [x.id], from_revision=start)
    values = {str(e.record.value) for e in events(items)}
    values |= {str(e.old_value) for e in events(items)}
    assert "confidential draft" not in values, (
        "a resume replayed a value written before b was allowed to observe x"
    )
    sub.close()


# --------------------------------------------------------- what live notes and events say


# Guards: dependency_changed metadata named an upstream variable the watcher may not see.
def test_a_dependency_changed_note_does_not_name_an_input_the_watcher_may_not_see() -> None:
    """A foreign watcher of a dependent variable gets ``dependency_changed`` notes whose
    metadata (``source_variable``/``source_variables``) names the upstream variable in the
    owner's session, which the watcher has no permission on at all. The documented rule is
    that such a caller cannot learn the variable exists (and ``get_dependencies`` hides
    it); the note discloses its name and each of its writes."""
    store, a, _ = world()
    store.register(a, [VariableSpec("hidden_salary_budget", "float", 1.0)], actor=a)
    (dep,), _ = store.register(a, [VariableSpec(
        "derived", "float", 0.0, dependencies=["hidden_salary_budget"],
        access_rules=grant(["observe", "read"]))], actor=a)
    assert [r.name for r, _, _ in store.dependencies("b", dep.id)] == []  # hidden here

    sub, _ = subscribe(store, "b", [dep.id])
    store.set(a, "hidden_salary_budget", 2.0, actor=a)
    notes = [e.metadata for e in events(sub.drain())
             if e.update_type == "dependency_changed"]
    assert notes, "the watcher should still hear that its variable's inputs changed"
    for note in notes:
        assert "hidden_salary_budget" not in repr(note), note
    sub.close()


# Guards: optimization events gave a watcher with only observe the best value and metrics.
def test_optimization_events_carry_no_results_to_a_watcher_without_read() -> None:
    """Optimization status (``GetOptimizationStatus``) and history need ``read``, but a
    foreign watcher with only ``observe`` receives every optimization event of the
    variable, whose metadata is that same status: the best value and metrics found so far,
    the optimizer and the holder's client id. ``_deliver`` checks only ``observe``."""
    store, a, a_client = world()
    (x,), _ = store.register(a, [VariableSpec(
        "x", "float", 0.5, access_rules=grant(["observe"]))], actor=a)
    with pytest.raises(AccessDeniedError):
        store.optimization_status("b", x.id)

    sub, _ = subscribe(store, "b", [x.id])
    lease, _ = store.start_optimization(a, "x", optimizer_type="grid", client_id=a_client)
    store.optimization_step(a, "x", lease.id, lease.token,
                            evaluation=(1, 0.7, {"revenue": 123.0}, 0.9))
    statuses = [e.metadata for e in events(sub.drain()) if e.update_type == "optimization"]
    assert not any("best_metrics" in s or "best_value" in s for s in statuses), statuses
    sub.close()


# ------------------------------------------------------------ foreign optimization leases


# Guards: a fencing token was checked without its holder session, so b wrote past A's lock.
def test_another_sessions_fencing_token_does_not_pass_the_optimization_lock() -> None:
    """Fencing tokens come from one store-wide counter (guessable: b reads the next one off
    its own lease) and ``_check_lease`` compares only the token, not the lease's holder
    session. Session b, which has ``write`` but no ``optimize``, is refused while A's
    optimization holds the variable, but passes the lock with A's token."""
    store, a, a_client = world()
    store.register(a, [VariableSpec("x", "float", 0.5, access_rules=grant(["write"]))],
                   actor=a)
    x_id = store.get(a, "x").id
    store.register("b", [VariableSpec("mine", "float", 0.0)], actor="b")
    _, b_client, _ = store.initialize_session("b", token=store.session("b").token)

    lease, _ = store.start_optimization(a, "x", optimizer_type="grid", client_id=a_client)
    with pytest.raises(OptimizationLockedError):
        store.set("b", x_id, 0.9, actor="b")
    own, _ = store.start_optimization("b", "mine", optimizer_type="grid", client_id=b_client)
    # Fixed: tokens are random now, so b cannot derive A's from its own (the reviewer's
    # ``own.token - 1 == lease.token`` premise no longer holds). Even presenting A's real
    # token (say, leaked) gets b nowhere: a token passes only for its holder session.
    assert own.token >= 1 and lease.token >= 1 and own.token - 1 != lease.token
    with pytest.raises(OptimizationLockedError):
        store.set("b", x_id, 0.9, actor="b", fencing_token=lease.token)
    assert store.get(a, "x").value == 0.5


# Guards: a foreign lease outlived its optimize permission, locking and writing on.
def test_revoking_optimize_ends_the_foreign_lease_and_its_writes() -> None:
    """Losing ``observe`` ends a live watch, but losing ``optimize`` does not end a running
    foreign optimization: the revoked session's lease still locks the owner's variable
    (even the owner's own writes are refused as "locked by session b") and its fencing
    token still lands writes through ``set`` (b kept ``write``)."""
    store, a, _ = world()
    store.register(a, [VariableSpec("x", "float", 0.5, access_rules=grant(
        ["write", "optimize"]))], actor=a)
    x_id = store.get(a, "x").id
    _, b_client, _ = store.initialize_session("b", token=store.session("b").token)
    lease, _ = store.start_optimization("b", x_id, optimizer_type="grid", client_id=b_client)

    store.set_permissions(a, "x", grant(["write"]))  # optimize revoked
    with pytest.raises(AccessDeniedError):
        store.optimization_step("b", x_id, lease.id, lease.token, proposal=(0.7, 1))
    _, status = store.optimization_status(a, "x")
    assert not status.active, "b's lease outlived its optimize permission"
    with pytest.raises(OptimizationLockedError):
        store.set("b", x_id, 0.9, actor="b", fencing_token=lease.token)


# ---------------------------------------------------------------------------------- names


# Guards: b could name a variable after A's variable id, hiding A's variable from b.
def test_a_session_cannot_name_its_variable_after_a_foreign_id() -> None:
    """ARCHITECTURE.md: "a name equal to an existing id is refused". Ids are now addressed
    across sessions (store-wide), but ``_prepare_new`` checks only the caller's own ids, so
    b can register a variable named like A's variable id. From then on b's own name wins
    in ``_locate`` and A's variable is unreachable for b by its id, while the client's
    hub (``known``: id first) keeps serving A's cached value under that ref, so client and
    server disagree about what ``"var_x_1"`` is."""
    store, a, _ = world()
    (x,), _ = store.register(a, [VariableSpec(
        "x", "integer", 1, access_rules=grant(["read"]))], actor=a)
    assert store.get("b", x.id).id == x.id
    with pytest.raises((ValueError, KeyError)):
        store.register("b", [VariableSpec(x.id, "integer", 99)], actor="b")
    assert store.get("b", x.id).id == x.id
