"""The gRPC server: a grpc.aio adapter over the store (it never imports the client).

Import from here; the modules below are its parts: ``app`` (the server process),
``service`` (the servicer, each RPC declared once through ``rpc.Unary``), ``handlers/``
(one module per service area), ``stream``/``subscribe``/``frames``/``fanout`` (the Session
stream), ``encode`` (store values to wire messages) and ``cli``.
"""

from dspex_rx.server.app import EmbeddedServer, Server, serve
from dspex_rx.server.encode import event_to_pb, record_to_pb, status_to_pb
from dspex_rx.server.service import VariablesService
from dspex_rx.server.stream import MAX_PENDING_CONTROLS
from dspex_rx.wire.channel import SERVICE_NAME, grpc_options

__all__ = [
    "MAX_PENDING_CONTROLS",
    "SERVICE_NAME",
    "EmbeddedServer",
    "Server",
    "VariablesService",
    "event_to_pb",
    "grpc_options",
    "record_to_pb",
    "serve",
    "status_to_pb",
]
