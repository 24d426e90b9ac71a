"""Computed variables (``session.derive``, issue #4): the spec's ``effective_temperature``
workflow, glitch-free recomputation (one per atomic batch, never a mixed pair of inputs),
async functions in virtual time, type inference, failures that keep the last value,
``cancel()``, and ``settled()``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from helpers import drain, settle

from dspex_rx import SessionContext
from dspex_rx.client.derive import Derived


async def quiet(derived: Derived, *sessions: SessionContext) -> None:
    """Input changes so far have reached ``derived`` and been recomputed and written, and
    its write has reached its own session and every session given."""
    await settle(derived.session)
    with trio.fail_after(10):
        await derived.settled()
    for session in (derived.session, *sessions):
        await settle(session)


async def value_of(session: SessionContext, name: str) -> Any:
    return await session.get_variable(name, bypass_cache=True)


async def type_of(session: SessionContext, name: str) -> str:
    info = await session.get_variables([name], include_metadata=True)
    return str(info[name]["type"])


class Calls:
    """Records every call of a derive function; lets a test wait for the n-th call."""

    def __init__(self) -> None:
        self.args: list[tuple[Any, ...]] = []
        self.times: list[float] = []
        self._changed = trio.Event()

    def record(self, *args: Any) -> None:
        self.args.append(args)
        self.times.append(trio.current_time())
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.args) < count:
            await self._changed.wait()

    async def wait_for_args(self, *args: Any) -> None:
        while args not in self.args:
            await self._changed.wait()


# ------------------------------------------------------------------- the workflow


async def test_effective_temperature_follows_its_inputs(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("base_temperature", "float", 0.7,
                                   constraints={"min": 0.0, "max": 2.0})
    await writer.register_variable("style_modifier", "float", 1.2)
    derived = await watcher.derive(
        "effective_temperature", ["base_temperature", "style_modifier"], lambda b, s: b * s
    )
    assert isinstance(derived, Derived)
    assert await value_of(writer, "effective_temperature") == 0.7 * 1.2
    assert await type_of(writer, "effective_temperature") == "float"
    deps = await writer.get_dependencies("effective_temperature")
    assert sorted(d["name"] for d in deps) == ["base_temperature", "style_modifier"]
    for name in ("base_temperature", "style_modifier"):
        assert [d["name"] for d in await writer.get_dependents(name)] == [
            "effective_temperature"
        ]
    await quiet(derived)

    watch = await writer.watch_variable("effective_temperature", include_initial=False)
    await writer.set_variable("base_temperature", 0.9)  # another connection writes
    base_revision = writer.revision
    await quiet(derived, writer)
    changes = [u for u in drain(watch) if u.update_type == "value_change"]
    assert [(u.old_value, u.value, u.source) for u in changes] == [
        (0.7 * 1.2, 0.9 * 1.2, "derived")
    ]
    assert changes[0].metadata["derived_from_revision"] == base_revision
    assert await value_of(writer, "effective_temperature") == 0.9 * 1.2
    assert await watcher.get_variable("effective_temperature") == 0.9 * 1.2

    await writer.set_variable("style_modifier", 0.5)
    await quiet(derived, writer)
    changes = [u for u in drain(watch) if u.update_type == "value_change"]
    assert [(u.value, u.source) for u in changes] == [(0.9 * 0.5, "derived")]
    assert derived.errors == 0
    watch.cancel()


async def test_inputs_are_passed_in_the_order_given(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "a", "type": "integer", "initial_value": 10},
         {"name": "b", "type": "integer", "initial_value": 3}]
    )
    ab = await watcher.derive("a_minus_b", ["a", "b"], lambda a, b: a - b)
    ba = await watcher.derive("b_minus_a", ["b", "a"], lambda b, a: b - a)
    assert (await value_of(writer, "a_minus_b"), await value_of(writer, "b_minus_a")) == (7, -7)
    await writer.set_variable("b", 4)
    await quiet(ab)
    await quiet(ba)
    assert (await value_of(writer, "a_minus_b"), await value_of(writer, "b_minus_a")) == (6, -6)


# ------------------------------------------------------------------ glitch-free


async def test_atomic_batch_recomputes_once_from_a_consistent_pair(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "b", "type": "integer", "initial_value": 1},
         {"name": "s", "type": "integer", "initial_value": 10}]
    )
    calls = Calls()

    def product(b: int, s: int) -> int:
        calls.record(b, s)
        return b * s

    derived = await watcher.derive("p", ["b", "s"], product)
    await quiet(derived)
    watch = await writer.watch_variable("p", include_initial=False)
    recomputations, writes = derived.recomputations, derived.writes

    assert await writer.update_variables({"b": 2, "s": 20}) == {"b": True, "s": True}
    await quiet(derived, writer)
    assert derived.recomputations - recomputations == 1
    assert derived.writes - writes == 1
    assert calls.args[-1] == (2, 20)
    assert await value_of(writer, "p") == 40

    # A burst of batches, never waiting in between: whatever is skipped, every call sees
    # one batch's pair, and the last batch's product is written in the end.
    recomputations = derived.recomputations
    for k in range(3, 31):
        await writer.update_variables({"b": k, "s": 10 * k})
    with trio.fail_after(10):
        while await value_of(writer, "p") != 30 * 300:
            await settle(watcher)
            await derived.settled()
    assert 1 <= derived.recomputations - recomputations <= 28
    assert calls.args and all(s == 10 * b for b, s in calls.args), calls.args
    await settle(writer)
    written = [u.value for u in drain(watch) if u.update_type == "value_change"]
    assert written[-1] == 9000
    assert all(v == 10 * math.isqrt(v // 10) ** 2 for v in written), written
    assert derived.errors == 0
    watch.cancel()


# -------------------------------------------------------------- async, virtual time


async def test_async_fn_writes_after_exactly_its_virtual_delay(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "base", "type": "float", "initial_value": 2.0},
         {"name": "mod", "type": "float", "initial_value": 3.0}]
    )
    calls = Calls()

    async def slow_product(base: float, mod: float) -> float:
        calls.record(base, mod)
        await trio.sleep(1.0)
        return base * mod

    handle: list[Derived] = []

    async def start() -> None:
        handle.append(await watcher.derive("slow", ["base", "mod"], slow_product))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        await calls.wait_for(1)  # derive() awaits the first result before registering
        mock_clock.jump(0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert handle == []
        assert await writer.get_variable("slow", default="<absent>") == "<absent>"
        mock_clock.jump(0.5)
    [derived] = handle
    assert await value_of(writer, "slow") == 6.0
    assert await type_of(writer, "slow") == "float"

    # The task subscribes to the inputs; their initial values are the ones the registered
    # value came from, so fn is not called again for them (it may be expensive).
    await settle(watcher)
    await quiet(derived)
    assert len(calls.args) == 1 and derived.writes == 0

    await writer.update_variables({"base": 4.0, "mod": 0.5})
    await settle(watcher)
    await calls.wait_for(2)
    assert calls.args[1] == (4.0, 0.5)
    started = calls.times[1]
    for step in (0.5, 0.25, 0.125):
        mock_clock.jump(step)
        await settle(watcher)
        assert await value_of(writer, "slow") == 6.0  # not before 1.0 s of virtual time
    mock_clock.jump(0.125)
    with trio.fail_after(10):
        await derived.settled()
    assert trio.current_time() - started == 1.0
    assert await value_of(writer, "slow") == 2.0
    assert (derived.writes, derived.errors) == (1, 0)


async def test_settled_waits_for_inputs_that_arrive_during_a_recomputation(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "b", "type": "integer", "initial_value": 1},
         {"name": "s", "type": "integer", "initial_value": 10}]
    )
    gate = trio.Event()
    calls = Calls()

    async def gated(b: int, s: int) -> int:
        calls.record(b, s)
        if b == 2:
            await gate.wait()  # the recomputation for (2, 20) is held open
        return b * s

    derived = await watcher.derive("g", ["b", "s"], gated)
    await quiet(derived)
    await writer.update_variables({"b": 2, "s": 20})
    await settle(watcher)
    with trio.fail_after(10):
        await calls.wait_for_args(2, 20)
    await writer.update_variables({"b": 3, "s": 30})  # arrives while (2, 20) is running
    await settle(watcher)
    gate.set()
    with trio.fail_after(10):
        await derived.settled()
    # settled() promises every input update seen so far is recomputed and written.
    assert calls.args[-1] == (3, 30), calls.args
    assert derived.writes == 2
    assert await value_of(writer, "g") == 90


# ------------------------------------------------------------- types and failures


async def test_type_is_inferred_from_the_first_result_unless_given(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "n", "type": "integer", "initial_value": 2},
         {"name": "m", "type": "integer", "initial_value": 3}]
    )
    await watcher.derive("as_int", ["n", "m"], lambda n, m: n * m)
    await watcher.derive("as_text", ["n", "m"], lambda n, m: f"{n}x{m}")
    await watcher.derive("as_flag", ["n", "m"], lambda n, m: n < m)
    await watcher.derive("as_float", ["n", "m"], lambda n, m: n * m, type="float")
    assert [await type_of(writer, v) for v in ("as_int", "as_text", "as_flag", "as_float")] == [
        "integer", "string", "boolean", "float"
    ]
    assert await value_of(writer, "as_int") == 6
    assert await value_of(writer, "as_text") == "2x3"
    assert await value_of(writer, "as_flag") is True
    as_float = await value_of(writer, "as_float")
    assert isinstance(as_float, float) and as_float == 6.0


async def test_failing_fn_counts_errors_and_keeps_the_last_value(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "num", "type": "float", "initial_value": 1.0},
         {"name": "den", "type": "float", "initial_value": 2.0}]
    )
    derived = await watcher.derive("ratio", ["num", "den"], lambda n, d: n / d,
                                   constraints={"max": 10.0})
    await quiet(derived)
    assert (derived.errors, await value_of(writer, "ratio")) == (0, 0.5)

    await writer.set_variable("den", 0.0)  # the function raises
    await quiet(derived)
    assert derived.errors == 1
    assert isinstance(derived.last_error, ZeroDivisionError)
    assert await value_of(writer, "ratio") == 0.5

    await writer.set_variable("den", 0.05)  # 20.0: the function works, the write is refused
    await quiet(derived)
    assert derived.errors == 2
    assert isinstance(derived.last_error, ValueError)
    assert await value_of(writer, "ratio") == 0.5

    await writer.set_variable("den", 4.0)  # and it recovers
    await quiet(derived)
    assert (derived.errors, await value_of(writer, "ratio")) == (2, 0.25)


async def test_fn_failing_at_registration_registers_nothing(session: SessionContext) -> None:
    await session.register_variables(
        [{"name": "x", "type": "float", "initial_value": 1.0},
         {"name": "zero", "type": "float", "initial_value": 0.0}]
    )
    with pytest.raises(ZeroDivisionError):
        await session.derive("broken", ["x", "zero"], lambda x, z: x / z)
    assert await session.get_variable("broken", default="<absent>") == "<absent>"
    assert await session.get_dependents("x") == []
    with pytest.raises(KeyError, match="ghost"):
        await session.derive("orphan", ["x", "ghost"], lambda x, g: x)
    assert await session.get_variable("orphan", default="<absent>") == "<absent>"


async def test_cancel_stops_recomputation(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "a", "type": "integer", "initial_value": 1},
         {"name": "b", "type": "integer", "initial_value": 2}]
    )
    derived = await watcher.derive("total", ["a", "b"], lambda a, b: a + b)
    await writer.set_variable("a", 5)
    await quiet(derived)
    assert await value_of(writer, "total") == 7
    recomputations = derived.recomputations

    derived.cancel()
    await trio.testing.wait_all_tasks_blocked()
    await writer.update_variables({"a": 100, "b": 200})
    await settle(watcher)
    assert derived.recomputations == recomputations
    assert await value_of(writer, "total") == 7  # the variable stays with its last value
    assert sorted(d["name"] for d in await writer.get_dependencies("total")) == ["a", "b"]


# ---------------------------------------------------- chains, deletes and the derive task


def derive_tasks(session: SessionContext) -> list[str]:
    assert session._nursery is not None
    return [t.name for t in session._nursery.child_tasks if "dspex-rx-derive" in t.name]


# Guards: a derive over a derived input combined the new source with the stale derived value.
async def test_derive_chain_never_computes_from_a_stale_derived_input(
    session: SessionContext,
) -> None:
    # d2 = d1 + a with d1 = 2a: when a changes, d2's inputs a (new) and d1 (still old,
    # only notified by dependency_changed) are combined: a glitch, and a wasted
    # recomputation/write of an inconsistent value.
    await session.register_variable("a", "integer", 1)
    d1 = await session.derive("d1", ["a"], lambda a: 2 * a)
    seen: list[tuple[int, int]] = []

    def total(x: int, a: int) -> int:
        seen.append((x, a))
        return x + a

    d2 = await session.derive("d2", ["d1", "a"], total)
    await quiet(d1)
    await quiet(d2)
    for value in (2, 3, 4):
        await session.set_variable("a", value)
        await quiet(d1)
        await quiet(d2)
        await quiet(d1)
        await quiet(d2)
    assert await session.get_variable("d2", bypass_cache=True) == 12
    inconsistent = [(x, a) for x, a in seen if x != 2 * a]
    assert inconsistent == [], seen
    history = await session.get_variable_history("d2")
    assert [e["value"] for e in history] == [12, 9, 6, 3]


# Guards: a Derived task wrote by name forever, overwriting a new variable of the same name.
async def test_derive_stops_when_its_variable_is_deleted_and_never_writes_a_new_one(
    session: SessionContext,
) -> None:
    # The Derived task writes by name forever: after "d" is deleted and a new, unrelated
    # variable "d" is registered, the old derive overwrites it.
    await session.register_variable("a", "float", 1.0)
    derived = await session.derive("d", ["a"], lambda a: a * 10)
    await quiet(derived)
    await session.delete_variable("d")
    await session.register_variable("d", "float", 123.0)
    await session.set_variable("a", 2.0)
    await quiet(derived)
    assert await session.get_variable("d", bypass_cache=True) == 123.0
    assert derive_tasks(session) == []


# Guards: after a cascade delete of its input the Derived task waited forever.
async def test_cascade_delete_of_an_input_ends_the_derive_task(session: SessionContext) -> None:
    # Cascade-deleting an input deletes the derived variable too; the Derived task's
    # subscriptions complete but the task waits forever (left in the session nursery).
    await session.register_variable("a", "float", 1.0)
    derived = await session.derive("d", ["a"], lambda a: a * 10)
    await quiet(derived)
    assert len(derive_tasks(session)) == 1
    await session.delete_variable("a", cascade=True)
    await settle(session)
    assert derive_tasks(session) == []
