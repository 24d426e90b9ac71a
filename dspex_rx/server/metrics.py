"""The server's Prometheus metrics: RPCs counted and timed by a grpc.aio interceptor, and
gauges of the store and the Session streams read on the server's loop at scrape time.

Each ``ServerMetrics`` has its own registry (never prometheus-client's global one), so
servers in one process do not collide. Labels name methods and status codes only: no
session id, variable name, value or token is ever a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from dspex_rx.logs import get_logger
from dspex_rx.server.fanout import Subscriber
from dspex_rx.store import MemoryStore
from dspex_rx.wire.channel import SERVICE_NAME

log = get_logger("dspex_rx.server")

# How long a scrape waits for the server's loop to count the store; a loop that busy
# is reported as a failed read (dspex_rx_scrape_ok 0), not a hung scrape.
SCRAPE_TIMEOUT = 5.0


class Observed(Protocol):
    """What the gauges read of the servicer: its store and the live streams' queues.

    Example: ``ServerMetrics().observe(service, loop)`` with a ``VariablesService``.
    """

    store: MemoryStore
    subscribers: set[Subscriber]


@dataclass(frozen=True, slots=True)
class Counts:
    """What the gauges show, counted in one pass on the server's loop.

    Example:

    >>> Counts(sessions=1, clients=1, variables=2, streams=1, watched=2, queued=0,
    ...        deepest=0, pending_events=0).variables
    2
    """

    sessions: int
    clients: int
    variables: int
    streams: int
    watched: int
    queued: int
    deepest: int
    pending_events: int
    storage_conflicts: int = 0


def count(observed: Observed) -> Counts:
    """Count sessions, attached clients, variables and the streams' watches and queues
    (run it on the server's loop: the store is not thread-safe).

    Example:

    >>> from dspex_rx.store import VariableSpec
    >>> store = MemoryStore()
    >>> _ = store.initialize_session("s")
    >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
    >>> class Service:
    ...     subscribers: set[Subscriber] = set()
    >>> Service.store = store
    >>> c = count(Service())
    >>> c.sessions, c.clients, c.variables, c.streams
    (1, 1, 1, 0)
    """
    store = observed.store
    sessions = [store.session(sid) for sid in store.session_ids()]
    subscribers = list(observed.subscribers)
    depths = [sub.queued for sub in subscribers]
    return Counts(
        sessions=len(sessions),
        clients=sum(len(s.clients) for s in sessions),
        variables=sum(len(s.variables) for s in sessions),
        streams=len(subscribers),
        watched=sum(len(sub.watched) for sub in subscribers),
        queued=sum(depths),
        deepest=max(depths, default=0),
        pending_events=sum(sub.pending_events for sub in subscribers),
        storage_conflicts=store.conflicts,
    )


class _StoreCollector:
    """The gauges, computed when Prometheus scrapes: the count runs on the server's loop
    (the scrape comes on prometheus-client's HTTP thread), so no write path pays for them."""

    def __init__(self) -> None:
        self.read: Callable[[], Counts] | None = None

    def collect(self) -> Iterator[Metric]:
        counts = None
        if self.read is not None:
            try:
                counts = self.read()
            except Exception as exc:  # a closed loop, a timeout: say so, keep serving
                log.warning("metrics_scrape_failed", error=repr(exc))
        yield GaugeMetricFamily("dspex_rx_scrape_ok",
                                "1 if the store's gauges below were read, else 0",
                                value=int(counts is not None))
        if counts is None:
            return
        for name, text, value in (
            ("sessions", "Live sessions", counts.sessions),
            ("session_clients", "Clients attached to live sessions", counts.clients),
            ("variables", "Variables of live sessions", counts.variables),
            ("streams", "Open Session (watch) streams", counts.streams),
            ("watches", "Variables watched, summed over open streams", counts.watched),
            ("stream_queue_items", "Frames and notes waiting to be sent, all streams",
             counts.queued),
            ("stream_queue_max_items", "Items waiting on the most backed-up stream",
             counts.deepest),
            ("stream_queue_events", "Change events waiting to be sent, all streams",
             counts.pending_events),
        ):
            yield GaugeMetricFamily(f"dspex_rx_{name}", text, value=value)
        yield CounterMetricFamily(
            "dspex_rx_storage_conflicts",
            "Flushes another replica's write beat (undone, their calls run again)",
            value=counts.storage_conflicts)


def _split(full_method: str) -> tuple[str, str]:
    # "/dspex_rx.v1.Variables/GetVariable" -> ("dspex_rx.v1.Variables", "GetVariable")
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _code(context: Any, error: BaseException | None) -> str:
    # The status an RPC ended with: what abort set, else OK, or CANCELLED/UNKNOWN for an
    # exception that set none.
    code = context.code()
    if code is not None:
        return str(code.name)
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


class ServerMetrics:
    """A server's metrics: its registry, the RPC interceptor, the store gauges and the
    HTTP endpoint Prometheus scrapes.

    Example: ``Server(port=0, metrics=ServerMetrics())`` counts its RPCs; then
    ``metrics.serve_http("127.0.0.1", 9100)`` serves them at ``/metrics``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = Counter(
            "dspex_rx_rpc_started", "RPCs started (a Session stream when opened)",
            ["service", "method"], registry=self.registry,
        )
        self.handled = Counter(
            "dspex_rx_rpc_handled", "RPCs finished, by status code (a Session stream "
            "when it ends)", ["service", "method", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "dspex_rx_rpc_duration_seconds", "Time to answer a unary RPC",
            ["service", "method"], registry=self.registry,
        )
        self._collector = _StoreCollector()
        self.registry.register(self._collector)
        self.interceptor = _Interceptor(self)
        self._http: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def observe(self, observed: Observed, loop: asyncio.AbstractEventLoop) -> None:
        """Read the gauges from ``observed`` (the servicer), counted on ``loop``.

        Example: ``metrics.observe(service, asyncio.get_running_loop())`` on the server's loop.
        """

        async def on_loop() -> Counts:
            return count(observed)

        def read() -> Counts:
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                return count(observed)
            future = asyncio.run_coroutine_threadsafe(on_loop(), loop)
            return future.result(SCRAPE_TIMEOUT)

        self._collector.read = read

    def record_call(self, method: str, code: str, seconds: float) -> None:
        """Count one call made on a Calls stream as its own unary RPC would be counted
        (the service's ``call_observer``).

        Example: ``metrics.record_call("GetVariable", "OK", 0.0002)``.
        """
        labels = (SERVICE_NAME, method)
        self.started.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        self.handled.labels(*labels, code).inc()

    def render(self) -> bytes:
        """The exposition text Prometheus would scrape now (call it off the server's loop:
        the gauges wait for that loop).

        Example: ``b"dspex_rx_rpc_handled_total" in metrics.render()``.
        """
        return bytes(generate_latest(self.registry))

    def serve_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port
        (``port=0`` picks a free one). A port in use raises ``OSError`` naming it.

        Example: ``metrics.serve_http("127.0.0.1", 0)`` returns the port it bound.
        """
        try:
            self._http, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: "
                          f"{exc.strerror or exc}") from exc
        self.port = int(self._http.server_address[1])
        return self.port

    def close(self) -> None:
        """Stop the HTTP endpoint (if serving) and release its port.

        Example: ``metrics.close()`` after the server stopped.
        """
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Counts and times every RPC around its handler: unary calls when answered, streams
    when opened and when they end, each with the status code it ended with."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        labels = _split(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming: none in this server; served uncounted

    def _unary(self, inner: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., Any]:
        metrics = self.metrics

        async def unary(request: Any, context: Any) -> Any:
            metrics.started.labels(*labels).inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.latency.labels(*labels).observe(time.perf_counter() - start)
                metrics.handled.labels(*labels, _code(context, error)).inc()

        return unary

    def _stream(self, inner: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., Any]:
        metrics = self.metrics

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            metrics.started.labels(*labels).inc()
            error: BaseException | None = None
            try:
                result = inner(request, context)
                if not hasattr(result, "__aiter__"):
                    # grpc also allows a coroutine that writes with context.write.
                    await result
                    return
                # Closed here, so the handler's own cleanup runs when the stream ends,
                # not when the wrapped generator is collected.
                async with contextlib.aclosing(result) as messages:
                    async for message in messages:
                        yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.handled.labels(*labels, _code(context, error)).inc()

        return stream

