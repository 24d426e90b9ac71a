"""The server process: ``Server`` (the v1 service, health and reflection on a grpc.aio
server, and session expiry), the ``serve`` entry point, and ``EmbeddedServer`` on its own thread.

The adapter only translates: wire messages to plain values, store exceptions to gRPC
status codes with the error kind in trailing metadata. It never validates values itself;
the limits it enforces are the wire's own (``limits.Limits``): the message size (gRPC
refuses a larger request with RESOURCE_EXHAUSTED, and no answer it builds may be larger),
requests protobuf cannot parse (INVALID_ARGUMENT, not a crash), the variables one stream
may watch, and error messages short enough to travel in a header.

Who is calling: with ``auth="token"`` (the default) every call for a session, and the
Session stream, must carry the session's token in the ``x-dspex-session-token`` call
metadata, and attaching to an existing session needs it too; the adapter reads the
header and the store compares (``security.py``). A server binds a non-loopback address
only with token auth and TLS (``tls_cert``/``tls_key``), or with ``insecure=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dspex_rx.core.identity import Principals
from dspex_rx.core.limits import Limits
from dspex_rx.errors import InvalidValueError, StorageError
from dspex_rx.logs import get_logger, quiet_closed_loop_events
from dspex_rx.server.forward import Forwarder, advertised_address
from dspex_rx.server.metrics import ServerMetrics
from dspex_rx.server.service import VariablesService, add_service
from dspex_rx.store import MemoryStore
from dspex_rx.store.backend import RevisionConflict
from dspex_rx.wire.channel import (
    SERVICE_NAME,
    client_keepalive_options,
    grpc_options,
    server_keepalive_options,
)
from dspex_rx.wire.security import Pem, check_bind, is_loopback, server_credentials

log = get_logger("dspex_rx.server")

T = TypeVar("T")


class Server:
    """A grpc.aio server with the v1 service, health and reflection, on the running loop.

    ``limits`` (default: the store's, else ``Limits()``) sets every limit; with no
    ``store``, the store is made with them too.

    ``auth`` is ``"token"`` (every session-scoped call must carry the session's token)
    or ``"none"`` (tokens issued, not checked). ``tls_cert``/``tls_key`` (PEM paths or
    bytes) serve TLS. A non-loopback ``host`` is refused (``InvalidValueError``, at
    construction) unless auth is ``"token"`` and TLS is configured, or ``insecure=True``.
    ``principals`` (``{"admin_*": key}``, see ``identity.Principals``) reserves session-id
    namespaces: creating a session in one needs its key. They need ``auth="token"``.
    ``metrics`` (a ``ServerMetrics``) counts every RPC and reads the store's gauges.
    Over a store shared by replicas (etcd) the replicas elect a write leader, and the
    others forward their write RPCs to it (``forward.py``): ``advertise`` is where the
    others reach this one (default ``host:port``, this machine's name for a wildcard
    host), ``write_leader=False`` makes every write here.

    The port is bound without SO_REUSEPORT: a port another process serves is refused
    (``OSError`` naming it), never shared.

    Example: ``await server.start()`` binds ``Server(port=0)`` and returns the port.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 50051,
        store: MemoryStore | None = None,
        expire_interval: float = 1.0,
        progress_interval: float = 5.0,
        max_pending_events: int = 10_000,
        limits: Limits | None = None,
        *,
        auth: str = "token",
        tls_cert: Pem | None = None,
        tls_key: Pem | None = None,
        insecure: bool = False,
        principals: Principals | dict[str, str] | None = None,
        metrics: ServerMetrics | None = None,
        advertise: str | None = None,
        write_leader: bool = True,
    ) -> None:
        self._credentials = server_credentials(tls_cert, tls_key)
        check_bind(host, auth, self._credentials is not None, insecure)
        if principals is not None and not isinstance(principals, Principals):
            principals = Principals(principals)
        if principals and auth != "token":
            raise InvalidValueError(
                "principals need auth='token': with auth='none' any caller may act as any "
                "session, so reserving ids would protect nothing"
            )
        self.host = host
        self.requested_port = port
        self.port = 0
        self.auth = auth
        self.insecure = insecure
        self.store = store or MemoryStore(limits=limits)
        if principals:
            if self.store.principals:
                raise InvalidValueError(
                    "principals were given to both the Server and its store; give them once"
                )
            self.store.principals = principals
        elif self.store.principals and auth != "token":
            raise InvalidValueError("the store reserves principals, which need auth='token'")
        # Without token checks no id is anyone's, so rules need not name checked parties.
        self.store.identity_checked = auth == "token"
        self.limits = limits or self.store.limits
        self.expire_interval = expire_interval
        self.service = VariablesService(
            self.store, progress_interval, max_pending_events, self.limits, auth=auth
        )
        self.metrics = metrics
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._expiry: asyncio.Task[None] | None = None
        # Over a shared store: where other replicas reach this one, and whether it takes
        # part in electing the replica that takes the writes (forward.py).
        self.advertise = advertise
        self.write_leader = write_leader
        self._election: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port.

        Example: ``port = await server.start()`` binds and serves.
        """
        # A replicated backend applies other replicas' writes on this loop.
        self.store.bind_loop(asyncio.get_running_loop())
        # gRPC sets SO_REUSEPORT by default, so a second server on a port in use would
        # bind it too and the kernel would split connections between the two.
        options = [*grpc_options(self.limits.max_message_bytes), ("grpc.so_reuseport", 0),
                   *server_keepalive_options()]
        interceptors = [self.metrics.interceptor] if self.metrics is not None else []
        server = grpc.aio.server(options=options, interceptors=interceptors)
        add_service(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{self.host}:{self.requested_port}"
        try:
            if self._credentials is not None:
                self.port = server.add_secure_port(address, self._credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:  # what grpc raises for a bind that failed
            self.port = 0
            cause: BaseException | None = exc
        else:
            cause = None
        if self.port == 0:
            raise OSError(
                f"cannot serve on {address}: port {self.requested_port} is in use by another "
                "process, or the address is not this machine's"
            ) from cause
        if self.metrics is not None:
            self.metrics.observe(self.service, asyncio.get_running_loop())
            self.service.call_observer = self.metrics.record_call
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._expiry = asyncio.create_task(self._expire_loop())
        self._election = self._elect()
        log.info("server_started", host=self.host, port=self.port, auth=self.auth,
                 tls=self.tls)
        if not is_loopback(self.host) and (not self.tls or self.auth != "token"):
            log.warning("server_insecure", host=self.host, auth=self.auth, tls=self.tls,
                        note="reachable from the network without token auth and TLS")
        return self.port

    def _elect(self) -> asyncio.Task[None] | None:
        # Replicas of a shared store send their writes to one of them, elected through
        # the store (etcd); alone, or with forwarding off, every write is made here.
        if not self.write_leader:
            return None
        if self.tls:
            # The link to the leader is plaintext: replicas serving TLS write for
            # themselves (correct, only slower when several write at once).
            log.info("write_leader_off", reason="TLS: the link to a leader is plaintext")
            return None
        address = self.advertise or advertised_address(self.host, self.port)
        election = self.store.write_leader(address)
        if election is None:
            return None
        # Keepalive: a leader whose path goes silent (no reset) fails the link within
        # seconds; without it, what it carried waited for ever, and the sessions after.
        forwarder = Forwarder(address, options=grpc_options(self.limits.max_message_bytes)
                              + client_keepalive_options())
        election.on_change(forwarder.set_leader)
        self.service.forwarder = forwarder
        return asyncio.create_task(election.run())

    @property
    def tls(self) -> bool:
        """Whether the server serves TLS.

        Example:

        >>> Server(port=0).tls
        False
        """
        return self._credentials is not None

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expire_interval)
            for session_id in self.store.expire():
                log.info("session_expired", session_id=session_id)
            if self.store.pending:
                # Expiry changed state no call will sync for (clients dropped, sessions
                # removed, leases ended): make it durable now, not with the next write.
                try:
                    await self.store.sync(self.store.revision)
                except RevisionConflict as exc:
                    # Another replica wrote first: routine while replicas write at once
                    # (dspex_rx_storage_conflicts_total counts them), not worth a warning
                    # a second. The next tick expires again from the state as stored.
                    log.debug("expiry_sync_conflicted", error=str(exc))
                except StorageError as exc:
                    # Undone (the disk refused): the next tick tries again.
                    log.warning("expiry_sync_failed", error=str(exc))

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting calls, let running ones finish within ``grace`` seconds.

        Example: ``await server.stop(grace=1.0)`` waits at most a second for running calls.
        """
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        # Standing down first (the lease revoked) lets another replica lead at once.
        for task in (self._expiry, self._election):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._server.stop(grace)
        self._server = None
        if self.service.forwarder is not None:
            await self.service.forwarder.close()
        if self.store.pending:
            # What changed last (clients detaching) is kept for the next start.
            try:
                await self.store.sync(self.store.revision)
            except (StorageError, RevisionConflict) as exc:
                log.error("final_sync_failed", error=str(exc))
        log.info("server_stopped", port=self.port)

    async def wait_for_termination(self) -> None:
        """Block until the server stops.

        Example: ``await server.wait_for_termination()`` returns once the server stopped.
        """
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(
    host: str = "127.0.0.1",
    port: int = 50051,
    port_file: str | None = None,
    store: MemoryStore | None = None,
    limits: Limits | None = None,
    *,
    auth: str = "token",
    tls_cert: Pem | None = None,
    tls_key: Pem | None = None,
    insecure: bool = False,
    principals: Principals | dict[str, str] | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    advertise: str | None = None,
    write_leader: bool = True,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    ``port_file`` receives the bound port once serving (handy with ``port=0``). ``limits``,
    ``auth``, ``tls_cert``, ``tls_key``, ``insecure``, ``principals``, ``advertise`` and
    ``write_leader`` are ``Server``'s.
    ``metrics_port`` (0: a free one) serves Prometheus metrics at
    ``http://metrics_host:metrics_port/metrics``; a port in use raises ``OSError`` and
    nothing is left serving.

    Example: ``asyncio.run(serve("127.0.0.1", 50051))`` serves until interrupted.
    """
    metrics = ServerMetrics() if metrics_port is not None else None
    server = Server(
        host, port, store, limits=limits, auth=auth, tls_cert=tls_cert, tls_key=tls_key,
        insecure=insecure, principals=principals, metrics=metrics, advertise=advertise,
        write_leader=write_leader,
    )
    bound = await server.start()
    if metrics is not None and metrics_port is not None:
        try:
            # Off the loop: binding and starting the HTTP thread may block briefly.
            metrics_bound = await asyncio.to_thread(metrics.serve_http, metrics_host,
                                                    metrics_port)
        except OSError:
            await server.stop(grace=0)
            raise
        log.info("metrics_started", host=metrics_host, port=metrics_bound, path="/metrics")
    if port_file:
        tmp = f"{port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{bound}\n")
        os.replace(tmp, port_file)  # readers never see a half-written file
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown_requested")
    await server.stop()
    if metrics is not None:
        await asyncio.to_thread(metrics.close)


def durable_store(data_dir: str | os.PathLike[str], limits: Limits | None = None,
                  session_ttl: float = 86400.0) -> MemoryStore:
    """A store over a SQLite data dir, keeping client-less sessions ``session_ttl`` seconds
    (a day, as ``dspex-rx serve`` does by default); close it to release the dir.

    Example: ``EmbeddedServer(store=durable_store("dspex-rx-data"))``.
    """
    from dspex_rx.store.sqlite import SqliteBackend

    backend = SqliteBackend(data_dir)
    try:
        return MemoryStore(limits=limits, backend=backend, session_ttl=session_ttl)
    except BaseException:
        backend.close()
        raise


class EmbeddedServer:
    """A server on its own thread and asyncio loop, for ``connect()`` with no target and tests.

    ``options`` go to ``Server`` (``limits=Limits(...)``, ``auth``, ``tls_cert``,
    ``tls_key``, ``insecure``, ``progress_interval=`` ...).

    Example: ``with EmbeddedServer() as embedded:`` serves at ``embedded.target``.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, store: MemoryStore | None = None,
        *, data_dir: str | os.PathLike[str] | None = None, **options: Any,
    ) -> None:
        # With ``data_dir`` the server makes its own durable store, and closes it (its
        # file and lock) when it stops, so the next server on that dir may open it.
        self._owned: MemoryStore | None = None
        if data_dir is not None:
            if store is not None:
                raise InvalidValueError("give a store or a data_dir, not both")
            store = self._owned = durable_store(data_dir, options.get("limits"))
        self._server = Server(host, port, store, **options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def store(self) -> MemoryStore:
        """The server's store (touch it only from the server's loop, or in tests).

        Example: ``embedded.call(embedded.store.session_ids)`` lists its sessions.
        """
        return self._server.store

    @property
    def service(self) -> VariablesService:
        """The running service adapter (stream counts, settings).

        Example: ``embedded.service.subscribers`` holds the live streams' queues.
        """
        return self._server.service

    @property
    def target(self) -> str:
        """``host:port`` to pass to ``connect``.

        Example: ``dspex_rx.connect(embedded.target)`` opens a session on it.
        """
        return f"{self._server.host}:{self._server.port}"

    def start(self) -> str:
        """Start the server thread; returns the target once the port is bound.

        Example: ``target = embedded.start()`` returns ``"127.0.0.1:<port>"``.
        """
        self._thread = threading.Thread(target=self._run, name="dspex-rx-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self.target

    def _run(self) -> None:
        # A plain loop whatever policy is installed (trio_asyncio's would drive it by trio).
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        quiet_closed_loop_events(self._loop)
        self._stop = asyncio.Event()
        try:
            await self._server.start()
        except BaseException as exc:
            self._error = exc
            if self._owned is not None:
                self._owned.close()
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self._server.stop(grace=1.0)
        if self._owned is not None:
            self._owned.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop thread and return its result (blocking).

        The store is not thread-safe; this is how an embedding program or a test touches
        it directly while the server runs.

        Example: ``embedded.call(embedded.store.session_ids)`` lists the sessions.
        """
        if self._loop is None:
            raise RuntimeError("the embedded server is not running")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def stop(self) -> None:
        """Stop the server and join its thread.

        Example: ``embedded.stop()`` returns once the thread ended.
        """
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
