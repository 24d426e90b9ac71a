"""A client whose lease lapsed attaches again: to its own session while that lives, or it is
lost (refusing its own writes and watches) once a later session of its id holds the id.

The client tests run in virtual time (``mock_clock``), against the shared server or a server
of this module's own (``srv``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from helpers import beat_until, expire_client, unavailable

import dspex_rx
from dspex_rx.server import EmbeddedServer


@pytest.fixture(scope="module")
def srv() -> Any:
    with EmbeddedServer() as embedded:
        yield embedded


# Guards: an error in _reattach escaped _heartbeat and took the session services down.
async def test_a_failed_reattach_does_not_kill_the_session_services(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock
) -> None:
    # _reattach runs inside the `except SessionNotFoundError` clause, so an error it raises
    # (a network blip on InitializeSession) is not caught by the sibling `except` below
    # it: it leaves _heartbeat and takes down the services nursery, i.e. the heartbeat,
    # the watch stream and the scheduler. Nothing reports it to the user.
    async with (
        dspex_rx.connect(server.target, ttl_seconds=30.0) as a,
        dspex_rx.connect(
            server.target, session_id=a.session_id, token=a.token, ttl_seconds=30.0
        ) as b,
    ):
        await b.register_variable("kept", "integer", 7)
        real_call = a._call
        blips = [True]

        async def call(
            method: str, request: Any, response_type: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if method == "InitializeSession" and blips:
                blips.pop()
                raise unavailable()
            return await real_call(method, request, response_type, *args, **kwargs)

        a._call = call  # type: ignore[method-assign]
        sid, old = a.session_id, a._client_id

        def expire() -> None:
            server.store.session(sid).clients[old].last_seen = -1e12
            # b keeps the session. (The server is shared: other tests' idle sessions
            # may expire here too, so only this one's fate is asserted.)
            assert sid not in server.store.expire()
            assert old not in server.store.session(sid).clients

        server.call(expire)
        deadline = time.monotonic() + 10  # hang guard
        while a.reattached == 0:
            assert time.monotonic() < deadline, (
                f"never re-attached; services task ended: {a._services_done.is_set()}"
            )
            mock_clock.jump(a.ttl_seconds / 3)
            for _ in range(20):
                await trio.sleep(0)
            await trio.to_thread.run_sync(lambda: None)
        assert not a._services_done.is_set()


# Guards: a paused client re-attached to a later session of its id as if it were its own.
async def test_a_client_whose_session_ended_does_not_join_the_next_session_of_its_id(
    srv: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # The client relied on "a session's token never changes, so one that refuses ours is
    # not the session we had" (client._heartbeat). A re-created id now keeps its old
    # token, so a client whose session expired (a long pause) and was re-created by
    # another holder of the token re-attached to the *new* session as if it were its
    # own: not lost, its cache serving a variable the new session does not have. The
    # incarnation number in InitializeSessionResponse tells them apart.
    sid = f"pause_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
    try:
        await a.register_variable("x", "integer", 1)
        cid = a._client_id

        assert sid in expire_client(srv, sid, cid)  # a's session ended while a was paused
        async with dspex_rx.connect(srv.target, session_id=sid, token=a.token) as c:
            assert c.created  # a later session of the same id, same token
            # (lost is said at once; the release of the lease taken there follows)
            await beat_until(a, mock_clock,
                             lambda: (a.lost and a._stray is None) or a.reattached > 0)
            assert a.lost and a.reattached == 0
            # a detached itself from c's session: c is its only client.
            assert srv.call(lambda: list(srv.store.session(sid).clients)) == [c._client_id]
    finally:
        await a.close()


# Guards: a lost client's still-valid token let it write to and watch the later session.
async def test_a_lost_client_neither_writes_to_nor_watches_the_later_session_of_its_id(
    srv: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # A returning claimant keeps its token, so a lost client's token is still valid for
    # the later session of its id: its writes and watches would land there. Lost means
    # the client refuses them itself, and its watches end.
    sid = f"lost_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
    try:
        await a.register_variable("x", "integer", 1)
        watch = await a.watch_variable("x")
        cid = a._client_id

        assert sid in expire_client(srv, sid, cid)
        async with dspex_rx.connect(srv.target, session_id=sid, token=a.token) as c:
            await beat_until(a, mock_clock, lambda: a.lost and a._stray is None)
            with pytest.raises(dspex_rx.SessionNotFoundError, match="is lost"):
                await a.set_variable("x", 2, create_if_missing=True)
            with pytest.raises(dspex_rx.SessionNotFoundError, match="is lost"):
                a.observe("x")
            assert await c.list_variables() == []  # nothing of a's landed in c's session
            assert watch.closed
    finally:
        await a.close()


# Guards: a failed CloseSession on a later session left the client not lost, its lease held.
async def test_a_failed_detach_from_a_later_session_neither_leaks_a_lease_nor_delays_lost(
    srv: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # client._reattach: when the re-attach lands on a later incarnation of the id, it
    # calls CloseSession *before* setting ``lost``. If that CloseSession fails (a blip),
    # the error leaves _reattach (logged as reattach_failed by _heartbeat): the client is
    # not marked lost, and the lease it just took on the *other* session is never
    # released. The next beat attaches again (a second lease) and only then gives up, so
    # the first lease stays in the other session until its TTL runs out. Now ``lost`` is
    # set first, and the release is retried at each beat until it goes through.
    sid = f"blip_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
    try:
        cid = a._client_id
        real_call = a._call
        blips = [True]

        async def call(method: str, request: Any, response_type: Any, *args: Any,
                       **kwargs: Any) -> Any:
            if method == "CloseSession" and blips:
                blips.pop()
                raise unavailable()
            return await real_call(method, request, response_type, *args, **kwargs)

        a._call = call  # type: ignore[method-assign]

        assert sid in expire_client(srv, sid, cid)  # a's session ended while a was paused
        async with dspex_rx.connect(srv.target, session_id=sid, token=a.token) as c:
            assert c.created  # a later session of the same id, same token
            await beat_until(a, mock_clock, lambda: a.lost)
            assert not blips  # the injected failure did happen
            assert a.reattached == 0  # lost at the first re-attach, not a later one

            def others() -> list[str]:
                return list(srv.store.session(sid).clients)

            # The lease a took on c's session is released at the next beat.
            await beat_until(a, mock_clock, lambda: a._stray is None)
            assert srv.call(others) == [c._client_id]
    finally:
        a._call = real_call  # type: ignore[method-assign]
        await a.close()
