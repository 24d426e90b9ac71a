"""How every unary RPC is served, declared once (``Unary``): bad bytes, the token check,
store errors mapped to gRPC statuses with their kind, and the size meter for answers.

A handler is a plain synchronous function ``(call, request) -> response``: decode the
request, call the store, encode the answer. Being synchronous it cannot yield to the loop
between the store's check and its write, which is what keeps a store call atomic.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from dspex_rx.core.limits import Limits, too_many
from dspex_rx.errors import (
    AuthenticationError,
    ConflictError,
    DspexError,
    InvalidValueError,
    RateLimitedError,
)
from dspex_rx.logs import get_logger
from dspex_rx.server import audit, forward, offload
from dspex_rx.server.encode import seen_variable
from dspex_rx.server.fanout import frames_queued
from dspex_rx.server.ratelimit import Guard
from dspex_rx.store import MemoryStore, VariableRecord
from dspex_rx.store.backend import RevisionConflict
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import POSITION_KEY
from dspex_rx.wire.convert import (
    ERROR_DETAIL_PREFIX,
    ERROR_KIND_KEY,
    RETRY_AFTER_KEY,
    STATUS_BY_KIND,
)
from dspex_rx.wire.security import SESSION_TOKEN_KEY

log = get_logger("dspex_rx.server")

# An error message travels in a response header (grpc-message), where gRPC allows 8-16 KiB
# of metadata: a longer one (a megabyte ref quoted back) would arrive as a transport error
# instead of the error itself.
MAX_ERROR_MESSAGE = 2000
MAX_ERROR_DETAIL = 200
# How often a call that met another replica's writes runs again. With replicas writing
# all the time one of them keeps winning (its next flush leaves while the others still
# apply its last), so an unlucky call may lose many rounds of a few ms each in a row.
CONFLICT_RERUNS = 32
# Room left in a message for the framing around what the size checks count.
MESSAGE_SLACK = 64 * 1024

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Service(Protocol):
    """What handlers use of the servicer (``VariablesService``): its store, limits, auth
    and rate limits (``guard``).

    Example: ``service.authenticate(request.session_id, context)`` raises or returns.
    """

    store: MemoryStore
    limits: Limits
    auth: str
    guard: Guard
    # Where write RPCs go while another replica leads (None: always here).
    forwarder: forward.Forwarder | None

    def authenticate(self, session_id: str, context: grpc.aio.ServicerContext) -> None:
        """Raise unless the call carries ``session_id``'s token.

        Example: ``service.authenticate("session_1", context)`` returns ``None`` or raises.
        """


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was.

    Example:

    >>> clip("x" * 50, 30)
    'xxxxxxxxxx... (50 chars)'
    """
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


async def abort_with(context: grpc.aio.ServicerContext, exc: DspexError) -> None:
    """Abort the call with the status, kind and details of a dspex error (messages and
    details clipped to fit a header).

    Example: ``await abort_with(context, exc)`` ends the call with ``exc``'s status.
    """
    metadata = [(ERROR_KIND_KEY, exc.kind)] + [
        (ERROR_DETAIL_PREFIX + key.replace("_", "-"), clip(str(value), MAX_ERROR_DETAIL))
        for key, value in exc.details.items()
    ]
    if "retry_after" in exc.details:
        metadata.append((RETRY_AFTER_KEY, str(exc.details["retry_after"])))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(STATUS_BY_KIND[exc.kind], clip(str(exc), MAX_ERROR_MESSAGE))


async def refuse(context: grpc.aio.ServicerContext, exc: DspexError, method: str) -> None:
    """Abort a refused call; one that failed authentication (warning) or met a rate limit
    (info) is logged, with its peer.

    Example: ``await refuse(context, exc, "GetVariable")`` ends the call with ``exc``.
    """
    if isinstance(exc, AuthenticationError):
        log.warning("unauthenticated", method=method, peer=context.peer(), error=str(exc))
    elif isinstance(exc, RateLimitedError):
        log.info("rate_limited", method=method, peer=context.peer(),
                 limit=exc.details.get("limit"), retry_after=exc.details.get("retry_after"))
    await abort_with(context, exc)


class Malformed:
    """What the safe deserializer hands a handler for bytes protobuf cannot parse (bad
    UTF-8 in a string field, a truncated or too deeply nested message): the handler
    answers INVALID_ARGUMENT instead of gRPC's UNKNOWN.

    Example:

    >>> isinstance(parse_request(pb.GetVariableRequest, b"\\x12\\x02\\xff\\xfe"), Malformed)
    True
    """

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error

    def exception(self) -> InvalidValueError:
        """The error to answer with.

        Example:

        >>> Malformed("EchoRequest", ValueError("at 3: truncated")).exception().kind
        'invalid_value'
        """
        reason = str(self.error).rsplit(": ", 1)[-1]
        return InvalidValueError(f"malformed {self.type_name}: {reason}")


