"""Dependencies between variables (issue #4): registration with dependencies, the
add/remove/query API, cycle refusal with the exact cycle named, delete and cascade delete,
``dependency_changed`` propagation in topological order within the change's own frame, and
property-based checks of the graph (``DependencyGraph``) and the store against independent
reference computations."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
import trio
import trio.testing
from helpers import drain, settle
from hypothesis import given, settings
from hypothesis import strategies as st

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.core.graph import DEPENDENCY_TYPES, CycleError, DependencyGraph, Edge
from dspex_rx.errors import InvalidValueError, VariableNotFoundError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import Commit, MemoryStore, VariableSpec

# ----------------------------------------------------------------------- helpers


def server_revision(server: EmbeddedServer, session: SessionContext) -> int:
    sid = session.session_id
    return server.call(lambda: server.store.session(sid).revision)


def server_edges(server: EmbeddedServer, session: SessionContext) -> set[tuple[str, str, str]]:
    """The session's graph as (dependent name, dependency name, type), read on the server."""
    sid = session.session_id

    def read() -> set[tuple[str, str, str]]:
        state = server.store.session(sid)
        names = {var_id: record.name for var_id, record in state.variables.items()}
        return {(names[e.dependent], names[e.dependency], e.type) for e in state.graph.edges()}

    return server.call(read)


def names_of(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    return [entry["name"] for entry in entries]


async def register_ints(session: SessionContext, *names: str, value: int = 0) -> dict[str, str]:
    return await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": value} for n in names]
    )


async def diamond(session: SessionContext) -> None:
    """a <- b, a <- c, b <- d, c <- d (b and c depend on a; d on b and c)."""
    await register_ints(session, "a", "b", "c", "d")
    await session.add_dependency("b", "a")
    await session.add_dependency("c", "a")
    await session.add_dependency("d", "b")
    await session.add_dependency("d", "c")


# ------------------------------------------------------------------ registration


async def test_register_variable_with_dependencies_by_name_and_id(
    session: SessionContext,
) -> None:
    a_id = await session.register_variable("a", "float", 1.0)
    b_id = await session.register_variable("b", "integer", 2)
    c_id = await session.register_variable("c", "float", 3.0, dependencies=["a", b_id])
    deps = await session.get_dependencies("c")
    assert sorted((d["variable_id"], d["name"], d["variable_type"]) for d in deps) == [
        (a_id, "a", "float"), (b_id, "b", "integer")
    ]
    assert all(d["type"] == "data" and d["depth"] == 1 for d in deps)
    for name in ("a", "b"):
        dependents = await session.get_dependents(name)
        assert [(d["variable_id"], d["name"], d["variable_type"]) for d in dependents] == [
            (c_id, "c", "float")
        ]


async def test_register_variables_entries_may_depend_on_the_same_batch(
    session: SessionContext, server: EmbeddedServer
) -> None:
    existing_id = await session.register_variable("existing", "integer", 0)
    before = server_revision(server, session)
    ids = await session.register_variables(
        [
            {"name": "z", "type": "integer", "initial_value": 3, "dependencies": ["y", "existing"]},
            {"name": "x", "type": "integer", "initial_value": 1},
            {"name": "y", "type": "integer", "initial_value": 2, "dependencies": ["x"]},
        ]
    )
    assert server_revision(server, session) == before + 1  # one batch, one revision
    assert sorted(names_of(await session.get_dependencies("z"))) == ["existing", "y"]
    assert names_of(await session.get_dependencies("y")) == ["x"]
    transitive = await session.get_dependencies("z", include_transitive=True)
    assert {(d["name"], d["variable_id"], d["depth"]) for d in transitive} == {
        ("y", ids["y"], 1), ("existing", existing_id, 1), ("x", ids["x"], 2)
    }
    assert names_of(await session.get_dependents("x", include_transitive=True)) == ["y", "z"]


