"""What client and server agree on about the channel: the service name, message size options
and how an address (or several replicas' addresses) becomes a gRPC target.

Both ends import it from here, so neither has to import the other.
"""

from __future__ import annotations

import socket

from dspex_rx.core.limits import DEFAULT_LIMITS
from dspex_rx.errors import InvalidValueError
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


def channel_target(target: str) -> tuple[str, str]:
    """The gRPC target for an address, or for several (``"a:1,b:2"``: replicas of one
    store), and the host a TLS certificate must name. Several addresses are resolved to IPs
    (``ipv4:``/``ipv6:`` lists) so gRPC's pick_first connects to the first that answers and
    moves to the next when it goes; one address (a DNS name with several records too)
    is left to gRPC's own resolver.

    >>> channel_target("localhost:50051")
    ('localhost:50051', 'localhost')
    >>> channel_target("127.0.0.1:5001, 127.0.0.1:5002")
    ('ipv4:127.0.0.1:5001,127.0.0.1:5002', '127.0.0.1')
    """
    parts = [part.strip() for part in target.split(",") if part.strip()]
    if not parts:
        raise InvalidValueError(f"target {target!r} names no address (host:port)")
    hosts = [_split(part) for part in parts]
    if len(parts) == 1:
        return parts[0], hosts[0][0]
    v4: list[str] = []
    v6: list[str] = []
    for host, port in hosts:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise InvalidValueError(f"target {target!r}: cannot resolve {host!r} ({exc})"
                                    ) from None
        for family, _, _, _, address in found:
            if family == socket.AF_INET:
                v4.append(f"{address[0]}:{port}")
            elif family == socket.AF_INET6:
                v6.append(f"[{address[0]}]:{port}")
    # One scheme per target: IPv4 when any, else IPv6.
    chosen, scheme = (v4, "ipv4") if v4 else (v6, "ipv6")
    return f"{scheme}:{','.join(dict.fromkeys(chosen))}", hosts[0][0]


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)
