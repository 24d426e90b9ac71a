"""The gRPC server: the v1 service adapter over the store, health and reflection, the
``serve`` entry point, and an embedded server that runs on its own thread and loop.

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
import functools
import math
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dspex_rx.core.access import AccessRule
from dspex_rx.core.identity import Principals
from dspex_rx.core.limits import DEFAULT_LIMITS, Limits, too_many
from dspex_rx.core.types import same_value
from dspex_rx.errors import AuthenticationError, DspexError, InvalidValueError
from dspex_rx.logs import get_logger
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.store import (
    OPTIMIZATION_EVENT,
    ChangeEvent,
    Commit,
    HistoryEntry,
    ImportReport,
    MemoryStore,
    Snapshot,
    SnapshotDependency,
    SnapshotVariable,
    VariableRecord,
    VariableSpec,
)
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc
from dspex_rx.wire import codec
from dspex_rx.wire.channel import SERVICE_NAME, grpc_options
from dspex_rx.wire.convert import (
    DEPENDENCY_FROM_PB,
    DEPENDENCY_TO_PB,
    ERROR_DETAIL_PREFIX,
    ERROR_KIND_KEY,
    STATUS_BY_KIND,
    rules_from_pb,
    seconds,
    timestamp,
    type_from_pb,
    type_to_pb,
)
from dspex_rx.wire.security import (
    PRINCIPAL_KEY_KEY,
    SESSION_TOKEN_KEY,
    Pem,
    check_auth_mode,
    check_bind,
    is_loopback,
    server_credentials,
)

log = get_logger("dspex_rx.server")

# An error message travels in a response header (grpc-message), where gRPC allows 8-16 KiB
# of metadata: a longer one (a megabyte ref quoted back) would arrive as a transport error
# instead of the error itself.
MAX_ERROR_MESSAGE = 2000
MAX_ERROR_DETAIL = 200
# Room left in a message for the framing around what the size checks count.
MESSAGE_SLACK = 64 * 1024
# A stream stops reading its client while this many control notes (acks, pongs) wait to
# be sent: a client that writes without reading cannot grow the server's queue.
MAX_PENDING_CONTROLS = 1024

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]
HeldAnswer = TypeVar("HeldAnswer", pb.OptimizationStepResponse, pb.FinishOptimizationResponse)


def rules_to_pb(rules: Sequence[AccessRule], out: Any) -> None:
    """Append access rules to a repeated wire ``AccessRule`` field.

    Example::

        rules_to_pb(store.rules(sid, "t"), msg.access_rules)
    """
    for rule in rules:
        out.add(
            session_pattern=rule.session_pattern, permissions=list(rule.permissions),
            conditions=codec.encode_map(rule.conditions), claim=rule.claim,
        )


def record_to_pb(record: VariableRecord, out: pb.Variable | None = None) -> pb.Variable:
    """Fill a wire ``Variable`` from a store record.

    Example::

        msg = record_to_pb(store.get(sid, "temperature"))
    """
    msg = pb.Variable() if out is None else out
    msg.id = record.id
    msg.name = record.name
    msg.type = type_to_pb(record.type)  # type: ignore[assignment]
    codec.fill(msg.value, record.value)
    msg.constraints.CopyFrom(codec.encode_map(record.constraints))
    msg.metadata.CopyFrom(codec.encode_map(record.metadata))
    msg.version = record.version
    msg.mod_revision = record.mod_revision
    msg.create_revision = record.create_revision
    msg.created_at.CopyFrom(timestamp(record.created_at))
    msg.updated_at.CopyFrom(timestamp(record.updated_at))
    msg.updated_by = record.updated_by
    msg.description = record.description
    return msg


UPDATE_TYPES: dict[str, int] = {
    name: spb.UpdateType.Value("UPDATE_TYPE_" + name.upper())
    for name in (
        "initial", "value_change", "deleted", "dependency_changed", "resync", "optimization",
        "revoked",
    )
}
MAX_FRAMES_PER_MESSAGE = 256
# A stream message is flushed once its frames pass this size, far below the send limit.
MESSAGE_SOFT_LIMIT = 4 * 1024 * 1024
# Old values of events above this size are not sent (old_value stays unset), so one event
# always fits in a message: the new value is never dropped.
MAX_OLD_VALUE_BYTES = 16 * 1024 * 1024
MIN_PROGRESS_INTERVAL = 0.01


def event_to_pb(
    event: ChangeEvent,
    update_type: str | None,
    out: spb.VariableEvent,
    max_pair_bytes: int = DEFAULT_LIMITS.max_value_bytes,
) -> None:
    """Fill a wire ``VariableEvent``; ``update_type`` overrides the event's own.

    The old value is left out (unset) above ``MAX_OLD_VALUE_BYTES``, or when value and old
    value together pass ``max_pair_bytes`` (the server's ``max_value_bytes``): one event
    always fits in a message and the new value is never dropped.

    Example::

        event_to_pb(event, None, frame.events.add())
    """
    record = event.record
    kind = update_type or event.update_type
    out.variable_id = record.id
    out.name = record.name
    if kind in ("deleted", "revoked"):
        codec.fill(out.value, None)
    else:
        codec.fill(out.value, record.value)
    if kind not in ("initial", "resync", "revoked", OPTIMIZATION_EVENT):
        codec.fill(out.old_value, event.old_value)
        old = out.old_value.ByteSize()
        if old > MAX_OLD_VALUE_BYTES or old + out.value.ByteSize() > max_pair_bytes:
            out.ClearField("old_value")
    out.version = record.version
    out.revision = record.mod_revision
    out.update_type = UPDATE_TYPES[kind]  # type: ignore[assignment]
    if event.metadata:
        out.metadata.CopyFrom(codec.encode_map(event.metadata))
    out.source = event.source
    out.timestamp.CopyFrom(timestamp(record.updated_at))


def _current(record: VariableRecord) -> ChangeEvent:
    return ChangeEvent(record, None, "initial", {}, record.updated_by)


def status_to_pb(
    record: VariableRecord, lease: OptimizationLease | None, out: pb.OptimizationStatus
) -> None:
    """Fill a wire ``OptimizationStatus`` (a variable never optimized has an empty id).

    Example::

        status_to_pb(*store.optimization_status(sid, "t"), response.status)
    """
    out.variable_id = record.id
    out.name = record.name
    if lease is None:
        return
    out.is_optimizing = lease.active
    out.optimization_id = lease.id
    out.optimizer_type = lease.optimizer_type
    out.holder_session = lease.holder_session
    out.holder_client = lease.holder_client
    out.iteration = lease.iteration
    if lease.best_score is not None:
        out.has_best = True
        codec.fill(out.best_value, lease.best_value)
        out.best_metrics.CopyFrom(codec.encode_map(lease.best_metrics))
        out.best_score = lease.best_score
    out.started_at.CopyFrom(timestamp(lease.started_at))
    out.last_update.CopyFrom(timestamp(lease.last_update))
    out.expires_at.CopyFrom(timestamp(lease.expires_at))
    out.state = lease.state
    out.end_reason = lease.end_reason
    if lease.ended_at is not None:
        out.ended_at.CopyFrom(timestamp(lease.ended_at))
    out.max_iterations = lease.max_iterations
    out.ttl_seconds = lease.ttl
    out.minimize = lease.minimize
    if lease.has_final:
        out.has_final = True
        codec.fill(out.final_value, lease.final_value)
    out.config.CopyFrom(codec.encode_map(lease.config))
    out.takes_reports = lease.takes_reports
    out.proposal_iteration = lease.proposal_iteration
    out.proposal_version = lease.proposal_version
    if lease.report is not None:
        out.has_report = True
        out.report_metrics.CopyFrom(codec.encode_map(lease.report))
        out.reported_by = lease.reported_by


def _evaluation(request: Any) -> tuple[int, Any, dict[str, Any], float] | None:
    if not request.has_record:
        return None
    return (
        int(request.iteration),
        codec.decode(request.evaluated_value),
        codec.decode_map(request.metrics),
        request.score,
    )


def _entry_to_pb(entry: OptimizationEntry, out: pb.OptimizationHistoryEntry) -> None:
    out.optimization_id = entry.optimization_id
    out.optimizer_type = entry.optimizer_type
    out.iteration = entry.iteration
    codec.fill(out.value, entry.value)
    out.metrics.CopyFrom(codec.encode_map(entry.metrics))
    out.score = entry.score
    out.timestamp.CopyFrom(timestamp(entry.timestamp))
    out.revision = entry.revision


def _spec_from_pb(spec: pb.VariableSpec) -> VariableSpec:
    return VariableSpec(
        name=spec.name,
        type=type_from_pb(spec.type),
        initial_value=codec.decode(spec.initial_value),
        constraints=codec.decode_map(spec.constraints),
        metadata=codec.decode_map(spec.metadata),
        description=spec.description,
        dependencies=list(spec.dependencies),
        access_rules=rules_from_pb(spec.access_rules),
    )



def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


async def abort_with(context: grpc.aio.ServicerContext, exc: DspexError) -> None:
    """Abort the call with the status, kind and details of a dspex error (messages and
    details clipped to fit a header).

    Example::

        await abort_with(context, InvalidValueError("session_id is required"))
    """
    metadata = [(ERROR_KIND_KEY, exc.kind)] + [
        (ERROR_DETAIL_PREFIX + key.replace("_", "-"), _clip(str(value), MAX_ERROR_DETAIL))
        for key, value in exc.details.items()
    ]
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(STATUS_BY_KIND[exc.kind], _clip(str(exc), MAX_ERROR_MESSAGE))


async def _refuse(context: grpc.aio.ServicerContext, exc: DspexError, method: str) -> None:
    # A refused call; one that failed authentication is logged (with its peer) too.
    if isinstance(exc, AuthenticationError):
        log.warning("unauthenticated", method=method, peer=context.peer(), error=str(exc))
    await abort_with(context, exc)


class Malformed:
    """What the safe deserializer hands a handler for bytes protobuf cannot parse (bad
    UTF-8 in a string field, a truncated or too deeply nested message): the handler
    answers INVALID_ARGUMENT instead of gRPC's UNKNOWN.

    Example::

        request = parse_request(pb.GetVariableRequest, b"\\x12\\x02\\xff\\xfe")
        assert isinstance(request, Malformed)
    """

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error

    def exception(self) -> InvalidValueError:
        """The error to answer with.

        Example::

            raise malformed.exception()
        """
        reason = str(self.error).rsplit(": ", 1)[-1]
        return InvalidValueError(f"malformed {self.type_name}: {reason}")


def parse_request(message_type: Any, data: bytes) -> Any:
    """Parse a request; bytes protobuf refuses become a ``Malformed``.

    Example::

        parse_request(pb.EchoRequest, pb.EchoRequest(payload=b"x").SerializeToString())
    """
    try:
        return message_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return Malformed(message_type.DESCRIPTOR.name, exc)


_MERGE_STRATEGIES: dict[int, str] = {
    pb.MERGE_STRATEGY_UNSPECIFIED: "replace",
    pb.MERGE_STRATEGY_REPLACE: "replace",
    pb.MERGE_STRATEGY_KEEP: "keep",
    pb.MERGE_STRATEGY_MERGE: "merge",
}


def snapshot_to_pb(snapshot: Snapshot, out: pb.VariablesSnapshot) -> None:
    """Fill a wire ``VariablesSnapshot`` from a store snapshot.

    Example::

        snapshot_to_pb(store.export_snapshot(sid), response.snapshot)
    """
    out.format_version = snapshot.format_version
    out.session_id = snapshot.session_id
    out.revision = snapshot.revision
    out.exported_at.CopyFrom(timestamp(snapshot.exported_at))
    out.include_history = snapshot.include_history
    out.include_dependencies = snapshot.include_dependencies
    for variable in snapshot.variables:
        msg = out.variables.add(
            name=variable.name,
            type=type_to_pb(variable.type),
            constraints=codec.encode_map(variable.constraints),
            metadata=codec.encode_map(variable.metadata),
            description=variable.description,
            version=variable.version,
            created_at=timestamp(variable.created_at),
            updated_at=timestamp(variable.updated_at),
            updated_by=variable.updated_by,
        )
        codec.fill(msg.value, variable.value)
        rules_to_pb(variable.access_rules, msg.access_rules)
        if variable.history is not None:
            msg.has_history = True
            for entry in variable.history:
                item = msg.history.add(
                    version=entry.version,
                    updated_at=timestamp(entry.updated_at),
                    updated_by=entry.updated_by,
                    metadata=codec.encode_map(entry.metadata),
                    revision=entry.revision,
                )
                codec.fill(item.value, entry.value)
        if variable.dependencies is not None:
            msg.has_dependencies = True
            for dependency in variable.dependencies:
                msg.dependencies.add(
                    name=dependency.name,
                    dependency_type=DEPENDENCY_TO_PB[dependency.type],
                    metadata=codec.encode_map(dependency.metadata),
                )


def snapshot_from_pb(msg: pb.VariablesSnapshot) -> Snapshot:
    """A store snapshot from a wire ``VariablesSnapshot``; a value that cannot be decoded
    raises an error naming its variable (the store validates the rest).

    Example::

        snapshot = snapshot_from_pb(request.snapshot)
    """
    variables = []
    for index, item in enumerate(msg.variables):
        try:
            history = (
                tuple(
                    HistoryEntry(
                        entry.version, codec.decode(entry.value), seconds(entry.updated_at),
                        entry.updated_by, codec.decode_map(entry.metadata), entry.revision,
                    )
                    for entry in item.history
                )
                if item.has_history
                else None
            )
            dependencies = (
                tuple(
                    SnapshotDependency(
                        dependency.name,
                        DEPENDENCY_FROM_PB.get(
                            dependency.dependency_type,
                            f"unknown (wire value {dependency.dependency_type})",
                        )
                        if dependency.dependency_type
                        else "data",
                        codec.decode_map(dependency.metadata),
                    )
                    for dependency in item.dependencies
                )
                if item.has_dependencies
                else None
            )
            variables.append(
                SnapshotVariable(
                    item.name, type_from_pb(item.type), codec.decode(item.value),
                    codec.decode_map(item.constraints), codec.decode_map(item.metadata),
                    item.description, item.version, seconds(item.created_at),
                    seconds(item.updated_at), item.updated_by, history, dependencies,
                    tuple(rules_from_pb(item.access_rules)),
                )
            )
        except DspexError as exc:
            raise exc.prefixed(f"variable {item.name or index!r} of the import") from None
    return Snapshot(
        tuple(variables), msg.session_id, msg.revision, seconds(msg.exported_at),
        msg.include_history, msg.include_dependencies, msg.format_version,
    )


def import_report_to_pb(report: ImportReport) -> pb.ImportVariablesResponse:
    """The wire answer to an import: outcomes, revision, whether it was applied.

    Example::

        return import_report_to_pb(store.import_snapshot(sid, snapshot))
    """
    response = pb.ImportVariablesResponse(
        revision=report.revision, applied=report.applied, dry_run=report.dry_run,
        dependencies_added=report.dependencies_added,
    )
    for outcome in report.outcomes:
        out = response.outcomes.add(
            name=outcome.name, action=outcome.action, message=outcome.message,
            error_kind=outcome.error_kind, version=outcome.version,
        )
        if outcome.record is not None:
            record_to_pb(outcome.record, out.variable)
    return response


def _presented(context: grpc.aio.ServicerContext, name: str) -> str:
    """A secret in the call's metadata ("" when none was sent)."""
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def _presented_token(context: grpc.aio.ServicerContext) -> str:
    """The session token in the call's metadata ("" when none was sent)."""
    return _presented(context, SESSION_TOKEN_KEY)


def _wrap(fn: Handler[Req, Resp], authenticate: bool) -> Handler[Req, Resp]:
    """Check the caller's session token (when ``authenticate``), then map store exceptions
    to gRPC statuses; nothing escapes as a crash."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            if isinstance(request, Malformed):
                raise request.exception()
            if authenticate:
                self.authenticate(getattr(request, "session_id", ""), context)
            return await fn(self, request, context)
        except DspexError as exc:
            await _refuse(context, exc, fn.__name__)
        except (KeyError, ValueError, TypeError, PermissionError) as exc:
            # A builtin from deeper code is still the caller's bad input, not a crash.
            log.warning("request_error", method=fn.__name__, error=_clip(repr(exc), 500))
            await abort_with(context, InvalidValueError(str(exc)))
        except Exception:
            log.exception("handler_failed", method=fn.__name__)
            context.set_trailing_metadata(((ERROR_KIND_KEY, "internal"),))
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def _handler(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """A session-scoped RPC: the caller must present the session's token."""
    return _wrap(fn, authenticate=True)


def _attach_handler(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """``InitializeSession``: creating needs no token; attaching checks it in the store."""
    return _wrap(fn, authenticate=False)


def _public_handler(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """An RPC of no session (``Echo``): no token, still malformed-safe."""
    return _wrap(fn, authenticate=False)


class _Answer:
    """A response's size so far: refuses, with RESOURCE_EXHAUSTED, to grow past what one
    message may carry, so an answer (many refs to one big value, a long history page) is
    never built to gigabytes nor fails in gRPC's send.

    Example::

        answer = _Answer(limits.max_message_bytes, "GetVariables")
        answer.add(response.variables.add())
    """

    __slots__ = ("limit", "size", "what")

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.size = 0

    def add(self, part: Any) -> None:
        self.size += part.ByteSize() + 8
        if self.size > self.limit - MESSAGE_SLACK:
            raise too_many(
                f"the answer to {self.what} would be more than {self.size} bytes; ask for "
                "fewer variables or entries", self.size, "max_message_bytes", self.limit,
            )


def _session_id(request: Any) -> str:
    session_id: str = request.session_id
    if not session_id:
        raise InvalidValueError("session_id is required")
    return session_id


class VariablesService(pb_grpc.VariablesServicer):
    """The native v1 service adapter: wire messages in, store calls, wire messages out.

    Example::

        pb_grpc.add_VariablesServicer_to_server(VariablesService(MemoryStore()), server)

    ``auth="token"`` checks every session-scoped call's token; ``auth="none"`` issues
    tokens but checks none (for tools on loopback).
    """

    def __init__(
        self,
        store: MemoryStore,
        progress_interval: float = 5.0,
        max_pending_events: int = 10_000,
        limits: Limits | None = None,
        auth: str = "token",
    ) -> None:
        self.store = store
        self.auth = check_auth_mode(auth)
        self.progress_interval = progress_interval
        self.max_pending_events = max_pending_events
        self.limits = limits or store.limits
        # The live streams' queues, for introspection (read them on the server's loop).
        self.subscribers: set[Subscriber] = set()

    def authenticate(self, session_id: str, context: grpc.aio.ServicerContext) -> None:
        """Raise ``AuthenticationError`` unless the call carries ``session_id``'s token
        (``SessionNotFoundError`` for an unknown session); a no-op with ``auth="none"``.

        Example::

            service.authenticate(request.session_id, context)
        """
        if self.auth == "none":
            return
        if not session_id:
            raise InvalidValueError("session_id is required")
        self.store.authenticate(session_id, _presented_token(context))

    def _held_answer(
        self, session_id: str, lease: OptimizationLease, written: VariableRecord | None,
        response: HeldAnswer,
    ) -> HeldAnswer:
        # A step's or finish's answer: the variable when it was written, and the status.
        record = written or self.store.lookup(session_id, lease.variable_id, "optimize")
        if written is not None:
            self._variable(session_id, written, response.variable)
        status_to_pb(record, lease, response.status)
        return response

    def _name_seen_by(self, session_id: str, record: VariableRecord) -> str:
        # Names are per session: another session's variable goes by its id (one deleted,
        # whose owner is unknown now, was the caller's own).
        return record.name if self.store.owner_of(record.id) in (session_id, None) else record.id

    def _variable(self, session_id: str, record: VariableRecord, out: pb.Variable) -> pb.Variable:
        # A record as this caller sees it: its owner, and its rules for the owner only.
        record_to_pb(record, out)
        owner = self.store.owner_of(record.id) or session_id
        out.owner_session = owner
        if owner == session_id:
            rules_to_pb(self.store.session(owner).rules.get(record.id, ()), out.access_rules)
        elif not self.store.may(session_id, record.id, "read"):
            # A caller that may write but not read (a write-only set) gets no value back,
            # and its client caches none.
            out.ClearField("value")
        return out

    @_attach_handler
    async def InitializeSession(
        self, request: pb.InitializeSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.InitializeSessionResponse:
        """The ``InitializeSession`` RPC.

        Example::

            await stub.InitializeSession(InitializeSessionRequest(...))
        """
        presented = _presented_token(context)
        session, client_id, created = self.store.initialize_session(
            request.session_id or None,
            codec.decode_map(request.metadata),
            request.ttl_seconds or None,
            request.client_name,
            token=presented,
            require_token=self.auth == "token",
            principal_key=_presented(context, PRINCIPAL_KEY_KEY),
        )
        lease = session.clients[client_id]
        log.info("session_attached", session_id=session.id, client_id=client_id, created=created)
        response = pb.InitializeSessionResponse(
            session_id=session.id,
            client_id=client_id,
            created=created,
            revision=session.revision,
            ttl_seconds=lease.ttl,
            created_at=timestamp(session.created_at),
            incarnation=session.incarnation,
        )
        # The token goes to whoever made the session or proved they hold it; with
        # auth="none" an attacher that sent none (or a wrong one) is not given it.
        proven = created or self.auth == "token"
        if not proven and presented:
            with contextlib.suppress(AuthenticationError):
                self.store.authenticate(session.id, presented)
                proven = True
        if proven:
            response.session_token = session.token
        return response

    @_handler
    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        """The ``Heartbeat`` RPC.

        Example::

            await stub.Heartbeat(HeartbeatRequest(...))
        """
        session_id = _session_id(request)
        expires_at = self.store.heartbeat(session_id, request.client_id)
        return pb.HeartbeatResponse(
            revision=self.store.session(session_id).revision, expires_at=timestamp(expires_at)
        )

    @_handler
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        """The ``CloseSession`` RPC.

        Example::

            await stub.CloseSession(CloseSessionRequest(...))
        """
        session_id = _session_id(request)
        removed = self.store.close_session(session_id, request.client_id)
        log.info("session_detached", session_id=session_id, client_id=request.client_id,
                 session_removed=removed)
        return pb.CloseSessionResponse(session_removed=removed)

    @_handler
    async def RegisterVariable(
        self, request: pb.RegisterVariableRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterVariableResponse:
        """The ``RegisterVariable`` RPC.

        Example::

            await stub.RegisterVariable(RegisterVariableRequest(...))
        """
        session_id = _session_id(request)
        records, revision = self.store.register(
            session_id, [_spec_from_pb(request.spec)], actor=session_id
        )
        response = pb.RegisterVariableResponse(revision=revision)
        self._variable(session_id, records[0], response.variable)
        return response

    @_handler
    async def RegisterVariables(
        self, request: pb.RegisterVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterVariablesResponse:
        """The ``RegisterVariables`` RPC.

        Example::

            await stub.RegisterVariables(RegisterVariablesRequest(...))
        """
        session_id = _session_id(request)
        specs = [_spec_from_pb(spec) for spec in request.specs]
        records, revision = self.store.register(session_id, specs, actor=session_id)
        response = pb.RegisterVariablesResponse(revision=revision)
        # The echo fits one message: the store bounds what a batch stores (batch_bytes).
        for record in records:
            self._variable(session_id, record, response.variables.add())
        return response

    @_handler
    async def GetVariable(
        self, request: pb.GetVariableRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetVariableResponse:
        """The ``GetVariable`` RPC.

        Example::

            await stub.GetVariable(GetVariableRequest(...))
        """
        session_id = _session_id(request)
        record = self.store.get(session_id, request.ref)
        response = pb.GetVariableResponse(revision=self.store.session(session_id).revision)
        self._variable(session_id, record, response.variable)
        return response

    @_handler
    async def GetVariables(
        self, request: pb.GetVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetVariablesResponse:
        """The ``GetVariables`` RPC.

        Example::

            await stub.GetVariables(GetVariablesRequest(...))
        """
        session_id = _session_id(request)
        found, missing = self.store.get_many(session_id, list(request.refs))
        response = pb.GetVariablesResponse(
            missing=missing, revision=self.store.session(session_id).revision
        )
        answer = self._answer("GetVariables")
        answer.add(response)
        for record in found:
            answer.add(self._variable(session_id, record, response.variables.add()))
        return response

    @_handler
    async def SetVariable(
        self, request: pb.SetVariableRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetVariableResponse:
        """The ``SetVariable`` RPC.

        Example::

            await stub.SetVariable(SetVariableRequest(...))
        """
        session_id = _session_id(request)
        hint = type_from_pb(request.type_hint) if request.type_hint else None
        record, revision, created = self.store.set(
            session_id,
            request.ref,
            codec.decode(request.value),
            metadata=codec.decode_map(request.metadata),
            actor=session_id,
            create_if_missing=request.create_if_missing,
            type_hint=hint,
            expected_version=request.expected_version or None,
            source=request.source or None,
            fencing_token=request.fencing_token or None,
        )
        response = pb.SetVariableResponse(revision=revision, created=created)
        self._variable(session_id, record, response.variable)
        return response

    @_handler
    async def UpdateVariables(
        self, request: pb.UpdateVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateVariablesResponse:
        """The ``UpdateVariables`` RPC.

        Example::

            await stub.UpdateVariables(UpdateVariablesRequest(...))
        """
        session_id = _session_id(request)
        updates = [
            (u.ref, codec.decode(u.value), u.expected_version or None) for u in request.updates
        ]
        outcomes, revision, applied = self.store.update_many(
            session_id,
            updates,
            metadata=codec.decode_map(request.metadata),
            atomic=request.atomic,
            actor=session_id,
            require_leases=[
                (guard.ref, guard.optimization_id, guard.fencing_token)
                for guard in request.require_leases
            ],
        )
        response = pb.UpdateVariablesResponse(revision=revision, applied=applied)
        for (_, sent, _), outcome in zip(updates, outcomes, strict=True):
            result = response.results.add(
                ref=outcome.ref, ok=outcome.ok, error=outcome.error,
                error_kind=outcome.error_kind, current_version=outcome.current_version,
            )
            record = outcome.record
            if record is not None:
                result.variable_id = record.id
                result.name = self._name_seen_by(session_id, record)
                result.version = record.version
                result.mod_revision = record.mod_revision
                if not same_value(sent, record.value):
                    codec.fill(result.value, record.value)
        return response

    @_handler
    async def ListVariables(
        self, request: pb.ListVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVariablesResponse:
        """The ``ListVariables`` RPC.

        Example::

            await stub.ListVariables(ListVariablesRequest(...))
        """
        session_id = _session_id(request)
        records = self.store.list(session_id, request.pattern or None)
        response = pb.ListVariablesResponse(revision=self.store.session(session_id).revision)
        answer = self._answer("ListVariables")
        for record in records:
            answer.add(self._variable(session_id, record, response.variables.add()))
        return response

    @_handler
    async def DeleteVariable(
        self, request: pb.DeleteVariableRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteVariableResponse:
        """The ``DeleteVariable`` RPC.

        Example::

            await stub.DeleteVariable(DeleteVariableRequest(...))
        """
        session_id = _session_id(request)
        deleted, revision = self.store.delete(
            session_id, request.ref, actor=session_id, cascade=request.cascade
        )
        return pb.DeleteVariableResponse(id=deleted[0], revision=revision, deleted_ids=deleted)

    @_handler
    async def AddDependency(
        self, request: pb.AddDependencyRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddDependencyResponse:
        """The ``AddDependency`` RPC.

        Example::

            await stub.AddDependency(AddDependencyRequest(...))
        """
        session_id = _session_id(request)
        if request.dependency_type == pb.DEPENDENCY_TYPE_UNSPECIFIED:
            dependency_type = "data"
        elif request.dependency_type in DEPENDENCY_FROM_PB:
            dependency_type = DEPENDENCY_FROM_PB[request.dependency_type]
        else:
            raise InvalidValueError(
                f"dependency type is unknown (wire value {request.dependency_type})"
            )
        revision = self.store.add_dependency(
            session_id,
            request.from_ref,
            request.to_ref,
            dependency_type,
            codec.decode_map(request.metadata),
            actor=session_id,
        )
        return pb.AddDependencyResponse(revision=revision)

    @_handler
    async def RemoveDependency(
        self, request: pb.RemoveDependencyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveDependencyResponse:
        """The ``RemoveDependency`` RPC.

        Example::

            await stub.RemoveDependency(RemoveDependencyRequest(...))
        """
        session_id = _session_id(request)
        removed, revision = self.store.remove_dependency(
            session_id, request.from_ref, request.to_ref, actor=session_id
        )
        return pb.RemoveDependencyResponse(removed=removed, revision=revision)

    @_handler
    async def GetDependencies(
        self, request: pb.GetDependenciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDependenciesResponse:
        """The ``GetDependencies`` RPC.

        Example::

            await stub.GetDependencies(GetDependenciesRequest(...))
        """
        found = self.store.dependencies(
            _session_id(request), request.ref, dependents=request.dependents,
            transitive=request.transitive,
        )
        response = pb.GetDependenciesResponse()
        answer = self._answer("GetDependencies")
        for record, depth, edge in found:
            answer.add(response.entries.add(
                variable_id=record.id,
                name=record.name,
                type=type_to_pb(record.type),
                dependency_type=DEPENDENCY_TO_PB[edge.type],
                metadata=codec.encode_map(edge.metadata),
                depth=depth,
            ))
        return response

    @_handler
    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHistoryResponse:
        """The ``GetHistory`` RPC.

        Example::

            await stub.GetHistory(GetHistoryRequest(...))
        """
        page = self.store.history(
            _session_id(request), request.ref, request.limit or 100, request.offset
        )
        response = pb.GetHistoryResponse(
            current_version=page.current_version,
            oldest_retained_version=page.oldest_retained_version,
            retention=page.retention,
        )
        if page.expired is not None:
            response.expired_from_version, response.expired_to_version = page.expired
        answer = self._answer("GetHistory")
        for entry in page.entries:
            out = response.entries.add(version=entry.version, revision=entry.revision)
            codec.fill(out.value, entry.value)
            out.updated_at.CopyFrom(timestamp(entry.updated_at))
            if request.include_metadata:
                out.updated_by = entry.updated_by
                out.metadata.CopyFrom(codec.encode_map(entry.metadata))
            answer.add(out)
        return response

    @_handler
    async def Rollback(
        self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollbackResponse:
        """The ``Rollback`` RPC.

        Example::

            await stub.Rollback(RollbackRequest(...))
        """
        session_id = _session_id(request)
        record, revision = self.store.rollback(
            session_id,
            request.ref,
            request.version,
            reason=request.reason or None,
            actor=session_id,
            expected_version=request.expected_version or None,
        )
        response = pb.RollbackResponse(revision=revision)
        self._variable(session_id, record, response.variable)
        return response

    # -------------------------------------------------------------- optimization

    @_handler
    async def StartOptimization(
        self, request: pb.StartOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartOptimizationResponse:
        """The ``StartOptimization`` RPC: take the variable's lease.

        Example::

            await stub.StartOptimization(StartOptimizationRequest(...))
        """
        session_id = _session_id(request)
        lease, revision = self.store.start_optimization(
            session_id,
            request.ref,
            optimizer_type=request.optimizer_type,
            config=codec.decode_map(request.config),
            max_iterations=request.max_iterations or 100,
            ttl=request.ttl_seconds or None,
            client_id=request.client_id,
            actor=session_id,
            minimize=request.minimize,
            takes_reports=request.takes_reports,
        )
        response = pb.StartOptimizationResponse(fencing_token=lease.token, revision=revision)
        status_to_pb(
            self.store.lookup(session_id, lease.variable_id, "optimize"), lease, response.status
        )
        return response

    @_handler
    async def OptimizationStep(
        self, request: pb.OptimizationStepRequest, context: grpc.aio.ServicerContext
    ) -> pb.OptimizationStepResponse:
        """The ``OptimizationStep`` RPC: renew, record an evaluation, write a proposal.

        Example::

            await stub.OptimizationStep(OptimizationStepRequest(...))
        """
        session_id = _session_id(request)
        proposal = (
            (codec.decode(request.write_value), int(request.write_iteration))
            if request.has_write else None
        )
        lease, written, revision = self.store.optimization_step(
            session_id, request.ref, request.optimization_id, request.fencing_token,
            evaluation=_evaluation(request), proposal=proposal, actor=session_id,
        )
        return self._held_answer(
            session_id, lease, written, pb.OptimizationStepResponse(revision=revision)
        )

    @_handler
    async def FinishOptimization(
        self, request: pb.FinishOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.FinishOptimizationResponse:
        """The ``FinishOptimization`` RPC: the holder's last record, final write and release.

        Example::

            await stub.FinishOptimization(FinishOptimizationRequest(...))
        """
        session_id = _session_id(request)
        lease, written, revision = self.store.finish_optimization(
            session_id, request.ref, request.optimization_id, request.fencing_token,
            evaluation=_evaluation(request),
            final_value=codec.decode(request.final_value) if request.has_final else None,
            write_final=request.has_final,
            state=request.state or "completed",
            reason=request.reason,
            actor=session_id,
            metadata=codec.decode_map(request.metadata),
        )
        return self._held_answer(
            session_id, lease, written, pb.FinishOptimizationResponse(revision=revision)
        )

    @_handler
    async def StopOptimization(
        self, request: pb.StopOptimizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopOptimizationResponse:
        """The ``StopOptimization`` RPC: revoke the lease from any allowed session.

        Example::

            await stub.StopOptimization(StopOptimizationRequest(...))
        """
        session_id = _session_id(request)
        who = f"{session_id}/{request.client_id}" if request.client_id else session_id
        stopped, lease, revision, written = self.store.stop_optimization(
            session_id, request.ref, reason=request.reason,
            optimization_id=request.optimization_id, apply_best=request.apply_best, actor=who,
        )
        response = pb.StopOptimizationResponse(stopped=stopped, revision=revision)
        if written is not None:
            self._variable(session_id, written, response.variable)
        status_to_pb(
            self.store.lookup(session_id, request.ref, "optimize"), lease, response.status
        )
        return response

    @_handler
    async def GetOptimizationStatus(
        self, request: pb.GetOptimizationStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOptimizationStatusResponse:
        """The ``GetOptimizationStatus`` RPC.

        Example::

            await stub.GetOptimizationStatus(GetOptimizationStatusRequest(...))
        """
        session_id = _session_id(request)
        record: VariableRecord
        lease: OptimizationLease | None
        if request.optimization_id:
            record, lease = self.store.optimization_by_id(
                session_id, request.ref, request.optimization_id
            )
        else:
            record, lease = self.store.optimization_status(session_id, request.ref)
        response = pb.GetOptimizationStatusResponse(
            revision=self.store.session(session_id).revision
        )
        status_to_pb(record, lease, response.status)
        return response

    @_handler
    async def GetOptimizationHistory(
        self, request: pb.GetOptimizationHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOptimizationHistoryResponse:
        """The ``GetOptimizationHistory`` RPC.

        Example::

            await stub.GetOptimizationHistory(GetOptimizationHistoryRequest(...))
        """
        session_id = _session_id(request)
        entries = self.store.optimization_history(
            session_id, request.ref, limit=request.limit or 100,
            since=seconds(request.since) if request.HasField("since") else None,
            optimization_id=request.optimization_id,
        )
        response = pb.GetOptimizationHistoryResponse(
            revision=self.store.session(session_id).revision
        )
        answer = self._answer("GetOptimizationHistory")
        for entry in entries:
            out = response.entries.add()
            _entry_to_pb(entry, out)
            answer.add(out)
        return response

    @_handler
    async def ReportMetrics(
        self, request: pb.ReportMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportMetricsResponse:
        """The ``ReportMetrics`` RPC: the evaluation of a running optimization's current
        proposal; the store checks it against the live lease and publishes it.

        Example::

            await stub.ReportMetrics(ReportMetricsRequest(...))
        """
        session_id = _session_id(request)
        who = f"{session_id}/{request.client_id}" if request.client_id else session_id
        lease, record, revision = self.store.report_metrics(
            session_id, request.ref, codec.decode_map(request.metrics),
            iteration=int(request.iteration), version=int(request.version),
            optimization_id=request.optimization_id, actor=who,
        )
        response = pb.ReportMetricsResponse(revision=revision)
        status_to_pb(record, lease, response.status)
        return response

    def _answer(self, what: str) -> _Answer:
        return _Answer(self.limits.max_message_bytes, what)

    # ----------------------------------------------------------- export and import

    @_handler
    async def ExportVariables(
        self, request: pb.ExportVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportVariablesResponse:
        """The ``ExportVariables`` RPC: the caller's session's variables as a snapshot.

        Example::

            await stub.ExportVariables(ExportVariablesRequest(session_id=sid))
        """
        snapshot = self.store.export_snapshot(
            _session_id(request),
            include_history=request.include_history,
            include_dependencies=request.include_dependencies,
            pattern=request.filter_pattern or None,
        )
        response = pb.ExportVariablesResponse(revision=snapshot.revision)
        snapshot_to_pb(snapshot, response.snapshot)
        self._answer("ExportVariables").add(response)
        return response

    @_handler
    async def ImportVariables(
        self, request: pb.ImportVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportVariablesResponse:
        """The ``ImportVariables`` RPC: validate the whole snapshot, then one commit or none.

        Example::

            await stub.ImportVariables(ImportVariablesRequest(session_id=sid, snapshot=...))
        """
        session_id = _session_id(request)
        strategy = _MERGE_STRATEGIES.get(request.merge_strategy)
        if strategy is None:
            raise InvalidValueError(
                f"merge strategy is unknown (wire value {request.merge_strategy})"
            )
        report = self.store.import_snapshot(
            session_id,
            snapshot_from_pb(request.snapshot),
            strategy=strategy,
            dry_run=request.dry_run,
            actor=session_id,
        )
        return import_report_to_pb(report)

    # ------------------------------------------------------------- access rules

    @_handler
    async def SetVariablePermissions(
        self, request: pb.SetVariablePermissionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetVariablePermissionsResponse:
        """The ``SetVariablePermissions`` RPC: replace a variable's rules (owner only).

        Example::

            await stub.SetVariablePermissions(SetVariablePermissionsRequest(...))
        """
        session_id = _session_id(request)
        revision = self.store.set_permissions(
            session_id, request.ref, rules_from_pb(request.rules), actor=session_id
        )
        response = pb.SetVariablePermissionsResponse(revision=revision)
        self._variable(session_id, self.store.get(session_id, request.ref), response.variable)
        return response

    @_handler
    async def CheckVariableAccess(
        self, request: pb.CheckVariableAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckVariableAccessResponse:
        """The ``CheckVariableAccess`` RPC: may the caller use a permission on a variable?

        Example::

            await stub.CheckVariableAccess(CheckVariableAccessRequest(...))
        """
        session_id = _session_id(request)
        allowed = self.store.check_access(session_id, request.ref, request.permission)
        response = pb.CheckVariableAccessResponse(allowed=allowed)
        if not allowed and not self.store.visible(session_id, request.ref):
            return response  # names nothing: the caller may not see the variable at all
        # One of its own (by id or name) or a foreign one it has some right to (by id).
        var_id = self.store.session(session_id).names.get(request.ref, request.ref)
        owner = self.store.owner_of(var_id) or session_id
        response.variable_id, response.owner_session = var_id, owner
        return response

    @_public_handler
    async def Echo(
        self, request: pb.EchoRequest, context: grpc.aio.ServicerContext
    ) -> pb.EchoResponse:
        """The ``Echo`` RPC.

        Example::

            await stub.Echo(EchoRequest(...))
        """
        return pb.EchoResponse(payload=request.payload)

    # ----------------------------------------------------------- the watch stream

    async def Session(
        self, request_iterator: AsyncIterator[spb.ClientMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[spb.ServerMessage]:
        """One stream per connection: subscribe/unsubscribe/ping in, frames and notes out.

        Example::

            call = stub.Session(); await call.write(ClientMessage(open=OpenStream(...)))
        """
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        try:
            if isinstance(first, Malformed):
                raise first.exception()
            if first.WhichOneof("kind") != "open":
                raise InvalidValueError("the first message on a Session stream must be 'open'")
            session_id = _session_id(first.open)
            self.authenticate(session_id, context)
            session = self.store.session(session_id)
            interval = first.open.progress_interval_seconds or self.progress_interval
            if not math.isfinite(interval) or interval < MIN_PROGRESS_INTERVAL:
                raise InvalidValueError(
                    f"progress_interval_seconds must be a finite number >= "
                    f"{MIN_PROGRESS_INTERVAL} (0 for the server default), got {interval!r}"
                )
            wake = asyncio.Event()
            room = asyncio.Event()  # set while the reader may go on
            room.set()
            store = self.store
            subscriber = Subscriber(
                wake.set, self.max_pending_events, session_id,
                max_watched=self.limits.max_subscriptions_per_stream,
                may_observe=lambda var_id: store.may(session_id, var_id, "observe"),
                listen=lambda owner, fn: store.add_listener(owner, fn, foreign=True),
                revision=lambda: store.revision,
                may_read=lambda var_id: store.may(session_id, var_id, "read"),
            )
            remove_listener = self.store.add_listener(session_id, subscriber.on_commit)
        except DspexError as exc:
            await _refuse(context, exc, "Session")
            return
        self.subscribers.add(subscriber)
        log.info("stream_opened", session_id=session_id,
                 client_id=_clip(first.open.client_id, 100))
        reader = asyncio.create_task(
            self._read_stream(request_iterator, session_id, subscriber, room)
        )
        reader.add_done_callback(lambda _: wake.set())
        try:
            yield spb.ServerMessage(
                opened=spb.StreamOpened(
                    session_id=session_id,
                    revision=self.store.revision,
                    log_horizon=session.log_floor + 1,
                )
            )
            while True:
                if not subscriber.has_pending() and not reader.done():
                    try:
                        await asyncio.wait_for(wake.wait(), interval)
                    except TimeoutError:
                        if not subscriber.has_pending():
                            yield spb.ServerMessage(
                                progress=spb.Progress(revision=self.store.revision)
                            )
                            continue
                wake.clear()
                for message in self._messages(subscriber.drain()):
                    yield message
                room.set()  # everything queued is sent: the reader may read on
                if subscriber.closed:
                    context.set_trailing_metadata(((ERROR_KIND_KEY, "session_not_found"),))
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND, f"session {session_id!r} was closed or expired"
                    )
                if reader.done():
                    error = reader.exception()
                    if isinstance(error, DspexError):
                        await abort_with(context, error)
                    if error is not None:
                        log.error("stream_reader_failed", session_id=session_id,
                                  error=_clip(repr(error), 500))
                        await context.abort(grpc.StatusCode.INTERNAL, "stream reader failed")
                    return
        finally:
            self.subscribers.discard(subscriber)
            remove_listener()
            subscriber.close()
            reader.cancel()
            log.info("stream_closed", session_id=session_id, conflations=subscriber.conflations)

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[spb.ClientMessage],
        session_id: str,
        subscriber: Subscriber,
        room: asyncio.Event,
    ) -> None:
        async for message in request_iterator:
            if isinstance(message, Malformed):
                raise message.exception()
            kind = message.WhichOneof("kind")
            if kind == "subscribe":
                self._subscribe(session_id, subscriber, message.subscribe)
            elif kind == "unsubscribe":
                # Ids as given (another session's variable may be unwatched even after
                # losing access), and own names resolved.
                refs = list(message.unsubscribe.variable_ids)
                own = self.store.session(session_id)
                subscriber.unwatch([own.names.get(ref, ref) for ref in refs])
                subscriber.push_control(
                    spb.Unsubscribed(request_id=message.unsubscribe.request_id)
                )
            elif kind == "ping":
                subscriber.push_control(
                    spb.Pong(nonce=message.ping.nonce, revision=self.store.revision)
                )
            else:
                raise InvalidValueError(f"unexpected {kind!r} message on an open Session stream")
            if subscriber.pending_controls >= MAX_PENDING_CONTROLS:
                # The client writes faster than it reads: stop reading until the sender
                # has caught up, so gRPC's flow control pushes back on the client.
                room.clear()
                await room.wait()

    def _subscribe(self, session_id: str, subscriber: Subscriber, request: spb.Subscribe) -> None:
        # Synchronous from lookup to queueing: no commit can fall between the snapshot
        # (or the replay) and the first live event, because nothing else runs meanwhile.
        store = self.store
        store.session(session_id)  # a closed session raises here

        def refuse(error: str, kind: str) -> None:
            # Only this request fails; the stream and its other watches go on.
            subscriber.push_control(
                spb.Subscribed(
                    request_id=request.request_id, revision=store.revision,
                    error=_clip(error, MAX_ERROR_MESSAGE), error_kind=kind,
                )
            )

        if not request.refs:
            refuse("subscribe needs at least one variable", "invalid_value")
            return
        try:
            # Another session's variable needs observe; one it cannot see is missing.
            found, missing = store.get_many(session_id, list(request.refs), "observe")
            subscriber.check_room(r.id for r in found)
        except DspexError as exc:
            refuse(str(exc), exc.kind)
            return
        absent = set(missing)
        known = dict(zip([r for r in request.refs if r not in absent], found, strict=True))
        resuming = request.from_revision > 0
        owners: dict[str, list[VariableRecord]] = {}
        for record in found:
            owner = store.owner_of(record.id) or session_id
            if owner != session_id:
                owners.setdefault(owner, []).append(record)
        commits: list[Commit] | None = None
        if resuming:
            # The log of every session involved, merged by (store-wide) revision; if any
            # no longer reaches back, the whole request resyncs.
            commits = store.commits_since(session_id, request.from_revision)
            merged = list(commits or ())
            for owner in owners:
                more = store.commits_since(owner, request.from_revision)
                if commits is None or more is None:
                    commits = None
                    break
                merged += more
            if commits is not None and owners:
                commits = sorted(merged, key=lambda c: c.revision)
        gone: dict[str, VariableRecord] = {}
        if missing and commits is not None:
            # Deleted since the watcher's last revision: it still gets the missed changes
            # and the delete from the log, for its own variables only. Another session's
            # deleted variable took its rules with it, so whether this stream ever could
            # observe it is unknown: it is reported missing, like one never seen.
            for commit in commits:
                if commit.session_id not in (session_id, ""):
                    continue
                for event in commit.events:
                    if event.update_type == "deleted" and event.record.id in absent:
                        gone[event.record.id] = event.record
        missing = [ref for ref in missing if ref not in gone]
        if missing and not resuming:
            refuse(
                f"no variable(s) {', '.join(map(repr, missing))} in session {session_id!r}",
                "not_found",
            )
            return
        known.update(gone)
        answered = [r for r in request.refs if r in known]
        ids = [known[ref].id for ref in answered]
        names = [self._name_seen_by(session_id, known[ref]) for ref in answered]
        foreign = {r.id for rs in owners.values() for r in rs}
        subscriber.watch(r.id for r in found if r.id not in foreign)
        for owner, records in owners.items():
            subscriber.watch_foreign(owner, records)
        revision = store.revision
        subscriber.push_control(
            spb.Subscribed(
                request_id=request.request_id,
                variable_ids=ids,
                names=names,
                refs=answered,
                missing=missing,
                revision=revision,
            )
        )

        def resync(records: list[VariableRecord], own: list[VariableRecord] | None) -> None:
            # Current values instead of a replay, then how the optimization runs since
            # went: of ``own`` (this session's) and of the other sessions' ``records``.
            subscriber.push_frame(
                PendingFrame(revision, [_current(r) for r in records], "resync")
            )
            ids = {r.id for r in records}
            statuses = (
                store.status_events(session_id, own, request.from_revision)
                if own is not None else []
            )
            for owner, owned in owners.items():
                statuses += subscriber.redact(store.status_events(
                    owner, [r for r in owned if r.id in ids], request.from_revision
                ))
            if statuses:
                subscriber.push_frame(PendingFrame(revision, statuses))

        if resuming:
            if commits is None:
                resync(found, [r for r in found if r.id not in foreign])
                return
            # Another session's variable whose rights may have changed within the range
            # (a permissions commit, or a rule with a time condition) is resynced, current
            # value only: a replay could hand over values from before observe was granted.
            changed = {i for c in commits if c.session_id != session_id
                       for i in c.permissions if i in foreign}
            changed |= {i for i in foreign if store.timed_rules(session_id, i)}
            wanted = set(ids) - changed
            for commit in commits:
                events = [e for e in commit.events if e.record.id in wanted]
                if events and commit.session_id != session_id:
                    events = subscriber.redact(events)
                if events:
                    subscriber.push_frame(PendingFrame(commit.revision, events))
            if changed:
                resync([r for r in found if r.id in changed], None)
            if request.include_initial:
                # A resume that also asks for the current values (a client whose break
                # fell before a subscription's initial value): after the replay, so a
                # value the replay already brought is a repeat the client drops.
                initial = [_current(r) for r in found if r.id in wanted]
                if initial:
                    subscriber.push_frame(PendingFrame(revision, initial, "initial"))
        elif request.include_initial:
            subscriber.push_frame(
                PendingFrame(revision, [_current(r) for r in found], "initial")
            )

    def _messages(self, items: list[Any]) -> Iterator[spb.ServerMessage]:
        # Frames go out up to MAX_FRAMES_PER_MESSAGE or MESSAGE_SOFT_LIMIT bytes per
        # message. A frame that cannot fit in one message at all (thousands of large
        # events) is split: every part but the last carries the revision before the
        # frame's first commit (a snapshot's parts all carry its revision), so a resume
        # after a break between parts replays the whole commit instead of losing its rest.
        hard = self.limits.max_message_bytes - MESSAGE_SLACK
        pair = self.limits.max_value_bytes
        message = spb.ServerMessage()
        size = 0
        for item in items:
            if isinstance(item, PendingFrame):
                frame = message.frames.add(revision=item.revision, conflated=item.conflated)
                size += 32
                for event in item.events:
                    out = frame.events.add()
                    event_to_pb(event, item.update_type, out, pair)
                    event_size = out.ByteSize() + 16
                    if size + event_size > hard and size > 32:
                        moved = spb.VariableEvent()
                        moved.CopyFrom(out)
                        del frame.events[-1]
                        if frame.events:
                            if item.update_type is None:
                                frame.revision = item.since
                        else:
                            del message.frames[-1]
                        yield message
                        message = spb.ServerMessage()
                        frame = message.frames.add(
                            revision=item.revision, conflated=item.conflated
                        )
                        frame.events.append(moved)
                        size = 32
                    size += event_size
                if len(message.frames) >= MAX_FRAMES_PER_MESSAGE or size >= MESSAGE_SOFT_LIMIT:
                    yield message
                    message = spb.ServerMessage()
                    size = 0
                continue
            if message.frames:
                yield message
                message = spb.ServerMessage()
                size = 0
            control = spb.ServerMessage()
            field = {
                spb.Subscribed: "subscribed", spb.Unsubscribed: "unsubscribed", spb.Pong: "pong"
            }[type(item)]
            getattr(control, field).CopyFrom(item)
            yield control
        if message.frames:
            yield message


def add_service(service: VariablesService, server: grpc.aio.Server) -> None:
    """Register the v1 service like the generated ``add_VariablesServicer_to_server``,
    but with requests parsed by ``parse_request``: bytes protobuf refuses reach the
    handler as ``Malformed`` and are answered INVALID_ARGUMENT, not gRPC's UNKNOWN.

    Example::

        add_service(VariablesService(MemoryStore()), server)
    """
    descriptor = pb.DESCRIPTOR.services_by_name["Variables"]
    handlers = {}
    for method in descriptor.methods:
        if method.client_streaming != method.server_streaming:
            raise AssertionError(f"no handler kind for {method.name}")
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(service, method.name),
            request_deserializer=functools.partial(
                parse_request, GetMessageClass(method.input_type)
            ),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    server.add_registered_method_handlers(descriptor.full_name, handlers)


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

    Example::

        server = Server(host="127.0.0.1", port=0, limits=Limits(max_sessions=100))
        await server.start(); print(server.port); await server.stop()
        Server(host="0.0.0.0", tls_cert="server.pem", tls_key="server.key")
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
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the bound port.

        Example::

            port = await Server(port=0).start()
        """
        server = grpc.aio.server(options=grpc_options(self.limits.max_message_bytes))
        add_service(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{self.host}:{self.requested_port}"
        if self._credentials is not None:
            self.port = server.add_secure_port(address, self._credentials)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._expiry = asyncio.create_task(self._expire_loop())
        log.info("server_started", host=self.host, port=self.port, auth=self.auth,
                 tls=self.tls)
        if not is_loopback(self.host) and (not self.tls or self.auth != "token"):
            log.warning("server_insecure", host=self.host, auth=self.auth, tls=self.tls,
                        note="reachable from the network without token auth and TLS")
        return self.port

    @property
    def tls(self) -> bool:
        """Whether the server serves TLS.

        Example::

            assert Server(port=0).tls is False
        """
        return self._credentials is not None

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expire_interval)
            for session_id in self.store.expire():
                log.info("session_expired", session_id=session_id)

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting calls, let running ones finish within ``grace`` seconds.

        Example::

            await server.stop(grace=1.0)
        """
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await self._server.stop(grace)
        self._server = None
        log.info("server_stopped", port=self.port)

    async def wait_for_termination(self) -> None:
        """Block until the server stops.

        Example::

            await server.wait_for_termination()
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
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    ``port_file`` receives the bound port once serving (handy with ``port=0``). ``limits``,
    ``auth``, ``tls_cert``, ``tls_key``, ``insecure`` and ``principals`` are ``Server``'s.

    Example::

        asyncio.run(serve("127.0.0.1", 50051, limits=Limits(max_sessions=100)))
        asyncio.run(serve("0.0.0.0", 50051, tls_cert="server.pem", tls_key="server.key"))
    """
    server = Server(
        host, port, store, limits=limits, auth=auth, tls_cert=tls_cert, tls_key=tls_key,
        insecure=insecure, principals=principals,
    )
    bound = await server.start()
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


class EmbeddedServer:
    """A server on its own thread and asyncio loop, for ``connect()`` with no target and tests.

    ``options`` go to ``Server`` (``limits=Limits(...)``, ``auth``, ``tls_cert``,
    ``tls_key``, ``insecure``, ``progress_interval=`` ...).

    Example::

        with EmbeddedServer(limits=Limits(max_value_bytes=1 << 20)) as server:
            print(server.target)   # "127.0.0.1:<ephemeral port>"
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, store: MemoryStore | None = None,
        **options: Any,
    ) -> None:
        self._server = Server(host, port, store, **options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def store(self) -> MemoryStore:
        """The server's store (touch it only from the server's loop, or in tests).

        Example::

            embedded.store.session_ids()
        """
        return self._server.store

    @property
    def service(self) -> VariablesService:
        """The running service adapter (stream counts, settings).

        Example::

            assert not embedded.service.subscribers
        """
        return self._server.service

    @property
    def target(self) -> str:
        """``host:port`` to pass to ``connect``.

        Example::

            dspex_rx.connect(embedded.target)
        """
        return f"{self._server.host}:{self._server.port}"

    def start(self) -> str:
        """Start the server thread; returns the target once the port is bound.

        Example::

            target = EmbeddedServer().start()
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
        self._stop = asyncio.Event()
        try:
            await self._server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self._server.stop(grace=1.0)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop thread and return its result (blocking).

        The store is not thread-safe; this is how an embedding program or a test touches
        it directly while the server runs.

        Example::

            revision = embedded.call(lambda: embedded.store.session(sid).revision)
        """
        if self._loop is None:
            raise RuntimeError("the embedded server is not running")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def stop(self) -> None:
        """Stop the server and join its thread.

        Example::

            server.stop()
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
