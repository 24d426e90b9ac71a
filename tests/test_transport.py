"""The trio <-> grpc.aio bridge: cancellation reaches the RPC and returns at once, sessions
stay usable after cancelled calls, transport failures stay raw, nothing leaks on close."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio
from helpers import beat_until, expire_client

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.client import transport as transport_module
from dspex_rx.client.transport import Transport
from dspex_rx.server import EmbeddedServer
from dspex_rx.v1 import variables_pb2 as pb


class HangingServer:
    """A grpc.aio server whose one method never answers and records its cancellation."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        async def hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return b""

        handler = grpc.method_handlers_generic_handler(
            "test.Hang", {"Hang": grpc.unary_unary_rpc_method_handler(hang)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(None)

    def __enter__(self) -> HangingServer:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as server:
        yield server


async def _pending_tasks(transport: Transport) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # minus this one

    return await transport._loop.run(count)


@pytest.mark.parametrize("host", ["trio", "thread"])
async def test_cancel_reaches_the_rpc_and_returns(hanging: HangingServer, host: str) -> None:
    transport = Transport(f"127.0.0.1:{hanging.port}", timeout=None, host=host)
    await transport.open()
    try:
        with trio.move_on_after(10) as scope:  # a generous bound, not a timing assertion
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    await transport.unary("/test.Hang/Hang", pb.EchoRequest(), pb.EchoResponse)

                nursery.start_soon(call)
                await trio.to_thread.run_sync(hanging.started.wait)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught, "the cancelled call did not return"
        assert await trio.to_thread.run_sync(hanging.cancelled.wait, 10)
        assert await _pending_tasks(transport) == 0
    finally:
        await transport.close()


async def test_cancelled_calls_leave_session_usable(session: SessionContext) -> None:
    await session.register_variable("n", "integer", 0)
    # The long-lived streams' readers (the Calls stream is open by now) stay.
    baseline = await _pending_tasks(session._transport)
    landed = 0
    cancelled = []
    for i in range(60):
        # Deadlines from "already past" up to a few round trips: some writes are
        # cancelled before sending, some in flight, some complete.
        with trio.move_on_after(i * 0.00005) as scope:
            await session.set_variable("n", i)
        if scope.cancelled_caught:
            cancelled.append(i)
        else:
            landed += 1
    assert cancelled[:1] == [0]  # a deadline already past always cancels
    assert await _pending_tasks(session._transport) == baseline
    info = (await session.get_variables(["n"], include_metadata=True))["n"]
    version = info["version"]
    assert landed + 1 <= version <= 61  # cancelled calls may or may not have landed
    assert await session.set_variable("n", 1000) == version + 1
    assert await session.get_variable("n") == 1000


# Guards: a first connection that failed surfaced gRPC's raw UNAVAILABLE traceback.
async def test_a_first_connection_that_fails_is_one_error_with_the_grpc_cause() -> None:
    with pytest.raises(dspex_rx.ServerUnavailableError, match="nothing is listening") as info:
        await SessionContext(target="127.0.0.1:1", timeout=5).initialize()
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert info.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE
    assert not [t for t in threading.enumerate() if t.name.startswith("dspex-rx-io")]


async def test_unknown_session_is_a_key_error(server: EmbeddedServer) -> None:
    session = await SessionContext(target=server.target).initialize()
    try:
        server_side = session.session_id
        # Simulate expiry: drop the session on the server (on its loop: the store is not
        # thread-safe).
        await trio.to_thread.run_sync(
            server.call, lambda: server.store._sessions.pop(server_side)
        )
        with pytest.raises(dspex_rx.SessionNotFoundError, match="no session"):
            await session.get_variable("x", default=0)
    finally:
        await session.close()


def _system_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return sum(len(n.child_tasks) for n in root.child_nurseries)


@pytest.mark.parametrize("host", ["trio", "thread"])
async def test_close_leaves_no_thread_or_task_behind(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "DEFAULT_HOST", host)
    # The first session starts process-wide singletons (gRPC's poller thread); what is
    # alive after it is the baseline every later session must return to.
    async with dspex_rx.connect() as session:
        await session.register_variable("x", "integer", 1)
    baseline_threads = {t.ident for t in threading.enumerate() if not t.name.startswith("Trio")}
    baseline_tasks = _system_tasks()
    for _ in range(3):
        async with dspex_rx.connect() as session:
            io_threads = [t for t in threading.enumerate() if t.name.startswith("dspex-rx-io")]
            assert len(io_threads) == (1 if host == "thread" else 0)
            # the session's services task, and for the hosted loop the loop's own task
            assert _system_tasks() == baseline_tasks + (1 if host == "thread" else 2)
            await session.register_variable("x", "integer", 1)
            assert await session.get_variable("x") == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("dspex-rx-io")]
    after = {t.ident for t in threading.enumerate() if not t.name.startswith("Trio")}
    assert after == baseline_threads
    assert _system_tasks() == baseline_tasks


async def test_heartbeat_runs_every_third_of_the_ttl(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock
) -> None:
    # Virtual time: nothing beats until the clock passes ttl/3, then exactly one beat per
    # period. A real-time guard only keeps a broken build from hanging the suite.
    async with dspex_rx.connect(server.target, ttl_seconds=30.0) as session:
        lease = server.call(
            lambda: server.store.session(session.session_id).clients[session._client_id]
        )
        first_seen = lease.last_seen
        mock_clock.jump(9.9)
        await trio.testing.wait_all_tasks_blocked()
        assert session.heartbeats == 0
        for beat in (1, 2, 3):
            mock_clock.jump(10.0)
            guard = time.monotonic() + 10
            while session.heartbeats < beat:
                assert time.monotonic() < guard, f"heartbeat {beat} never came"
                await trio.sleep(0)
            assert session.heartbeats == beat
        assert lease.last_seen > first_seen


async def test_expired_lease_reattaches_while_the_session_lives(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock
) -> None:
    async with (
        dspex_rx.connect(server.target, ttl_seconds=30.0) as a,
        dspex_rx.connect(
            server.target, session_id=a.session_id, token=a.token, ttl_seconds=30.0
        ) as b,
    ):
        await a.register_variable("kept", "integer", 7)
        old_client = a._client_id
        assert expire_client(server, a.session_id, old_client) == []  # b keeps the session
        await beat_until(a, mock_clock, lambda: a.reattached == 1)
        assert a._client_id != old_client and not a.lost
        clients = server.call(lambda: set(server.store.session(a.session_id).clients))
        assert clients == {a._client_id, b._client_id}
        assert await a.get_variable("kept", bypass_cache=True) == 7


async def test_a_session_gone_from_the_server_is_reported_lost(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock
) -> None:
    session = await SessionContext(target=server.target, ttl_seconds=30.0).initialize()
    try:
        sid = session.session_id
        assert expire_client(server, sid, session._client_id) == [sid]
        await beat_until(session, mock_clock, lambda: session.lost)
        assert session.reattached == 0
        assert sid not in server.call(server.store.session_ids)  # no empty stand-in left
        with pytest.raises(dspex_rx.SessionNotFoundError):
            await session.get_variable("anything", bypass_cache=True)
    finally:
        await session.close()


_WITH_TRIO_ASYNCIO = '''
import asyncio, sys
import trio
import trio_asyncio  # patches asyncio's event-loop functions process-wide
import dspex_rx

async def trio_main():
    async with dspex_rx.connect() as session:
        await session.register_variable("x", "integer", 1)
        await session.set_variable("x", 2)
        package = type(session._transport._loop.loop).__module__.split(".")[0]
        print("trio", await session.get_variable("x", bypass_cache=True), package)

async def asyncio_main():
    async with dspex_rx.connect() as session:
        await session.register_variable("y", "integer", 3)
        print("asyncio", await session.get_variable("y", bypass_cache=True))

async def hosted_main():
    # asyncio code hosted in the trio program's run (trio-asyncio) iterates a watch that
    # run made: it must be served by that run, not by the asyncio portal's.
    async with dspex_rx.connect() as session:
        await session.register_variable("z", "integer", 1)
        watch = await session.watch_variable("z", include_initial=False)

        async def asyncio_side():
            await session.set_variable("z", 5)
            return (await watch.next()).value

        async with trio_asyncio.open_loop():
            with trio.fail_after(30):  # a hang guard only
                print("hosted", await trio_asyncio.aio_as_trio(asyncio_side)())

trio.run(trio_main)
asyncio.run(asyncio_main())
trio.run(hosted_main)
'''


def test_importing_trio_asyncio_breaks_neither_trio_nor_asyncio_programs() -> None:
    # Regression: with trio_asyncio imported, LoopThread made its loop through asyncio's
    # (patched) policy on the trio thread and connect() failed "within a Trio environment".
    # And (a review finding) asyncio code hosted in a trio run was sent to the portal,
    # whose run then woke the owner run's events: an assertion in trio, then a hang.
    # A fresh interpreter: trio_asyncio's patches are process-wide and must not leak.
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _WITH_TRIO_ASYNCIO], capture_output=True, text=True,
        timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    # The trio program's channel runs on the loop hosted in its run (dspex_rx's own).
    assert done.stdout.splitlines() == ["trio 2 dspex_rx", "asyncio 3", "hosted 5"]


