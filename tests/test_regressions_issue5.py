"""Regressions for issue #5 (server-coordinated optimization leases).

Each test asserts what the issue promises and fails on the code as reviewed; its
docstring names the bug. Server time is a fake clock moved by the test; client timers run
on trio's ``MockClock`` where they matter. Real-time loops are hang guards only.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from helpers import drain, settle, until
from optimization_helpers import FLOAT, FakeClock, Gate, breakable, open_pair

import dspex_rx
from dspex_rx.server import EmbeddedServer
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.store import MemoryStore, VariableSpec

# ---------------------------------------------------------------- harness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked(clock: FakeClock) -> Iterator[EmbeddedServer]:
    # The sweep never runs on its own: leases lapse only when the test says so.
    store = MemoryStore(clock=clock, lease_ttl=3.0)
    with EmbeddedServer(store=store, expire_interval=3600.0) as embedded:
        yield embedded


@pytest.fixture
async def pair(
    clocked: EmbeddedServer,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, dspex_rx.SessionContext]]:
    """The holder ``a`` and another client ``b`` of one session, with a float ``t``."""
    async with open_pair(clocked.target) as ab:
        yield ab


# ------------------------------------------------- leases left held by the run loop


@pytest.mark.parametrize(
    "extra",
    [float("nan"), np.array([0.25, 0.75])],
    ids=["nan-metric", "array-metric"],
)
async def test_a_metric_the_server_refuses_does_not_leave_the_lease_held(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], extra: Any,
) -> None:
    """Bug: an objective whose target metric is fine but whose other metrics the server
    refuses (NaN, an array) fails the run, and the run's FinishOptimization re-sends the
    same refused evaluation, so the finish is refused too: the lease stays "running" (the
    variable locked, status is_optimizing) until its TTL although the run has ended."""
    a, b = pair
    await a.start_optimization(
        "t", "grid_search", {"n_points": 4, "metric": "acc"},
        objective=lambda v: {"acc": v, "extra": extra},
    )
    final = await a.wait_for_optimization("t")
    assert final["state"] == "failed", final
    assert final["is_optimizing"] is False
    assert await b.set_variable("t", 1.0) > 1  # released, not locked until the TTL


async def test_closing_while_a_recorded_step_is_unanswered_releases_the_lease(
    clock: FakeClock,
) -> None:
    """Bug: the holder closes while an OptimizationStep that the server has already applied
    (it recorded iteration 1) is still unanswered. The run keeps the evaluation as
    'pending' and its FinishOptimization re-sends it; the server refuses the whole finish
    ("iteration 1 ... is already recorded"), so the lease is never released and stays
    running until its TTL (the same happens after any lost response: a deadline, a
    network error)."""
    store = MemoryStore(clock=clock, lease_ttl=3.0)
    applied, go = threading.Event(), threading.Event()
    real_step = store.optimization_step

    def step(*args: Any, **kwargs: Any) -> Any:
        result = real_step(*args, **kwargs)
        if kwargs.get("evaluation") is not None and not applied.is_set():
            applied.set()  # the evaluation is recorded; hold the answer back
            go.wait(10)
        return result

    store.optimization_step = step  # type: ignore[method-assign]
    with EmbeddedServer(store=store, expire_interval=3600.0) as server:
        async with dspex_rx.connect(server.target, ttl_seconds=3600) as b:
            a = await dspex_rx.SessionContext(
                b.session_id, server.target, token=b.token, ttl_seconds=3600
            ).initialize()
            try:
                await b.register_variable("t", "float", 0.5, constraints=FLOAT)
                opt_id = await a.start_optimization(
                    "t", "grid_search", {"n_points": 5}, objective=lambda v: v
                )
                await trio.to_thread.run_sync(applied.wait, 10)
                run = a._runs[opt_id]
                real_finish = run._finish

                async def finish(*args: Any, **kwargs: Any) -> None:
                    go.set()  # the step's call is cancelled by now: let the server answer
                    await real_finish(*args, **kwargs)

                run._finish = finish  # type: ignore[method-assign]
            finally:
                await a.close()
            go.set()
            status = await b.get_optimization_status("t")
            assert status["iteration"] == 1
            assert status["is_optimizing"] is False, status
            assert status["state"] == "failed"
            assert await b.set_variable("t", 1.0) > 1


async def test_close_during_start_optimization_leaves_no_lease_behind(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    """Bug: the session closes while start_optimization waits for its StartOptimization
    answer (the server has granted the lease). start_optimization then calls
    ``self._nursery.start_soon`` on None (AttributeError, not a clear error), no run
    exists to renew or release the lease, and the variable stays locked until the TTL.
    (A caller's cancel scope firing in the same window leaks the lease the same way.)"""
    a, b = pair
    real_call = a._call
    granted, proceed = trio.Event(), trio.Event()

    async def call(method: str, request: Any, response_type: Any, timeout: Any = None) -> Any:
        response = await real_call(method, request, response_type, timeout)
        if method == "StartOptimization":
            granted.set()  # the answer is on its way back
            await proceed.wait()
        return response

    a._call = call  # type: ignore[method-assign]
    outcome: dict[str, BaseException] = {}

    async def starter() -> None:
        try:
            await a.start_optimization("t", "random", {"seed": 1}, objective=lambda v: v)
        except Exception as exc:
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(starter)
        await granted.wait()
        await a.close()
        proceed.set()
    status = await b.get_optimization_status("t")
    assert status["is_optimizing"] is False, (status["state"], outcome)
    assert isinstance(outcome.get("error"), RuntimeError), outcome


async def test_a_holder_busy_in_its_callback_keeps_its_lease(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    """Bug: the lease is renewed only while the objective runs (``_evaluate``'s renewer).
    A holder that is alive but spends longer than the TTL in its callback (saving a
    checkpoint, plotting, waiting on a UI) sends no renewal, so its lease expires under
    it and the run is revoked, although "a TTL renewed by the running optimizer" is
    meant to lapse only when the holder dies."""
    a, b = pair
    gate = Gate()
    in_callback, leave_callback = trio.Event(), trio.Event()

    async def callback(iteration: int, value: float, metrics: dict[str, Any]) -> None:
        in_callback.set()
        await leave_callback.wait()

    opt_id = await a.start_optimization(
        "t", "random", {"seed": 1}, max_iterations=3, objective=gate, callback=callback
    )
    run = a._runs[opt_id]
    real_step = run.lease.step
    renewed = [trio.Event()]

    async def step(evaluation: Any, value: Any, iteration: int) -> Any:
        answer = await real_step(evaluation, value, iteration)
        if evaluation is None and iteration == 0:
            renewed[-1].set()
        return answer

    run.lease.step = step  # type: ignore[method-assign]
    assert run.ttl == 3.0

    # While evaluating, 4 s of server time pass (more than the 3 s TTL): renewed each second.
    await gate.arrived(1)
    for _ in range(4):
        renewed.append(trio.Event())
        await trio.testing.wait_all_tasks_blocked()
        clock.now += 1.0
        mock_clock.jump(1.0)
        await renewed[-1].wait()
    assert (await b.get_optimization_status("t"))["is_optimizing"] is True

    # The same 4 s spent in the callback instead: the holder is just as alive.
    gate.release()
    await in_callback.wait()
    for _ in range(4):
        renewed.append(trio.Event())
        await trio.testing.wait_all_tasks_blocked()
        clock.now += 1.0
        mock_clock.jump(1.0)
        await renewed[-1].wait()
    status = await b.get_optimization_status("t")
    await b.stop_optimization("t")
    leave_callback.set()
    gate.release()
    await a.wait_for_optimization("t")
    assert status["state"] == "running", status["end_reason"]


# ---------------------------------------------------------- what watchers see


async def test_a_watch_of_progress_learns_the_end_after_a_resync(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Bug: when a broken watch stream resumes and the server's log no longer reaches
    back, the server answers with a RESYNC frame of current values only. Optimization
    observers ignore every non-optimization event, so watch_optimization never learns
    that the run it was following has completed (it keeps 'running' forever)."""
    store = MemoryStore(log_size=3)
    with EmbeddedServer(store=store, expire_interval=3600.0) as server:
        async with dspex_rx.connect(server.target) as writer:  # noqa: SIM117
            async with dspex_rx.connect(server.target, session_id=writer.session_id,
                                        token=writer.token) as watcher:
                streams = breakable(watcher)
                await writer.register_variable("t", "float", 0.5, constraints=FLOAT)
                gate = Gate()
                await writer.start_optimization(
                    "t", "grid_search", {"n_points": 5}, objective=gate
                )
                await gate.arrived(1)
                values = await watcher.watch_variable("t", include_initial=False)
                progress = watcher.watch_optimization("t")
                first: dict[str, Any] = await anext(progress)  # type: ignore[assignment, arg-type]
                assert first["state"] == "running"

                streams[0].fail()
                hub = watcher._hub
                assert hub is not None
                await until(lambda: hub.reconnects == 1, "the break was noticed")
                for n in range(2, 6):  # the run goes on and ends while the stream is down
                    gate.release()
                    await gate.arrived(n)
                gate.release()
                final = await writer.wait_for_optimization("t")
                assert final["state"] == "completed"
                mock_clock.jump(2.0)  # past the reconnect backoff
                await until(lambda: len(streams) == 2, "a new stream opened")
                await settle(watcher)
                # The value watcher was resynced: the log did not reach back.
                assert [u.update_type for u in drain(values)][-1:] == ["resync"]
                seen: list[dict[str, Any]] = drain(progress)  # type: ignore[assignment]
                states = [s["state"] for s in seen]
                assert states and states[-1] == "completed", states
                progress.cancel()
                values.cancel()


async def test_a_slow_progress_reader_still_sees_how_the_previous_run_ended(
    session: dspex_rx.SessionContext,
) -> None:
    """Bug: Watch._conflate keeps one status per variable ("the newest says all the older
    did"), but a status of the next run says nothing about how the previous run ended:
    a slow reader of watch_optimization never sees run 1's 'completed' status (its
    end_reason and final value) once run 2 has started."""
    await session.register_variable("s", "float", 0.0, constraints=FLOAT)
    progress = session.watch_optimization("s")
    await anext(progress)
    progress.max_buffer = 2
    first = await session.start_optimization("s", "grid_search", {"n_points": 3}, objective=abs)
    await session.wait_for_optimization("s")
    gate = Gate()
    await session.start_optimization("s", "random", {"seed": 1}, objective=gate)
    await gate.arrived(1)
    await settle(session)
    statuses: list[dict[str, Any]] = drain(progress)  # type: ignore[assignment]
    await session.stop_optimization("s")
    gate.release()
    await session.wait_for_optimization("s")
    progress.cancel()
    ends = [s for s in statuses if s["optimization_id"] == first and not s["is_optimizing"]]
    assert ends and ends[-1]["state"] == "completed", [
        (s["optimization_id"], s["state"]) for s in statuses
    ]


def test_server_conflation_keeps_the_end_of_each_run() -> None:
    """Bug: fanout._merge keys optimization events by variable only, so when a slow
    stream's frames are conflated, the 'completed' status of run 1 is replaced by run 2's
    'running' status: the watcher never learns how run 1 ended (the same flaw as the
    client-side Watch._conflate, one layer down)."""
    store = MemoryStore()
    session, client_id, _ = store.initialize_session()
    sid = session.id
    store.register(sid, [VariableSpec("t", "float", 0.5, FLOAT)], actor="me")
    var_id = store.get(sid, "t").id
    sub = Subscriber(max_pending_events=2)
    sub.watch([var_id])
    store.add_listener(sid, sub.on_commit)
    lease, _ = store.start_optimization(sid, "t", optimizer_type="grid_search",
                                        client_id=client_id)
    store.optimization_step(sid, "t", lease.id, lease.token, proposal=(1.0, 1),
                            evaluation=(1, 1.0, {"score": 1.0}, 1.0))
    store.finish_optimization(sid, "t", lease.id, lease.token, reason="done")
    second, _ = store.start_optimization(sid, "t", optimizer_type="random",
                                         client_id=client_id)
    assert sub.conflations > 0
    statuses = [
        event.metadata
        for frame in sub.drain() if isinstance(frame, PendingFrame)
        for event in frame.events if event.update_type == "optimization"
    ]
    assert any(
        s["optimization_id"] == lease.id and s["state"] == "completed" for s in statuses
    ), [(s["optimization_id"], s["state"]) for s in statuses]
    assert statuses[-1]["optimization_id"] == second.id


# ----------------------------------------------------------- values and scores


async def test_stop_with_apply_best_is_seen_by_the_stopping_client(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    """Bug: stop_optimization(apply_best=True) is the stopping client's own write, but
    the StopOptimization answer carries no Variable, so the client's cache keeps the
    value it read before: get_variable returns a value the variable no longer has (own
    writes are meant to be stored at once)."""
    a, b = pair
    assert await b.get_variable("t") == 0.5  # cached by b (not watched)
    gate = Gate()
    await a.start_optimization("t", "grid_search", {"n_points": 5}, objective=gate)
    for n in (1, 2, 3):
        await gate.arrived(n)
        gate.release()
    await gate.arrived(4)  # 0.0, 0.5, 1.0 scored; 1.0 is the best
    assert await b.stop_optimization("t", apply_best=True) is None
    gate.release()
    await a.wait_for_optimization("t")
    cached = await b.get_variable("t")
    assert await b.get_variable("t", bypass_cache=True) == 1.0  # what the server has
    assert cached == 1.0


@pytest.mark.parametrize(
    "score", [np.float32, np.int64], ids=["float32", "int64"]
)
async def test_a_numpy_scalar_score_is_a_score(
    session: dspex_rx.SessionContext, score: Callable[[float], Any],
) -> None:
    """Bug: score_of accepts only Python int/float (``_is_number``), so an objective that
    returns a numpy scalar such as np.float32 (what ``array.mean()`` of float32 data
    gives) or np.int64 fails the run at iteration 1 ("must return a number"), although
    the codec sends numpy scalars everywhere else."""
    await session.register_variable("n", "integer", 1, constraints={"min": 0, "max": 4})
    await session.start_optimization(
        "n", "grid_search", objective=lambda v: score(-abs(v - 3))
    )
    final = await session.wait_for_optimization("n")
    assert final["state"] == "completed", final["end_reason"]
    assert final["best_value"] == 3


async def test_a_new_runs_proposals_do_not_carry_the_last_runs_final_flag(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    """Bug: optimization writes merged their bookkeeping (``optimization_id``,
    ``iteration``, ``final``, ``stopped``) into the variable's own metadata, and nothing
    removed it: while run 2 was at iteration 1 the variable still said ``final: True``
    from run 1. Now the bookkeeping belongs to each write (its history entry and its
    event), never to the variable."""
    a, b = pair
    await a.start_optimization("t", "grid_search", {"n_points": 3}, objective=lambda v: -v)
    await a.wait_for_optimization("t")
    meta = (await b.get_variables(["t"], include_metadata=True))["t"]["metadata"]
    assert "final" not in meta and "optimization_id" not in meta
    last = (await b.get_variable_history("t", limit=1))[0]["metadata"]
    assert last["final"] is True  # run 1's final write says so itself
    gate = Gate()
    second = await a.start_optimization("t", "random", {"seed": 1}, objective=gate)
    await gate.arrived(1)  # run 2's first proposal is written
    meta = (await b.get_variables(["t"], include_metadata=True))["t"]["metadata"]
    last = (await b.get_variable_history("t", limit=1))[0]["metadata"]
    await b.stop_optimization("t")
    gate.release()
    await a.wait_for_optimization("t")
    assert "final" not in meta and "optimization_id" not in meta
    assert last["optimization_id"] == second and last["iteration"] == 1
    assert "final" not in last


@pytest.mark.parametrize("since", [float("inf"), float("-inf")], ids=["inf", "-inf"])
async def test_an_unusable_since_is_a_value_error(
    session: dspex_rx.SessionContext, since: float,
) -> None:
    """Bug (error mapping): get_optimization_history(since=±inf) escapes as a raw
    OverflowError from building the protobuf Timestamp (not a ValueError, unlike every
    other bad argument, which raises InvalidValueError naming the variable)."""
    await session.register_variable("h", "float", 0.5, constraints=FLOAT)
    with pytest.raises(ValueError, match="since"):
        await session.get_optimization_history("h", since=since)