def parse_request(message_type: Any, data: bytes, *, defer_large: bool = False) -> Any:
    """Parse a request; bytes protobuf refuses become a ``Malformed``. With
    ``defer_large`` (unary calls) a large one becomes an ``offload.Large``, parsed later
    on a worker.

    Example:

    >>> parse_request(pb.EchoRequest, pb.EchoRequest(payload=b"x").SerializeToString())
    payload: "x"
    <BLANKLINE>
    """
    if defer_large and len(data) >= offload.LARGE_REQUEST_BYTES:
        # Parsed on a worker by ``Unary`` (offload.py), not here on the loop.
        return offload.Large(message_type, data)
    try:
        return message_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return Malformed(message_type.DESCRIPTOR.name, exc)


def presented(context: grpc.aio.ServicerContext, name: str) -> str:
    """A secret in the call's metadata ("" when none was sent).

    Example: ``presented(context, SESSION_TOKEN_KEY)`` is the token the caller sent.
    """
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def presented_token(context: grpc.aio.ServicerContext) -> str:
    """The session token in the call's metadata ("" when none was sent).

    Example: ``presented_token(context)`` is ``""`` for a call without a token.
    """
    return presented(context, SESSION_TOKEN_KEY)


def require_session_id(request: Any) -> str:
    """The request's ``session_id``; ``InvalidValueError`` when it is empty.

    Example:

    >>> require_session_id(pb.HeartbeatRequest(session_id="session_1"))
    'session_1'
    """
    session_id: str = request.session_id
    if not session_id:
        raise InvalidValueError("session_id is required")
    return session_id


class Answer:
    """A response's size so far: refuses, with RESOURCE_EXHAUSTED, to grow past what one
    message may carry, so an answer (many refs to one big value, a long history page) is
    never built to gigabytes nor fails in gRPC's send.

    Example:

    >>> answer = Answer(MESSAGE_SLACK + 100, "GetVariables")
    >>> answer.add(pb.Variable(name="t"))
    >>> answer.add(pb.Variable(name="x" * 200))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dspex_rx.errors.ResourceExhaustedError: the answer to GetVariables would be more than ...
    """

    __slots__ = ("limit", "size", "what", "work")

    def __init__(self, limit: int, what: str, work: offload.Work | None = None) -> None:
        self.limit = limit
        self.what = what
        self.size = 0
        # Large values written into the answer later, on a worker: counted here now.
        self.work = work

    def add(self, part: Any) -> None:
        """Count ``part`` (a message about to be sent within the answer).

        Example: ``answer.add(response.variables.add())`` counts one more variable.
        """
        self.size += part.ByteSize() + 8 + (self.work.take_pending() if self.work else 0)
        if self.size > self.limit - MESSAGE_SLACK:
            raise too_many(
                f"the answer to {self.what} would be more than {self.size} bytes; ask for "
                "fewer variables or entries", self.size, "max_message_bytes", self.limit,
            )


class Call:
    """One unary call as its handler sees it: the service, the caller's session (checked
    for session-scoped RPCs, else ""), the gRPC context, and the RPC's name.

    Example: ``call.variable(record, response.variable)`` fills what the caller may see.
    """

    __slots__ = ("context", "method", "service", "session_id", "work")

    def __init__(
        self, service: Service, context: grpc.aio.ServicerContext, method: str, session_id: str
    ) -> None:
        self.service = service
        self.context = context
        self.method = method
        self.session_id = session_id
        # Values checked ahead of the store call, answer parts written after it.
        self.work = offload.Work()

    @property
    def store(self) -> MemoryStore:
        """The service's store.

        Example: ``call.store.get(call.session_id, "t")`` reads a variable.
        """
        return self.service.store

    def answer(self) -> Answer:
        """A size meter for this RPC's answer (``max_message_bytes``).

        Example: ``call.answer().add(response)`` refuses an answer too big to send.
        """
        return Answer(self.service.limits.max_message_bytes, self.method, self.work)

    def variable(self, record: VariableRecord, out: pb.Variable) -> pb.Variable:
        """Fill ``out`` with ``record`` as the caller sees it (``encode.seen_variable``).

        Example: ``call.variable(record, response.variable)`` returns ``response.variable``.
        """
        return seen_variable(
            self.service.store, self.session_id, record, out,
            lambda msg, value: self.work.fill(msg, value, record.size - record.metadata_size),
        )


