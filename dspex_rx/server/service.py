"""The v1 servicer, ``VariablesService``: each RPC declared once from its handler, the
Session stream, the token check; and ``add_service``, its registration on a grpc.aio server.
"""

from __future__ import annotations

import functools

import grpc
from google.protobuf.message_factory import GetMessageClass

from dspex_rx.core.limits import Limits
from dspex_rx.errors import AuthenticationError, InvalidValueError
from dspex_rx.server import offload
from dspex_rx.server.calls import CallObserver, calls
from dspex_rx.server.fanout import Subscriber
from dspex_rx.server.forward import Forwarder
from dspex_rx.server.handlers import (
    access,
    dependencies,
    derivation,
    exchange,
    history,
    optimization,
    sessions,
    variables,
)
from dspex_rx.server.ratelimit import Guard, peer_address
from dspex_rx.server.rpc import Unary, parse_request, presented_token
from dspex_rx.server.stream import session
from dspex_rx.server.subscribe import subscribe
from dspex_rx.store import MemoryStore
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc
from dspex_rx.wire.security import check_auth_mode


class VariablesService(pb_grpc.VariablesServicer):
    """The native v1 service adapter: wire messages in, store calls, wire messages out.

    ``auth="token"`` checks every session-scoped call's token; ``auth="none"`` issues
    tokens but checks none (for tools on loopback).

    Example: ``add_service(VariablesService(MemoryStore()), server)`` serves it.
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
        # Rate limits and per-peer session counts (ratelimit.py); in memory, per server.
        self.guard = Guard(self.limits)
        # The live streams' queues, for introspection (read them on the server's loop).
        self.subscribers: set[Subscriber] = set()
        # Told of every call on a Calls stream (method, status, seconds): the metrics.
        self.call_observer: CallObserver | None = None
        # Set by the server over a shared backend with a write leader (forward.py).
        self.forwarder: Forwarder | None = None
        # A durable store that went back to its file (the disk refused a write) wakes
        # every stream, which then ends: its queue may hold commits that were undone.
        store.on_reload(self._wake_streams)
        # Another replica wrote first and this one's commits above a revision were
        # undone: each stream forgets them (nothing above a durable revision was sent);
        # one that cannot ends alone.
        store.on_undo(self._undo_in_streams)

    def _wake_streams(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber.wake()

    def _undo_in_streams(self, revision: int) -> None:
        for subscriber in list(self.subscribers):
            if not subscriber.undo_above(revision):
                subscriber.undone = True
                subscriber.wake()

    def authenticate(self, session_id: str, context: grpc.aio.ServicerContext) -> None:
        """Raise ``AuthenticationError`` unless the call carries ``session_id``'s token
        (``SessionNotFoundError`` for an unknown session); a no-op with ``auth="none"``.

        A peer whose failed authentications are used up (``Limits``'
        ``auth_failures_per_minute_per_peer``) is refused with ``RateLimitedError``
        first; a failure counts against the peer and the session id named.

        Example: ``service.authenticate(request.session_id, context)`` returns or raises.
        """
        if self.auth == "none":
            return
        if not session_id:
            raise InvalidValueError("session_id is required")
        # A peer out of failures is refused before its token is looked at: otherwise a
        # guesser would still learn which guess was right, however often it was refused.
        peer = peer_address(context.peer())
        self.guard.admit_auth(peer)
        try:
            self.store.authenticate(session_id, presented_token(context))
        except AuthenticationError:
            self.guard.failed(peer, session_id)
            raise

    # Every unary RPC, declared once: its handler (decode, store call, encode). Creating
    # or attaching checks a presented token in the store; Echo belongs to no session.
    InitializeSession = Unary(sessions.initialize_session, authenticated=False)
    # These store something too (a client's last heartbeat, a lease): made by the write
    # leader, as writes are, when another replica leads.
    Heartbeat = Unary(sessions.heartbeat, forwards=True, repeatable=True)
    CloseSession = Unary(sessions.close_session, forwards=True)
    Echo = Unary(sessions.echo, authenticated=False)
    # Session-less: the handler shows only what the presented token or key opens.
    ListSessions = Unary(sessions.list_sessions, authenticated=False)

    # A large value is decoded and checked off the loop first (``ahead``, offload.py).
    RegisterVariable = Unary(
        variables.register_variable, writes=True, ahead=offload.check_register
    )
    RegisterVariables = Unary(
        variables.register_variables, writes=True, ahead=offload.check_registers
    )
    GetVariable = Unary(variables.get_variable)
    GetVariables = Unary(variables.get_variables)
    SetVariable = Unary(variables.set_variable, writes=True, ahead=offload.check_set)
    UpdateVariables = Unary(
        variables.update_variables, writes=True, ahead=offload.check_updates
    )
    ListVariables = Unary(variables.list_variables)
    DeleteVariable = Unary(variables.delete_variable, writes=True)

    AddDependency = Unary(dependencies.add_dependency, writes=True)
    RemoveDependency = Unary(dependencies.remove_dependency, writes=True)
    GetDependencies = Unary(dependencies.get_dependencies)

    GetHistory = Unary(history.get_history)
    Rollback = Unary(history.rollback, writes=True)

    StartOptimization = Unary(optimization.start_optimization, forwards=True)
    OptimizationStep = Unary(optimization.optimization_step, forwards=True)
    FinishOptimization = Unary(optimization.finish_optimization, forwards=True)
    StopOptimization = Unary(optimization.stop_optimization, forwards=True)
    GetOptimizationStatus = Unary(optimization.get_optimization_status)
    GetOptimizationHistory = Unary(optimization.get_optimization_history)
    ReportMetrics = Unary(optimization.report_metrics, forwards=True)

    DeriveLease = Unary(derivation.derive_lease, forwards=True)

    ExportVariables = Unary(exchange.export_variables)
    ImportVariables = Unary(exchange.import_variables, writes=True)

    SetVariablePermissions = Unary(access.set_variable_permissions, writes=True)
    CheckVariableAccess = Unary(access.check_variable_access)

    # The watch stream, and its Subscribe step as a method (tests wrap it per instance).
    Session = session
    _subscribe = subscribe
    # The unary RPCs above, pipelined over one stream (calls.py).
    Calls = calls


def add_service(service: VariablesService, server: grpc.aio.Server) -> None:
    """Register the v1 service like the generated ``add_VariablesServicer_to_server``,
    but with requests parsed by ``parse_request``: bytes protobuf refuses reach the
    handler as ``Malformed`` and are answered INVALID_ARGUMENT, not gRPC's UNKNOWN.

    Example: ``add_service(VariablesService(MemoryStore()), server)`` registers it.
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
                parse_request, GetMessageClass(method.input_type),
                # A large unary request is parsed on a worker, off the loop (offload.py).
                defer_large=not method.client_streaming,
            ),
            # An answer with large values comes already serialized (offload.Work.answer).
            response_serializer=offload.serialize_response,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    server.add_registered_method_handlers(descriptor.full_name, handlers)
