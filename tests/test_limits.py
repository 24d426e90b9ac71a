"""Limits on the store: every one refuses with a message naming the limit and the value,
before anything changes; the memory budget drops old history and log, never current values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import Clock, grant
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex_rx.core.limits import DEFAULT_LIMITS, Limits, measure_map, measure_value
from dspex_rx.errors import InvalidValueError, ResourceExhaustedError
from dspex_rx.server import VariablesService
from dspex_rx.server.fanout import Subscriber
from dspex_rx.store import ITEM_OVERHEAD, MAX_SOURCE_NAMES, MemoryStore, VariableSpec
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire import codec

SMALL = Limits(max_message_bytes=1 << 20, max_value_bytes=1000, max_metadata_bytes=200,
               max_metadata_keys=4, max_description_length=50, max_string_length=20,
               max_pattern_length=30, max_batch_size=5, max_collection_items=50,
               max_array_elements=100, max_depth=4, max_variables_per_session=10,
               max_dependencies_per_session=6, max_streams_per_session=2,
               max_clients_per_session=2, max_sessions=3)


def small_store(**limits: int) -> tuple[MemoryStore, str]:
    store = MemoryStore(limits=SMALL.replace(**limits))
    session, _, _ = store.initialize_session("s")
    return store, session.id


def test_limits_are_validated() -> None:
    with pytest.raises(InvalidValueError, match="max_depth is at most 32"):
        Limits(max_depth=33)
    with pytest.raises(InvalidValueError, match="limit history_size must be a positive"):
        Limits(history_size=0)
    with pytest.raises(InvalidValueError, match=r"max_message_bytes .* must hold a value"):
        Limits(max_value_bytes=64 << 20)
    assert MemoryStore(history_size=5, max_variables_per_session=7).limits == Limits(
        history_size=5, max_variables_per_session=7
    )


SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text()
ARRAYS = st.builds(
    lambda n, dtype: np.arange(n).astype(dtype), st.integers(0, 40),
    st.sampled_from(["float32", "int8", "uint64", "bool", "complex64", "float16"]),
) | st.just(np.zeros((0, 3))) | st.just(np.array(5.0)) | st.just(np.zeros((3, 50), "int64"))
VALUES = st.recursive(
    SCALARS | ARRAYS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(VALUES)
def test_measured_size_is_the_encoded_size(value: object) -> None:
    assert measure_value(value, DEFAULT_LIMITS, "value") == codec.encode(value).ByteSize()
    if isinstance(value, dict):
        assert measure_map(value, Limits(max_metadata_bytes=1 << 20), "m") == (
            codec.encode_map(value).ByteSize()
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x" * 2000, r"value is 2003 bytes encoded, above the max_value_bytes limit of 1000"),
        ([[[[[1]]]]], r"value nests 5 levels deep, above the max_depth limit of 4"),
        ({"a": {"b": {"c": {"d": {}}}}}, r"value nests 5 levels deep, above the max_depth"),
        ([0] * 51, r"value has 51 or more list items and dict entries, above the "
                   r"max_collection_items limit of 50"),
        ([[0] * 30, [0] * 30], r"value has 62 or more .* max_collection_items limit of 50"),
    ],
)
def test_value_limits(value: object, message: str) -> None:
    store, sid = small_store()
    kind = "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "string"
    with pytest.raises(InvalidValueError, match=f"variable 'v': {message}"):
        store.register(sid, [VariableSpec("v", kind, value)], actor="t")
    assert store.list(sid) == []
    store.check_accounts()


def test_array_elements_and_self_reference() -> None:
    store, sid = small_store()
    with pytest.raises(InvalidValueError, match="array has 101 elements, above the "
                       "max_array_elements limit of 100"):
        store.register(sid, [VariableSpec("t", "tensor", np.zeros(101, np.int8))], actor="t")
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(InvalidValueError, match="above the max_depth limit"):
        store.register(sid, [VariableSpec("l", "list", loop)], actor="t")


def test_a_value_that_cannot_be_sent_is_never_stored() -> None:
    # In-process writes too: a record the wire cannot carry would fail every later read.
    store, sid = small_store()
    with pytest.raises(InvalidValueError, match="not valid Unicode"):
        store.register(sid, [VariableSpec("s", "string", "\ud800")], actor="t")
    with pytest.raises(InvalidValueError, match="not valid Unicode"):
        store.register(sid, [VariableSpec("d", "string", "x", description="\udfff")],
                       actor="t")


def test_an_oversized_entry_fails_an_atomic_batch_whole() -> None:
    store, sid = small_store()
    store.register(sid, [VariableSpec("a", "string", "a"), VariableSpec("b", "string", "b")],
                   actor="t")
    revision = store.session(sid).revision
    outcomes, _, applied = store.update_many(sid, [("a", "new"), ("b", "x" * 2000)],
                                             actor="t")
    assert not applied and store.session(sid).revision == revision
    assert "max_value_bytes" in outcomes[1].error and outcomes[0].error_kind == "aborted"
    assert store.get(sid, "a").value == "a"
    outcomes, _, applied = store.update_many(sid, [("a", "new"), ("b", "x" * 2000)],
                                             actor="t", atomic=False)
    assert applied and store.get(sid, "a").value == "new" and store.get(sid, "b").value == "b"
    store.check_accounts()


def test_metadata_limits_cover_the_merged_metadata() -> None:
    store, sid = small_store()
    store.register(sid, [VariableSpec("a", "integer", 0)], actor="t")
    for i in range(4):
        store.set(sid, "a", i, metadata={f"k{i}": i}, actor="t")
    # Each write is small, but metadata merges into the variable's: it must not grow
    # without bound one key at a time.
    with pytest.raises(InvalidValueError, match=r"metadata \(merged\) has 5 keys, above "
                       "the max_metadata_keys limit of 4"):
        store.set(sid, "a", 9, metadata={"k9": 9}, actor="t")
    with pytest.raises(InvalidValueError, match="above the max_metadata_bytes limit of 200"):
        store.set(sid, "a", 9, metadata={"k0": "x" * 300}, actor="t")
    with pytest.raises(InvalidValueError, match=r"constraints .* above the max_metadata_bytes"):
        store.register(sid, [VariableSpec("c", "choice", "a",
                                          {"choices": [f"c{i:03}" for i in range(45)]})],
                       actor="t")
    assert store.get(sid, "a").value == 3


def test_string_field_limits() -> None:
    store, sid = small_store()
    with pytest.raises(InvalidValueError, match="description is 51 characters long, above "
                       "the max_description_length limit of 50"):
        store.register(sid, [VariableSpec("a", "integer", 0, description="d" * 51)],
                       actor="t")
    store.register(sid, [VariableSpec("a", "integer", 0)], actor="t")
    with pytest.raises(InvalidValueError, match="source is 21 characters long, above the "
                       "max_string_length limit of 20"):
        store.set(sid, "a", 1, actor="t", source="s" * 21)
    with pytest.raises(InvalidValueError, match=r"rollback reason .* max_string_length"):
        store.rollback(sid, "a", 1, reason="r" * 21, actor="t")
    with pytest.raises(InvalidValueError, match=r"client name .* max_string_length"):
        store.initialize_session(sid, client_name="n" * 21)
    with pytest.raises(InvalidValueError, match="max_pattern_length limit of 30"):
        store.list(sid, "*" * 31)
    with pytest.raises(InvalidValueError, match=r"constraint 'pattern' .* max_pattern_length"):
        store.register(sid, [VariableSpec("p", "string", "a", {"pattern": "a" * 31})],
                       actor="t")


def test_count_limits() -> None:
    store, sid = small_store()
    with pytest.raises(InvalidValueError, match="the registration has 6 entries, above the "
                       "max_batch_size limit of 5"):
        store.register(sid, [VariableSpec(f"v{i}", "integer", 0) for i in range(6)],
                       actor="t")
    for start in (0, 5):
        store.register(sid, [VariableSpec(f"v{i}", "integer", 0)
                             for i in range(start, start + 5)], actor="t")
    with pytest.raises(ResourceExhaustedError, match="would hold 11 variables, above the "
                       "max_variables_per_session limit of 10"):
        store.register(sid, [VariableSpec("x", "integer", 0)], actor="t")
    with pytest.raises(InvalidValueError, match="max_batch_size"):
        store.update_many(sid, [(f"v{i}", 1) for i in range(6)], actor="t")
    with pytest.raises(InvalidValueError, match="max_batch_size"):
        store.get_many(sid, ["v0"] * 6)
    for i in range(6):
        store.add_dependency(sid, f"v{i + 1}", f"v{i}")
    with pytest.raises(ResourceExhaustedError, match="already holds 6 dependencies, above "
                       "the max_dependencies_per_session limit of 6"):
        store.add_dependency(sid, "v9", "v0")
    store.check_accounts()


def test_sessions_clients_and_streams_are_bounded() -> None:
    store, sid = small_store()
    store.initialize_session(sid)
    with pytest.raises(ResourceExhaustedError, match="already has 2 clients attached, above "
                       "the max_clients_per_session limit of 2"):
        store.initialize_session(sid)
    store.initialize_session("t")
    store.initialize_session("u")
    with pytest.raises(ResourceExhaustedError, match="holds 3 sessions, above the "
                       "max_sessions limit of 3"):
        store.initialize_session("w")
    store.add_listener(sid, lambda _: None)
    store.add_listener(sid, lambda _: None)
    with pytest.raises(ResourceExhaustedError, match="max_streams_per_session limit of 2"):
        store.add_listener(sid, lambda _: None)
    store.check_accounts()


def test_the_memory_budget_drops_old_history_first_and_refuses_only_current_values() -> None:
    budget = 40_000
    store = MemoryStore(limits=Limits(max_session_bytes=budget, max_value_bytes=8_000,
                                      max_message_bytes=1 << 20), history_size=1000)
    sid = store.initialize_session("s")[0].id
    store.register(sid, [VariableSpec("big", "string", "")], actor="t")
    for i in range(50):  # 50 versions of ~7 KB: far more than the budget holds
        store.set(sid, "big", f"{i:03}" + "x" * 7000, actor="t")
        store.check_accounts()
        assert store.session(sid).used <= budget
    page = store.history(sid, "big", limit=100)
    assert page.current_version == 51 and page.expired is not None
    assert 1 < len(page.entries) < 10 and page.entries[0].value.startswith("049")
    with pytest.raises(ValueError, match="no longer retained"):
        store.rollback(sid, "big", 2, actor="t")
    assert store.commits_since(sid, 1) is None  # the log was trimmed too: resume -> resync
    # Current values are never dropped: a write whose current values would not fit fails.
    store.register(sid, [VariableSpec(f"v{i}", "string", "y" * 7000) for i in range(3)],
                   actor="t")
    with pytest.raises(ResourceExhaustedError, match="bytes of current values and records, "
                       f"above the max_session_bytes limit of {budget}"):
        store.register(sid, [VariableSpec(f"w{i}", "string", "y" * 7000) for i in range(3)],
                       actor="t")
    assert sorted(r.name for r in store.list(sid)) == ["big", "v0", "v1", "v2"]
    store.check_accounts()
    store.close_session(sid, next(iter(store.session(sid).clients)))
    assert store.used_bytes == store.pinned_bytes == 0


def test_the_store_budget_spans_sessions() -> None:
    store = MemoryStore(limits=Limits(max_store_bytes=30_000, max_value_bytes=8_000,
                                      max_message_bytes=1 << 20))
    for name in ("a", "b"):
        store.initialize_session(name)
        store.register(name, [VariableSpec("x", "string", "")], actor="t")
        for i in range(10):
            store.set(name, "x", f"{i}" + "x" * 6000, actor="t")
    assert store.used_bytes <= 30_000
    store.check_accounts()
    with pytest.raises(ResourceExhaustedError, match="max_store_bytes limit of 30000"):
        store.register("a", [VariableSpec(f"y{i}", "string", "y" * 7000) for i in range(3)],
                       actor="t")


def test_dependency_notes_name_at_most_max_source_names_sources() -> None:
    store = MemoryStore()
    sid = store.initialize_session("s")[0].id
    n = MAX_SOURCE_NAMES + 5
    store.register(sid, [VariableSpec(f"s{i}", "integer", 0) for i in range(n)], actor="t")
    store.register(sid, [VariableSpec("hub", "integer", 0,
                                      dependencies=[f"s{i}" for i in range(n)])], actor="t")
    commits: list = []
    store.add_listener(sid, commits.append)
    store.update_many(sid, [(f"s{i}", 1) for i in range(n)], actor="t")
    (note,) = [e.metadata for e in commits[-1].events if e.update_type == "dependency_changed"]
    assert note["source_variables"] == [f"s{i}" for i in range(MAX_SOURCE_NAMES)]
    assert note["source_variables_truncated"] is True
    assert ITEM_OVERHEAD > 0
    store.check_accounts()


# -------------------------------- limits across sessions; what the memory account charges


def open_stream(store: MemoryStore, session_id: str, refs: list[str]) -> Subscriber:
    """A ``Session`` stream of ``session_id`` subscribing ``refs``, as the server opens it."""
    sub = Subscriber(
        session_id=session_id,
        listen=lambda owner, fn: store.add_listener(owner, fn, foreign=True),
        may_observe=lambda i: store.may(session_id, i, "observe"),
        revision=lambda: store.revision,
    )
    store.add_listener(session_id, sub.on_commit)
    VariablesService(store)._subscribe(session_id, sub, spb.Subscribe(
        request_id=1, refs=refs, include_initial=True))
    sub.drain()
    return sub


# Guards: streams of another session watching A's variable were charged to A's stream slots.
def test_a_foreign_watcher_does_not_use_up_the_owners_stream_slots() -> None:
    """A session granted only ``observe`` on one variable can lock the owner out of
    watching its own variables: every stream of B that watches A's variable adds a
    listener to A (``Subscriber.watch`` -> ``store.add_listener(owner, ...)``), counted
    against A's ``max_streams_per_session`` (store.py ``add_listener``, ~line 840). B
    stays within its own limit, yet A's next own stream is refused RESOURCE_EXHAUSTED.
    "No hostile request can exhaust" the server's resources is broken across sessions:
    what another session opens is charged to the owner, who never asked for it.
    Fix: count foreign listeners against the watching session (or a separate per-owner
    foreign budget that leaves room for the owner's own streams)."""
    store = MemoryStore(clock=Clock(), limits=Limits(max_streams_per_session=2))
    store.initialize_session("a")
    store.initialize_session("b")
    (x,), _ = store.register(
        "a", [VariableSpec("x", "integer", 1, access_rules=grant(["observe"]))], actor="a")
    open_stream(store, "b", [x.id])
    open_stream(store, "b", [x.id])  # B is at its own limit, and so, now, is A
    # The owner opens its first watch stream of its own session.
    store.add_listener("a", lambda commit: None)


# Guards: (control of the test above) a refusal there must be the slot count, not subscribe.
def test_foreign_streams_do_not_count_when_the_owner_is_below_its_limit() -> None:
    """Control for the stream-slot test: with room to spare, the owner's own stream and
    a foreign one coexist (so the failure above is the slot accounting, not subscribe)."""
    store = MemoryStore(clock=Clock(), limits=Limits(max_streams_per_session=3))
    store.initialize_session("a")
    store.initialize_session("b")
    (x,), _ = store.register(
        "a", [VariableSpec("x", "integer", 1, access_rules=grant(["observe"]))], actor="a")
    open_stream(store, "b", [x.id])
    store.add_listener("a", lambda commit: None)
    try:
        store.add_listener("a", lambda commit: None)
    except ResourceExhaustedError:  # pragma: no cover - would be a different bug
        raise AssertionError("owner refused below its limit") from None


# Guards: the store kept every fencing token it issued, a set growing outside the budget.
def test_fencing_tokens_differ_from_the_variables_remembered_ones_without_a_growing_set(
    monkeypatch: Any,
) -> None:
    # The store used to keep every token it ever issued (one int per optimization run,
    # never freed, outside the memory budget). A new token now only has to differ from
    # the tokens of the variable's leases it still remembers; a draw that repeats one is
    # drawn again.
    import dspex_rx.store.memory as store_module

    draws = iter([41, 41, 41, 99])
    monkeypatch.setattr(store_module.secrets, "randbits", lambda bits: next(draws))
    store = MemoryStore(clock=Clock())
    _, client, _ = store.initialize_session("a")
    store.register("a", [VariableSpec("x", "float", 0.5)], actor="a")
    first, _ = store.start_optimization("a", "x", optimizer_type="grid", client_id=client)
    store.stop_optimization("a", "x")
    second, _ = store.start_optimization("a", "x", optimizer_type="grid", client_id=client)
    assert (first.token, second.token) == (42, 100)  # the two repeats of 41 were skipped
    assert not any(isinstance(v, set) and 42 in v for v in vars(store).values())


# Guards: imported dependency edges were charged 0 bytes to the session's memory account.
def test_imported_dependency_edges_are_charged_like_registered_ones() -> None:
    # The import rebuilt its edges without their size: the graph (and so the session's
    # memory account) charged 0 bytes for every imported dependency.
    from dspex_rx.store import Snapshot, SnapshotDependency, SnapshotVariable

    native = MemoryStore(clock=Clock())
    native.initialize_session("a")
    native.register("a", [VariableSpec("base", "float", 0.5),
                          VariableSpec("eff", "float", 0.5, dependencies=["base"])], actor="a")
    imported = MemoryStore(clock=Clock())
    imported.initialize_session("a")
    report = imported.import_snapshot("a", Snapshot((
        SnapshotVariable("base", "float", 0.5, dependencies=()),
        SnapshotVariable("eff", "float", 0.5, dependencies=(SnapshotDependency("base"),)),
    )), actor="a")
    assert report.applied and report.dependencies_added == 1
    assert native.session("a").graph.bytes > 0
    assert imported.session("a").graph.bytes == native.session("a").graph.bytes
    imported.check_accounts()
