"""Prometheus metrics of ``dspex-rx serve --metrics-port``: RPCs by method and code, their
latency histogram, the Session stream's count, and the store and stream gauges read at
scrape time; ``count`` on real stream queues; registries that never collide."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio
from serve_process import Served, sample, scrape

import dspex_rx
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.server.metrics import ServerMetrics, count
from dspex_rx.store import ChangeEvent, MemoryStore, VariableSpec
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.channel import SERVICE_NAME

V = SERVICE_NAME


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A memory-store server with metrics on a free port: (target, metrics port)."""
    server = Served("--port", "0", "--storage", "memory", "--log-format", "json",
                    "--metrics-port", "0")
    try:
        port = server.wait_for("server_started")["port"]
        metrics_port = server.wait_for("metrics_started")["port"]
        yield f"127.0.0.1:{port}", metrics_port
    finally:
        server.kill()


async def scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return await trio.to_thread.run_sync(scrape, port)


async def scraped_when(port: int, name: str, value: float, **labels: str) -> dict[
        tuple[str, tuple[tuple[str, str], ...]], float]:
    # Scrape until ``name`` (with ``labels``) shows ``value`` (the stream's subscribe and
    # the close are asynchronous to the client's call); a hang guard, no timing asserted.
    deadline = time.monotonic() + 30
    while True:
        samples = await scraped(port)
        if sample(samples, name, **labels) == value:
            return samples
        assert time.monotonic() < deadline, f"{name} never became {value}: {samples}"
        await trio.sleep(0.02)


# Pipelined calls (the Calls stream) are counted as the unary RPCs they stand for.
@pytest.mark.parametrize("pipelined", [True, False])
async def test_rpcs_are_counted_by_method_and_code_and_timed(
        served: tuple[str, int], pipelined: bool) -> None:
    target, port = served
    async with dspex_rx.connect(target, pipelined=pipelined) as s:
        await s.register_variable("t", "float", 0.5, constraints={"min": 0.0, "max": 1.0})
        await s.set_variable("t", 0.6)
        await s.set_variable("t", 0.7)
        with pytest.raises(ValueError, match="above max"):
            await s.set_variable("t", 5.0)
        with pytest.raises(dspex_rx.ConflictError):
            await s.set_variable("t", 0.1, expected_version=1)
        with pytest.raises(KeyError):
            await s.get_variable("missing")
        samples = await scraped(port)
    handled = "dspex_rx_rpc_handled_total"
    assert sample(samples, handled, service=V, method="SetVariable", code="OK") == 2
    assert sample(samples, handled, service=V, method="SetVariable",
                  code="INVALID_ARGUMENT") == 1
    assert sample(samples, handled, service=V, method="SetVariable",
                  code="FAILED_PRECONDITION") == 1
    assert sample(samples, handled, service=V, method="GetVariable", code="NOT_FOUND") == 1
    assert sample(samples, handled, service=V, method="RegisterVariable", code="OK") == 1
    assert sample(samples, handled, service=V, method="InitializeSession", code="OK") == 1
    assert sample(samples, "dspex_rx_rpc_started_total", service=V,
                  method="SetVariable") == 4
    # Every answered unary call is one observation of the latency histogram.
    assert sample(samples, "dspex_rx_rpc_duration_seconds_count", service=V,
                  method="SetVariable") == 4
    assert sample(samples, "dspex_rx_rpc_duration_seconds_bucket", service=V,
                  method="SetVariable", le="+Inf") == 4
    assert sample(samples, "dspex_rx_rpc_duration_seconds_sum", service=V,
                  method="SetVariable") > 0


