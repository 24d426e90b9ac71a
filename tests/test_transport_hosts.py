"""Where grpc.aio's loop runs (issue #18): hosted in the trio run (the default), on its own
thread, or trio-asyncio's. Every host: a server killed mid-call or mid-stream is an
UNAVAILABLE error, close is idempotent, nothing is left behind; the hosted loop is one per
run, follows trio's clock and leaves asyncio alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import trio
import trio.testing

from dspex_rx.client import hosted_loop, trio_loop
from dspex_rx.client.transport import Transport
from dspex_rx.v1 import variables_pb2 as pb

HOSTS = ["trio", "thread", "trio_asyncio"]
ROOT = Path(__file__).resolve().parent.parent

# A grpc.aio server in its own process: Hang never answers, Echo streams every message back.
_CHILD = """
import asyncio, grpc, sys
async def hang(request, context):
    print("hanging", flush=True)
    await asyncio.Event().wait()
async def echo(requests, context):
    async for message in requests:
        yield message
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.T", {
        "Hang": grpc.unary_unary_rpc_method_handler(hang),
        "Echo": grpc.stream_stream_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


class Child:
    """The child server; ``kill()`` ends it with SIGKILL (no goodbye on its sockets)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.target = f"127.0.0.1:{int(self.proc.stdout.readline())}"

    def wait_line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def child() -> Iterator[Child]:
    server = Child()
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def opened(target: str, host: str) -> AsyncIterator[Transport]:
    """A transport to ``target`` on ``host``, open for the block."""
    transport = Transport(target, timeout=None, host=host)
    await transport.open()
    try:
        yield transport
    finally:
        await transport.close()


def _io_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dspex-rx-io")]


@pytest.mark.parametrize("host", HOSTS)
async def test_a_server_killed_mid_call_fails_the_call_unavailable(
    child: Child, host: str
) -> None:
    transport = Transport(child.target, timeout=None, host=host)
    await transport.open()
    try:
        async with trio.open_nursery() as nursery:
            failures: list[grpc.StatusCode] = []

            async def call() -> None:
                try:
                    await transport.unary("/test.T/Hang", pb.EchoRequest(), pb.EchoResponse)
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc.code())

            nursery.start_soon(call)
            assert await trio.to_thread.run_sync(child.wait_line) == "hanging"
            await trio.to_thread.run_sync(child.kill)
        assert failures == [grpc.StatusCode.UNAVAILABLE]
    finally:
        await transport.close()


@pytest.mark.parametrize("host", HOSTS)
async def test_a_server_killed_mid_stream_ends_it_unavailable_after_what_arrived(
    child: Child, host: str
) -> None:
    transport = Transport(child.target, timeout=None, host=host)
    await transport.open()
    try:
        stream = await transport.open_stream("/test.T/Echo", pb.EchoRequest)
        for i in range(3):
            await stream.send(pb.EchoRequest(payload=bytes([i])))
        got: list[bytes] = []
        while len(got) < 3:
            batch = await stream.receive_batch()
            assert batch is not None
            got.extend(m.payload for m in batch)
        assert got == [b"\x00", b"\x01", b"\x02"]
        await trio.to_thread.run_sync(child.kill)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while await stream.receive_batch() is not None:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await stream.close()
        await stream.close()  # a second close is harmless
    finally:
        await transport.close()


@pytest.mark.parametrize("host", HOSTS)
async def test_posted_writes_leave_in_order_and_a_listener_hears_each_answer(
    child: Child, host: str
) -> None:
    async with opened(child.target, host) as transport:
        heard: list[bytes] = []
        all_heard = trio.Event()

        def listen(batch: list[pb.EchoRequest]) -> None:
            heard.extend(m.payload for m in batch)
            if len(heard) == 3:
                all_heard.set()

        stream = await transport.open_stream("/test.T/Echo", pb.EchoRequest, listener=listen)
        written: list[tuple[int, BaseException | None]] = []
        all_written = trio.Event()

        def post(i: int) -> None:
            # The next write only once the last one is done, as Stream.post asks.
            def done(error: BaseException | None) -> None:
                written.append((i, error))
                if i < 2:
                    post(i + 1)
                else:
                    all_written.set()

            stream.post(pb.EchoRequest(payload=bytes([i])), done)

        post(0)
        with trio.fail_after(30):  # a hang guard only
            # (Either may come first: on the thread host the write's end reaches trio
            # through the token, and its echo may overtake it.)
            await all_heard.wait()
            await all_written.wait()
        assert written == [(0, None), (1, None), (2, None)]
        assert heard == [b"\x00", b"\x01", b"\x02"]
        await trio.to_thread.run_sync(child.kill)
        # With a listener, receive_batch only reports the end.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.receive_batch()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        failed = trio.Event()
        errors: list[BaseException | None] = []
        stream.post(pb.EchoRequest(), lambda error: (errors.append(error), failed.set()))
        with trio.fail_after(30):
            await failed.wait()
        assert isinstance(errors[0], grpc.aio.AioRpcError)
        assert errors[0].code() == grpc.StatusCode.UNAVAILABLE
        await stream.close()
        with pytest.raises(RuntimeError, match="closed"):
            stream.post(pb.EchoRequest(), lambda error: None)


@pytest.mark.parametrize("host", HOSTS)
async def test_a_listener_that_fails_ends_the_stream_with_its_error(
    child: Child, host: str
) -> None:
    async with opened(child.target, host) as transport:
        calls: list[int] = []

        def listen(batch: list[pb.EchoRequest]) -> None:
            calls.append(len(batch))
            raise KeyError("a bug in the listener")

        stream = await transport.open_stream("/test.T/Echo", pb.EchoRequest, listener=listen)
        await stream.send(pb.EchoRequest(payload=b"x"))
        with trio.fail_after(30), pytest.raises(KeyError, match="a bug in the listener"):
            await stream.receive_batch()
        # It ran once, and the stream it broke is over (its RPC cancelled, not left
        # running): the error is what the stream ended with, for every later read.
        assert calls == [1]
        with trio.fail_after(30), pytest.raises(KeyError):
            await stream.receive_batch()
        await stream.close()


def test_a_listener_that_fails_on_a_batch_the_reader_drained_ends_the_stream_too() -> None:
    # Guards: a message found by receive_batch before its kick ran went to the listener
    # there, outside the kick's error handling; its failure left the stream open, and
    # the next read waited for ever (CI saw it on the thread host).
    from dspex_rx.client.transport import Stream

    class Host:
        def to_loop(self, fn: object) -> None:
            raise AssertionError("no call to cancel: the stream never started")

        def to_trio(self, token: object, fn: object) -> None:
            pass  # the kick never runs: receive_batch finds the message first

    calls: list[int] = []

    def listen(batch: list[pb.EchoRequest]) -> None:
        calls.append(len(batch))
        raise KeyError("a bug in the listener")

    async def main() -> None:
        stream: Stream[pb.EchoRequest] = Stream(
            Host(), trio.lowlevel.current_trio_token(), listener=listen)  # type: ignore[arg-type]
        stream._inbox.append(pb.EchoRequest(payload=b"x"))
        for _ in range(2):
            with trio.fail_after(30), pytest.raises(KeyError, match="a bug in the listener"):
                await stream.receive_batch()
        assert calls == [1]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_run_now_runs_a_callback_and_what_it_schedules_before_returning(
    child: Child,
) -> None:
    async with opened(child.target, "trio") as transport:
        loop = transport._loop.loop
        assert isinstance(loop, trio_loop.TrioDrivenLoop)
        order: list[str] = []
        protected: list[bool] = []

        def first() -> None:
            order.append("callback")
            asyncio.get_running_loop().call_soon(order.append, "scheduled by it")
            protected.append(trio.lowlevel.currently_ki_protected())

        loop.run_now(first)
        order.append("returned")
        assert order == ["callback", "scheduled by it", "returned"]
        # As in the driver: a Ctrl-C must not land inside a loop callback (trio hands it
        # to the main task instead).
        assert protected == [True]


@pytest.mark.parametrize("host", HOSTS)
async def test_closing_twice_is_harmless_and_a_closed_transport_refuses_calls(
    child: Child, host: str
) -> None:
    transport = Transport(child.target, host=host)
    await transport.open()
    stream = await transport.open_stream("/test.T/Echo", pb.EchoRequest)
    await stream.send(pb.EchoRequest(payload=b"x"))
    assert [m.payload for m in await _receive(stream)] == [b"x"]
    await transport.close()
    await transport.close()
    with pytest.raises(RuntimeError, match="not open"):
        await transport.unary("/test.T/Echo", pb.EchoRequest(), pb.EchoResponse)
    assert _io_threads() == []


async def _receive(stream: object) -> list[pb.EchoRequest]:
    batch = await stream.receive_batch()  # type: ignore[attr-defined]
    assert batch is not None
    return list(batch)


async def test_the_hosted_loop_runs_on_the_trio_thread_and_starts_no_thread(
    child: Child,
) -> None:
    before = {t.ident for t in threading.enumerate()}
    transport = Transport(child.target, host="trio")
    await transport.open()
    try:
        async def where() -> int:
            return threading.get_ident()

        assert await transport._loop.run(where) == threading.get_ident()
        stream = await transport.open_stream("/test.T/Echo", pb.EchoRequest)
        await stream.send(pb.EchoRequest(payload=b"y"))
        assert [m.payload for m in await _receive(stream)] == [b"y"]
        await stream.close()
        # gRPC's own poller thread may start with the first channel of the process; no
        # thread of ours does.
        assert _io_threads() == []
        new = {t.name for t in threading.enumerate() if t.ident not in before}
        assert not [name for name in new if name.startswith("dspex")]
    finally:
        await transport.close()


def _system_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return sum(len(n.child_tasks) for n in root.child_nurseries)


async def test_transports_in_one_run_share_one_hosted_loop_until_the_last_closes(
    child: Child,
) -> None:
    baseline = _system_tasks()
    first, second = Transport(child.target, host="trio"), Transport(child.target, host="trio")
    await first.open()
    await second.open()
    loop = first._loop.loop
    assert loop is not None and second._loop.loop is loop
    assert _system_tasks() == baseline + 1  # one loop task for both
    await first.close()
    assert not loop.is_closed()
    stream = await second.open_stream("/test.T/Echo", pb.EchoRequest)
    await stream.send(pb.EchoRequest(payload=b"z"))
    assert [m.payload for m in await _receive(stream)] == [b"z"]
    await stream.close()
    await second.close()
    assert loop.is_closed()
    assert _system_tasks() == baseline
    third = Transport(child.target, host="trio")  # a fresh loop after the last closed
    await third.open()
    assert third._loop.loop is not loop and not third._loop.loop.is_closed()
    await third.close()


async def test_cancelling_an_open_while_the_loop_starts_leaves_no_loop_behind(
    child: Child,
) -> None:
    baseline = _system_tasks()
    transport = Transport(child.target, host="trio")
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.open()
    assert scope.cancelled_caught
    await transport.close()
    await trio.testing.wait_all_tasks_blocked()
    assert _system_tasks() == baseline
    assert hosted_loop._RUN_LOOP.get() is None


def test_an_unknown_host_is_refused_by_name() -> None:
    names = r"\['thread', 'trio', 'trio_asyncio'\]"
    with pytest.raises(ValueError, match=rf"host must be one of {names}, not 'fast'"):
        Transport("127.0.0.1:1", host="fast")


_AFTER_HOSTED = """
import asyncio, sys, trio
from dspex_rx.client.transport import Transport
async def main():
    transport = Transport("127.0.0.1:1", host=sys.argv[1])
    await transport.open()
    await transport.close()