async def test_unknown_dependency_raises_key_error_and_registers_nothing(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variable("a", "integer", 0)
    before = server_revision(server, session)
    with pytest.raises(KeyError, match="ghost"):
        await session.register_variable("c", "integer", 0, dependencies=["a", "ghost"])
    assert await session.get_variable("c", default="<absent>") == "<absent>"
    with pytest.raises(KeyError, match="ghost"):
        await session.register_variables(
            [
                {"name": "p", "type": "integer", "initial_value": 0},
                {"name": "q", "type": "integer", "initial_value": 0, "dependencies": ["p"]},
                {"name": "r", "type": "integer", "initial_value": 0, "dependencies": ["ghost"]},
            ]
        )
    for name in ("p", "q", "r"):
        assert await session.get_variable(name, default="<absent>") == "<absent>"
    assert server_revision(server, session) == before
    assert server_edges(server, session) == set()
    assert await session.get_dependents("a") == []


# --------------------------------------------------------- add / remove / query


async def test_add_remove_and_query_direct_and_transitive(session: SessionContext) -> None:
    ids = await register_ints(session, "a", "b", "c", "d")
    await session.add_dependency("b", "a", "constraint", metadata={"why": "bounds"})
    await session.add_dependency("c", "b", "optimization")
    await session.add_dependency("d", "a")

    direct = await session.get_dependencies("c")
    assert len(direct) == 1
    assert {"variable_id", "name", "type", "variable_type", "depth"} <= set(direct[0])
    assert "dependency_type" not in direct[0]  # one key per fact: the spec's 'type'
    assert (direct[0]["variable_id"], direct[0]["name"], direct[0]["variable_type"]) == (
        ids["b"], "b", "integer"
    )
    assert (direct[0]["type"], direct[0]["depth"]) == ("optimization", 1)

    transitive = await session.get_dependencies("c", include_transitive=True)
    assert [(d["name"], d["depth"], d["type"]) for d in transitive] == [
        ("b", 1, "optimization"), ("a", 2, "constraint")
    ]
    assert transitive[1]["metadata"] == {"why": "bounds"}
    assert transitive[1]["variable_id"] == ids["a"]

    assert sorted(names_of(await session.get_dependents("a"))) == ["b", "d"]
    dependents = await session.get_dependents("a", include_transitive=True)
    assert sorted((d["name"], d["depth"]) for d in dependents) == [("b", 1), ("c", 2), ("d", 1)]
    assert [d["depth"] for d in dependents] == sorted(d["depth"] for d in dependents)
    assert await session.get_dependencies("a") == []
    assert await session.get_dependents("c", include_transitive=True) == []

    assert await session.remove_dependency("c", "b") is True
    assert await session.remove_dependency("c", "b") is False
    assert await session.get_dependencies("c", include_transitive=True) == []
    assert sorted(names_of(await session.get_dependents("a", include_transitive=True))) == [
        "b", "d"
    ]


async def test_dependency_types_kept_replaced_and_validated(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await register_ints(session, "a", "b", "c", "d")
    for dependent, kind in zip("bcd", DEPENDENCY_TYPES, strict=True):
        await session.add_dependency(dependent, "a", kind)
    kinds = {d["name"]: d["type"] for d in await session.get_dependents("a")}
    assert kinds == {"b": "data", "c": "constraint", "d": "optimization"}

    # Adding the same pair again replaces its type: still one edge.
    await session.add_dependency("b", "a", "optimization")
    deps = await session.get_dependencies("b")
    assert [(d["name"], d["type"]) for d in deps] == [("a", "optimization")]

    edges = server_edges(server, session)
    for bad in ("bogus", "DATA", ""):
        with pytest.raises(ValueError, match="dependency_type"):
            await session.add_dependency("d", "b", bad)
    assert server_edges(server, session) == edges

    # The server refuses an unknown type on its own too (not only the client).
    sid = session.session_id
    with pytest.raises(InvalidValueError, match="bogus"):
        server.call(lambda: server.store.add_dependency(sid, "d", "b", "bogus"))
    assert server_edges(server, session) == edges


async def test_unknown_variables_raise_key_error(session: SessionContext) -> None:
    await register_ints(session, "a", "b")
    await session.add_dependency("b", "a")
    calls = [
        session.add_dependency("ghost", "a"),
        session.add_dependency("a", "ghost"),
        session.remove_dependency("ghost", "a"),
        session.remove_dependency("b", "ghost"),
        session.get_dependencies("ghost"),
        session.get_dependents("ghost", include_transitive=True),
        session.delete_variable("ghost", cascade=True),
    ]
    for call in calls:
        with pytest.raises(KeyError, match="ghost"):
            await call
    assert names_of(await session.get_dependencies("b")) == ["a"]


# ------------------------------------------------------------------------ cycles


async def test_three_cycle_is_refused_naming_the_exact_path(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await register_ints(session, "a", "b", "c")
    await session.add_dependency("b", "c")  # b depends on c
    await session.add_dependency("c", "a")  # c depends on a
    edges = server_edges(server, session)
    revision = server_revision(server, session)
    with pytest.raises(ValueError, match="cycle") as caught:
        await session.add_dependency("a", "b")  # a -> b -> c -> a
    assert not isinstance(caught.value, KeyError)
    assert str(caught.value).endswith(": a -> b -> c -> a"), str(caught.value)
    assert server_edges(server, session) == edges
    assert server_revision(server, session) == revision
    assert await session.get_dependencies("a", include_transitive=True) == []

    # Closing it at another edge names the cycle from that edge's dependent.
    await session.remove_dependency("c", "a")
    await session.add_dependency("a", "b")
    with pytest.raises(ValueError) as caught:
        await session.add_dependency("c", "a")
    assert str(caught.value).endswith(": c -> a -> b -> c"), str(caught.value)


async def test_self_and_two_cycles_are_refused(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await register_ints(session, "a", "b")
    with pytest.raises(ValueError) as caught:
        await session.add_dependency("a", "a")
    assert str(caught.value).endswith(": a -> a"), str(caught.value)
    await session.add_dependency("a", "b")
    with pytest.raises(ValueError) as caught:
        await session.add_dependency("b", "a", "constraint")
    assert str(caught.value).endswith(": b -> a -> b"), str(caught.value)
    assert server_edges(server, session) == {("a", "b", "data")}


async def test_cycle_inside_one_registration_batch_registers_nothing(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await register_ints(session, "base")
    revision = server_revision(server, session)
    with pytest.raises(ValueError) as caught:
        await session.register_variables(
            [
                {"name": "p", "type": "integer", "initial_value": 0, "dependencies": ["base"]},
                {"name": "q", "type": "integer", "initial_value": 0, "dependencies": ["p", "r"]},
                {"name": "r", "type": "integer", "initial_value": 0, "dependencies": ["q"]},
            ]
        )
    assert str(caught.value).endswith(": r -> q -> r"), str(caught.value)
    with pytest.raises(ValueError) as caught:
        await session.register_variable("s", "integer", 0, dependencies=["base", "s"])
    assert str(caught.value).endswith(": s -> s"), str(caught.value)
    for name in ("p", "q", "r", "s"):
        assert await session.get_variable(name, default="<absent>") == "<absent>"
    assert server_revision(server, session) == revision
    assert server_edges(server, session) == set()
    assert await session.get_dependents("base") == []
    # The names are free: the same batch without the cycle goes through.
    await session.register_variables(
        [
            {"name": "p", "type": "integer", "initial_value": 0, "dependencies": ["base"]},
            {"name": "q", "type": "integer", "initial_value": 0, "dependencies": ["p"]},
        ]
    )
    assert names_of(await session.get_dependencies("q", include_transitive=True)) == [
        "p", "base"
    ]


# ------------------------------------------------------------------------ delete


async def test_delete_is_refused_while_others_depend_on_it(
    session: SessionContext, server: EmbeddedServer
) -> None:
    await diamond(session)
    revision = server_revision(server, session)
    edges = server_edges(server, session)
    with pytest.raises(ValueError, match="cascade") as caught:
        await session.delete_variable("a")
    message = str(caught.value)
    assert all(f"'{name}'" in message for name in "bcd"), message
    with pytest.raises(ValueError) as caught:
        await session.delete_variable("b")
    assert "'d'" in str(caught.value) and "'c'" not in str(caught.value)
    assert server_revision(server, session) == revision
    assert server_edges(server, session) == edges
    for name in "abcd":
        assert await session.get_variable(name, bypass_cache=True) == 0
    # A variable nothing depends on goes without cascade, taking its own edges along.
    assert await session.delete_variable("d") is True
    assert await session.get_dependents("b") == []
    assert server_edges(server, session) == {("b", "a", "data"), ("c", "a", "data")}


async def test_cascade_delete_is_one_revision_and_every_watcher_sees_deleted(
    two: tuple[SessionContext, SessionContext], server: EmbeddedServer
) -> None:
    writer, watcher = two
    await diamond(writer)
    await register_ints(writer, "keep")
    await writer.add_dependency("keep", "b", "constraint")  # keep depends on b too
    await register_ints(writer, "bystander")
    watches = {n: await watcher.watch_variable(n) for n in ("a", "b", "c", "d", "keep")}
    bystander = await watcher.watch_variable("bystander", include_initial=False)
    hub = watcher._hub
    assert hub is not None
    await settle(watcher)
    frames, revision = hub.frames, server_revision(server, writer)
    await writer.delete_variable("b", cascade=True)  # b, then d and keep
    assert server_revision(server, writer) == revision + 1
    await settle(watcher)
    assert hub.frames == frames + 1
    for name in ("b", "d", "keep"):
        with trio.fail_after(10):
            got = [u async for u in watches[name]]
        assert [(u.update_type, u.name) for u in got] == [("initial", name), ("deleted", name)]
        assert got[-1].revision == revision + 1
        with pytest.raises(KeyError):
            await writer.get_variable(name, bypass_cache=True)
    for name in ("a", "c"):
        assert [u.update_type for u in drain(watches[name])] == ["initial"]
        assert not watches[name].closed
    assert names_of(await writer.get_dependents("a", include_transitive=True)) == ["c"]

    frames, revision = hub.frames, server_revision(server, writer)
    await writer.delete_variable("a", cascade=True)  # a and c
    assert server_revision(server, writer) == revision + 1
    await settle(watcher)
    assert hub.frames == frames + 1
    for name in ("a", "c"):
        with trio.fail_after(10):
            got = [u async for u in watches[name]]
        assert [u.update_type for u in got] == ["deleted"]  # the initial was drained above
        assert got[-1].revision == revision + 1
    assert drain(bystander) == []
    assert await writer.get_variable("bystander", bypass_cache=True) == 0
    assert server_edges(server, writer) == set()
    # The names are free again and come back without old edges.
    await register_ints(writer, "a", "b")
    assert await writer.get_dependents("a") == []
    assert await writer.get_dependencies("b") == []


# ------------------------------------------------------------------- propagation


async def test_propagation_in_topological_order_within_the_changes_frame(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await diamond(writer)
    await register_ints(writer, "p", "q", "r", "s")  # the chain p <- q <- r <- s
    await writer.add_dependency("s", "r")
    await writer.add_dependency("r", "q")
    await writer.add_dependency("q", "p")
    await writer.set_variable("b", 5)  # b is at version 2 with value 5 from here on
    names = ["a", "b", "c", "d", "p", "q", "r", "s"]
    watch = await watcher.watch_variables(names, include_initial=False)
    observed: list[VariableUpdate] = []
    subscriptions = [
        watcher.observe(n, include_initial=False).subscribe(observed.append) for n in names
    ]
    hub = watcher._hub
    assert hub is not None
    await settle(watcher)

    frames = hub.frames
    await writer.set_variable("a", 1)
    change_revision = writer.revision
    await settle(watcher)
    assert hub.frames == frames + 1  # the change and every dependent's event: one frame
    got = drain(watch)
    assert (got[0].name, got[0].update_type) == ("a", "value_change")
    assert [u.update_type for u in got[1:]] == ["dependency_changed"] * 3
    order = [u.name for u in got]
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order[-1] == "d"  # after both b and c: each after all it depends on
    assert [(u.name, u.update_type) for u in observed] == [
        (u.name, u.update_type) for u in got
    ]
    for u in got[1:]:
        assert u.metadata["source_variable"] == "a"
        assert u.metadata["source_revision"] == change_revision
        assert u.value == u.old_value  # the dependent's current value, unchanged
        assert (u.value, u.version) == ((5, 2) if u.name == "b" else (0, 1))
    assert got[0].revision == change_revision
    for name in ("b", "c", "d"):
        assert await writer.get_variable(name, bypass_cache=True) == (5 if name == "b" else 0)

    observed.clear()
    frames = hub.frames
    await writer.set_variable("p", 1)
    change_revision = writer.revision
    await settle(watcher)
    assert hub.frames == frames + 1
    got = drain(watch)
    assert [(u.name, u.update_type) for u in got] == [
        ("p", "value_change"), ("q", "dependency_changed"), ("r", "dependency_changed"),
        ("s", "dependency_changed"),
    ]
    assert {u.metadata["source_revision"] for u in got[1:]} == {change_revision}
    assert [u.name for u in observed] == ["p", "q", "r", "s"]

    # A change in the middle reaches only what is downstream of it.
    await writer.set_variable("r", 7)
    await settle(watcher)
    assert [(u.name, u.update_type) for u in drain(watch)] == [
        ("r", "value_change"), ("s", "dependency_changed")
    ]
    for subscription in subscriptions:
        subscription.dispose()
    watch.cancel()


async def test_observe_and_watch_variable_both_get_dependency_changed(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("base_temperature", "float", 0.7)
    await writer.register_variable("top", "float", 1.0)
    await writer.register_variable(
        "effective_temperature", "float", 0.7, dependencies=["base_temperature"]
    )
    await writer.add_dependency("base_temperature", "top")  # two levels above
    watch = await watcher.watch_variable("effective_temperature", include_initial=False)
    observed: list[VariableUpdate] = []
    watcher.observe("effective_temperature").subscribe(observed.append)
    await settle(watcher)
    await writer.set_variable("base_temperature", 0.9)
    first = writer.revision
    await writer.set_variable("top", 2.0)
    second = writer.revision
    await settle(watcher)
    from_watch = drain(watch)
    assert [u.update_type for u in observed] == [
        "initial", "dependency_changed", "dependency_changed"
    ]
    for updates in (from_watch, observed[1:]):
        assert len(updates) == 2
        assert all(isinstance(u, VariableUpdate) for u in updates)
        assert all(u.update_type == "dependency_changed" for u in updates)
        assert [(u.value, u.version) for u in updates] == [(0.7, 1), (0.7, 1)]
        assert [(u.metadata["source_variable"], u.metadata["source_revision"])
                for u in updates] == [("base_temperature", first), ("top", second)]
    # The dependent's entry is not disturbed by the notifications.
    assert await watcher.get_variable("effective_temperature") == 0.7
    watch.cancel()


async def test_atomic_batch_of_two_inputs_gives_one_event_per_dependent(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await register_ints(writer, "x", "y")
    await writer.register_variables(
        [
            {"name": "sum", "type": "integer", "initial_value": 0, "dependencies": ["x", "y"]},
            {"name": "report", "type": "string", "initial_value": "", "dependencies": ["sum"]},
        ]
    )
    watch = await watcher.watch_variables(["sum", "report"], include_initial=False)
    hub = watcher._hub
    assert hub is not None
    await settle(watcher)
    frames = hub.frames
    assert await writer.update_variables({"x": 1, "y": 2}) == {"x": True, "y": True}
    await settle(watcher)
    assert hub.frames == frames + 1
    got = drain(watch)
    assert [(u.name, u.update_type) for u in got] == [
        ("sum", "dependency_changed"), ("report", "dependency_changed")
    ]
    for u in got:
        assert u.metadata["source_revision"] == writer.revision
        assert sorted(u.metadata["source_variables"]) == ["x", "y"]
        assert u.metadata["source_variable"] in ("x", "y")


async def test_batch_changing_a_dependent_and_its_dependency(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await register_ints(writer, "a", "b", "c")
    await writer.add_dependency("b", "a")
    await writer.add_dependency("c", "b")
    watch = await watcher.watch_variables(["a", "b", "c"], include_initial=False)
    await settle(watcher)
    await writer.update_variables({"b": 2, "a": 1})
    await settle(watcher)
    got = [(u.name, u.update_type) for u in drain(watch)]
    # b changed itself: its own value change, not a second notification as well.
    assert sorted(got[:2]) == [("a", "value_change"), ("b", "value_change")]
    assert got[2:] == [("c", "dependency_changed")]


async def test_removed_dependency_stops_propagation(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await register_ints(writer, "a", "b")
    await writer.add_dependency("b", "a")
    watch = await watcher.watch_variable("b", include_initial=False)
    await settle(watcher)
    await writer.set_variable("a", 1)
    await settle(watcher)
    assert [u.update_type for u in drain(watch)] == ["dependency_changed"]
    assert await writer.remove_dependency("b", "a") is True
    await writer.set_variable("a", 2)
    await settle(watcher)
    assert drain(watch) == []
    watch.cancel()


async def test_conflated_frame_keeps_a_value_change_that_a_notification_followed() -> None:
    # A slow stream collapses queued frames per variable. If b changed (value_change) and
    # then one of its dependencies changed (dependency_changed for b, same version), the
    # collapsed event for b must still say its value changed: a consumer that skips
    # dependency notifications (derive does) would otherwise never see b's new value.
    with EmbeddedServer(max_pending_events=1) as embedded:
        async with dspex_rx.connect(embedded.target) as session:
            await register_ints(session, "a", "b")
            await session.add_dependency("b", "a")
            watch = await session.watch_variable("b", include_initial=False)
            await settle(session)
            sid = session.session_id

            def burst() -> int:
                embedded.store.set(sid, "b", 5, actor="burst")
                embedded.store.set(sid, "a", 1, actor="burst")
                return max(s.conflations for s in embedded.service.subscribers)

            assert await trio.to_thread.run_sync(embedded.call, burst) > 0
            await settle(session)
            got = drain(watch)
            assert [(u.version, u.old_value, u.value) for u in got] == [(2, 0, 5)]
            assert got[0].update_type == "value_change", got[0]
            watch.cancel()


# -------------------------------------------------------- property-based: graph

NODES = [f"n{i}" for i in range(6)]
INF = float("inf")

node = st.sampled_from(NODES)
graph_op = st.one_of(
    st.tuples(st.just("add"), node, node, st.sampled_from(DEPENDENCY_TYPES)),
    st.tuples(st.just("add"), node, node, st.sampled_from(DEPENDENCY_TYPES)),
    st.tuples(st.just("remove"), node, node, st.just("")),
)


def shortest(edges: Iterable[tuple[str, str]], nodes: list[str]) -> dict[str, dict[str, float]]:
    """Floyd-Warshall over "depends on" edges: dist[u][v] = fewest edges from u to v."""
    dist = {u: {v: INF for v in nodes} for u in nodes}
    for dependent, dependency in edges:
        dist[dependent][dependency] = 1
    for k, i, j in itertools.product(nodes, repeat=3):
        if dist[i][k] + dist[k][j] < dist[i][j]:
            dist[i][j] = dist[i][k] + dist[k][j]
    return dist


def is_acyclic(edges: Iterable[tuple[str, str]]) -> bool:
    """Independent three-colour DFS."""
    adjacent: dict[str, list[str]] = {}
    for dependent, dependency in edges:
        adjacent.setdefault(dependent, []).append(dependency)
    colour: dict[str, int] = {}

    def visit(n: str) -> bool:
        colour[n] = 1
        for m in adjacent.get(n, []):
            if colour.get(m) == 1 or (colour.get(m) is None and not visit(m)):
                return False
        colour[n] = 2
        return True

    return all(colour.get(n) is not None or visit(n) for n in list(adjacent))


def check_cycle_path(path: list[str], edges: set[tuple[str, str]], new: tuple[str, str]) -> None:
    """``path`` is a real cycle closed by the refused edge: it starts with that edge, every
    other step is an existing edge, and no node repeats but the endpoints."""
    assert path[0] == path[-1] == new[0]
    assert path[1] == new[1]
    assert all(step in edges for step in itertools.pairwise(path[1:]))
    assert len(set(path[:-1])) == len(path) - 1


def check_queries(
    walk: Any, nodes: list[str], dist: dict[str, dict[str, float]], forward: bool
) -> None:
    for n in nodes:
        expected = {m: int(dist[n][m] if forward else dist[m][n]) for m in nodes
                    if (dist[n][m] if forward else dist[m][n]) < INF}
        found = walk(n, True)
        ids = [m for m, _, _ in found]
        assert len(ids) == len(set(ids))
        assert {m: depth for m, depth, _ in found} == expected
        assert [depth for _, depth, _ in found] == sorted(depth for _, depth, _ in found)
        direct = {m for m, _, _ in walk(n, False)}
        assert direct == {m for m, depth in expected.items() if depth == 1}


def check_downstream(
    graph: DependencyGraph, edges: set[tuple[str, str]], dist: dict[str, dict[str, float]]
) -> None:
    root_sets = [*([n] for n in NODES), *map(list, itertools.combinations(NODES, 2)), NODES]
    for roots in root_sets:
        order = graph.downstream(roots)
        expected = {m for m in NODES for r in roots if dist[m][r] < INF} - set(roots)
        assert len(order) == len(set(order))
        assert set(order) == expected
        position = {m: i for i, m in enumerate(order)}
        for dependent, dependency in edges:
            if dependent in position and dependency in position:
                assert position[dependency] < position[dependent]


@settings(max_examples=200, deadline=None)
@given(st.lists(graph_op, max_size=30))
def test_graph_property_acyclic_and_closures_match_reference(
    ops: list[tuple[str, str, str, str]],
) -> None:
    graph = DependencyGraph()
    reference: dict[tuple[str, str], str] = {}  # (dependent, dependency) -> type
    for kind, x, y, dep_type in ops:
        before = {(e.dependent, e.dependency, e.type) for e in graph.edges()}
        if kind == "add":
            dist = shortest(reference, NODES)
            closes_cycle = x == y or dist[y][x] < INF
            try:
                added = graph.add(Edge(x, y, dep_type))
            except CycleError as exc:
                assert closes_cycle
                assert isinstance(exc, ValueError)
                assert str(exc) == " -> ".join(exc.path)
                check_cycle_path(exc.path, set(reference), (x, y))
                after = {(e.dependent, e.dependency, e.type) for e in graph.edges()}
                assert after == before  # a refused add changes nothing
            else:
                assert not closes_cycle
                assert added == (reference.get((x, y)) != dep_type)
                reference[(x, y)] = dep_type
        else:
            assert graph.remove(x, y) == ((x, y) in reference)
            reference.pop((x, y), None)
        edges = graph.edges()
        assert is_acyclic((e.dependent, e.dependency) for e in edges)
        assert {(e.dependent, e.dependency): e.type for e in edges} == reference
        assert len(graph) == len(reference)
        dist = shortest(reference, NODES)
        check_queries(graph.dependencies, NODES, dist, forward=True)
        check_queries(graph.dependents, NODES, dist, forward=False)
        check_downstream(graph, set(reference), dist)
    for n in NODES:  # dropping a node leaves the rest intact
        graph.drop(n)
        reference = {k: v for k, v in reference.items() if n not in k}
        assert {(e.dependent, e.dependency): e.type for e in graph.edges()} == reference
    assert len(graph) == 0


# -------------------------------------------------------- property-based: store

STORE_NODES = [f"v{i}" for i in range(5)]
store_node = st.sampled_from(STORE_NODES)
store_op = st.one_of(
    st.tuples(st.just("add"), store_node, store_node),
    st.tuples(st.just("add"), store_node, store_node),
    st.tuples(st.just("remove"), store_node, store_node),
    st.tuples(st.just("delete"), store_node, store_node),
)


def check_store_propagation(
    store: MemoryStore,
    sid: str,
    changed: str,
    commits: list[Commit],
    reference: set[tuple[str, str]],
    dist: dict[str, dict[str, float]],
) -> None:
    """Write ``changed``: its one commit holds the value change, then a
    ``dependency_changed`` for exactly its transitive dependents, in topological order."""
    commits.clear()
    store.set(sid, changed, store.get(sid, changed).value + 1, actor="t")
    [commit] = commits
    first, *rest = commit.events
    assert (first.record.name, first.update_type) == (changed, "value_change")
    expected = {m for m in STORE_NODES if dist[m][changed] < INF}
    order = [e.record.name for e in rest]
    assert set(order) == expected and len(order) == len(expected)
    for e in rest:
        assert e.update_type == "dependency_changed"
        assert e.metadata["source_variable"] == changed
        assert e.metadata["source_revision"] == commit.revision
        assert e.record == store.get(sid, e.record.name)  # value and version unchanged
    position = {m: i for i, m in enumerate(order)}
    for dependent, dependency in reference:
        if dependent in position and dependency in position:
            assert position[dependency] < position[dependent]


@settings(max_examples=60, deadline=None)
@given(st.lists(store_op, max_size=20))
def test_store_property_dependencies_and_propagation_match_reference(
    ops: list[tuple[str, str, str]],
) -> None:
    store = MemoryStore()
    state, _, _ = store.initialize_session()
    sid = state.id
    store.register(sid, [VariableSpec(n, "integer", 0) for n in STORE_NODES], actor="t")
    commits: list[Commit] = []
    store.add_listener(sid, lambda c: commits.append(c) if c is not None else None)
    reference: set[tuple[str, str]] = set()
    for kind, x, y in ops:
        revision = state.revision
        dist = shortest(reference, STORE_NODES)
        if kind == "add":
            if x == y or dist[y][x] < INF:
                with pytest.raises(InvalidValueError) as caught:
                    store.add_dependency(sid, x, y, actor="t")
                prefix = "dependency would create a cycle: "
                assert str(caught.value).startswith(prefix)
                path = str(caught.value)[len(prefix):].split(" -> ")
                check_cycle_path(path, reference, (x, y))
                assert state.revision == revision
            else:
                # A new edge is a write (one revision); re-adding an identical one is none.
                expected = revision if (x, y) in reference else revision + 1
                assert store.add_dependency(sid, x, y, actor="t") == expected
                reference.add((x, y))
        elif kind == "remove":
            existed = (x, y) in reference
            assert store.remove_dependency(sid, x, y, actor="t") == (
                existed, revision + existed
            )
            reference.discard((x, y))
        else:  # a delete that must be refused leaves everything as it was
            dependents = {m for m in STORE_NODES if dist[m][x] < INF}
            if dependents:
                with pytest.raises(InvalidValueError) as caught:
                    store.delete(sid, x, actor="t")
                assert all(f"'{m}'" in str(caught.value) for m in dependents)
                assert state.revision == revision
        assert is_acyclic(reference)
        dist = shortest(reference, STORE_NODES)
        for n in STORE_NODES:
            check_store_propagation(store, sid, n, commits, reference, dist)
            for dependents_flag, forward in ((False, True), (True, False)):
                found = store.dependencies(sid, n, dependents=dependents_flag, transitive=True)
                assert {r.name: depth for r, depth, _ in found} == {
                    m: int(dist[n][m] if forward else dist[m][n]) for m in STORE_NODES
                    if (dist[n][m] if forward else dist[m][n]) < INF
                }
    with pytest.raises(VariableNotFoundError):
        store.add_dependency(sid, "v0", "ghost")


async def test_dependency_entries_type_is_the_dependency_type_as_in_the_spec(
    session: SessionContext,
) -> None:
    # Issue #12: 'type' used to be the variable's type; the spec's entries carry the
    # dependency's type there ('data', 'constraint').
    base_id = await session.register_variable("base_temp", "float", 0.7)
    style_id = await session.register_variable("style", "string", "terse")
    await session.register_variable("effective_temperature", "float", 0.7)
    await session.add_dependency("effective_temperature", "base_temp", dependency_type="data")
    await session.add_dependency("effective_temperature", "style", "constraint")
    deps = await session.get_dependencies("effective_temperature")
    assert sorted((d["variable_id"], d["type"], d["variable_type"]) for d in deps) == sorted([
        (base_id, "data", "float"), (style_id, "constraint", "string")])
    dependents = await session.get_dependents("style")
    assert [(d["name"], d["type"], d["variable_type"]) for d in dependents] == [
        ("effective_temperature", "constraint", "float")]


# ----------- revisions of edges; notifications vs newer versions, conflation and debounce


# Guards: add_dependency of an edge already there unchanged committed a revision.
async def test_re_adding_an_identical_dependency_takes_no_revision(
    server: EmbeddedServer, session: SessionContext
) -> None:
    # remove_dependency of a missing edge takes no revision; add_dependency of an edge
    # that is already there unchanged (graph.add returns False) still commits one.
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await session.add_dependency("b", "a")
    sid = session.session_id
    before = server.call(lambda: server.store.session(sid).revision)
    await session.add_dependency("b", "a")
    after = server.call(lambda: server.store.session(sid).revision)
    assert after == before


class _HeldStream:
    """Delays the watch stream of a session (as the network may: unary answers and the
    stream are separate HTTP/2 streams with no order between them)."""

    def __init__(self, session: SessionContext) -> None:
        hub = session._hub
        assert hub is not None
        self.hub = hub
        self.original: Callable[[Any], None] = hub._handle
        self.held: list[Any] = []
        self.holding = False
        self.got_frame = trio.Event()
        hub._handle = self._handle  # type: ignore[method-assign]

    def _handle(self, message: Any) -> None:
        if self.holding:
            self.held.append(message)
            if message.frames:
                self.got_frame.set()
            return
        self.original(message)

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for message in held:
            self.original(message)


# Guards: dependency_changed skipped the version check and took an observer back in time.
async def test_dependency_changed_never_reaches_an_observer_after_a_newer_version(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # actors.apply delivers dependency_changed without the version check, so an observer
    # baselined from the (newer) cache entry later gets an older version's value.
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await writer.add_dependency("b", "a")
    first: list[VariableUpdate] = []
    watcher.observe("b").subscribe(first.append)
    await settle(watcher)
    stream = _HeldStream(watcher)
    stream.holding = True
    await writer.set_variable("a", 1)  # dependency_changed for b at version 1
    with trio.fail_after(5):
        await stream.got_frame.wait()
    assert await watcher.set_variable("b", 5) == 2  # the answer caches version 2
    late: list[VariableUpdate] = []
    watcher.observe("b").subscribe(late.append)  # baseline from the live entry: v2
    assert [(u.version, u.value) for u in late] == [(2, 5)]
    stream.release()
    await settle(watcher)
    versions = [u.version for u in late]
    assert versions == sorted(versions), [(u.update_type, u.version, u.value) for u in late]


# Guards: a conflated frame put b's notification before the change of a that caused it.
async def test_conflated_frame_keeps_upstream_before_dependents() -> None:
    # _merge sorts a conflated frame by record.mod_revision, and a dependency_changed
    # event carries the dependent's own (older) mod_revision, so b's notification is put
    # before the change of a that caused it.
    with EmbeddedServer(max_pending_events=1) as embedded:
        async with dspex_rx.connect(embedded.target) as session:
            await session.register_variables(
                [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
            )
            await session.add_dependency("b", "a")
            watch = await session.watch_variables(["a", "b"], include_initial=False)
            await settle(session)
            sid = session.session_id

            def burst() -> int:
                embedded.store.set(sid, "a", 1, actor="burst")
                return max(s.conflations for s in embedded.service.subscribers)

            assert await trio.to_thread.run_sync(embedded.call, burst) > 0
            await settle(session)
            got = [(u.name, u.update_type) for u in drain(watch)]
            assert got == [("a", "value_change"), ("b", "dependency_changed")]
            watch.cancel()


# Guards: debounce sorted by the dependent's old revision and flushed it before its source.
async def test_debounce_flushes_dependents_after_their_source(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    # debounce_settled sorts by update.revision, which for dependency_changed is the
    # dependent's old mod_revision, not the commit's: the dependent comes out first.
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await writer.add_dependency("b", "a")
    watch = await watcher.watch_variables(["a", "b"], include_initial=False, debounce_ms=250)
    await writer.set_variable("a", 1)
    await settle(watcher)
    mock_clock.jump(0.25)
    await settle(watcher)
    got = [(u.name, u.update_type) for u in drain(watch)]
    assert got == [("a", "value_change"), ("b", "dependency_changed")]
    watch.cancel()


# Guards: debounce kept the latest update, replacing b's value change by a notification.
async def test_debounce_does_not_hide_a_value_change_behind_a_notification(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    # The server's _merge was fixed for this; the client's debounce keeps "the latest
    # update per variable", so b's value change is replaced by a later
    # dependency_changed and a consumer that skips notifications never sees b = 5.
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await writer.add_dependency("b", "a")
    watch = await watcher.watch_variables(["b"], include_initial=False, debounce_ms=250)
    await writer.set_variable("b", 5)
    await writer.set_variable("a", 1)
    await settle(watcher)
    mock_clock.jump(0.25)
    await settle(watcher)
    got = drain(watch)
    assert [(u.update_type, u.old_value, u.value) for u in got] == [("value_change", 0, 5)]
    watch.cancel()