async def test_gauges_count_sessions_variables_streams_and_watches(
        served: tuple[str, int]) -> None:
    target, port = served
    async with dspex_rx.connect(target) as a, dspex_rx.connect(target) as b:
        await a.register_variables([{"name": "x", "type": "integer", "value": 1},
                                    {"name": "y", "type": "integer", "value": 2}])
        await b.register_variable("z", "string", "hi")
        samples = await scraped(port)
        assert sample(samples, "dspex_rx_scrape_ok") == 1
        assert sample(samples, "dspex_rx_sessions") == 2
        assert sample(samples, "dspex_rx_session_clients") == 2
        assert sample(samples, "dspex_rx_variables") == 3
        # One server: no other replica's write ever beats its flushes.
        assert sample(samples, "dspex_rx_storage_conflicts_total") == 0
        async with dspex_rx.connect(target, session_id=a.session_id,
                                    token=a.token) as watcher:
            watch = await watcher.watch_variables(["x", "y"], include_initial=False)
            await a.set_variable("x", 5)
            assert (await watch.next()).value == 5
            samples = await scraped_when(port, "dspex_rx_watches", 2)
            assert sample(samples, "dspex_rx_streams") == 1
            assert sample(samples, "dspex_rx_session_clients") == 3
            # The stream is open: started, not yet handled.
            assert sample(samples, "dspex_rx_rpc_started_total", service=V,
                          method="Session") == 1
            assert sample(samples, "dspex_rx_stream_queue_items") == 0
            assert sample(samples, "dspex_rx_stream_queue_max_items") == 0
            await watch.aclose()
            # Unwatched, the connection's stream stays open for the next watch.
            samples = await scraped_when(port, "dspex_rx_watches", 0)
            assert sample(samples, "dspex_rx_streams") == 1
        samples = await scraped_when(port, "dspex_rx_streams", 0)
        # The stream, counted once when it ended. A closing client ends its session (the
        # server then ends the session's streams: OK) and cancels its stream (CANCELLED);
        # which the server sees first is a race a loaded machine showed both ways.
        ended = {dict(labels)["code"]: value for (name, labels), value in samples.items()
                 if name == "dspex_rx_rpc_handled_total" and ("method", "Session") in labels
                 and value}
        assert sum(ended.values()) == 1 and set(ended) <= {"OK", "CANCELLED"}, ended
        await b.delete_variable("z")
        samples = await scraped(port)
        assert sample(samples, "dspex_rx_variables") == 2


def open_stream_without_token(target: str, session_id: str) -> grpc.StatusCode:
    # A Session stream that presents no token: the server refuses it at open.
    with grpc.insecure_channel(target) as channel:
        stream = channel.stream_stream(
            f"/{V}/Session", request_serializer=spb.ClientMessage.SerializeToString,
            response_deserializer=spb.ServerMessage.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            list(stream(iter([spb.ClientMessage(open=spb.OpenStream(session_id=session_id))]),
                        timeout=30))
    return refused.value.code()  # type: ignore[no-any-return]


async def test_a_refused_stream_is_counted_with_its_code(served: tuple[str, int]) -> None:
    target, port = served
    async with dspex_rx.connect(target) as s:
        code = await trio.to_thread.run_sync(open_stream_without_token, target, s.session_id)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # Guards a flaky read: the client hears the refusal before the server counts it.
        samples = await scraped_when(port, "dspex_rx_rpc_handled_total", 1, service=V,
                                     method="Session", code="UNAUTHENTICATED")
    assert sample(samples, "dspex_rx_rpc_handled_total", service=V, method="Session",
                  code="UNAUTHENTICATED") == 1
    assert sample(samples, "dspex_rx_rpc_started_total", service=V, method="Session") == 1
    assert sample(samples, "dspex_rx_streams") == 0


def test_count_reads_the_streams_queue_depths() -> None:
    store = MemoryStore()
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
    busy, idle = Subscriber(session_id="s"), Subscriber(session_id="s")
    busy.watch(["a", "b", "c"])
    idle.watch(["a"])
    record = store.get("s", "t")
    for revision in (2, 3, 4):
        busy.push_frame(PendingFrame(revision, [
            ChangeEvent(record, 0.7, "value_change", {}, "s")]))
    busy.push_control("pong")

    class Service:
        pass

    service = Service()
    service.store = store  # type: ignore[attr-defined]
    service.subscribers = {busy, idle}  # type: ignore[attr-defined]
    counts = count(service)  # type: ignore[arg-type]
    assert (counts.streams, counts.watched) == (2, 4)
    assert (counts.queued, counts.deepest, counts.pending_events) == (4, 4, 3)
    assert (counts.sessions, counts.variables, counts.clients) == (1, 1, 1)


def test_each_server_metrics_has_its_own_registry() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.handled.labels(V, "Echo", "OK").inc()
    assert b'method="Echo"' in first.render()
    assert b'method="Echo"' not in second.render()
    # Without a server to read, the gauges say the read failed rather than show zeros.
    assert b"dspex_rx_scrape_ok 0.0" in first.render()
    assert b"dspex_rx_sessions" not in first.render()
