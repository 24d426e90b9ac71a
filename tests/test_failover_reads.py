"""Read-your-writes across a failover: a session whose replica dies moves to another, and
its first read there waits until that replica holds the session's last write, however far
behind it is (positions, client/leader_route.py), on the Calls stream and unary alike.

Real-time loops are hang guards only (replicas hear each other through etcd).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import trio
from helpers import through_reconnect, until
from test_write_leader import HeldWatch, pair, prefix  # noqa: F401 - fixtures

import dspex_rx
from dspex_rx.server import EmbeddedServer, forward
from dspex_rx.v1 import calls_pb2 as cpb
from dspex_rx.wire.channel import POSITION_KEY


def position(server: EmbeddedServer) -> int:
    return server.call(lambda: server.store.position)  # type: ignore[no-any-return]


# Guards: the replica a failover moved the session to answered the read from before its
# write (only a direct_writes session's calls carried a position, and only to the stream
# they were made for).
@pytest.mark.parametrize("options", [{"pipelined": True}, {"pipelined": False}],
                         ids=["calls-stream", "unary"])
async def test_a_read_after_a_failover_waits_until_the_new_replica_holds_the_write(
    pair: tuple[EmbeddedServer, EmbeddedServer], options: dict[str, Any],  # noqa: F811
) -> None:
    leader, follower = pair
    async with dspex_rx.connect([leader.target, follower.target], session_id="moved",
                                **options) as session:
        watch, written = await moved_to_follower(pair, session)
        assert await once_released(watch, written, lambda: through_reconnect(
            lambda: session.get_variable("t", bypass_cache=True))) == 1


async def moved_to_follower(pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
                            session: dspex_rx.SessionContext) -> tuple[HeldWatch, int]:
    """``t`` registered (0), then set to 1 through the leader while the follower hears
    nothing from etcd, and the leader stopped: the session's calls go to the follower,
    which does not hold the write until the returned watch is released. Also returns
    the write's position."""
    leader, follower = pair
    await session.register_variable("t", "integer", 0)
    await until(lambda: position(follower) >= position(leader),
                "the follower holds the session and its variable", 20)
    watch = HeldWatch(follower)
    assert await session.set_variable("t", 1) == 2
    written = position(leader)
    await trio.to_thread.run_sync(leader.stop)
    return watch, written


def waits_for(watch: HeldWatch, written: int) -> bool:
    """Whether a call on the watched replica waits until it holds ``written``."""
    return any(target >= written for target, _ in watch.backend._head_waiters._waiting)


async def once_released(watch: HeldWatch, written: int,
                        call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``'s answer, which came only after it waited on the watched replica for
    ``written`` and the watch was released."""
    answers: list[Any] = []

    async def make() -> None:
        answers.append(await call())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(make)
        await until(lambda: waits_for(watch, written),
                    "the call waits on the replica for the write", 30)
        assert answers == []
        watch.release()
    return answers[0]


# Guards: a replica whose wait for the session's position ran out (its etcd watch stuck)
# was taken to hold it once told, so every later read there showed the value before the
# write without waiting.
async def test_a_replica_whose_wait_ran_out_is_told_the_position_again(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leader, follower = pair
    async with dspex_rx.connect([leader.target, follower.target],
                                session_id="stuck") as session:
        watch, written = await moved_to_follower(pair, session)
        monkeypatch.setattr(forward, "HOLD_WAIT", 0.05)  # its waits run out at once
        pipeline = session._conn.pipeline
        assert pipeline is not None
        await through_reconnect(session.ping)  # the Calls stream is up on the follower
        frames = pipeline.frames_sent
        assert await session.get_variable("t", bypass_cache=True) == 0
        monkeypatch.setattr(forward, "HOLD_WAIT", 30.0)
        # The next read is told it again, and waits.
        assert await once_released(watch, written, lambda: session.get_variable(
            "t", bypass_cache=True)) == 1
        assert pipeline.frames_sent == frames + 2  # both reads went on the stream


# Guards: the first attach's position was dropped (the route did not exist yet), so a
# call right after it that a failover sent to a replica the new session had not reached
# was refused there ("no session") instead of waiting for it.
async def test_a_call_right_after_the_attach_waits_for_the_session_on_another_replica(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
) -> None:
    leader, follower = pair
    watch = HeldWatch(follower)  # the follower will not hear of the session until released
    async with dspex_rx.connect([leader.target, follower.target],
                                session_id="fresh") as session:
        route = session._conn.route
        assert route is not None and 0 < route.position <= position(leader)
        attached = route.position
        await trio.to_thread.run_sync(leader.stop)
        assert await once_released(watch, attached,
                                   lambda: through_reconnect(session.list_variables)) == []


# Guards: a follower passed on the leader's refusal of a write with the position the
# leader ran it at, so the client took the follower to hold it and told it nothing more.
def test_a_refusal_relayed_from_the_leader_names_no_position_of_the_leaders() -> None:
    reply = cpb.CallReply(id=1, code=grpc.StatusCode.NOT_FOUND.value[0], details="no t",
                          trailers=[cpb.TrailerPair(key=POSITION_KEY, value="90"),
                                    cpb.TrailerPair(key="dspex-error-kind", value="x")])
    with pytest.raises(forward.Refused) as refused:
        forward._accepted(reply)
    assert refused.value.trailers == (("dspex-error-kind", "x"),)
