"""What watchers of optimization progress see: the end of every run they followed, across
resyncs, conflation (server and client side) and a run that starts right after.

Streams are broken on purpose (``breakable``) and reconnect in virtual time (``mock_clock``)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from helpers import drain, settle, until
from optimization_helpers import FLOAT, Gate, breakable

import dspex_rx
from dspex_rx.server import EmbeddedServer
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.store import MemoryStore, VariableSpec


# Guards: optimization observers ignored a RESYNC frame and never saw the run complete.
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


# Guards: Watch._conflate kept one status per variable, dropping run 1's end for run 2's.
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


# Guards: fanout._merge keyed statuses by variable: run 2 'running' replaced run 1's end.
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


# Guards: a resync sent only the latest lease's status, skipping the followed run's end.
async def test_a_resync_still_tells_how_the_followed_run_ended_when_another_started(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Bug: past the log's horizon a resync sends ``store.status_events``: the status of
    each variable's *latest* lease only. If, while the watcher's stream was down, the run
    it was following ended and the next run started (a sweep of runs, a restart with new
    settings), the watcher never hears how the followed run ended: watch_optimization
    jumps from run 1 'running' to run 2 'running', and a consumer waiting for run 1's end
    (``if not status['is_optimizing']: break``) waits for run 2's. The first pass made
    conflation keep "one status per run so a run's end is never hidden by the next start";
    the resync path hides it the same way."""
    store = MemoryStore(log_size=3)
    with EmbeddedServer(store=store, expire_interval=3600.0) as server:
        async with dspex_rx.connect(server.target) as writer:  # noqa: SIM117
            async with dspex_rx.connect(
                server.target, session_id=writer.session_id, token=writer.token
            ) as watcher:
                streams = breakable(watcher)
                await writer.register_variable("t", "float", 0.5, constraints=FLOAT)
                gate = Gate()
                first = await writer.start_optimization(
                    "t", "grid_search", {"n_points": 3}, objective=gate
                )
                await gate.arrived(1)
                progress = watcher.watch_optimization("t")
                status: dict[str, Any] = await anext(progress)  # type: ignore[assignment, arg-type]
                assert status["optimization_id"] == first and status["state"] == "running"

                streams[0].fail()
                hub = watcher._hub
                assert hub is not None
                await until(lambda: hub.reconnects == 1, "the break was noticed")
                for n in (2, 3):  # run 1 goes on and ends while the stream is down
                    gate.release()
                    await gate.arrived(n)
                gate.release()
                assert (await writer.wait_for_optimization(first))["state"] == "completed"
                second_gate = Gate()
                second = await writer.start_optimization(
                    "t", "random", {"seed": 1}, objective=second_gate
                )
                await second_gate.arrived(1)
                mock_clock.jump(2.0)  # past the reconnect backoff
                await until(lambda: len(streams) == 2, "a new stream opened")
                await settle(watcher)
                seen: list[dict[str, Any]] = drain(progress)  # type: ignore[assignment]
                await writer.stop_optimization("t")
                second_gate.release()
                await writer.wait_for_optimization(second)
                progress.cancel()
                runs = [(s["optimization_id"], s["state"]) for s in seen]
                assert (second, "running") in runs  # the resync did happen
                assert (first, "completed") in runs, runs


# Guards: a resync restamped statuses with the current revision; unchanged ones came again.
async def test_a_resync_does_not_repeat_a_status_the_watcher_already_has(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Bug: a resync stamps every status it re-sends with the session's current revision
    (``store.status_events``: ``lease.status(name, session.revision)``), so a status
    nothing has changed looks new: watch_optimization (and observe_optimization) deliver
    the run's 'completed' status a second time after any stream break that outlived the
    log, although they promise "one per change". Values are not repeated this way (per
    observer version tracking drops an unchanged resync value); statuses have no such
    guard, and the revision that could serve as one is overwritten."""
    store = MemoryStore(log_size=3)
    with EmbeddedServer(store=store, expire_interval=3600.0) as server:
        async with dspex_rx.connect(server.target) as writer:  # noqa: SIM117
            async with dspex_rx.connect(
                server.target, session_id=writer.session_id, token=writer.token
            ) as watcher:
                streams = breakable(watcher)
                await writer.register_variable("t", "float", 0.5, constraints=FLOAT)
                await writer.register_variable("u", "integer", 0)
                values = watcher.watch_variable("t", include_initial=False)
                progress = watcher.watch_optimization("t")
                await anext(progress)  # idle
                opt_id = await writer.start_optimization(
                    "t", "grid_search", {"n_points": 2}, objective=lambda v: v
                )
                await writer.wait_for_optimization(opt_id)
                await settle(watcher)
                before: list[dict[str, Any]] = drain(progress)  # type: ignore[assignment]
                assert before[-1]["state"] == "completed"
                drain(values)

                streams[0].fail()
                hub = watcher._hub
                assert hub is not None
                await until(lambda: hub.reconnects == 1, "the break was noticed")
                for n in range(1, 6):  # other work moves the log past the watcher
                    await writer.set_variable("u", n)
                mock_clock.jump(2.0)  # past the reconnect backoff
                await until(lambda: len(streams) == 2, "a new stream opened")
                await settle(watcher)
                assert drain(values) == []  # t's value did not change: not repeated
                again: list[dict[str, Any]] = drain(progress)  # type: ignore[assignment]
                progress.cancel()
                values.cancel()
                assert again == [], [(s["state"], s["revision"]) for s in again]
