"""Read-your-writes across a failover: a session whose replica dies moves to another, and
its first read there waits until that replica holds the session's last write, however far
behind it is (positions, client/leader_route.py), on the Calls stream and unary alike.

Real-time loops are hang guards only (replicas hear each other through etcd).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from helpers import through_reconnect, until
from test_write_leader import HeldWatch, pair, prefix  # noqa: F401 - fixtures

import dspex_rx
from dspex_rx.server import EmbeddedServer


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
        await session.register_variable("t", "integer", 0)
        await until(lambda: position(follower) >= position(leader),
                    "the follower holds the session and its variable", 20)
        watch = HeldWatch(follower)  # from here the follower hears nothing from etcd
        assert await session.set_variable("t", 1) == 2  # made by the leader
        await trio.to_thread.run_sync(leader.stop)
        read: list[int] = []

        async def read_after() -> None:
            read.append(await through_reconnect(
                lambda: session.get_variable("t", bypass_cache=True)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_after)
            await until(lambda: len(watch.backend._head_waiters) > 0,
                        "the read waits on the follower for the write", 30)
            assert read == []
            watch.release()
        assert read == [1]