def test_several_addresses_become_one_failover_target_and_bad_ones_are_named() -> None:
    from dspex_rx.errors import InvalidValueError
    from dspex_rx.wire.channel import channel_target

    assert channel_target("127.0.0.1:5001,127.0.0.1:5002") == (
        "ipv4:127.0.0.1:5001,127.0.0.1:5002", "127.0.0.1")
    assert channel_target("[::1]:5001,[::1]:5002")[0] == "ipv6:[::1]:5001,[::1]:5002"
    with pytest.raises(InvalidValueError, match=r"'127\.0\.0\.1' is not host:port"):
        channel_target("127.0.0.1:5001,127.0.0.1")
    with pytest.raises(InvalidValueError, match="names no address"):
        channel_target(" , ")


def test_a_grpc_target_uri_goes_to_grpc_unchanged_and_a_dns_target_names_its_host() -> None:
    from dspex_rx.errors import InvalidValueError
    from dspex_rx.wire.channel import channel_target, dns_parts

    # A DNS name with several A records is several replicas: gRPC's resolver (asking the
    # DNS server in the authority, or the system's) lists them; the certificate names it.
    for target, host in (("dns://127.0.0.1:5353/replicas.dspex.test:50051",
                          "replicas.dspex.test"),
                         ("dns:///replicas.dspex.test:50051", "replicas.dspex.test"),
                         ("dns:db.example:7", "db.example"),
                         ("ipv4:127.0.0.1:1,127.0.0.2:1", "127.0.0.1"),
                         ("ipv6:[::1]:1", "::1"),
                         ("unix:/tmp/dspex.sock", "localhost")):
        assert channel_target(f" {target} ") == (target, host)
    assert dns_parts("DNS://[::1]:53/Replicas.test:9") == ("[::1]:53", "Replicas.test", 9)
    with pytest.raises(InvalidValueError, match="is not host:port"):
        channel_target("dns://127.0.0.1:5353/replicas.dspex.test")  # gRPC would pick 443
    with pytest.raises(InvalidValueError, match="names one host"):
        channel_target("dns:///a.test:1,b.test:1")
    with pytest.raises(InvalidValueError, match=r"dns://\[DNS server\]/host:port"):
        channel_target("dns://replicas.dspex.test:50051")
    with pytest.raises(InvalidValueError, match=r"is a gRPC target URI.*: pass it alone"):
        channel_target("127.0.0.1:1,dns:///replicas.dspex.test:1")