trio.run(main)
async def which():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
print("trio_asyncio" in sys.modules, asyncio.run(which()))
"""


@pytest.mark.parametrize(("host", "imported"), [("trio", "False"), ("trio_asyncio", "True")])
def test_a_hosted_loop_leaves_later_asyncio_programs_on_plain_asyncio_loops(
    host: str, imported: str
) -> None:
    # Guards: importing trio_asyncio made every later asyncio.run loop trio-driven, and a
    # sync client method called from such a program failed "call it from a thread". The
    # default host does not load trio_asyncio at all.
    done = subprocess.run([sys.executable, "-c", _AFTER_HOSTED, host], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [imported, "asyncio"]


async def test_asyncio_timers_on_the_hosted_loop_follow_trios_clock(
    child: Child, autojump_clock: trio.testing.MockClock
) -> None:
    transport = Transport(child.target, host="trio")
    await transport.open()
    try:
        start = trio.current_time()
        # 30 virtual seconds: only a loop whose clock is trio's wakes without waiting them.
        assert await transport._loop.run(lambda: asyncio.sleep(30, "woke")) == "woke"
        assert trio.current_time() - start >= 30
    finally:
        await transport.close()


async def test_a_callback_from_another_thread_wakes_the_hosted_loop(child: Child) -> None:
    transport = Transport(child.target, host="trio")
    await transport.open()
    try:
        loop = transport._loop.loop
        assert loop is not None

        async def wait_for_other_thread() -> str:
            arrived: asyncio.Future[str] = loop.create_future()
            threading.Thread(
                target=loop.call_soon_threadsafe, args=(arrived.set_result, "from thread")
            ).start()
            return await arrived

        with trio.fail_after(30):  # a hang guard only
            assert await transport._loop.run(wait_for_other_thread) == "from thread"
    finally:
        await transport.close()


async def test_a_second_kind_of_hosted_loop_in_the_same_run_is_refused_by_name(
    child: Child,
) -> None:
    native = Transport(child.target, host="trio")
    await native.open()
    try:
        other = Transport(child.target, host="trio_asyncio")
        with pytest.raises(RuntimeError, match="already hosts a 'native' loop"):
            await other.open()
        await other.close()
        stream = await native.open_stream("/test.T/Echo", pb.EchoRequest)  # unharmed
        await stream.send(pb.EchoRequest(payload=b"still"))
        assert [m.payload for m in await _receive(stream)] == [b"still"]
        await stream.close()
    finally:
        await native.close()


async def _interrupt() -> str:
    # Ctrl-C while the hosted loop runs this task's step (on the trio thread).
    signal.raise_signal(signal.SIGINT)
    return "interrupted"


def test_ctrl_c_during_a_loop_callback_reaches_the_main_task_and_the_loop_lives_on() -> None:
    # Guards a bug: Ctrl-C raised inside the callback ended the hosted loop, and shielded
    # closes that still needed it (a session's watch stream) waited forever: the cluster
    # demo hung on Ctrl-C now and then.
    async def main() -> str:
        host = hosted_loop.TrioHostedLoop("ctrl-c")
        await host.open()
        try:
            with pytest.raises(KeyboardInterrupt):
                await host.run(_interrupt)
                await trio.sleep(5)  # delivered to this, the main task, when it waits
            with trio.CancelScope(shield=True):
                result: str = await host.run(lambda: asyncio.sleep(0, "alive"))
                return result
        finally:
            await host.close()

    # Virtual time: the sleep above ends at once if the interrupt never comes.
    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == "alive"


def test_a_hosted_loop_that_dies_fails_its_awaiters_instead_of_leaving_them_waiting() -> None:
    # Guards a hang: a call awaiting the hosted loop waited for ever once the loop's
    # driver had ended with an error (its abort keeps waiting for the future), and no
    # cancellation could free it.
    async def main() -> None:
        loop = trio_loop.TrioDrivenLoop()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drive_and_swallow, loop)
            await trio.sleep(0)  # the driver is running
            never: asyncio.Future[None] = loop.create_future()
            original = loop._run_ready

            def broken() -> None:
                loop._run_ready = original  # type: ignore[method-assign]
                raise RuntimeError("a driver bug")

            loop._run_ready = broken  # type: ignore[method-assign]
            loop.call_soon(lambda: None)  # wakes the driver into the bug
            with pytest.raises(RuntimeError, match="stopped before the awaited call"):
                await trio_loop.await_future(never)
            with pytest.raises(RuntimeError, match="has stopped"):
                await trio_loop.await_future(loop.create_future())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _drive_and_swallow(loop: trio_loop.TrioDrivenLoop) -> None:
    try:
        await loop.drive()
    except* RuntimeError as dead:  # the planted bug, raised out of the driver's nursery
        assert "a driver bug" in str(dead.exceptions[0])
