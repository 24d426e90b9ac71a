"""What client and server agree on about the channel: the service name and message size options.

Both ends import it from here, so neither has to import the other.
"""

from __future__ import annotations

from dspex_rx.core.limits import DEFAULT_LIMITS
from dspex_rx.v1 import variables_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Variables"].full_name
MAX_MESSAGE_BYTES = DEFAULT_LIMITS.max_message_bytes


def grpc_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """The channel/server options for a message size limit (both directions).

    >>> grpc_options(1024)
    [('grpc.max_receive_message_length', 1024), ('grpc.max_send_message_length', 1024)]
    """

    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