def test_a_dns_target_that_does_not_resolve_says_which_dns_server_to_check() -> None:
    from dspex_rx.wire.channel import unreachable_hint

    target = "dns://127.0.0.1:5353/replicas.dspex.test:50051"
    # gRPC's details, verbatim, for each case (grpcio's c-ares and native resolvers).
    unknown = ("errors resolving replicas.dspex.test:50051: [field:hostname lookup error:"
               "address lookup failed for replicas.dspex.test:50051: Domain name not found]")
    silent = ("errors resolving replicas.dspex.test:50051: [field:hostname lookup error:"
              "address lookup failed for replicas.dspex.test:50051: Could not contact DNS "
              "servers]")
    native = ("errors resolving replicas.dspex.test:50051: [field:hostname lookup error:"
              "Address lookup failed for replicas.dspex.test:50051 os_error: Name or service "
              "not known syscall: getaddrinfo]")
    assert unreachable_hint(target, unknown, tls=False) == (
        "the DNS server 127.0.0.1:5353 does not know 'replicas.dspex.test': check the name "
        "(a dns: target is name:port)")
    assert unreachable_hint(target, silent, tls=False) == (
        "the DNS server 127.0.0.1:5353 did not answer: is it running, at that address?")
    assert unreachable_hint(target, native, tls=False).startswith(
        "GRPC_DNS_RESOLVER=native ignores the DNS server in the target (127.0.0.1:5353)")
    assert unreachable_hint("dns:///replicas.dspex.test:50051", unknown, tls=False).startswith(
        "the system's DNS resolver does not know 'replicas.dspex.test'")
    refused = "failed to connect to all addresses; ...: Connection refused"
    assert unreachable_hint(target, refused, tls=False) == (
        f"nothing is listening there: is the server running at {target} "
        "(dspex-rx serve --port 50051)?")
