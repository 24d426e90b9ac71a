"""Optimization leases on a server whose clock the test moves: every way a run ends gives its
lease back, a live holder keeps it, and the holder and a waiter are told the run's own outcome.

Server time is a fake clock moved by the test (the sweep never runs on its own); client timers
run on trio's ``MockClock`` where they matter. Real-time waits are hang guards only."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from optimization_helpers import FLOAT, FakeClock, Gate, open_pair

import dspex_rx
from dspex_rx.client.optimization.optimizers import BaseOptimizer
from dspex_rx.errors import DspexError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock, lease_ttl=3.0)


@pytest.fixture
def clocked(store: MemoryStore) -> Iterator[EmbeddedServer]:
    # The sweep never runs on its own: leases lapse only when the test says so.
    with EmbeddedServer(store=store, expire_interval=3600.0) as embedded:
        yield embedded


@pytest.fixture
async def pair(
    clocked: EmbeddedServer,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, dspex_rx.SessionContext]]:
    """The holder ``a`` and another client ``b`` of one session, with a float ``t``."""
    async with open_pair(clocked.target) as ab:
        yield ab


class _RecommendRaises(BaseOptimizer):
    """A custom optimizer with a bug in ``recommend`` (not a DspexError)."""

    def ask(self) -> Any:
        return self.space.sample(self.rng)

    def recommend(self) -> Any:
        raise ZeroDivisionError("recommend() divided by zero")


async def _surrogate_error(value: float) -> float:
    # A file name read with surrogateescape (a non-UTF-8 name on disk) in the message.
    name = b"ckpt-\xff.pt".decode("utf-8", "surrogateescape")
    raise FileNotFoundError(f"no checkpoint {name}")


# --------------------------------------------------- a run that ends gives its lease back


# Guards: the finish re-sent a refused metric (NaN, an array) and was refused: lease held.
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


# Guards: the finish re-sent an already recorded evaluation, was refused: lease held.
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
            assert status["state"] == "stopped"  # closed under the run: a cancellation
            assert await b.set_variable("t", 1.0) > 1


# Guards: a close during StartOptimization hit AttributeError and leaked the granted lease.
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


# Guards: an odd error in recommend() or the reason escaped the fallback finish: lease held.
@pytest.mark.parametrize(
    ("optimizer", "objective"),
    [("recommend_raises", lambda v: -abs(v - 1.3)), ("random", _surrogate_error)],
    ids=["recommend-raises", "surrogate-in-error-message"],
)
async def test_an_unexpected_error_while_finishing_releases_the_lease_and_spares_the_session(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    optimizer: str, objective: Callable[[float], Any],
) -> None:
    """Bug: ``_finish_quietly`` catches only (_Revoked, DspexError, grpc.RpcError,
    RuntimeError). A custom optimizer whose ``recommend()`` raises anything else (here a
    ZeroDivisionError), or a failure reason the protobuf cannot encode (an objective error
    whose message holds a lone surrogate, e.g. a non-UTF-8 file name: UnicodeEncodeError),
    makes the *fallback* finish raise too: the exception escapes ``OptimizationRun.run``
    into the session's service nursery, which dies (heartbeat, watch stream, every other
    run), and no FinishOptimization is ever sent, so the variable stays locked until the
    TTL although "the run is a background task: report, never crash"."""
    a, _ = pair
    await a.register_python_optimizer("recommend_raises", _RecommendRaises)
    await a.start_optimization("t", optimizer, {"seed": 1}, max_iterations=2, objective=objective)
    status = await a.wait_for_optimization("t")
    await trio.testing.wait_all_tasks_blocked()
    services_died = a._services_done.is_set()
    assert status["is_optimizing"] is False, status["state"]
    assert status["state"] == "failed"
    assert not services_died, "the holder session's background services were torn down"


# Guards: the fallback finish re-sent an over-long reason, refused again: lease held.
async def test_a_failure_reason_longer_than_the_server_accepts_still_releases_the_lease(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    """Bug: a failed run finishes with reason ``f"{type(error).__name__}: {error}"``; the
    server refuses an end reason over 4096 characters (InvalidValueError). The fallback
    in ``_finish_quietly`` retries "bare" (no record, no final value) but with the same
    over-long reason, so it is refused again and swallowed: the lease stays ``running``
    and the variable locked until the TTL. An objective error carrying a long message
    (an LLM reply, a data dump, a remote traceback) is enough."""
    a, b = pair

    def objective(value: float) -> float:
        raise RuntimeError("the model answered: " + "x" * 5000)

    await a.start_optimization("t", "random", {"seed": 1}, objective=objective)
    status = await a.wait_for_optimization("t")
    assert status["is_optimizing"] is False, status["state"]
    assert status["state"] == "failed"
    assert await b.set_variable("t", 1.0) > 1


# Guards: a cancel while StartOptimization was on the wire leaked the granted lease.
async def test_cancelling_a_start_whose_lease_was_granted_gives_the_lease_back(
    clock: FakeClock,
) -> None:
    """Bug: the first pass gives back a lease whose start was interrupted only when the
    interruption comes after the StartOptimization answer was received. A caller's cancel
    scope (``move_on_after``, a UI's cancel button, a nursery failing) that fires while
    the call is on the wire, after the server granted the lease, is the usual case: the
    transport cancels the call and throws the server's answer away, start_optimization
    raises Cancelled from inside ``_call`` (before the try that would release), and no
    run exists to renew or finish the lease: the variable stays locked for the TTL while
    the holder client heartbeats on (so its client lease never lapses either)."""
    store = MemoryStore(clock=clock, lease_ttl=3.0)
    granted, go = threading.Event(), threading.Event()
    real_start = store.start_optimization

    def start(*args: Any, **kwargs: Any) -> Any:
        result = real_start(*args, **kwargs)
        granted.set()  # the lease is granted; the answer is not on its way yet
        go.wait(10)
        return result

    store.start_optimization = start  # type: ignore[method-assign]
    with EmbeddedServer(store=store, expire_interval=3600.0) as server:
        async with dspex_rx.connect(server.target, ttl_seconds=3600) as a:  # noqa: SIM117
            async with dspex_rx.connect(
                server.target, session_id=a.session_id, token=a.token, ttl_seconds=3600
            ) as b:
                await a.register_variable("t", "float", 0.5, constraints=FLOAT)
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(
                            lambda: a.start_optimization(
                                "t", "random", {"seed": 1}, objective=lambda v: v
                            )
                        )
                        await trio.to_thread.run_sync(granted.wait, 10)
                        scope.cancel()
                go.set()
                assert scope.cancelled_caught
                await trio.testing.wait_all_tasks_blocked()
                status = await b.get_optimization_status("t")
                assert status["optimization_id"] is not None  # the server did grant it
                assert status["is_optimizing"] is False, status["state"]


# Guards: a dropped client was granted a lease that no sweep or close would release.
def test_a_lease_is_never_granted_to_a_client_that_is_not_attached(clock: FakeClock) -> None:
    """Bug: ``store.start_optimization`` takes the request's ``client_id`` on trust and
    never checks that it is attached to the session. A client the sweep has already
    dropped (its heartbeat was late: a laptop lid, a GC pause, a partition) and that
    starts an optimization before its next heartbeat tells it to attach again is granted
    a lease held by a client id that no longer exists, so the first pass's "a closing or
    silent holder client ends its leases" (``_release_client_leases``, run when that id
    closes or lapses) can never apply to it: a dead holder's lease then lives for its
    whole TTL (``lease_ttl`` may be hours), the variable locked. ``heartbeat`` refuses
    the same id (``SessionNotFoundError``, detached); start should too (or the lease must
    at least be released by the next sweep)."""
    store = MemoryStore(clock=clock, lease_ttl=3600.0)
    session, keeper, _ = store.initialize_session(ttl=600.0)
    _, late, _ = store.initialize_session(session.id, ttl=5.0)
    store.register(session.id, [VariableSpec("t", "float", 0.5, FLOAT)], actor="setup")
    clock.now += 6.0
    store.heartbeat(session.id, keeper)
    store.expire()  # the late client is dropped (it had no lease then)
    assert late not in session.clients
    try:
        store.start_optimization(session.id, "t", optimizer_type="random", client_id=late)
    except DspexError:
        return  # refused: what heartbeat says to this id
    clock.now += 60.0  # its holder never renews, heartbeats or closes again
    store.heartbeat(session.id, keeper)
    store.expire()
    assert not session.running, "a lease held by a client that is not attached"


# ---------------------------------------------------------- a live holder keeps its lease


# Guards: the lease was renewed only while the objective ran, not in the callback.
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


# Guards: a sync callback held the trio thread, the keep-alive could not renew: lease lost.
async def test_a_holder_busy_in_a_sync_callback_keeps_its_lease(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clock: FakeClock, store: MemoryStore, mock_clock: trio.testing.MockClock,
) -> None:
    """Bug: the first pass made a keep-alive task renew the lease "for the whole run (a
    slow callback or optimizer must not lose a live holder its lease)", but a plain
    ``def`` callback (README's ``callback=lambda i, value, metrics: print(...)``, saving a
    checkpoint, drawing a plot) is called on the trio thread (``_call_back``), as are the
    optimizer's ``ask``/``tell``/``converged``: while it runs no trio task runs, so the
    keep-alive (and the session heartbeat) cannot renew anything. 4 s in a sync callback
    with a 3 s TTL expire the lease of a perfectly live holder, exactly what the fix was
    for. (The 2 s waits below are hang guards for renewals that cannot come while the
    callback holds the trio thread.)"""
    a, _ = pair
    renewed = threading.Event()
    real_step = store.optimization_step

    def step(*args: Any, **kwargs: Any) -> Any:
        result = real_step(*args, **kwargs)
        if kwargs.get("evaluation") is None and kwargs.get("proposal") is None:
            renewed.set()  # a bare renewal (the keep-alive's)
        return result

    store.optimization_step = step  # type: ignore[method-assign]
    renewals: list[int] = []

    def callback(iteration: int, value: float, metrics: dict[str, Any]) -> None:
        if iteration != 1:
            return
        for second in range(4):  # 4 s pass while the callback works
            renewed.clear()
            clock.now += 1.0
            try:
                trio.from_thread.run_sync(mock_clock.jump, 1.0)
            except RuntimeError:  # we are on the trio thread itself
                mock_clock.jump(1.0)
            # A renewal may land a second later than the ttl/3 beat (its sleep starts when
            # the previous renewal's answer is back), so not every second has one.
            if renewed.wait(2.0):
                renewals.append(second)

    await a.start_optimization(
        "t", "random", {"seed": 1}, max_iterations=2, objective=lambda v: -abs(v - 1.3),
        callback=callback,
    )
    status = await a.wait_for_optimization("t")
    assert status["state"] == "completed", status["end_reason"]
    assert len(renewals) >= 2, f"renewals while the callback ran: {renewals}"


# -------------------------------------------------- what the holder and a waiter are told


# Guards: StopOptimization carried no Variable: the stopper's cache kept the old value.
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


# Guards: run bookkeeping went into the variable's metadata: run 2 still said final: True.
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


# Guards: wait_for_optimization returned the variable's status: another client's new run.
async def test_wait_for_optimization_returns_the_status_of_the_run_it_waited_for(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    """Bug: wait_for_optimization waits for this session's run to end and then returns
    ``get_optimization_status(variable)``: the variable's *current* status. If another
    client stopped the run and started its own (the lease passes on at once), the waiter
    gets the new run's status: ``is_optimizing: True``, another optimization_id, its
    iteration and best value, right after "waiting until the run has ended"."""
    a, b = pair
    gate_a, gate_b = Gate(), Gate()
    first = await a.start_optimization("t", "random", {"seed": 1}, objective=gate_a)
    await gate_a.arrived(1)
    assert await b.stop_optimization("t", reason="taking over") is None
    second = await b.start_optimization("t", "random", {"seed": 2}, objective=gate_b)
    gate_a.release()
    status = await a.wait_for_optimization(first)
    await b.stop_optimization("t")
    gate_b.release()
    await b.wait_for_optimization(second)
    assert status["optimization_id"] == first, (status["optimization_id"], status["state"])
    assert status["is_optimizing"] is False
    assert status["state"] == "stopped"


# ------------------------------------------------------- store invariants (property test)


_NAMES = ("x", "y")


# Guards: random lease operations once broke dense versions, one lease per variable, fencing.
class LeaseMachine(RuleBasedStateMachine):
    """Random sequences of lease operations from two clients of one session (start, step
    with a record and/or a proposal, finish, stop with or without apply_best, fenced and
    plain writes, rollback, delete and re-register, the clock, expiry, a client closing or
    going silent) checked against the data-integrity rules of ARCHITECTURE.md."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryStore(clock=self.clock, lease_ttl=3.0)
        session, self.keeper, _ = self.store.initialize_session(ttl=600_000.0)
        self.sid = session.id
        self.session = session
        _, self.other, _ = self.store.initialize_session(self.sid, ttl=5.0)
        self.store.register(self.sid, [VariableSpec(n, "float", 0.5, FLOAT) for n in _NAMES],
                            actor="setup")
        self.leases: list[Any] = []
        self.recorded: dict[str, list[int]] = {}  # lease id -> iterations the store took
        self.commits: list[Any] = []
        self.store.add_listener(self.sid, self.commits.append)
        self.revision = session.revision

    def _lease(self, index: int) -> Any:
        return self.leases[index % len(self.leases)]

    def _live(self, lease: Any) -> bool:
        # Would the store take this holder's write now (before any expiry it does)?
        running = self.session.running.get(lease.variable_id)
        return running is lease and self.clock.now <= lease.expires_at

    def _version(self, lease: Any) -> int | None:
        record = self.session.variables.get(lease.variable_id)
        return None if record is None else record.version

    @rule(name=st.sampled_from(_NAMES), who=st.booleans())
    def start(self, name: str, who: bool) -> None:
        client = self.keeper if who else self.other
        if client not in self.session.clients:
            return  # see test_a_lease_is_never_granted_to_a_client_that_is_not_attached
        try:
            lease, _ = self.store.start_optimization(
                self.sid, name, optimizer_type="random", client_id=client
            )
        except DspexError:
            return
        self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(0, 50), record=st.booleans(), propose=st.booleans(),
          back=st.integers(0, 2), value=st.floats(-0.5, 2.5))
    def step(self, index: int, record: bool, propose: bool, back: int, value: float) -> None:
        lease = self._lease(index)
        live, version = self._live(lease), self._version(lease)
        iteration = max(1, lease.iteration + 1 - back)
        evaluation = (iteration, value, {"score": value}, value) if record else None
        proposal = (value, iteration) if propose else None
        try:
            self.store.optimization_step(self.sid, lease.variable_id, lease.id, lease.token,
                                         evaluation=evaluation, proposal=proposal)
        except DspexError:
            return
        assert live, "a step of a lease that no longer ran was taken"
        if record:
            self.recorded.setdefault(lease.id, []).append(iteration)
        if propose:
            assert self._version(lease) == version + 1  # type: ignore[operator]

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(0, 50), record=st.booleans(), final=st.booleans(),
          failed=st.booleans(), value=st.floats(0.0, 2.0))
    def finish(self, index: int, record: bool, final: bool, failed: bool, value: float) -> None:
        lease = self._lease(index)
        live = self._live(lease)
        iteration = lease.iteration + 1
        try:
            self.store.finish_optimization(
                self.sid, lease.variable_id, lease.id, lease.token,
                evaluation=(iteration, value, {"score": value}, value) if record else None,
                final_value=value, write_final=final,
                state="failed" if failed else "completed",
            )
        except DspexError:
            return
        assert live, "a finish of a lease that no longer ran was taken"
        if record:
            self.recorded.setdefault(lease.id, []).append(iteration)

    @rule(name=st.sampled_from(_NAMES), apply_best=st.booleans())
    def stop(self, name: str, apply_best: bool) -> None:
        with contextlib.suppress(DspexError):
            self.store.stop_optimization(self.sid, name, apply_best=apply_best, actor="b")

    @rule(name=st.sampled_from(_NAMES), index=st.integers(0, 50), fenced=st.booleans(),
          value=st.floats(0.0, 2.0))
    def write(self, name: str, index: int, fenced: bool, value: float) -> None:
        lease = self._lease(index) if self.leases and fenced else None
        record = self.session.variables[self.session.names[name]] \
            if name in self.session.names else None
        live = lease is not None and record is not None and lease.variable_id == record.id \
            and self._live(lease)
        running = self.session.running.get(record.id) if record is not None else None
        locked = running is not None and self.clock.now <= running.expires_at
        try:
            self.store.set(self.sid, name, value, actor="w",
                           fencing_token=lease.token if lease is not None else None)
        except DspexError:
            return
        if lease is not None:
            assert live, "a write under a token whose lease no longer ran was taken"
        else:
            assert not locked, "a plain write to a locked variable was taken"

    @rule(name=st.sampled_from(_NAMES), version=st.integers(1, 5))
    def rollback(self, name: str, version: int) -> None:
        with contextlib.suppress(DspexError):
            self.store.rollback(self.sid, name, version, actor="r")

    @rule(name=st.sampled_from(_NAMES))
    def delete_and_register_again(self, name: str) -> None:
        try:
            self.store.delete(self.sid, name)
        except DspexError:
            return
        self.store.register(self.sid, [VariableSpec(name, "float", 0.5, FLOAT)], actor="r")

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 3.5]))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.store.heartbeat(self.sid, self.keeper)

    @rule()
    def sweep(self) -> None:
        self.store.expire()

    @rule()
    def other_client_leaves_and_comes_back(self) -> None:
        self.store.close_session(self.sid, self.other)
        _, self.other, _ = self.store.initialize_session(self.sid, ttl=5.0)

    @rule()
    def other_client_heartbeats(self) -> None:
        try:
            self.store.heartbeat(self.sid, self.other)
        except DspexError:  # it went silent too long and was dropped: it attaches again
            _, self.other, _ = self.store.initialize_session(self.sid, ttl=5.0)

    @invariant()
    def leases_are_consistent(self) -> None:
        session = self.session
        for var_id, lease in session.running.items():
            assert var_id in session.variables
            assert lease.state == "running" and lease.variable_id == var_id
            assert session.leases.get(var_id) is lease
        for var_id, lease in session.leases.items():
            assert (lease.state == "running") == (session.running.get(var_id) is lease)
        holders = set(session.clients)
        for lease in session.running.values():
            assert lease.holder_client in holders, "a running lease of a client that left"

    @invariant()
    def revisions_and_versions_are_dense(self) -> None:
        for commit in self.commits:
            assert commit.revision == self.revision + 1
            self.revision = commit.revision
        self.commits.clear()
        assert self.revision == self.session.revision
        for var_id, record in self.session.variables.items():
            versions = [e.version for e in self.session.history[var_id]]
            assert versions == list(range(versions[0], record.version + 1))

    @invariant()
    def history_holds_exactly_the_recorded_evaluations(self) -> None:
        kept: dict[str, list[int]] = {}
        for entries in self.session.evaluations.values():
            for entry in entries:
                kept.setdefault(entry.optimization_id, []).append(entry.iteration)
        # Deleting a variable drops its evaluations; every other accepted one is kept,
        # in order, once.
        for opt_id, iterations in kept.items():
            assert iterations == sorted(set(iterations))
            assert iterations == self.recorded.get(opt_id), opt_id
        dropped = set(self.recorded) - set(kept)
        assert not dropped & {lease.id for lease in self.session.leases.values()}


TestLeaseMachine = LeaseMachine.TestCase


TestLeaseMachine.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


TestLeaseMachine.__doc__ = (
    "Guard (property test): after any sequence of lease operations, versions are dense, "
    "revisions strictly increasing, at most one running lease per variable and "
    "session.running agrees with session.leases, the history holds exactly the "
    "evaluations the store accepted, and no write of a holder whose lease ended lands."
)