class Unary(Generic[Req, Resp]):
    """A unary RPC of the servicer, declared once from its handler: as a class attribute
    named after the RPC it becomes the method gRPC calls.

    ``authenticated`` (default) needs the session's token and a session id; without it
    (``InitializeSession``, where the store checks an attacher's token, and ``Echo``) the
    handler's ``call.session_id`` is "". Either way a malformed request is answered
    INVALID_ARGUMENT, a store error with its status and kind, a builtin error from deeper
    code INVALID_ARGUMENT, and anything else INTERNAL (logged); nothing escapes. A call
    that committed, or that may show a change not yet durable, is answered after
    ``store.sync`` says it is durable. With ``writes=True`` a refusal (and each item a
    non-atomic batch refused) is logged at info as ``write_refused``.

    Large requests and values go off the loop (offload.py): a request of
    ``LARGE_REQUEST_BYTES`` is parsed on a worker, and ``ahead`` (if given) decodes and
    checks its values there too; large values are written into the answer there. A
    write waits for the session's earlier writes to make their store calls first, so
    they apply in the order they arrived.

    Example: ``GetVariable = Unary(variables.get_variable)`` in ``VariablesService``.
    """

    def __init__(
        self, handler: Callable[[Call, Req], Resp], *, authenticated: bool = True,
        writes: bool = False, ahead: offload.Ahead | None = None,
        forwards: bool | None = None, repeatable: bool = False,
    ) -> None:
        self.handler = handler
        # Decodes and checks a large request's values on a worker (offload.check_set...).
        self.ahead = ahead
        self.authenticated = authenticated
        # A write RPC: a refusal is logged at info (audit.refused_write).
        self.writes = writes
        # Made by the write leader when another replica leads (forward.py): every write,
        # and the other RPCs that store something (a heartbeat, a lease).
        self.forwards = writes if forwards is None else forwards
        # A forwarded call a follower may make itself as well, whatever the leader did
        # with it (a heartbeat only moves last_seen to now): it leaves no mark (nothing
        # the session reads depends on it) and waits for no earlier write.
        self.repeatable = repeatable
        # Named after its handler until the servicer names it after the RPC (the name
        # logs and INTERNAL answers use, and what the answer's size meter reports).
        self.name = handler.__name__
        self.method = self._method()

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.method = self._method()

    def __get__(self, service: Any, owner: type | None = None) -> Any:
        # Bound like a plain method, so gRPC sees a coroutine function.
        return self.method if service is None else types.MethodType(self.method, service)

    def _method(self) -> Callable[..., Any]:
        handler, authenticated, name = self.handler, self.authenticated, self.name
        writes, ahead, forwards = self.writes, self.ahead, self.forwards
        repeatable = self.repeatable

        async def method(
            service: Service, request: Req, context: grpc.aio.ServicerContext
        ) -> Resp:
            lane: offload.Lane | None = None
            mine: asyncio.Future[None] | None = None
            try:
                if isinstance(request, Malformed):
                    raise request.exception()
                session_id = ""
                forwarder = service.forwarder
                if authenticated:
                    service.authenticate(getattr(request, "session_id", ""), context)
                    session_id = require_session_id(request)
                    if forwarder is not None and not getattr(context, "caught_up", False):
                        # A session's call that saw more than this replica holds (a
                        # ``direct_writes`` client's, after its write at the leader)
                        # waits for it, as the Calls stream's reader does. After the
                        # token check: a caller without one cannot hold a call 5 s.
                        await forward.catch_up(service.store, context.invocation_metadata())
                store = service.store
                call = Call(service, context, name, session_id)
                leader_asked = forwards and forward.relayed(context.invocation_metadata())
                # The session's forwarded writes this call comes after: those already
                # there as it enters its lane, never a later write's (one forwarded
                # behind it in the lane waits for this call's turn: waiting for it
                # too, each waited for the other forever).
                # An attach names its session too: made right after a forwarded close,
                # it must not find the session still alive here.
                named = session_id or (getattr(request, "session_id", "")
                                       if name == "InitializeSession" else "")
                held = (forwarder.holding(named) if forwarder is not None
                        and named and not leader_asked and not repeatable else [])
                if writes:
                    lane = offload.lanes_of(service).enter(session_id)
                if (forwards and forwarder is not None and forwarder.active
                        and not leader_asked):
                    # Another replica leads: the call runs there (forward.py).
                    relayed = await forward.relay(call, request, forwarder, lane,
                                                  repeatable)
                    if not isinstance(relayed, forward.RunHere):
                        return relayed  # type: ignore[no-any-return]
                    # Never sent (the link failed first): made here. Its turn in the
                    # lane is over; it keeps its mark until stored, so the session's
                    # later calls still come after it.
                    mine, lane = relayed.held, None
                if writes and forwarder is not None and not leader_asked and mine is None:
                    # Made here with the link down: a write of the session forwarded
                    # once it is up waits until this one is stored (forward.relay).
                    mine = forwarder.hold(session_id, here=True)
                if isinstance(request, offload.Large):
                    request = await offload.parse(request, Malformed)
                    if isinstance(request, Malformed):
                        raise request.exception()
                    if lane is not None:
                        await lane.turn()
                    if ahead is not None:
                        await ahead(call, request)
                elif lane is not None:
                    await lane.turn()
                if held:
                    # The session's earlier writes went to the leader: this call comes
                    # after them, as it would after writes made here.
                    await asyncio.wait(held)
                queued = frames_queued()
                for attempt in range(1, CONFLICT_RERUNS + 1):
                    if writes and store.flush_limited:
                        # Over etcd: the next txn must stay within its limits.
                        await store.room(request.ByteSize())  # type: ignore[attr-defined]
                    before = store.revision
                    response = handler(call, request)
                    if lane is not None:
                        lane.leave()
                    # A write is acknowledged only once durable: the handler committed in
                    # one synchronous step, so the store's revision now is the write's
                    # own. A read (or an attach) waits too while anything it may show is
                    # not yet durable: an answer never shows what the disk could refuse.
                    if store.revision == before and not store.pending:
                        break
                    try:
                        await store.sync(store.revision)
                        break
                    except RevisionConflict as exc:
                        # Another replica moved the store on first: this call's change
                        # was undone; run it again against the new state (which the sync
                        # waited to hold the write that won), boundedly. At once: the
                        # calls undone together then go out together in the next flush.
                        # (A random pause before each, as there was, scattered them over
                        # many small flushes, each a new chance to conflict: bench_replicas'
                        # 3 replicas with 32 writes in flight ran at half the rate.)
                        if attempt == CONFLICT_RERUNS:
                            raise ConflictError(
                                f"{name} met another replica's writes {attempt} times in a "
                                "row; nothing of it was kept: try again"
                            ) from exc
                if writes:
                    audit.refused_results(name, request, response)
                if forwarder is not None and (forwards or name == "InitializeSession"):
                    # The forwarding replica's (or a ``direct_writes`` client's) next
                    # calls wait until the replica they are made on holds this much (an
                    # attach's too: the client's next write may go to the leader).
                    context.set_trailing_metadata(
                        ((POSITION_KEY, str(store.position)),))
                if frames_queued() != queued:
                    # The commit queued a frame for a watching stream: one loop turn lets
                    # its sender encode and start writing it before gRPC sends this
                    # answer, so a watcher hears of a write about when its writer does
                    # (bench_watch_path.py: write -> watcher ~0.7x).
                    await asyncio.sleep(0)
                if call.work:
                    # Large values: encoded, and the answer serialized, on a worker.
                    answer: Any = await offload.off_loop(call.work.answer, response)
                    return answer  # type: ignore[no-any-return]
                return response
            except forward.Refused as exc:
                # The leader's answer, passed on as it came (status, kind, details).
                context.set_trailing_metadata(exc.trailers)
                await context.abort(exc.code, exc.details)
            except DspexError as exc:
                if forwards:
                    exc = forward.unplaced(service.store, context.invocation_metadata(), exc)
                if writes:
                    audit.refused_write(name, request, exc)
                await refuse(context, exc, name)
            except (KeyError, ValueError, TypeError, PermissionError) as exc:
                # A builtin from deeper code is still the caller's bad input, not a crash.
                log.warning("request_error", method=name, error=clip(repr(exc), 500))
                await abort_with(context, InvalidValueError(str(exc)))
            except Exception:
                log.exception("handler_failed", method=name)
                context.set_trailing_metadata(((ERROR_KIND_KEY, "internal"),))
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}")
            finally:
                if lane is not None:
                    lane.leave()
                if mine is not None:
                    forward.free(mine)
            raise AssertionError("unreachable: context.abort raises")

        method.__name__ = method.__qualname__ = name
        method.__doc__ = handler.__doc__
        return method
