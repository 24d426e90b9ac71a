"""The public trio API: ``connect()`` and ``SessionContext``, one method per spec call.

Thin by design: it encodes arguments, makes one call through the transport, and hands the
answer to the variable's actor; the server validates.

Every call after ``InitializeSession`` (and the watch stream) carries the session's token
as call metadata; ``session.token`` is what another connection passes to join:
``connect(target, session_id=session.session_id, token=session.token)``. ``tls=True`` /
``ca_cert=`` talk to a TLS server.

From asyncio the same API works unchanged (``aio.portal_aware``): each call runs in the
portal's trio run, see ``dspex_rx/aio.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

import grpc
import reactivex
import trio
from google.protobuf.message import Message
from reactivex import abc as rx_abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from dspex_rx.client import exchange
from dspex_rx.client.actors import VariableActor, VariableObservable, VariableUpdate, WatchHub
from dspex_rx.client.aio import cancel_task, hold_current_run, portal_aware, portal_context
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.derive import Derived
from dspex_rx.client.embedded import EmbeddedHandle, start_embedded
from dspex_rx.client.optimization.optimizers import (
    BaseOptimizer,
    SearchSpace,
    check_optimizer_class,
    get_optimizer,
)
from dspex_rx.client.optimization.run import (
    HeldLease,
    OptimizationRun,
    Proposal,
    as_objective,
    check_metric,
    check_mode,
    end_reason,
    status_from_event,
    status_from_pb,
)
from dspex_rx.client.watch import Watch, debounce_settled
from dspex_rx.core.limits import DEFAULT_LIMITS, Limits
from dspex_rx.core.patterns import name_pattern
from dspex_rx.core.types import infer_type
from dspex_rx.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConflictError,
    DspexError,
    InvalidValueError,
    SessionNotFoundError,
    VariableTypeError,
    error_from_kind,
)
from dspex_rx.logs import get_logger
from dspex_rx.rx import TrioScheduler, throttle_latest, with_trio_scheduler
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.channel import SERVICE_NAME, grpc_options
from dspex_rx.wire.convert import (
    DEPENDENCY_FROM_PB,
    DEPENDENCY_TO_PB,
    map_rpc_error,
    since_seconds,
    timestamp,
    type_from_pb,
    type_to_pb,
    utc_datetime,
)
from dspex_rx.wire.security import Pem, channel_credentials, principal_metadata, token_metadata

log = get_logger("dspex_rx.client")

M = TypeVar("M", bound=Message)
Held = TypeVar("Held")
_MISSING: Any = object()


def _info(variable: pb.Variable, revision: int | None = None) -> dict[str, Any]:
    """A variable's description, the shape ``include_metadata`` and ``list_variables``
    return: system fields as their own keys, the user's metadata under ``'metadata'``
    exactly as given (a user key ``type`` or ``description`` never meets a system field).
    ``keys_converted`` and ``tensor_origin`` say how the current value was sent."""
    info: dict[str, Any] = {
        "id": variable.id,
        "name": variable.name,
        "type": type_from_pb(variable.type),
        "constraints": codec.decode_map(variable.constraints),
        "metadata": codec.decode_map(variable.metadata),
        "description": variable.description,
        "version": variable.version,
        "revision": variable.mod_revision,
        "created_at": utc_datetime(variable.created_at),
        "updated_at": utc_datetime(variable.updated_at),
        "updated_by": variable.updated_by,
        **codec.value_flags(variable.value),
    }
    if revision is not None:
        info["session_revision"] = revision
    return info


_MERGE_STRATEGIES: dict[str, int] = {
    "replace": pb.MERGE_STRATEGY_REPLACE,
    "keep": pb.MERGE_STRATEGY_KEEP,
    "merge": pb.MERGE_STRATEGY_MERGE,
}


def _import_result(response: pb.ImportVariablesResponse) -> dict[str, Any]:
    """The spec's import answer: counts, error messages and one detail per variable."""
    details = []
    for outcome in response.outcomes:
        detail: dict[str, Any] = {
            "name": outcome.name,
            "action": outcome.action,
            "version": outcome.version,
            "message": outcome.message,
        }
        if outcome.error_kind:
            detail["error_kind"] = outcome.error_kind
        details.append(detail)
    errors = [o.message for o in response.outcomes if o.action == "error"]
    return {
        "imported": 0 if errors else sum(
            1 for o in response.outcomes if o.action in ("create", "replace", "merge")
        ),
        "skipped": sum(1 for o in response.outcomes if o.action == "skip"),
        "errors": len(errors),
        "error_details": errors,
        "details": details,
        "applied": response.applied,
        "dry_run": response.dry_run,
        "revision": response.revision,
        "dependencies_added": 0 if errors else response.dependencies_added,
    }


def _check_positive(name: str, field: str, value: int | None) -> int:
    # An optional wire integer that must be >= 1 when given (0 on the wire: not given).
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValueError(
            f"variable {name!r}: {field} must be an integer >= 1, got {value!r}"
        )
    return value


def _is_initial(update: VariableUpdate) -> bool:
    return update.update_type == "initial"


def _merge_now(
    sources: Sequence[reactivex.Observable[VariableUpdate]],
) -> reactivex.Observable[VariableUpdate]:
    """Merge that subscribes to every source at once (``reactivex.merge`` schedules the
    inner subscriptions, which would let a change slip in before the watch is registered).
    Completes when every source has completed."""

    def subscribe(
        observer: rx_abc.ObserverBase[VariableUpdate],
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        remaining = len(sources)

        def completed() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                observer.on_completed()

        if not sources:
            observer.on_completed()
        return CompositeDisposable(
            [s.subscribe(observer.on_next, observer.on_error, completed, scheduler=scheduler)
             for s in sources]
        )

    return reactivex.create(subscribe)


def _name_filter(
    filter_fn: Callable[[str, Any, Any], bool],
) -> Callable[[VariableUpdate], bool]:
    def keep(update: VariableUpdate) -> bool:
        return update.update_type == "initial" or filter_fn(update.name, update.old_value,
                                                            update.value)

    return keep


def _status_of_event(update: VariableUpdate) -> dict[str, Any]:
    return status_from_event(update.metadata)


def _prefixed(name: str, exc: DspexError) -> DspexError:
    return exc.prefixed(f"variable {name!r}")


def _encode_value(name: str, value: Any) -> codec.Value:
    try:
        return codec.encode(value)
    except DspexError as exc:
        raise _prefixed(name, exc) from None


def _encode_rules(name: str, rules: Sequence[Mapping[str, Any]] | None) -> list[pb.AccessRule]:
    """Access rules on the wire; their shape is checked by the server (the authority),
    here only what must be known to encode them."""
    if rules is None:
        return []
    if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, list | tuple):
        raise InvalidValueError(f"variable {name!r}: access_rules must be a list of rules")
    out = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            raise InvalidValueError(
                f"variable {name!r}: access rule {index} must be a mapping, got "
                f"{type(rule).__name__}"
            )
        unknown = sorted(map(str, set(rule) - {"session_pattern", "permissions",
                                               "conditions"}))
        if unknown:
            raise InvalidValueError(
                f"variable {name!r}: access rule {index} has unknown key(s) "
                f"{', '.join(map(repr, unknown))}"
            )
        pattern = rule.get("session_pattern")
        permissions = rule.get("permissions")
        if not isinstance(pattern, str):
            raise InvalidValueError(
                f"variable {name!r}: access rule {index}: session_pattern must be a string, "
                f"got {pattern!r}"
            )
        if isinstance(permissions, str) or not isinstance(permissions, list | tuple) or not all(
            isinstance(p, str) for p in permissions
        ):
            raise InvalidValueError(
                f"variable {name!r}: access rule {index}: permissions must be a list of "
                f"strings, got {permissions!r}"
            )
        out.append(pb.AccessRule(
            session_pattern=pattern, permissions=list(permissions),
            conditions=_encode_metadata(name, rule.get("conditions")),
        ))
    return out


def _encode_metadata(name: str, metadata: Mapping[str, Any] | None) -> Any:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _prefixed(name, InvalidValueError("metadata must be a dict"))
    try:
        return codec.encode_map(metadata)
    except DspexError as exc:
        raise _prefixed(name, exc) from None


def _target_error(target: object) -> str:
    # A grpc channel has no public way to tell its address or credentials, and a
    # grpc.aio channel belongs to the caller's event loop, while the session runs its own
    # connection: say what to pass instead.
    kind = type(target)
    where = f"{kind.__module__}.{kind.__qualname__}"
    if "grpc" in kind.__module__:
        return (
            f"SessionContext takes the server address, not a channel ({where}): grpc "
            "channels do not tell their target or credentials, and this session opens its "
            "own connection. Change SessionContext(session_id, "
            "grpc.aio.insecure_channel('localhost:50051')) to SessionContext(session_id, "
            "'localhost:50051') (for a secure channel pass tls=True or ca_cert=...)"
        )
    return (
        "target must be an address string such as 'localhost:50051', got "
        f"{kind.__qualname__}"
    )


