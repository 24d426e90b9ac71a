"""The gRPC server: a grpc.aio adapter over the store (it never imports the client).

Import from here; the modules below are its parts: ``app`` (the server process),
``service`` (the servicer, each RPC declared once through ``rpc.Unary``), ``handlers/``
(one module per service area), ``stream``/``subscribe``/``frames``/``fanout`` (the Session
stream), ``encode`` (store values to wire messages), ``metrics`` (Prometheus), ``audit``
(refused-write log lines) and ``cli``.
"""

from dspex_rx.server.app import EmbeddedServer, Server, serve
from dspex_rx.server.encode import event_to_pb, record_to_pb, rules_to_pb, status_to_pb
from dspex_rx.server.handlers.exchange import (
    import_report_to_pb,
    snapshot_from_pb,
    snapshot_to_pb,
)
from dspex_rx.server.rpc import Malformed, abort_with, parse_request
from dspex_rx.server.service import VariablesService, add_service
from dspex_rx.server.stream import MAX_PENDING_CONTROLS
from dspex_rx.wire.channel import MAX_MESSAGE_BYTES, SERVICE_NAME, grpc_options

# What the server exported before the split stays importable from here: a program that
# hosts the servicer on its own grpc.aio server uses add_service and the codecs.
__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_CONTROLS",
    "SERVICE_NAME",
    "EmbeddedServer",
    "Malformed",
    "Server",
    "VariablesService",
    "abort_with",
    "add_service",
    "event_to_pb",
    "grpc_options",
    "import_report_to_pb",
    "parse_request",
    "record_to_pb",
    "rules_to_pb",
    "serve",
    "snapshot_from_pb",
    "snapshot_to_pb",
    "status_to_pb",
]
