"""What client and server agree on about the channel: the service name, message size and
keepalive options, and how an address (or several replicas' addresses) becomes a gRPC target.

Both ends import it from here, so neither has to import the other.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from typing import Any

from dspex_rx.core.limits import DEFAULT_LIMITS
from dspex_rx.errors import InvalidValueError
from dspex_rx.v1 import variables_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Variables"].full_name
# Positions between replicas and ``direct_writes`` clients (``store.position``: over etcd
# the etcd revision a replica's live state holds). A replica answers a write with its
# position (POSITION_KEY), runs a request only once it holds the one the request names
# (AFTER_KEY: what its caller saw), and a follower's answer to a write it forwarded names
# the leader's address (LEADER_KEY) to a caller that asks (ASKS_LEADER_KEY: a
# ``direct_writes`` client; the address is the one replicas advertise to each other).
POSITION_KEY = "x-dspex-position"
AFTER_KEY = "x-dspex-after"
LEADER_KEY = "x-dspex-leader"
ASKS_LEADER_KEY = "x-dspex-asks-leader"
ASKS_LEADER = ((ASKS_LEADER_KEY, "1"),)
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


# Keepalive: the client pings every ``keepalive_time`` seconds, even on an idle stream, and
# a ping unanswered for ``keepalive_timeout`` closes the connection, so a silently dead path
# fails every call on it within about the sum. The server must accept pings that often or it
# answers GOAWAY "too_many_pings" (gRPC's default floor is 5 minutes): it accepts one a second
# (so the client's floor is that too), and pings its own clients every 30 s to free the
# streams of clients that vanished.
DEFAULT_KEEPALIVE_TIME = 3.0
DEFAULT_KEEPALIVE_TIMEOUT = 2.0
MIN_KEEPALIVE_TIME = 1.0
SERVER_KEEPALIVE_TIME = 30.0
SERVER_KEEPALIVE_TIMEOUT = 10.0


def client_keepalive_options(
    keepalive_time: float = DEFAULT_KEEPALIVE_TIME,
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
) -> list[tuple[str, int]]:
    """The client channel's keepalive options, checked: ``keepalive_time`` at least
    ``MIN_KEEPALIVE_TIME`` (the server's floor), ``keepalive_timeout`` positive; seconds.

    >>> client_keepalive_options(1.0, 0.5)[:2]
    [('grpc.keepalive_time_ms', 1000), ('grpc.keepalive_timeout_ms', 500)]
    >>> try:
    ...     client_keepalive_options(0.2, 1.0)
    ... except InvalidValueError as exc:
    ...     print(str(exc).split(" (")[0])
    keepalive_time must be a number of seconds >= 1.0
    """
    for name, value, floor in (("keepalive_time", keepalive_time, MIN_KEEPALIVE_TIME),
                               ("keepalive_timeout", keepalive_timeout, None)):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (
            value < floor if floor is not None else value <= 0
        ):
            need = (f">= {floor} (the server refuses pings more often)" if floor is not None
                    else "> 0")
            raise InvalidValueError(f"{name} must be a number of seconds {need}, got {value!r}")
    return [
        ("grpc.keepalive_time_ms", round(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive_timeout * 1000)),
        # Any ping unanswered (gRPC's flow-control probe too, which a keepalive ping rides
        # on when one is in flight) counts as dead after the same time, not gRPC's 60 s.
        ("grpc.http2.ping_timeout_ms", round(keepalive_timeout * 1000)),
        # Ping even with no call in flight, and without limit on an idle stream (gRPC's
        # default stops after two pings that carried no data: an idle watch would go deaf).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_keepalive_options() -> list[tuple[str, int]]:
    """The server's keepalive policy: accept a client's pings down to one a second, even
    with no call in flight, and ping its own clients every 30 s.

    >>> dict(server_keepalive_options())["grpc.http2.min_recv_ping_interval_without_data_ms"]
    1000
    """
    floor = round(MIN_KEEPALIVE_TIME * 1000)
    return [
        ("grpc.http2.min_recv_ping_interval_without_data_ms", floor),
        ("grpc.http2.min_ping_interval_without_data_ms", floor),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_time_ms", round(SERVER_KEEPALIVE_TIME * 1000)),
        ("grpc.keepalive_timeout_ms", round(SERVER_KEEPALIVE_TIMEOUT * 1000)),
    ]


# gRPC's own target schemes (its resolvers). A target naming one is a gRPC target URI and
# goes to gRPC unchanged: ``dns://server/name:port`` asks that DNS server, ``ipv4:a:1,b:2``
# is gRPC's own list (its commas are not ours).
GRPC_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock")


def grpc_scheme(target: str) -> str | None:
    """The gRPC resolver scheme ``target`` names (one of ``GRPC_SCHEMES``, lowercase), or
    None for a plain ``host:port`` (or a scheme gRPC does not know, like ``http://``).

    >>> grpc_scheme("dns://127.0.0.1:53/replicas.example:50051"), grpc_scheme("a:50051")
    ('dns', None)
    >>> grpc_scheme("http://a:50051") is None
    True
    """
    scheme, sep, _ = target.strip().partition(":")
    return scheme.lower() if sep and scheme.lower() in GRPC_SCHEMES else None


def dns_parts(target: str) -> tuple[str, str, int]:
    """A ``dns:`` target's parts: (DNS server, or "" for the system's; host; port). gRPC
    takes ``dns:///host:port``, ``dns://server[:port]/host:port`` and ``dns:host:port``;
    the port is required here (gRPC's default, 443, is not a dspex-rx server's).

    >>> dns_parts("dns://127.0.0.1:5353/replicas.example:50051")
    ('127.0.0.1:5353', 'replicas.example', 50051)
    >>> dns_parts("dns:///replicas.example:50051"), dns_parts("dns:db:1")
    (('', 'replicas.example', 50051), ('', 'db', 1))
    """
    rest = target.strip()[len("dns:"):]
    server = ""
    if rest.startswith("//"):
        server, slash, rest = rest[2:].partition("/")
        if not slash:
            raise InvalidValueError(
                f"target {target!r}: a dns:// target is dns://[DNS server]/host:port")
    if "," in rest:
        raise InvalidValueError(
            f"target {target!r}: a dns: target names one host (one name with several "
            "address records is several replicas); list replicas as host:port,host:port")
    host, port = _split(rest)
    return server, host, port


def channel_target(target: str) -> tuple[str, str]:
    """The gRPC target for an address, or for several (``"a:1,b:2"``: replicas of one
    store), and the host a TLS certificate must name. Several addresses are resolved to IPs
    (``ipv4:``/``ipv6:`` lists) so gRPC's pick_first connects to the first that answers and
    moves to the next when it goes; one address (a DNS name with several records too)
    is left to gRPC's own resolver, and so is a gRPC target URI (``dns://server/name:port``
    asks that DNS server; see ``GRPC_SCHEMES``), unchanged.

    >>> channel_target("localhost:50051")
    ('localhost:50051', 'localhost')
    >>> channel_target("127.0.0.1:5001, 127.0.0.1:5002")
    ('ipv4:127.0.0.1:5001,127.0.0.1:5002', '127.0.0.1')
    >>> channel_target("dns://127.0.0.1:5353/replicas.example:50051")
    ('dns://127.0.0.1:5353/replicas.example:50051', 'replicas.example')
    """
    scheme = grpc_scheme(target)
    if scheme is not None:
        return target.strip(), _uri_host(scheme, target.strip())
    parts = [part.strip() for part in target.split(",") if part.strip()]
    if not parts:
        raise InvalidValueError(f"target {target!r} names no address (host:port)")
    for part in parts:
        if grpc_scheme(part) is not None:
            raise InvalidValueError(
                f"target {target!r}: {part!r} is a gRPC target URI, which names its "
                "addresses itself: pass it alone, or list replicas as host:port")
    hosts = [_split(part) for part in parts]
    if len(parts) == 1:
        return parts[0], hosts[0][0]
    v4: list[str] = []
    v6: list[str] = []
    for host, port in hosts:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            hint = unreachable_hint(f"{host}:{port}", "lookup", tls=False)
            raise InvalidValueError(
                f"target {target!r}: cannot resolve {host!r} ({exc}): {hint}"
            ) from None
        for family, _, _, _, address in found:
            if family == socket.AF_INET:
                v4.append(f"{address[0]}:{port}")
            elif family == socket.AF_INET6:
                v6.append(f"[{address[0]}]:{port}")
    # One scheme per target: IPv4 when any, else IPv6.
    chosen, scheme = (v4, "ipv4") if v4 else (v6, "ipv6")
    return f"{scheme}:{','.join(dict.fromkeys(chosen))}", hosts[0][0]


def _uri_host(scheme: str, target: str) -> str:
    # The host gRPC's default authority names, which a TLS certificate must hold: the
    # name a dns: target resolves, the first address of a list, localhost for a socket.
    if scheme == "dns":
        return dns_parts(target)[1]
    if scheme in ("ipv4", "ipv6"):
        first = target.partition(":")[2].split(",")[0].strip()
        host, sep, port = first.rpartition(":")
        return (host if sep and port.isdigit() else first).strip("[]")
    return "localhost"


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def unreachable_hint(target: str, details: str, *, tls: bool, timed_out: bool = False) -> str:
    """One line saying why a first connection to ``target`` failed and what to change,
    read from gRPC's error ``details`` and how the client connected (``tls``).

    >>> unreachable_hint("http://localhost:50051", "errors resolving ...", tls=False)
    "drop the 'http://' prefix: gRPC targets are host:port, e.g. 'localhost:50051'"
    >>> unreachable_hint("localhost:1", "... Connection refused", tls=False)
    'nothing is listening there: is the server running at localhost:1 (dspex-rx serve --port 1)?'
    """
    lowered = details.lower()
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https", "grpc", "grpcs"):
        address = rest.split("/")[0] or "localhost:50051"
        secure = scheme.lower() in ("https", "grpcs")
        return (f"drop the '{scheme}://' prefix: gRPC targets are host:port, e.g. "
                f"{address!r}" + (" (with tls=True for a TLS server)" if secure else ""))
    if timed_out:
        return ("no answer within the call's timeout: is the server running there, and "
                "is the address reachable from here (a firewall)?")
    if "wrong_version_number" in lowered or ("handshake" in lowered and "certificate" not in
                                              lowered and "verif" not in lowered):
        return ("the TLS handshake failed: does the server serve TLS? One started without "
                "--tls-cert serves plaintext: connect without tls/ca_cert")
    if "certificate_verify_failed" in lowered or "local issuer" in lowered:
        return ("the server's certificate is not trusted: pass ca_cert= the CA "
                "certificate that signed it (PEM path or bytes)")
    if "hostname verification" in lowered or "no match found for server name" in lowered:
        return ("the server's certificate does not name the host connected to: connect "
                "by a name it holds, or pass tls_server_name=")
    if not tls and ("socket closed" in lowered or "connection reset" in lowered
                    or "end of file" in lowered):
        return ("the server closed the connection at once: does it serve TLS "
                "(--tls-cert)? Then pass tls=True or ca_cert='ca.pem'")
    if "connection refused" in lowered:
        port = target.rpartition(":")[2]
        flag = f" --port {port}" if port.isdigit() else ""
        return (f"nothing is listening there: is the server running at {target} "
                f"(dspex-rx serve{flag})?")
    if "resolv" in lowered or "domain name" in lowered or "lookup" in lowered:
        if grpc_scheme(target) == "dns":
            return _dns_hint(target, lowered)
        return "its host name does not resolve: check it (targets are host:port)"
    return "is the server running there, and does it serve TLS exactly when tls is on?"


def _dns_hint(target: str, lowered: str) -> str:
    # A dns: target fails to resolve: say which DNS server was asked, and catch gRPC's
    # native resolver, which ignores the server named in the target and asks the system.
    try:
        server, host, _ = dns_parts(target)
    except InvalidValueError as exc:
        return str(exc)
    asked = f"the DNS server {server}" if server else "the system's DNS resolver"
    if server and "getaddrinfo" in lowered:
        return (f"GRPC_DNS_RESOLVER=native ignores the DNS server in the target ({server}) "
                f"and asked the system for {host!r}: unset it (gRPC's default c-ares "
                "resolver asks that server)")
    if "could not contact dns servers" in lowered:
        return f"{asked} did not answer: is it running, at that address?"
    return f"{asked} does not know {host!r}: check the name (a dns: target is name:port)"


def target_error(target: object) -> str:
    """Why ``target`` is not an address, and what to pass instead.

    >>> target_error(42)
    "target must be an address string such as 'localhost:50051', got int"
    """
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


def position_in(metadata: Sequence[tuple[str, Any]] | None, key: str) -> int:
    """The store position a replica or client put under ``key`` (0: none). A caller may
    send any metadata: what is no plain number is none, not an error ("²" passes
    ``str.isdigit`` yet ``int`` refuses it, as it does a number of 5,000 digits).

    >>> position_in(((AFTER_KEY, "1042"),), AFTER_KEY), position_in(((AFTER_KEY, "²"),), AFTER_KEY)
    (1042, 0)
    """
    for name, value in metadata or ():
        if name == key and isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value) if len(value) <= 20 else 0
    return 0