@portal_aware(local=("cancel_watch",))
class SessionContext:
    """A client session: the typed variable API over one gRPC connection.

    ``target=None`` starts an embedded server on 127.0.0.1 and stops it on close.

    ``token`` is the secret of an existing session this one joins (``session.token`` of a
    connection that has it); a new session gets its own. ``tls=True`` makes the channel
    TLS, trusting the system's roots, or ``ca_cert`` (PEM path or bytes; it implies TLS);
    ``tls_server_name`` overrides the name checked against the certificate (tests).
    ``principal_key`` is the key of the server namespace (``--principals``) the session id
    lies in, needed to create such a session. ``limits`` configures the embedded server
    (no target); ``max_message_bytes`` is the largest message the client sends or takes
    (default: ``limits.max_message_bytes`` if given, else the server default, 64 MiB):
    raise it with a server started with a larger ``--max-message-bytes``.

    Example::

        session = SessionContext("session_123", "127.0.0.1:50051")
        await session.initialize()
        await session.register_variable("temperature", "float", 0.7,
                                        constraints={"min": 0.0, "max": 2.0})
        print(await session.get_variable("temperature"))
        other = await SessionContext("session_123", "127.0.0.1:50051",
                                     token=session.token).initialize()
        await session.close()
    """

    def __init__(
        self,
        session_id: str | None = None,
        target: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: float = 60.0,
        client_name: str = "",
        timeout: float | None = 30.0,
        cache_ttl: float | None = 60.0,
        cache_max_size: int | None = 10_000,
        cache_eviction_policy: str = "lru",
        token: str | None = None,
        tls: bool = False,
        ca_cert: Pem | None = None,
        tls_server_name: str | None = None,
        principal_key: str | None = None,
        limits: Limits | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if target is not None and not isinstance(target, str):
            raise TypeError(_target_error(target))
        if token is not None and not isinstance(token, str):
            raise InvalidValueError(f"token must be a string, got {type(token).__name__}")
        if principal_key is not None and not isinstance(principal_key, str):
            raise InvalidValueError(
                f"principal_key must be a string, got {type(principal_key).__name__}"
            )
        self._principal_key = principal_key or None
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidValueError(f"limits must be a Limits, got {type(limits).__name__}")
        if limits is not None and target is not None:
            raise InvalidValueError(
                "limits configure the embedded server (no target); a server you connect to "
                "has its own (pass max_message_bytes= to match its message size)"
            )
        self._limits = limits
        if max_message_bytes is None:
            max_message_bytes = (limits or DEFAULT_LIMITS).max_message_bytes
        if not isinstance(max_message_bytes, int) or isinstance(max_message_bytes, bool) or (
            max_message_bytes < 1
        ):
            raise InvalidValueError(
                f"max_message_bytes must be a positive integer, got {max_message_bytes!r}"
            )
        self.max_message_bytes = max_message_bytes
        self._requested_session_id = session_id
        self._target = target
        self._token = token or None
        self.tls = tls or ca_cert is not None
        self._ca_cert = ca_cert
        self._tls_server_name = tls_server_name
        self._metadata = dict(metadata or {})
        self.ttl_seconds = ttl_seconds
        self.client_name = client_name
        self.timeout = timeout
        self._embedded: EmbeddedHandle | None = None
        self._transport: Any = None
        self._session_id: str | None = None
        self._client_id = ""
        self._incarnation = 0
        # A client lease this client took on a session that is not its own (found while
        # re-attaching) and still has to release: (client id, token to present).
        self._stray: tuple[str, str | None] | None = None
        self._nursery: trio.Nursery | None = None
        self._scheduler: TrioScheduler | None = None
        self._hub: WatchHub | None = None
        self._stop_services: trio.Event | None = None
        self._services_done = trio.Event()
        self._watches: dict[str, Watch] = {}
        self._cache = VariableCache(
            ttl=cache_ttl, max_size=cache_max_size, eviction_policy=cache_eviction_policy
        )
        self._write_count = 0
        self._optimizers: dict[str, type[BaseOptimizer]] = {}
        self._runs: dict[str, OptimizationRun] = {}
        self._runs_by_variable: dict[str, OptimizationRun] = {}
        self.revision = 0
        self.created = False
        self.heartbeats = 0
        # Times the client's lease had expired and it attached again; True once the server
        # no longer has the session at all (its variables are gone).
        self.reattached = 0
        self.lost = False
        self._lost_reason = ""
        self._closed = False
        self._portal_release: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def session_id(self) -> str:
        """The server's id for this session (set by ``initialize``).

        Example::

            print(session.session_id)
        """
        if self._session_id is None:
            if self._closed:
                raise RuntimeError("the session is closed")
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        return self._session_id

    @property
    def token(self) -> str | None:
        """The session's secret token: pass it to ``connect(..., token=...)`` to join this
        session from another connection. Keep it as private as the session's data.

        Example::

            async with dspex_rx.connect(target, session_id=a.session_id,
                                        token=a.token) as b: ...
        """
        return self._token

    @property
    def _trio_token(self) -> trio.lowlevel.TrioToken | None:
        # The trio run the session lives in (its sync methods run there from other threads).
        return self._scheduler.token if self._scheduler is not None else None

    @property
    def target(self) -> str | None:
        """The server address this session talks to.

        Example::

            print(session.target)   # "127.0.0.1:50051"
        """
        return self._target

    async def initialize(self) -> SessionContext:
        """Connect (starting an embedded server if there is no target) and open the session.

        Example::

            session = await SessionContext().initialize()
        """
        from dspex_rx.client.transport import Transport

        if self._session_id is not None:
            return self
        self._closed = False
        try:
            if self._target is None:
                if self.tls:
                    raise InvalidValueError(
                        "tls/ca_cert need a target: the embedded server (no target) serves "
                        "plaintext on 127.0.0.1"
                    )
                self._embedded, self._target = await start_embedded(self._limits)
            options: list[tuple[str, Any]] = list(grpc_options(self.max_message_bytes))
            credentials = None
            if self.tls:
                credentials = channel_credentials(self._ca_cert)
                if self._tls_server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls_server_name))
            self._transport = Transport(
                self._target, options, timeout=self.timeout, credentials=credentials
            )
            await self._transport.open()
            response = await self._attach(
                pb.InitializeSessionRequest(
                    session_id=self._requested_session_id or "",
                    metadata=_encode_metadata("session", self._metadata),
                    ttl_seconds=self.ttl_seconds,
                    client_name=self.client_name,
                )
            )
        except BaseException:
            await self._teardown()
            raise
        self._session_id = response.session_id
        self._client_id = response.client_id
        self._incarnation = response.incarnation
        # A server with auth="none" gives no token to an attacher that sent none.
        self._token = response.session_token or self._token
        self.revision = response.revision
        self.created = response.created
        await self._start_services(response.ttl_seconds)
        # Opened from asyncio: the portal's trio run must last until this session closes.
        self._portal_release = hold_current_run()
        log.debug("session_initialized", session_id=self._session_id, target=self._target)
        return self

    async def _start_services(self, ttl: float) -> None:
        # One system task owns a nursery for everything the session runs in the
        # background (heartbeat, watch stream, scheduler timers), so the spec's
        # initialize()/close() form needs no nursery from the caller; close() ends it.
        started = trio.Event()
        stop = self._stop_services = trio.Event()
        self._services_done = trio.Event()
        interval = max(ttl / 3.0, 0.05)

        async def run() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._scheduler = TrioScheduler(nursery)
                    self._hub = WatchHub(
                        self._transport, SERVICE_NAME, self.session_id, self._client_id,
                        nursery, self._cache, metadata=token_metadata(self._token),
                    )
                    nursery.start_soon(self._heartbeat, interval)
                    started.set()
                    await stop.wait()
                    nursery.cancel_scope.cancel()
            except Exception:
                log.exception("session_services_failed", session_id=self._session_id)
            finally:
                started.set()
                self._services_done.set()

        trio.lowlevel.spawn_system_task(run, name=f"dspex-rx-session[{self._session_id}]")
        await started.wait()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self._detach_stray()
            if self.lost:
                continue  # nothing of this session to keep alive; said once already
            try:
                await self._call(
                    "Heartbeat",
                    pb.HeartbeatRequest(session_id=self.session_id, client_id=self._client_id),
                    pb.HeartbeatResponse,
                )
                self.heartbeats += 1
            except SessionNotFoundError as exc:
                if self.lost:
                    continue  # said once; never attach to a later session of the same id
                if exc.details.get("detached"):
                    # Our lease ran out (a long pause, a network partition) but the session
                    # lives on through other clients: attach again rather than letting the
                    # session vanish under us when they leave. A failure here is retried
                    # at the next beat; it must not take the session's services down.
                    try:
                        await self._reattach()
                    except AuthenticationError as again:
                        # Replaced between the beat and the attach: not ours any more.
                        self._lose(str(again))
                    except (DspexError, grpc.RpcError, RuntimeError) as again:
                        log.warning("reattach_failed", session_id=self._session_id,
                                    error=str(again))
                else:
                    self._lose(str(exc))
            except AuthenticationError as exc:
                # A token that refuses ours is not the session we had: it ended, and a
                # principal made a later one of its id.
                self._lose(str(exc))
            except (DspexError, grpc.RpcError, RuntimeError) as exc:
                log.warning("heartbeat_failed", session_id=self._session_id, error=str(exc))

    async def _attach(self, request: pb.InitializeSessionRequest) -> pb.InitializeSessionResponse:
        # Creating or (re)attaching: the token, and for an id in a reserved namespace the
        # principal's key.
        return await self._call(
            "InitializeSession", request, pb.InitializeSessionResponse,
            metadata=token_metadata(self._token) + principal_metadata(self._principal_key),
        )

    async def _reattach(self) -> None:
        response = await self._attach(
            pb.InitializeSessionRequest(
                session_id=self.session_id,
                ttl_seconds=self.ttl_seconds,
                client_name=self.client_name,
            )
        )
        if response.created or response.incarnation != self._incarnation:
            # Not our session: it had gone, and this call made an empty one of the same
            # id (undone with that session's token), or the id names a later session (its
            # holder came back with the token, or a principal made it again). Say so at
            # once; releasing the lease just taken there is retried at each beat.
            self._lose("it ended" if response.created
                       else "it ended, and its id now names a later session")
            self._stray = (response.client_id,
                           response.session_token if response.created else None)
            await self._detach_stray()
            return
        self._client_id = response.client_id
        if self._hub is not None:
            self._hub.client_id = response.client_id
        self.reattached += 1
        log.warning("session_reattached", session_id=self._session_id,
                    client_id=response.client_id)

    def _lose(self, reason: str) -> None:
        # The session this client had is gone. From here on the client refuses every
        # call for it and its watches end: a later session of the same id may accept
        # this token (its claimant came back), and must not get our writes or reads.
        if self.lost:
            return
        self.lost = True
        self._lost_reason = reason
        log.error("session_lost", session_id=self._session_id, reason=reason)
        if self._hub is not None:
            self._hub.fail(self._lost_error())

    def _lost_error(self) -> SessionNotFoundError:
        return SessionNotFoundError(
            f"session {self._session_id!r} is lost ({self._lost_reason}); this connection no "
            "longer acts for it: connect again"
        )

    async def _detach_stray(self) -> None:
        if self._stray is None:
            return
        client_id, token = self._stray
        try:
            await self._call(
                "CloseSession",
                pb.CloseSessionRequest(session_id=self.session_id, client_id=client_id),
                pb.CloseSessionResponse,
                metadata=token_metadata(token or self._token),
            )
        except SessionNotFoundError:
            pass  # that session (or our lease on it) has gone already
        except (DspexError, grpc.RpcError, RuntimeError) as exc:
            log.warning("detach_failed", session_id=self._session_id, error=str(exc))
            return
        self._stray = None

    async def close(self) -> None:
        """Detach from the session, close the connection, stop an embedded server.

        Watches end and observers complete. Safe to call twice. The session and its
        variables are removed when the last client attached to it closes.

        Example::

            await session.close()
        """
        with trio.CancelScope(shield=True):
            self._closed = self._session_id is not None or self._closed
            for watch in list(self._watches.values()):
                watch.cancel()
            if self._hub is not None:
                await self._hub.close()
            if self._stop_services is not None:
                self._stop_services.set()
                await self._services_done.wait()
                self._stop_services = None
            if self._scheduler is not None:
                self._scheduler.close()
            self._hub = None
            self._nursery = None
            if self._session_id is not None and self._transport is not None:
                try:
                    await self._call(
                        "CloseSession",
                        pb.CloseSessionRequest(
                            session_id=self._session_id, client_id=self._client_id
                        ),
                        pb.CloseSessionResponse,
                        timeout=5.0,
                    )
                except (DspexError, grpc.RpcError) as exc:
                    log.warning("close_failed", session_id=self._session_id, error=str(exc))
            self._session_id = None
            await self._teardown()
            release, self._portal_release = self._portal_release, None
            if release is not None:
                release()

    async def _teardown(self) -> None:
        with trio.CancelScope(shield=True):
            if self._transport is not None:
                transport, self._transport = self._transport, None
                await transport.close()
            if self._embedded is not None:
                embedded, self._embedded = self._embedded, None
                await trio.to_thread.run_sync(embedded.stop)

    async def __aenter__(self) -> SessionContext:
        return await self.initialize()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------- calls

    async def _call(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> M:
        # Every call presents the session's token unless given other ``metadata``.
        if self._transport is None:
            raise RuntimeError("the session is closed")
        if self.lost and method != "CloseSession":
            raise self._lost_error()
        if metadata is None:
            metadata = token_metadata(self._token)
        try:
            response: M = await self._transport.unary(
                f"/{SERVICE_NAME}/{method}", request, response_type, timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            mapped = map_rpc_error(exc)
            if mapped is exc:
                raise
            raise mapped from None
        revision = getattr(response, "revision", 0)
        if isinstance(revision, int) and revision > self.revision:
            self.revision = revision
        return response

    async def ping(self, payload: bytes = b"") -> bytes:
        """One round trip to the server that touches no state (the transport baseline).

        Example::

            assert await session.ping(b"x") == b"x"
        """
        response = await self._call("Echo", pb.EchoRequest(payload=payload), pb.EchoResponse)
        return response.payload

    # --------------------------------------------------------------- variables

    async def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        dependencies: Sequence[str] | None = None,
        access_rules: Sequence[Mapping[str, Any]] | None = None,
        *,
        description: str = "",
    ) -> str:
        """Register a typed variable; returns its id. An existing name raises ``ValueError``.

        Positional parameters are the spec's, in its order; ``description`` is
        keyword-only. ``metadata`` is kept apart from system fields and comes back exactly
        as given (``get_variables(..., include_metadata=True)[name]['metadata']``).

        Example::

            var_id = await session.register_variable(
                "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0})
        """
        spec = self._spec(
            name, type, initial_value, constraints, metadata, description, dependencies,
            access_rules,
        )
        response = await self._call(
            "RegisterVariable",
            pb.RegisterVariableRequest(session_id=self.session_id, spec=spec),
            pb.RegisterVariableResponse,
        )
        self._remember(response.variable)
        return response.variable.id

    def _spec(
        self,
        name: str,
        type_name: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        description: str,
        dependencies: Sequence[str] | None,
        access_rules: Sequence[Mapping[str, Any]] | None,
    ) -> pb.VariableSpec:
        if isinstance(dependencies, str):
            raise InvalidValueError(
                f"variable {name!r}: dependencies must be a list of names or ids, not a string"
            )
        if not isinstance(name, str):
            raise InvalidValueError(f"variable name must be a string, got {name!r}")
        try:
            wire_type = type_to_pb(type_name)
        except DspexError as exc:
            raise _prefixed(name, exc) from None
        return pb.VariableSpec(
            name=name,
            type=wire_type,  # type: ignore[arg-type]
            initial_value=_encode_value(name, initial_value),
            constraints=_encode_metadata(name, constraints),
            metadata=_encode_metadata(name, metadata),
            description=description,
            dependencies=list(dependencies or ()),
            access_rules=_encode_rules(name, access_rules),
        )

    async def set_variable_permissions(
        self, variable: str, rules: Sequence[Mapping[str, Any]]
    ) -> int:
        """Replace a variable's access rules; only its owner session may. Returns the
        revision. A session watching it that loses ``observe`` has that watch ended with
        ``PermissionError``. A rule names ``'any'``, a session the server knows, or a glob
        inside a namespace it reserves (``--principals``); else ``ValueError``.

        Example::

            await session.set_variable_permissions("temperature", [
                {"session_pattern": "admin_*", "permissions": ["read", "write"]},
                {"session_pattern": "any", "permissions": ["observe"],
                 "conditions": {"expires_at": time.time() + 3600}},
            ])
        """
        response = await self._call(
            "SetVariablePermissions",
            pb.SetVariablePermissionsRequest(
                session_id=self.session_id, ref=variable,
                rules=_encode_rules(variable, rules) if rules else [],
            ),
            pb.SetVariablePermissionsResponse,
        )
        return response.revision

    async def check_variable_access(self, variable: str, permission: str) -> bool:
        """Whether this session may use ``permission`` (``read``, ``write``, ``observe``,
        ``optimize``) on a variable: its own (always) or another session's, by id.
        ``False`` for a missing permission and for a variable it cannot see at all (one
        that does not exist looks the same, as everywhere); an unknown permission name
        raises ``ValueError``.

        Example::

            if await session.check_variable_access("var_temperature_3", "write"): ...
        """
        response = await self._call(
            "CheckVariableAccess",
            pb.CheckVariableAccessRequest(
                session_id=self.session_id, ref=variable, permission=permission
            ),
            pb.CheckVariableAccessResponse,
        )
        return response.allowed

    async def get_variable_permissions(self, variable: str) -> list[dict[str, Any]]:
        """A variable's access rules as the spec's dicts (its owner session only sees them).

        Example::

            rules = await session.get_variable_permissions("temperature")
        """
        response = await self._call(
            "GetVariable",
            pb.GetVariableRequest(session_id=self.session_id, ref=variable),
            pb.GetVariableResponse,
        )
        if response.variable.owner_session not in ("", self.session_id):
            raise AccessDeniedError(
                f"variable {variable!r} belongs to session "
                f"{response.variable.owner_session!r}; only its owner sees its rules"
            )
        return [
            {"session_pattern": r.session_pattern, "permissions": list(r.permissions),
             "conditions": codec.decode_map(r.conditions)}
            for r in response.variable.access_rules
        ]

    async def register_variables(self, variables: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Register several variables in one atomic call; returns name -> id.

        Each entry takes the keys of ``register_variable`` (``initial_value`` or ``value``).
        If any entry is invalid, none is registered.

        Example::

            ids = await session.register_variables([
                {"name": "a", "type": "integer", "initial_value": 1},
                {"name": "b", "type": "string", "initial_value": "x"},
            ])
        """
        specs = []
        for index, entry in enumerate(variables):
            if not isinstance(entry, Mapping) or "name" not in entry or "type" not in entry:
                raise InvalidValueError(
                    f"register_variables entry {index} needs at least 'name' and 'type'"
                )
            unknown = set(entry) - {
                "name", "type", "initial_value", "value", "constraints", "metadata",
                "description", "dependencies", "access_rules",
            }
            if unknown:
                raise InvalidValueError(
                    f"register_variables entry {index} ({entry['name']!r}) has unknown keys "
                    f"{sorted(unknown)}"
                )
            specs.append(
                self._spec(
                    entry["name"],
                    entry["type"],
                    entry.get("initial_value", entry.get("value")),
                    entry.get("constraints"),
                    entry.get("metadata"),
                    entry.get("description", ""),
                    entry.get("dependencies"),
                    entry.get("access_rules"),
                )
            )
        response = await self._call(
            "RegisterVariables",
            pb.RegisterVariablesRequest(session_id=self.session_id, specs=specs),
            pb.RegisterVariablesResponse,
        )
        for variable in response.variables:
            self._remember(variable)
        return {v.name: v.id for v in response.variables}

    async def get_variable(
        self,
        name: str,
        default: Any = None,
        bypass_cache: bool = False,
        *,
        as_tensor: str | None = None,
    ) -> Any:
        """The variable's current value, by name or id.

        An unknown variable raises ``KeyError`` unless a ``default`` other than ``None`` is
        given (as the spec says: ``None`` means "no default"). A watched variable is read
        from its actor's entry, which the stream keeps current; an unwatched one is cached
        for the cache TTL. ``bypass_cache=True`` always asks the server (and counts as a
        cache miss). Arrays come back as read-only ``np.ndarray``, except a value written
        from a ``torch.Tensor``, which comes back as one when torch is installed;
        ``as_tensor="torch"`` or ``"numpy"`` asks for one kind whatever the origin.

        Example::

            temperature = await session.get_variable("temperature")
            retries = await session.get_variable("retries", default=3)
        """
        kind = codec.check_tensor_kind(as_tensor)
        started = time.perf_counter()
        found, cached, counted = self._read_cached(name, bypass_cache)
        if found:
            actor = self._require_hub().known(name)
            assert actor is not None
            actor.stats.read_latency_total += time.perf_counter() - started
            return codec.present(cached, kind)
        try:
            response = await self._call(
                "GetVariable",
                pb.GetVariableRequest(session_id=self.session_id, ref=name),
                pb.GetVariableResponse,
            )
        except SessionNotFoundError:
            raise
        except KeyError:
            if default is None:
                raise
            return default
        variable = response.variable
        value = codec.decode(variable.value)
        learned = self._remember(variable, value)
        if not counted:
            learned.stats.cache_misses += 1
        learned.stats.read_latency_total += time.perf_counter() - started
        return codec.present(value, kind)

    async def get_variables(
        self,
        names: Sequence[str],
        defaults: Mapping[str, Any] | None = None,
        include_metadata: bool = False,
        include_stats: bool = False,
        *,
        as_tensor: str | None = None,
    ) -> dict[str, Any]:
        """Several values in one call, keyed by the names asked for.

        Cached values (watched variables, or unwatched within the TTL) are read locally and
        every miss is fetched in one call. A missing name takes ``defaults[name]``; with no
        default (or a ``None`` one, as in ``get_variable``) it raises ``KeyError`` naming
        every missing variable. ``include_metadata`` makes each entry ``{'value': ...,
        'metadata': {the user's metadata, as given}, 'id': ..., 'type': ..., ...}`` (the
        system fields of ``list_variables``, as their own keys) and ``include_stats`` adds
        ``'stats'`` (server counters and timestamps, and this client's counters as in
        ``get_variable_stats``); both read from the server. ``as_tensor`` as in
        ``get_variable``.

        Example::

            values = await session.get_variables(["temperature", "max_tokens"])
            rich = await session.get_variables(["temperature"], include_metadata=True)
        """
        if isinstance(names, str):
            raise InvalidValueError("get_variables takes a list of names, not one string")
        kind = codec.check_tensor_kind(as_tensor)
        plain = not (include_metadata or include_stats)
        local: dict[str, Any] = {}
        counted: set[str] = set()
        to_fetch: list[str] = []
        for ref in dict.fromkeys(names):
            found_locally, cached, was_counted = self._read_cached(ref, bypass_cache=not plain)
            if was_counted:
                counted.add(ref)
            if found_locally:
                local[ref] = cached
            else:
                to_fetch.append(ref)
        found: dict[str, pb.Variable] = {}
        missing: set[str] = set()
        revision = self.revision
        if to_fetch:
            found, missing, revision = await self._get_many(to_fetch)
        defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        unresolved = [ref for ref in to_fetch if ref in missing and ref not in defaults]
        if unresolved:
            raise error_from_kind(
                "not_found",
                f"no variable(s) {', '.join(map(repr, unresolved))} in session "
                f"{self.session_id!r}",
            )
        result: dict[str, Any] = {}
        for ref in names:
            if ref in local:
                result[ref] = codec.present(local[ref], kind)
                continue
            variable = found.get(ref)
            if variable is None:
                result[ref] = defaults[ref]
                continue
            value = codec.decode(variable.value)
            actor = self._remember(variable, value)
            if ref not in counted:
                actor.stats.cache_misses += 1
                counted.add(ref)
            if plain:
                result[ref] = codec.present(value, kind)
                continue
            entry: dict[str, Any] = {"value": codec.present(value, kind)}
            if include_metadata:
                entry.update(_info(variable, revision))
            if include_stats:
                entry["stats"] = {
                    "version": variable.version,
                    "mod_revision": variable.mod_revision,
                    "create_revision": variable.create_revision,
                    "created_at": utc_datetime(variable.created_at),
                    "updated_at": utc_datetime(variable.updated_at),
                    **self._stats(variable.id),
                }
            result[ref] = entry
        return result

    async def set_variable(
        self,
        name: str,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        create_if_missing: bool = False,
        type_hint: str | None = None,
        *,
        expected_version: int | None = None,
        source: str | None = None,
        fencing_token: int | None = None,
    ) -> int:
        """Validate on the server and write one value; returns the variable's new version.

        With ``create_if_missing`` an unknown name is registered, its type taken from
        ``type_hint`` or inferred from the value (ambiguous values raise ``TypeError``).
        ``expected_version`` makes the write a compare-and-set: if the variable is at
        another version, ``ConflictError`` (a ``ValueError`` with ``.current_version``) is
        raised and nothing is written. ``source`` is the writer watchers see
        (``'derived'`` for computed variables); by default this session. A variable under
        an optimization lease takes writes only with the lease's ``fencing_token``; any
        other write raises ``OptimizationLockedError``.

        Example::

            await session.set_variable("temperature", 0.9, metadata={"reason": "sweep"})
            await session.set_variable("counter", 8, expected_version=7)
        """
        request = pb.SetVariableRequest(
            session_id=self.session_id,
            ref=name,
            value=_encode_value(name, value),
            metadata=_encode_metadata(name, metadata),
            create_if_missing=create_if_missing,
            expected_version=_check_positive(name, "expected_version", expected_version),
            source=source or "",
            fencing_token=_check_positive(name, "fencing_token", fencing_token),
        )
        if type_hint is not None:
            try:
                request.type_hint = type_to_pb(type_hint)  # type: ignore[assignment]
            except DspexError as exc:
                raise _prefixed(name, exc) from None
        started = time.perf_counter()
        response = await self._call("SetVariable", request, pb.SetVariableResponse)
        actor = self._remember(response.variable)
        actor.stats.write_count += 1
        actor.stats.write_latency_total += time.perf_counter() - started
        return response.variable.version

    async def update_variables(
        self,
        updates: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        atomic: bool = True,
        *,
        expected_versions: Mapping[str, int] | None = None,
        require_leases: Sequence[HeldLease] = (),
    ) -> dict[str, bool | str]:
        """Write several variables in one call; returns name -> ``True`` or an error message.

        ``atomic=True``: all are validated first and applied under one revision, or none
        is (the bad entries carry their error, the rest say they were not applied). No
        exception is raised for bad entries. ``atomic=False`` applies what is valid.
        ``expected_versions`` maps names to the version each must be at (compare-and-set
        per entry). In an atomic batch a mismatch raises ``ConflictError`` and nothing is
        applied: ``.current_version`` is the first stale variable's version and
        ``.details['conflicts']`` maps every stale name to its version. Without
        ``atomic`` a mismatch is that entry's error and the rest apply.
        ``require_leases``: optimization leases (``optimization_lease`` handles) this
        session must still hold for the batch to apply, checked in the same step as the
        write; if one was stopped or expired, ``OptimizationLockedError`` and nothing is
        applied (a run's results publish only while the run is alive).

        Example::

            results = await session.update_variables({"temperature": 0.5, "max_tokens": 512})
            assert all(r is True for r in results.values())
        """
        request = pb.UpdateVariablesRequest(
            session_id=self.session_id,
            metadata=_encode_metadata("update", metadata),
            atomic=atomic,
        )
        for lease in require_leases:
            request.require_leases.add(
                ref=lease.variable, optimization_id=lease.optimization_id,
                fencing_token=lease.token,
            )
        local_errors: dict[str, str] = {}
        sent: dict[str, Any] = {}
        expected_versions = expected_versions or {}
        unknown = set(expected_versions) - set(updates)
        if unknown:
            raise InvalidValueError(
                f"expected_versions names {sorted(unknown)} that are not among the updates"
            )
        for name, value in updates.items():
            try:
                wire_value = _encode_value(name, value)
                expected = _check_positive(name, "expected_version", expected_versions.get(name))
            except DspexError as exc:
                local_errors[name] = str(exc)
                continue
            request.updates.add(ref=name, value=wire_value, expected_version=expected)
            sent[name] = wire_value
        if local_errors and atomic:
            first = next(iter(local_errors))
            return {
                name: local_errors.get(
                    name, f"not applied: the atomic batch failed on {first!r}"
                )
                for name in updates
            }
        results: dict[str, bool | str] = dict(local_errors)
        if request.updates:
            started = time.perf_counter()
            response = await self._call("UpdateVariables", request, pb.UpdateVariablesResponse)
            elapsed = time.perf_counter() - started
            conflicts = {
                r.ref: r.current_version for r in response.results if r.error_kind == "conflict"
            }
            if atomic and conflicts:
                stale = next(r for r in response.results if r.error_kind == "conflict")
                raise ConflictError(
                    stale.error + " (nothing in the batch was applied)",
                    current_version=stale.current_version,
                    conflicts=conflicts,
                )
            hub = self._require_hub()
            for result in response.results:
                results[result.ref] = True if result.ok else result.error
                if result.ok:
                    # The server sends the stored value only when validation changed it.
                    stored = result.value if result.HasField("value") else sent[result.ref]
                    actor = hub.learn(result.variable_id, result.name)
                    actor.store(codec.decode(stored), result.version, result.mod_revision)
                    actor.stats.write_count += 1
                    actor.stats.write_latency_total += elapsed
        return {name: results[name] for name in updates}

    async def list_variables(
        self, pattern: str | None = None, *, glob: bool = False
    ) -> list[dict[str, Any]]:
        """Variables whose names match ``pattern``, sorted by name: a regular expression
        (RE2) searched anywhere in the name, as ``re.search`` would (``^model\\.`` for a
        prefix, ``^...$`` for the whole name), the same rule as ``export_variables`` and
        ``VariableCache.invalidate_pattern``. ``glob=True`` takes an fnmatch glob
        (``model.*``) matching the whole name instead. A pattern RE2 refuses raises
        ``ValueError`` naming it and why.

        Each entry is the ``include_metadata`` dict plus ``'value'``.

        Example::

            for info in await session.list_variables(r"^model\\."):
                print(info["name"], info["value"])
        """
        response = await self._call(
            "ListVariables",
            pb.ListVariablesRequest(
                session_id=self.session_id, pattern=name_pattern("pattern", pattern, glob)
            ),
            pb.ListVariablesResponse,
        )
        infos = []
        for variable in response.variables:
            value = codec.decode(variable.value)
            self._remember(variable, value)
            infos.append({**_info(variable), "value": codec.present(value, None)})
        return infos

    async def delete_variable(self, name: str, cascade: bool = False) -> bool:
        """Delete a variable by name or id; unknown names raise ``KeyError``. A variable
        others depend on raises ``ValueError`` unless ``cascade=True``, which deletes its
        dependents (transitively) too, in one revision.

        Example::

            await session.delete_variable("scratch")
            await session.delete_variable("base_temperature", cascade=True)
        """
        response = await self._call(
            "DeleteVariable",
            pb.DeleteVariableRequest(session_id=self.session_id, ref=name, cascade=cascade),
            pb.DeleteVariableResponse,
        )
        hub = self._require_hub()
        for var_id in response.deleted_ids or [response.id]:
            actor = hub.known(var_id)
            if actor is not None:
                self._cache.invalidate_nowait(actor.id, "deleted")
                if not actor.attached:
                    hub.forget(actor)
        return True

    # --------------------------------------------------------------- dependencies

    async def add_dependency(
        self,
        from_variable: str,
        to_variable: str,
        dependency_type: str = "data",
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that ``from_variable`` depends on ``to_variable`` (``data``,
        ``constraint`` or ``optimization``). A dependency that would close a cycle raises
        ``ValueError`` naming it (``a -> b -> c -> a``); unknown variables raise
        ``KeyError``. When ``to_variable`` changes, watchers of ``from_variable`` get a
        ``dependency_changed`` update in the same frame.

        Example::

            await session.add_dependency("effective_temperature", "base_temperature")
        """
        if dependency_type not in DEPENDENCY_TO_PB:
            raise InvalidValueError(
                f"dependency_type must be one of {', '.join(DEPENDENCY_TO_PB)}, "
                f"got {dependency_type!r}"
            )
        await self._call(
            "AddDependency",
            pb.AddDependencyRequest(
                session_id=self.session_id,
                from_ref=from_variable,
                to_ref=to_variable,
                dependency_type=DEPENDENCY_TO_PB[dependency_type],  # type: ignore[arg-type]
                metadata=_encode_metadata(from_variable, metadata),
            ),
            pb.AddDependencyResponse,
        )
        return True

    async def remove_dependency(self, from_variable: str, to_variable: str) -> bool:
        """Forget that ``from_variable`` depends on ``to_variable``; returns whether it did.

        Example::

            await session.remove_dependency("effective_temperature", "base_temperature")
        """
        response = await self._call(
            "RemoveDependency",
            pb.RemoveDependencyRequest(
                session_id=self.session_id, from_ref=from_variable, to_ref=to_variable
            ),
            pb.RemoveDependencyResponse,
        )
        return response.removed

    async def _dependencies(
        self, variable: str, dependents: bool, transitive: bool
    ) -> list[dict[str, Any]]:
        response = await self._call(
            "GetDependencies",
            pb.GetDependenciesRequest(
                session_id=self.session_id, ref=variable, dependents=dependents,
                transitive=transitive,
            ),
            pb.GetDependenciesResponse,
        )
        return [
            {
                "variable_id": entry.variable_id,
                "name": entry.name,
                "type": DEPENDENCY_FROM_PB.get(entry.dependency_type, "data"),
                "variable_type": type_from_pb(entry.type),
                "metadata": codec.decode_map(entry.metadata),
                "depth": entry.depth,
            }
            for entry in response.entries
        ]

    async def get_dependencies(
        self, variable: str, include_transitive: bool = False
    ) -> list[dict[str, Any]]:
        """What ``variable`` depends on, nearest first: ``variable_id``, ``name``, ``type``
        (the dependency's type, as in the spec: ``'data'``, ``'constraint'`` or
        ``'optimization'``), ``variable_type`` (the variable's own type, ``'float'``...),
        ``metadata`` (the dependency's), ``depth`` (1 = direct).

        Example::

            deps = await session.get_dependencies("effective_temperature")
            assert deps[0]["type"] == "data"
        """
        return await self._dependencies(variable, False, include_transitive)

    async def get_dependents(
        self, variable: str, include_transitive: bool = False
    ) -> list[dict[str, Any]]:
        """What depends on ``variable``, nearest first (entries as in ``get_dependencies``).

        Example::

            users = await session.get_dependents("base_temperature", include_transitive=True)
        """
        return await self._dependencies(variable, True, include_transitive)

    # -------------------------------------------------------------------- history

    async def get_variable_history(
        self,
        variable: str,
        limit: int = 100,
        offset: int = 0,
        include_metadata: bool = True,
    ) -> list[dict[str, Any]]:
        """Past values, newest first: ``version``, ``value``, ``updated_at`` (an aware UTC
        ``datetime``), and with ``include_metadata`` also ``updated_by``, ``metadata`` (that
        write's metadata as its writer gave it; for a rollback its ``rollback_to`` and
        ``reason``), ``revision``, and ``keys_converted`` / ``tensor_origin`` where they apply
        to that version's value. Retention is bounded on the server
        (1,000 versions by default); if the page reaches versions that fell out, it ends
        with one entry ``{'expired': True, 'versions': [first, last], 'count': n}`` saying
        so, never a silently shorter page.

        Example::

            for entry in await session.get_variable_history("temperature", limit=10):
                print(entry["version"], entry["value"])
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit < 2**31:
            raise InvalidValueError(f"limit must be an integer from 1 to 2**31-1, got {limit!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**31:
            raise InvalidValueError(
                f"offset must be an integer from 0 to 2**31-1, got {offset!r}"
            )
        response = await self._call(
            "GetHistory",
            pb.GetHistoryRequest(
                session_id=self.session_id, ref=variable, limit=limit, offset=offset,
                include_metadata=include_metadata,
            ),
            pb.GetHistoryResponse,
        )
        entries: list[dict[str, Any]] = []
        for entry in response.entries:
            item: dict[str, Any] = {
                "version": entry.version,
                "value": codec.present(codec.decode(entry.value), None),
                "updated_at": utc_datetime(entry.updated_at),
            }
            if include_metadata:
                item["updated_by"] = entry.updated_by
                item["metadata"] = codec.decode_map(entry.metadata)
                item["revision"] = entry.revision
                item.update(codec.value_flags(entry.value))  # keys_converted, tensor_origin
            entries.append(item)
        if response.expired_to_version:
            first, last = response.expired_from_version, response.expired_to_version
            entries.append(
                {
                    "expired": True,
                    "versions": [first, last],
                    "count": last - first + 1,
                    "reason": f"beyond retention ({response.retention} versions; the "
                    f"oldest kept is {response.oldest_retained_version})",
                }
            )
        return entries

    async def rollback_variable(
        self, variable: str, version: int, reason: str | None = None
    ) -> int:
        """Write a new version whose value equals that of ``version`` (history is
        appended, never rewritten); returns the new version. Watchers see an ordinary
        change. An unknown or expired version raises ``ValueError``.

        Example::

            await session.rollback_variable("temperature", 3, reason="sweep diverged")
        """
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidValueError(f"version must be an integer, got {version!r}")
        started = time.perf_counter()
        response = await self._call(
            "Rollback",
            pb.RollbackRequest(
                session_id=self.session_id, ref=variable, version=version, reason=reason or ""
            ),
            pb.RollbackResponse,
        )
        actor = self._remember(response.variable)
        actor.stats.write_count += 1
        actor.stats.write_latency_total += time.perf_counter() - started
        return response.variable.version

    # ---------------------------------------------------------- export and import

    async def export_variables(
        self,
        format: str = "json",
        include_history: bool = False,
        include_dependencies: bool = True,
        filter_pattern: str | None = None,
        *,
        glob: bool = False,
    ) -> bytes:
        """This session's variables as a file in ``format``: ``json``, ``yaml``,
        ``parquet`` (needs the ``parquet`` extra: ``pip install 'dspex-rx[parquet]'``) or
        ``pickle``. Each variable keeps its type, value (arrays bit for bit: dtype, shape
        and bytes), constraints, metadata, description, version and access rules; with
        ``include_history`` its retained versions, with ``include_dependencies`` (the
        default) what it depends on. ``filter_pattern`` is a regular expression (RE2)
        searched in each name, as ``re.search`` would (``r'.*model.*'`` or ``'model'``: names
        containing "model"; ``'^model.*$'``: names starting with it); ``glob=True`` takes an
        fnmatch glob on the whole name instead (``'model.*'``). A pattern RE2 refuses raises
        ``ValueError`` naming it and why. The file carries ``format_version`` 1 (see
        ``dspex_rx.exchange``).

        Example::

            data = await session.export_variables("yaml", include_history=True)
            pathlib.Path("variables.yaml").write_bytes(data)
            models = await session.export_variables(filter_pattern=r".*model.*")
        """
        format = exchange.check_format(format)
        wire_pattern = name_pattern("filter_pattern", filter_pattern, glob)
        response = await self._call(
            "ExportVariables",
            pb.ExportVariablesRequest(
                session_id=self.session_id,
                include_history=bool(include_history),
                include_dependencies=bool(include_dependencies),
                filter_pattern=wire_pattern,
            ),
            pb.ExportVariablesResponse,
        )

        def write() -> bytes:
            return exchange.write_document(
                exchange.snapshot_to_document(response.snapshot), format
            )

        # Serializing a large export takes a while: off the trio thread, watches flow on.
        return await trio.to_thread.run_sync(write)

    async def import_variables(
        self,
        data: bytes | str,
        format: str = "json",
        merge_strategy: str = "replace",
        dry_run: bool = False,
        *,
        trusted: bool = False,
    ) -> dict[str, Any]:
        """Import a file made by ``export_variables``: everything is validated first (types,
        constraints, names, history, dependencies: none missing, no cycle), then applied
        in one commit on the server, or not at all. Returns ``imported``, ``skipped``,
        ``errors`` (how many variables are in error, an int as in the spec; nothing was
        applied if it is not 0), ``error_details`` (their messages, each naming the
        variable), ``details`` (per variable: ``name``, ``action`` — ``create``, ``replace``,
        ``merge``, ``skip`` or ``error`` —, ``version`` after the import, ``message``),
        plus ``applied``, ``dry_run``, ``revision`` and ``dependencies_added``.

        - New variables are created, with the file's access rules; with exported
          history they keep their version and their older versions (restored as they
          were). Without it they start at 1.
        - ``merge_strategy`` says what happens to variables the session already has:
          ``replace`` writes the imported value, metadata and description as a new
          version; ``keep`` leaves them as they are; ``merge`` merges dict values and
          metadata key-wise (imported keys win), replaces other values, keeps the
          session's description unless the import has one, and skips a variable nothing
          would change. History is only appended to; types and constraints never change.
        - Dependencies are added between the imported variables (and to variables the
          session has); a dependency on a variable in neither is an error.
        - Imported writes carry ``imported_from``, ``export_revision``,
          ``format_version`` and ``merge_strategy`` as their metadata.

        ``dry_run=True`` validates and reports what would happen, changing nothing. Data
        that is not a readable export (garbage, truncated, another format, a field of the
        wrong kind, a newer ``format_version``) raises ``ValueError`` naming the problem.
        **Pickle runs code from the file while loading**, so ``format='pickle'`` is
        refused with ``ValueError`` unless ``trusted=True``: pass it only for files you
        made yourself.

        Example::

            report = await session.import_variables(data, "yaml", merge_strategy="keep",
                                                     dry_run=True)
            if report["errors"] == 0:
                await session.import_variables(data, "yaml", merge_strategy="keep")
        """
        format = exchange.check_format(format)
        strategy = _MERGE_STRATEGIES.get(merge_strategy)
        if strategy is None:
            raise InvalidValueError(
                f"merge_strategy must be one of {', '.join(_MERGE_STRATEGIES)}, got "
                f"{merge_strategy!r}"
            )
        if isinstance(data, str):
            if format not in ("json", "yaml"):
                raise VariableTypeError(f"{format} data must be bytes, not str")
            data = data.encode("utf-8")
        raw = data
        snapshot = await trio.to_thread.run_sync(
            lambda: exchange.read_snapshot(raw, format, trusted=trusted)
        )
        response = await self._call(
            "ImportVariables",
            pb.ImportVariablesRequest(
                session_id=self.session_id,
                snapshot=snapshot,
                merge_strategy=strategy,  # type: ignore[arg-type]
                dry_run=bool(dry_run),
            ),
            pb.ImportVariablesResponse,
        )
        for outcome in response.outcomes:
            if outcome.HasField("variable"):
                self._remember(outcome.variable)
        return _import_result(response)

    # ------------------------------------------------------------ the actor cache

    def _require_hub(self) -> WatchHub:
        if self._hub is None:
            if self._closed:
                raise RuntimeError("the session is closed")
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        if self.lost:
            raise self._lost_error()
        return self._hub

    def _remember(self, variable: pb.Variable, value: Any = _MISSING) -> VariableActor:
        """Hand a server answer to the variable's actor (the entry's only writer)."""
        # Names are per session: another session's variable is known here by its id only.
        foreign = variable.owner_session not in ("", self.session_id)
        actor = self._require_hub().learn(
            variable.id, variable.id if foreign else variable.name
        )
        if foreign and value is _MISSING and not variable.HasField("value"):
            return actor  # the server sent no value: this session may not read it
        actor.store(
            codec.decode(variable.value) if value is _MISSING else value,
            variable.version,
            variable.mod_revision,
        )
        return actor

    def _read_cached(self, ref: str, bypass_cache: bool) -> tuple[bool, Any, bool]:
        """A local read: (found, value, whether a miss was already counted)."""
        actor = self._require_hub().known(ref)
        if actor is None:
            self._cache.lookup(ref)  # nothing is cached under an unknown ref: a miss
            return False, None, False
        if bypass_cache:
            actor.stats.cache_misses += 1
            return False, None, True
        found, value = actor.read()
        return found, value, True

    async def fetch_missing(self, var_ids: Sequence[str]) -> dict[str, Any]:
        """One ``GetVariables`` call for the given ids or names: ``{ref: value}`` of those
        that exist. The default loader for ``VariableCache.get_batch``.

        Example::

            cache = VariableCache()
            values = await cache.get_batch(["a", "b"], session.fetch_missing)
        """
        found, _, _ = await self._get_many(list(var_ids))
        values = {}
        for ref, variable in found.items():
            values[ref] = codec.decode(variable.value)
            self._remember(variable, values[ref])
        return values

    async def _get_many(
        self, refs: list[str]
    ) -> tuple[dict[str, pb.Variable], set[str], int]:
        """One GetVariables call: (ref -> variable for those found, missing refs, revision)."""
        response = await self._call(
            "GetVariables",
            pb.GetVariablesRequest(session_id=self.session_id, refs=refs),
            pb.GetVariablesResponse,
        )
        missing = set(response.missing)
        found = dict(
            zip([r for r in refs if r not in missing], response.variables, strict=True)
        )
        return found, missing, response.revision

    def set_cache_config(
        self,
        ttl: float | None = _MISSING,
        max_size: int | None = _MISSING,
        eviction_policy: str | None = _MISSING,
    ) -> None:
        """Change the client cache: ``ttl`` seconds (``None``: no expiry, ``0``: no caching
        of unwatched variables), ``max_size`` entries (``None``: unbounded) and
        ``eviction_policy`` (``lru``, ``lfu``, ``fifo``). Omitted arguments stay as they are.
        Watched variables are always served from their pushed entry.

        Example::

            session.set_cache_config(ttl=5.0, max_size=1000, eviction_policy="lfu")
        """
        options: dict[str, Any] = {}
        if ttl is not _MISSING:
            options["ttl"] = ttl
        if max_size is not _MISSING:
            options["max_size"] = max_size
        if eviction_policy is not _MISSING:
            if eviction_policy is None:
                raise InvalidValueError(
                    "eviction_policy must be one of 'lru', 'lfu', 'fifo', not None"
                )
            options["eviction_policy"] = eviction_policy
        self._cache.configure(**options)

    def get_cache_info(self) -> dict[str, Any]:
        """``size``, ``ttl``, ``max_size``, ``eviction_policy``, ``hit_rate``,
        ``eviction_count`` and the raw counters of the client cache.

        Example::

            print(session.get_cache_info()["hit_rate"])
        """
        return self._cache.info()

    @property
    def cache(self) -> VariableCache:
        """The session's ``VariableCache`` (entries are written by variable actors only).

        Example::

            await session.cache.invalidate_pattern(r"^model\\.", "config reloaded")
        """
        return self._cache

    async def get_variable_stats(self, variable: str | None = None) -> dict[str, Any]:
        """Client-side counters for one variable, or summed over all when ``variable`` is None:
        ``read_count`` (= ``cache_hits`` + ``cache_misses``), ``write_count``,
        ``cache_hits``, ``cache_misses``, ``cache_hit_rate``, ``avg_read_latency_ms``,
        ``avg_write_latency_ms``, ``total_optimization_time_s``. Awaitable, as in the
        spec (it makes no call: the counters are this client's); a variable this session
        has not used raises ``KeyError``.

        Example::

            stats = await session.get_variable_stats("temperature")
            print(stats["cache_hit_rate"])
        """
        return self._stats(variable)

    def _stats(self, variable: str | None = None) -> dict[str, Any]:
        hub = self._require_hub()
        if variable is not None:
            actor = hub.known(variable)
            if actor is None:
                raise error_from_kind(
                    "not_found", f"no statistics for {variable!r}: this session has not used it"
                )
            actors = [actor]
        else:
            actors = list({id(a): a for a in [*hub.by_id.values(), *hub.by_name.values()]}
                          .values())
        hits = sum(a.stats.cache_hits for a in actors)
        misses = sum(a.stats.cache_misses for a in actors)
        writes = sum(a.stats.write_count for a in actors)
        reads = hits + misses
        read_time = sum(a.stats.read_latency_total for a in actors)
        write_time = sum(a.stats.write_latency_total for a in actors)
        return {
            "read_count": reads,
            "write_count": writes,
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_hit_rate": hits / reads if reads else 0.0,
            "avg_read_latency_ms": 1000.0 * read_time / reads if reads else 0.0,
            "avg_write_latency_ms": 1000.0 * write_time / writes if writes else 0.0,
            "total_optimization_time_s": sum(a.stats.optimization_time for a in actors),
        }

    # ------------------------------------------------------------------ watching

    def observe(
        self, name: str, include_initial: bool = True
    ) -> reactivex.Observable[VariableUpdate]:
        """A reactivex ``Observable`` of one variable's ``VariableUpdate``s, on trio time.

        Operators that need a clock (``debounce``, ``throttle_first``, ``sample``...) use
        the session's trio scheduler through any number of ``.pipe()`` calls; callbacks run
        in the trio thread. Every local observer of a variable shares one subscription on
        the connection's stream; disposing the last one unsubscribes. Subscribe from the
        trio thread. The wire subscription is sent in the background: ``await
        session.sync()`` after subscribing waits until it is in force.

        Example::

            session.observe("temperature").pipe(ops.debounce(0.5)).subscribe(print)
        """
        if self._scheduler is None:
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        return VariableObservable(self._require_hub(), name, include_initial, self._scheduler)

    def _watch(self, observable: reactivex.Observable[VariableUpdate]) -> Watch:
        def forget(w: Watch) -> None:
            self._watches.pop(w.id, None)

        watch = Watch(observable, on_close=forget, ready=self.sync)
        if not watch.closed:
            self._watches[watch.id] = watch
        return watch

    def watch_variable(
        self,
        name: str,
        include_initial: bool = True,
        filter_fn: Callable[[Any, Any], bool] | None = None,
        throttle_ms: float = 0,
    ) -> Watch:
        """Watch one variable: an async iterator of ``VariableUpdate`` (built on ``observe``).

        ``filter_fn(old, new)`` keeps the changes it returns true for (the initial value is
        never filtered). ``throttle_ms`` passes the first change at once and then at most
        one per window, always ending with the latest value. The watch starts when this is
        called; end it with ``cancel_watch(watch)``, ``async with``, or by cancelling the
        task that iterates it.

        Example::

            async with session.watch_variable("progress", throttle_ms=500) as watch:
                async for update in watch:
                    print(update.value)
        """
        observable = self.observe(name, include_initial)
        if filter_fn is not None:
            keep = filter_fn

            def changed(u: VariableUpdate) -> bool:
                return u.update_type == "initial" or keep(u.old_value, u.value)

            observable = observable.pipe(ops.filter(changed))
        if throttle_ms:
            observable = observable.pipe(
                throttle_latest(throttle_ms / 1000.0, passthrough=_is_initial)
            )
        return self._watch(observable)

    def watch_variables(
        self,
        names: Sequence[str],
        include_initial: bool = True,
        filter_fn: Callable[[str, Any, Any], bool] | None = None,
        throttle_ms: float = 0,
        debounce_ms: float = 0,
    ) -> Watch:
        """Watch several variables through one async iterator.

        ``filter_fn(name, old, new)`` as in ``watch_variable``; ``throttle_ms`` applies per
        variable; ``debounce_ms`` applies across the set: once no change has come for that
        long, the latest update of each variable that changed arrives, in revision order.

        Example::

            async for update in session.watch_variables(["a", "b"], debounce_ms=200):
                print(update.name, update.value)
        """
        if isinstance(names, str):
            raise InvalidValueError("watch_variables takes a list of names, not one string")
        streams = []
        for name in names:
            observable = self.observe(name, include_initial)
            if filter_fn is not None:
                observable = observable.pipe(ops.filter(_name_filter(filter_fn)))
            if throttle_ms:
                observable = observable.pipe(
                throttle_latest(throttle_ms / 1000.0, passthrough=_is_initial)
            )
            streams.append(observable)
        merged = _merge_now(streams)
        if debounce_ms:
            merged = merged.pipe(debounce_settled(debounce_ms / 1000.0))
        assert self._scheduler is not None
        return self._watch(with_trio_scheduler(merged, self._scheduler))

    def cancel_watch(
        self, watch: Watch | str | asyncio.Future[Any] | trio.CancelScope
    ) -> bool:
        """End a watch: by its ``Watch`` or its id; or by the task that runs it (an asyncio
        task: the task is cancelled and every watch it runs or has iterated ends); or, under
        trio, by the ``trio.CancelScope`` the consuming task runs in (cancelled: a watch
        it is iterating ends with it, as any watch whose consumer is cancelled does).

        Returns True if it ended something still running (a watch, a task not yet done, a
        scope not yet cancelled), False if there was nothing to end.

        Example::

            task = asyncio.create_task(session.watch_variable("temperature"))
            ...
            session.cancel_watch(task)          # also: session.cancel_watch(watch)
        """
        if isinstance(watch, trio.CancelScope):
            was_running = not watch.cancel_called
            watch.cancel()
            return was_running
        if isinstance(watch, asyncio.Future):
            ended = not watch.done()
            for driven in cancel_task(watch):
                ended = self.cancel_watch(driven) or ended
            return ended
        key = watch if isinstance(watch, str) else watch.id
        found = self._watches.get(key)
        if found is None or found.closed:
            return False
        found.cancel()
        return True

    async def derive(
        self,
        name: str,
        inputs: Sequence[str],
        fn: Callable[..., Any],
        type: str | None = None,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> Derived:
        """Register ``name`` as a computed variable: ``fn(*input_values)`` (sync or async),
        with ``inputs`` as its dependencies, recomputed by this session from the latest
        inputs and written back with ``source='derived'``. Glitch-free: an atomic batch
        that changes several inputs causes one recomputation from all of its new values.
        ``type`` defaults to the type of the first result. Returns a ``Derived`` handle
        (``cancel()`` stops recomputing; closing the session does too).

        Example::

            await session.derive("effective_temperature",
                                 ["base_temperature", "style_modifier"],
                                 lambda base, style: base * style)
        """
        if isinstance(inputs, str) or not inputs:
            raise InvalidValueError(f"variable {name!r}: derive needs a list of input variables")
        if self._nursery is None:
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        current = await self.get_variables(list(inputs), include_metadata=True)
        input_values = [current[ref]["value"] for ref in inputs]
        result = fn(*input_values)
        if inspect.isawaitable(result):
            result = await result
        type_name = type or infer_type(name, result)
        var_id = await self.register_variable(
            name, type_name, result, constraints=constraints,
            metadata={**(metadata or {}), "derived_from": list(inputs)},
            description=description, dependencies=list(inputs),
        )
        derived_inputs = [
            i for i, ref in enumerate(inputs) if "derived_from" in current[ref]["metadata"]
        ]
        derived = Derived(self, name, inputs, fn, result, input_values, var_id, derived_inputs)
        self._nursery.start_soon(derived.run, name=f"dspex-rx-derive[{name}]")
        return derived

    # --------------------------------------------------------------- optimization

    async def register_python_optimizer(
        self, name: str, optimizer_class: type[BaseOptimizer]
    ) -> None:
        """Make a ``BaseOptimizer`` subclass (the ask/tell protocol) usable as
        ``start_optimization(..., optimizer_type=name)`` in this session. Built-in names
        (``grid_search``, ``bayesian``, ``gradient``, ``random``) cannot be replaced.

        Example::

            class Halving(BaseOptimizer):
                def ask(self): ...
                def tell(self, value, score): super().tell(value, score)

            await session.register_python_optimizer("halving", Halving)
        """
        # Awaitable as the spec has it; registration is local to this connection.
        await trio.lowlevel.checkpoint()
        check_optimizer_class(name, optimizer_class)
        self._optimizers[name] = optimizer_class

    async def start_optimization(
        self,
        variable: str,
        optimizer_type: str,
        optimizer_config: Mapping[str, Any] | None = None,
        max_iterations: int = 100,
        convergence_threshold: float = 0.001,
        callback: Callable[[int, Any, dict[str, Any]], Any] | None = None,
        objective: Callable[[Any], Any] | None = None,
        *,
        lease_ttl: float | None = None,
    ) -> str:
        """Optimize one variable under a server lease; returns the optimization id at once
        while the run goes on in the background (in this connection's nursery).

        Each iteration proposes a value, writes it under the lease's fencing token, gets
        its evaluation, records it, then calls ``callback(iteration, value, metrics)`` (a
        callback returning ``False`` ends the run). An evaluation is a number or a dict of
        metrics whose target is ``optimizer_config['metric']``;
        ``optimizer_config['mode']`` is ``'max'`` (default) or ``'min'``.

        Without ``objective`` (the spec's form), the evaluation comes from the program
        over the server, ask/tell: the run writes the proposal and waits until someone
        reports it: ``proposals(variable)`` yields each proposal and ``proposal.report``
        answers it (``report_metrics`` naming the proposal), from any connection of the
        session (or another session allowed to ``optimize`` the variable), or, when
        ``optimizer_config['metric_variable']`` names a variable, by a write to it whose
        metadata names the proposal (``proposal_version``, or ``iteration`` with
        ``optimization_id``; its value: a number, or a dict of metrics). A run nobody
        reports to waits, renewing its lease and warning once per lease TTL, until
        ``stop_optimization``. ``objective(value)`` is the in-process shortcut: sync
        objectives run in a worker thread, async ones in the session's nursery. The run
        ends at ``max_iterations``, on convergence, when the search space is exhausted, or when
        someone calls ``stop_optimization``; then the best value is written and the lease
        released. While it runs, other writes to the variable raise
        ``OptimizationLockedError``; a second start raises it too (a ``ValueError`` saying
        the variable is "already being optimized"). ``lease_ttl`` (server default 30 s)
        is how long the lease outlives a holder that stops renewing it.

        Example::

            opt_id = await session.start_optimization(
                "temperature", "bayesian", {"n_initial_points": 4, "seed": 7},
                max_iterations=20)
            async for proposal in session.proposals("temperature"):   # ends with the run
                await proposal.report(-abs(proposal.value - 1.3))     # evaluate it
        """
        config = dict(optimizer_config or {})
        objective_fn = as_objective(objective, variable)
        metric_variable = config.get("metric_variable")
        if metric_variable is not None and (
            not isinstance(metric_variable, str) or not metric_variable
        ):
            raise InvalidValueError(
                f"variable {variable!r}: optimizer_config['metric_variable'] must be a "
                f"variable name, got {metric_variable!r}"
            )
        if metric_variable is not None and objective_fn is not None:
            raise InvalidValueError(
                f"variable {variable!r}: optimizer_config['metric_variable'] and objective= "
                "are two ways to evaluate; give one"
            )
        if callback is not None and not callable(callback):
            raise InvalidValueError(f"variable {variable!r}: callback must be callable")
        if (
            not isinstance(convergence_threshold, int | float)
            or isinstance(convergence_threshold, bool)
            or not convergence_threshold >= 0
        ):
            raise InvalidValueError(
                f"variable {variable!r}: convergence_threshold must be a number >= 0, got "
                f"{convergence_threshold!r}"
            )
        if self._nursery is None:
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        info = await self.get_variables([variable], include_metadata=True)
        if variable not in info:
            raise error_from_kind("not_found", f"no variable {variable!r}")
        meta = info[variable]  # system fields: id, name, type, constraints
        if metric_variable is not None:
            # It must exist and be readable now (KeyError otherwise), and not be the
            # variable being optimized (its proposals would read as evaluations).
            try:
                metric_meta = (await self.get_variables(
                    [metric_variable], include_metadata=True))[metric_variable]
            except KeyError:
                raise error_from_kind(
                    "not_found", f"variable {variable!r}: optimizer_config['metric_variable'] "
                    f"names no variable this session can read: {metric_variable!r}"
                ) from None
            if metric_meta["id"] == meta["id"]:
                raise InvalidValueError(
                    f"variable {variable!r}: the metric variable cannot be the variable "
                    "being optimized"
                )
        space = SearchSpace.from_variable(meta["name"], meta["type"], meta["constraints"],
                                          config)
        mode, metric = check_mode(variable, config), check_metric(variable, config)
        seed = config.get("seed")
        optimizer_class = self._optimizers.get(optimizer_type) or get_optimizer(optimizer_type)
        # Built before the lease is taken: a bad config fails with nothing changed.
        optimizer = optimizer_class(space, config, seed=seed, max_iterations=max_iterations)
        return await self._start_lease(
            variable, optimizer_type, config, max_iterations, lease_ttl, mode,
            lambda response: self._launch(
                variable, response, optimizer, space, objective_fn, callback, metric, mode,
                max_iterations, float(convergence_threshold), metric_variable,
            ),
            takes_reports=objective_fn is None,
        )

    def _launch(
        self, variable: str, response: pb.StartOptimizationResponse, optimizer: BaseOptimizer,
        space: SearchSpace, objective_fn: Callable[[Any], Any] | None,
        callback: Callable[[int, Any, dict[str, Any]], Any] | None, metric: str | None,
        mode: str, max_iterations: int, convergence_threshold: float,
        metric_variable: str | None,
    ) -> str:
        assert self._nursery is not None  # _start_lease checked it
        run = OptimizationRun(
            session=self, variable=variable, optimization_id=response.status.optimization_id,
            token=response.fencing_token, optimizer=optimizer, space=space,
            objective=objective_fn, callback=callback, metric=metric, mode=mode,
            max_iterations=max_iterations, convergence_threshold=convergence_threshold,
            ttl=response.status.ttl_seconds, metric_variable=metric_variable,
        )
        self._runs[run.optimization_id] = run
        self._runs_by_variable[response.status.variable_id] = run
        self._runs_by_variable[response.status.name] = run
        self._nursery.start_soon(run.run, name=f"dspex-rx-optimize[{variable}]")
        return run.optimization_id

    @asynccontextmanager
    async def optimization_lease(
        self,
        variable: str,
        optimizer_type: str = "manual",
        optimizer_config: Mapping[str, Any] | None = None,
        *,
        max_iterations: int = 100,
        lease_ttl: float | None = None,
    ) -> AsyncIterator[HeldLease]:
        """Hold the variable's optimization lease for an optimization driven by hand or
        by another library (a DSPy optimizer): inside the block nobody else can write the
        variable, ``lease.write`` writes under the fencing token, ``lease.record`` adds
        evaluations to the optimization history, and the lease is renewed in the
        background. Leaving the block releases it (``completed``, or ``failed`` with the
        exception); ``await lease.finish(value, write_final=True)`` inside it ends the
        run with a final value. A stop from elsewhere makes the next write raise
        ``OptimizationLockedError``. ``optimizer_config['metric']``/``['mode']`` tell
        ``record`` how to read a metrics dict.

        Example::

            async with session.optimization_lease("temperature", "my_sweep") as lease:
                for i, t in enumerate([0.2, 0.5, 0.8], 1):
                    await lease.write(t, iteration=i)
                    await lease.record(i, t, {"accuracy": evaluate(t)})
        """
        config = dict(optimizer_config or {})
        mode, metric = check_mode(variable, config), check_metric(variable, config)
        if self._nursery is None:
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        lease = await self._start_lease(
            variable, optimizer_type, config, max_iterations, lease_ttl, mode,
            lambda response: HeldLease(
                self, variable, response.status.optimization_id, response.fencing_token,
                response.status.ttl_seconds, metric, mode,
            ),
        )
        started = time.perf_counter()
        assert self._nursery is not None  # _start_lease checked it
        self._nursery.start_soon(lease.keep_alive, name=f"dspex-rx-lease[{variable}]")
        try:
            yield lease
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if not lease.released and lease.revoked is None:
                    try:
                        await lease.finish(state="failed",
                                           reason=end_reason(f"{type(exc).__name__}: {exc}"))
                    except Exception as again:
                        log.warning("optimization_release_failed", variable=variable,
                                    error=str(again))
            raise
        else:
            if not lease.released and lease.revoked is None:
                try:
                    await lease.finish(state="completed", reason="the holder's block ended")
                except Exception as again:
                    if lease.revoked is None:
                        raise
                    log.info("optimization_lease_revoked", variable=variable, reason=str(again))
        finally:
            lease.stop_renewing()
            self._add_optimization_time(variable, time.perf_counter() - started)

    def _add_optimization_time(self, variable: str, seconds: float) -> None:
        # The variable's actor keeps how long this client spent optimizing it.
        actor = self._hub.known(variable) if self._hub is not None else None
        if actor is not None:
            actor.stats.optimization_time += seconds

    async def _start_lease(
        self, variable: str, optimizer_type: str, config: Mapping[str, Any],
        max_iterations: int, lease_ttl: float | None, mode: str,
        then: Callable[[pb.StartOptimizationResponse], Held], takes_reports: bool = False,
    ) -> Held:
        # Take the lease, then hand it to ``then`` (which starts whatever holds it). If
        # that does not happen (a cancel, a closed session, an error), the lease is
        # given back at once rather than leaving the variable locked until the TTL. (A
        # session that closed meanwhile has released it already: the server ends a
        # closing client's leases.)
        request = pb.StartOptimizationRequest(
            session_id=self.session_id, ref=variable, optimizer_type=optimizer_type,
            config=_encode_metadata(variable, config), max_iterations=max_iterations,
            ttl_seconds=lease_ttl or 0.0, client_id=self._client_id, minimize=mode == "min",
            takes_reports=takes_reports,
        )
        # Shielded: a cancel arriving while the server grants the lease must not throw the
        # answer away (the lease would be held by no one until its TTL); the caller gives
        # it back instead, at its next checkpoint.
        with trio.CancelScope(shield=True):
            response = await self._call(
                "StartOptimization", request, pb.StartOptimizationResponse
            )
        try:
            await trio.lowlevel.checkpoint()  # a cancel that came during the start lands here
            if self._nursery is None:
                raise RuntimeError("the session is closed")
            return then(response)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._release(variable, response.status.optimization_id)
            raise

    async def _release(self, variable: str, optimization_id: str) -> None:
        if self._transport is None:
            return
        try:
            await self._call(
                "StopOptimization",
                pb.StopOptimizationRequest(
                    session_id=self.session_id, ref=variable, optimization_id=optimization_id,
                    reason="its start was interrupted", client_id=self._client_id,
                ),
                pb.StopOptimizationResponse,
                timeout=5.0,
            )
        except (DspexError, grpc.RpcError, RuntimeError) as exc:
            log.warning("optimization_release_failed", variable=variable, error=str(exc))

    async def stop_optimization(
        self, variable: str, reason: str | None = None, apply_best: bool = False
    ) -> None:
        """Revoke the variable's optimization lease, from any connection of the session.
        The running optimizer notices within one iteration (a run waiting for a report at
        once) and ends; its later writes are refused (the fencing token), so none lands
        after the stop. ``apply_best`` writes the best value recorded so far in the same
        commit. A variable that is not being optimized raises ``ValueError`` (saying so,
        and how its last run ended).

        Example::

            await session.stop_optimization("temperature", reason="budget spent")
        """
        response = await self._call(
            "StopOptimization",
            pb.StopOptimizationRequest(
                session_id=self.session_id, ref=variable, reason=reason or "",
                apply_best=apply_best, client_id=self._client_id,
            ),
            pb.StopOptimizationResponse,
        )
        if response.HasField("variable"):
            self._remember(response.variable)
        if not response.stopped:
            last = status_from_pb(response.status, response.revision)
            ended = (f" (its last optimization {last['optimization_id']} has {last['state']})"
                     if last["optimization_id"] else "")
            raise InvalidValueError(
                f"variable {variable!r} is not being optimized{ended}: nothing to stop"
            )

    async def report_metrics(
        self,
        variable: str,
        metrics: Mapping[str, Any] | float,
        *,
        iteration: int | None = None,
        version: int | None = None,
        optimization_id: str | None = None,
    ) -> dict[str, Any]:
        """Report the evaluation of the proposal a running optimization (started without
        ``objective=``) wrote into ``variable``: a dict of metrics (the target is
        ``optimizer_config['metric']``) or a number. From any connection of the session,
        or another session allowed to ``optimize`` the variable. Returns the status.

        The report names the proposal it evaluates: by ``version`` (the variable's version
        the proposal's write made, ``VariableUpdate.version``: versions only grow, so it
        names one proposal for good), or by ``iteration`` with ``optimization_id`` (its
        run: iterations restart at 1 in each run); ``proposal.report`` sends all three. A
        report naming neither is a ``ValueError`` (the version this connection last saw
        need not be the one the evaluator read). A ``ValueError`` naming the current
        proposal refuses, and changes nothing for, a report of an earlier proposal or of
        another run (never credited to a later one), a second report of one proposal (the
        first counts), or a report when nothing is being optimized.

        ``proposals(variable)`` yields the proposals to evaluate (none missed, whenever
        it starts), and ``proposal.report(metrics)`` calls this.

        Example::

            async for proposal in session.proposals("temperature"):
                accuracy = await evaluate(proposal.value)
                await session.report_metrics("temperature", {"accuracy": accuracy},
                                             version=proposal.version)
        """
        if isinstance(metrics, int | float) and not isinstance(metrics, bool):
            metrics = {"score": float(metrics)}
        if not isinstance(metrics, Mapping):
            raise VariableTypeError(
                f"variable {variable!r}: metrics must be a dict or a number, got "
                f"{type(metrics).__name__}"
            )
        for label, number in (("iteration", iteration), ("version", version)):
            if number is not None and (
                not isinstance(number, int) or isinstance(number, bool) or number < 1
            ):
                raise InvalidValueError(
                    f"variable {variable!r}: {label} must be a positive integer, got "
                    f"{number!r}"
                )
        if optimization_id is not None and not isinstance(optimization_id, str):
            raise VariableTypeError(
                f"variable {variable!r}: optimization_id must be a string, got "
                f"{type(optimization_id).__name__}"
            )
        if iteration is None and version is None:
            # No guess from what this connection last saw: the evaluator may have read
            # another proposal (or another run's), and the report would score the wrong one.
            raise InvalidValueError(
                f"variable {variable!r}: name the proposal the metrics evaluate: "
                "proposal.report(metrics) for a proposal from session.proposals(x), or "
                "report_metrics(x, metrics, version=update.version) with the version the "
                "proposal's write made (or iteration= with optimization_id=)"
            )
        response = await self._call(
            "ReportMetrics",
            pb.ReportMetricsRequest(
                session_id=self.session_id, ref=variable,
                metrics=_encode_metadata(variable, dict(metrics)),
                iteration=iteration or 0, version=version or 0, client_id=self._client_id,
                optimization_id=optimization_id or "",
            ),
            pb.ReportMetricsResponse,
        )
        return status_from_pb(response.status, response.revision)

    async def get_optimization_status(
        self, variable: str, optimization_id: str | None = None
    ) -> dict[str, Any]:
        """The variable's optimization status: ``is_optimizing``, ``optimization_id``,
        ``iteration``, ``best_value``, ``best_metrics``, ``started_at``, ``last_update``,
        ``state`` and, once ended, ``end_reason`` and ``ended_at`` (see ``status_from_pb``
        for every key). A variable never optimized has ``state == 'idle'``. With
        ``optimization_id``, the status of that run (one of the variable's 16 latest).

        Example::

            status = await session.get_optimization_status("temperature")
            print(status["iteration"], status["best_value"])
        """
        response = await self._call(
            "GetOptimizationStatus",
            pb.GetOptimizationStatusRequest(
                session_id=self.session_id, ref=variable, optimization_id=optimization_id or ""
            ),
            pb.GetOptimizationStatusResponse,
        )
        return status_from_pb(response.status, response.revision)

    async def get_optimization_history(
        self,
        variable: str,
        limit: int = 100,
        since: datetime | float | None = None,
        optimizer_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The variable's evaluated iterations, oldest first: the newest ``limit`` of them
        (recorded at or after ``since``, a ``datetime`` or POSIX seconds; of one
        optimization when ``optimizer_id`` names its id). Each entry has ``iteration``,
        ``value``, ``metrics``, ``score``, ``timestamp`` (a timezone-aware UTC
        ``datetime``), ``optimization_id``, ``optimizer_type``.

        Example::

            for entry in await session.get_optimization_history("temperature", limit=10):
                print(entry["iteration"], entry["value"], entry["metrics"])
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 2**31 - 1:
            raise InvalidValueError(
                f"variable {variable!r}: history limit must be a positive integer, got "
                f"{limit!r}"
            )
        request = pb.GetOptimizationHistoryRequest(
            session_id=self.session_id, ref=variable, limit=limit,
            optimization_id=optimizer_id or "",
        )
        if since is not None:
            request.since.CopyFrom(timestamp(since_seconds(f"variable {variable!r}", since)))
        response = await self._call(
            "GetOptimizationHistory", request, pb.GetOptimizationHistoryResponse
        )
        return [
            {
                "iteration": entry.iteration,
                "value": codec.decode(entry.value),
                "metrics": codec.decode_map(entry.metrics),
                "score": entry.score,
                "timestamp": utc_datetime(entry.timestamp),
                "optimization_id": entry.optimization_id,
                "optimizer_type": entry.optimizer_type,
            }
            for entry in response.entries
        ]

    async def wait_for_optimization(self, variable: str) -> dict[str, Any]:
        """Wait until this session's run on ``variable`` (by name, id, or optimization id)
        has ended, then return that run's final status (even if another run has started
        since).

        Example::

            await session.start_optimization("t", "grid_search", objective=score)
            status = await session.wait_for_optimization("t")
        """
        run = self._runs.get(variable) or self._runs_by_variable.get(variable)
        if run is None:
            raise error_from_kind(
                "not_found", f"this session runs no optimization of {variable!r}"
            )
        await run.finished.wait()
        if self._transport is None:
            raise RuntimeError("the session is closed")
        return await self.get_optimization_status(run.variable, run.optimization_id)

    def observe_optimization(self, variable: str) -> reactivex.Observable[dict[str, Any]]:
        """A reactivex ``Observable`` of the variable's optimization status dicts (the keys
        of ``get_optimization_status``), one per change: start, every recorded iteration,
        the end. Live changes only; ``watch_optimization`` starts with the current status.

        Example::

            session.observe_optimization("temperature").subscribe(
                lambda s: print(s["iteration"], s["best_value"]))
        """
        if self._scheduler is None:
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        events = VariableObservable(
            self._require_hub(), variable, False, self._scheduler, optimization=True
        )
        return with_trio_scheduler(events.pipe(ops.map(_status_of_event)), self._scheduler)

    def watch_optimization(self, variable: str) -> Watch:
        """Watch a variable's optimization progress: an async iterator of status dicts,
        starting with the current status, then one per change, in order. Any session
        that can read the variable can watch.

        Example::

            async for status in session.watch_optimization("temperature"):
                print(status["state"], status["iteration"], status["best_value"])
                if not status["is_optimizing"] and status["state"] != "idle": break
        """
        live = self.observe_optimization(variable)
        assert self._scheduler is not None and self._nursery is not None
        nursery = self._nursery

        def subscribe(
            observer: rx_abc.ObserverBase[dict[str, Any]],
            scheduler: rx_abc.SchedulerBase | None = None,
        ) -> rx_abc.DisposableBase:
            # Live events are held back until the current status is known, then only
            # those newer than it pass: nothing is missed or shown twice.
            held: list[dict[str, Any]] = []
            floor: list[int] = []
            scope = trio.CancelScope()

            def on_next(status: dict[str, Any]) -> None:
                if not floor:
                    held.append(status)
                elif int(status.get("revision", 0)) > floor[0]:
                    observer.on_next(status)

            subscription = live.subscribe(
                on_next=on_next, on_error=observer.on_error,
                on_completed=observer.on_completed,
            )

            async def fetch_current() -> None:
                with scope:
                    try:
                        await self.sync()
                        current = await self.get_optimization_status(variable)
                    except Exception as exc:
                        observer.on_error(exc)
                        return
                    floor.append(int(current["revision"]))
                    observer.on_next(current)
                    for status in held:
                        on_next(status)
                    held.clear()

            nursery.start_soon(fetch_current)
            return CompositeDisposable(subscription, reactivex.disposable.Disposable(scope.cancel))

        return self._watch(reactivex.create(subscribe))  # type: ignore[arg-type]

    def proposals(self, variable: str) -> Watch:
        """The proposals of the variable's optimization run (started without
        ``objective=``) that await a report, one per iteration, in order: a proposal
        already waiting when the watch starts comes first, so an evaluator started after
        ``start_optimization`` misses none. Before a run starts the watch waits for one;
        it ends when the run it followed ends.

        Example::

            await session.start_optimization("temperature", "bayesian", max_iterations=20)
            async with session.proposals("temperature") as proposals:
                async for proposal in proposals:
                    await proposal.report({"accuracy": await evaluate(proposal.value)})
        """
        assert self._nursery is not None, "the session is not initialized"
        nursery = self._nursery

        def subscribe(
            observer: rx_abc.ObserverBase[Proposal],
            scheduler: rx_abc.SchedulerBase | None = None,
        ) -> rx_abc.DisposableBase:
            scope = trio.CancelScope()

            async def pump() -> None:
                with scope:
                    try:
                        await self._pump_proposals(variable, observer.on_next)
                    except Exception as exc:
                        observer.on_error(exc)
                        return
                    observer.on_completed()

            nursery.start_soon(pump)
            return reactivex.disposable.Disposable(scope.cancel)

        return self._watch(reactivex.create(subscribe))  # type: ignore[arg-type]

    async def _pump_proposals(
        self, variable: str, emit: Callable[[Proposal], None]
    ) -> None:
        # The status stream starts with the current status, so a proposal written before
        # this watch began is seen; the run's next proposal needs this one's report, so
        # the value read right after the status is the proposal's (checked by version).
        last, followed = 0, ""
        async with self.watch_optimization(variable) as statuses:
            async for update in statuses:
                status = cast(dict[str, Any], update)  # this watch carries status dicts
                run = str(status.get("optimization_id") or "")
                if status.get("is_optimizing"):
                    if followed and run != followed:
                        return  # the run we followed ended and another began
                    followed = followed or run
                elif followed:
                    return  # the run we followed has ended
                iteration = int(status.get("proposal_iteration") or 0)
                if not (status.get("awaiting_report") and iteration > last):
                    continue
                last = iteration
                info = (await self.get_variables([variable], include_metadata=True))[variable]
                if info["version"] != status.get("proposal_version"):
                    continue  # stopped or superseded meanwhile: nothing to evaluate
                emit(Proposal(self, variable, run, iteration, info["version"], info["value"]))

    async def sync(self) -> int:
        """Wait until every change committed before this call has reached this client's
        watchers and cache; returns the revision reached.

        Example::

            await other.set_variable("x", 1); await session.sync()
        """
        return await self._require_hub().sync()


@portal_context
@asynccontextmanager
async def connect(
    target: str | None = None,
    session_id: str | None = None,
    *,
    token: str | None = None,
    tls: bool = False,
    ca_cert: Pem | None = None,
    tls_server_name: str | None = None,
    principal_key: str | None = None,
    **options: Any,
) -> AsyncIterator[SessionContext]:
    """Open a session; with no target an embedded server runs for the block's duration.

    Joining an existing session needs its ``token`` (``AuthenticationError``, a
    ``PermissionError``, without it or with a wrong one). ``tls=True`` or ``ca_cert``
    (PEM path or bytes) for a TLS server. ``principal_key`` creates a session whose id lies
    in a namespace the server reserves (``--principals``). Other ``options`` go to
    ``SessionContext``.

    Example::

        async with dspex_rx.connect() as session:
            await session.register_variable("temperature", "float", 0.7)

        async with dspex_rx.connect("db.example:50051", ca_cert="ca.pem") as a:
            async with dspex_rx.connect("db.example:50051", session_id=a.session_id,
                                        token=a.token, ca_cert="ca.pem") as b:
                ...
    """
    session = SessionContext(
        session_id, target, token=token, tls=tls, ca_cert=ca_cert,
        tls_server_name=tls_server_name, principal_key=principal_key, **options,
    )
    await session.initialize()
    try:
        yield session
    finally:
        await session.close()
