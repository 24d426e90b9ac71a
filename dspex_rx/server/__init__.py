"""The gRPC server: a grpc.aio adapter over the store (it never imports the client).

Import from here; the modules below are its parts.
"""

from dspex_rx.server.app import (
    MAX_PENDING_CONTROLS,
    EmbeddedServer,
    Server,
    VariablesService,
    event_to_pb,
    record_to_pb,
    serve,
    status_to_pb,
)
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
