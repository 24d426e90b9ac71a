"""Who may call: the session-token header, the server's auth modes, TLS material, and the
rule that keeps a server without authentication and TLS off the network.

A session's token is made by the store when the session is created and returned once,
in ``InitializeSessionResponse.session_token``; every later call for the session sends
it in the ``x-dspex-session-token`` call metadata, and the server compares it with
``hmac.compare_digest``. TLS keeps the token (and the values) from being read on the
way; without TLS the token is only as private as the network, which is why a server
binds a non-loopback address only with ``auth="token"`` and TLS, or when told
``insecure=True``.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Union

import grpc

from dspex_rx.errors import InvalidValueError

# The call-metadata key the session token travels in (gRPC keys are lower case).
SESSION_TOKEN_KEY = "x-dspex-session-token"
# The key of a reserved namespace (identity.Principals), sent when creating a session in it.
PRINCIPAL_KEY_KEY = "x-dspex-principal-key"

# "token": every call for a session must present its token. "none": tokens are issued but
# not checked (for tools on loopback; a non-loopback bind then needs insecure=True).
AUTH_MODES = ("token", "none")

Pem = Union[str, bytes, "os.PathLike[str]"]


def check_auth_mode(auth: str) -> str:
    """The auth mode if it is one of ``AUTH_MODES``; otherwise ``InvalidValueError``.

    >>> check_auth_mode("token")
    'token'
    """
    if auth not in AUTH_MODES:
        raise InvalidValueError(
            f"auth must be one of {', '.join(map(repr, AUTH_MODES))}, got {auth!r}"
        )
    return auth


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents a session token (none for no token).

    >>> token_metadata("abc")
    (('x-dspex-session-token', 'abc'),)
    >>> token_metadata(None)
    ()
    """
    return ((SESSION_TOKEN_KEY, token),) if token else ()


def principal_metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents a principal's key (none for no key).

    >>> principal_metadata("k" * 16)
    (('x-dspex-principal-key', 'kkkkkkkkkkkkkkkk'),)
    """
    return ((PRINCIPAL_KEY_KEY, key),) if key else ()


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: 127.0.0.0/8, ::1 (bracketed or not,
    or IPv4-mapped) and ``localhost``. Other names are not resolved: they count as network.

    >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("localhost")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("::"), is_loopback("example.org")
    (False, False, False)
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_bind(host: str, auth: str, tls: bool, insecure: bool) -> None:
    """Refuse to serve a non-loopback ``host`` unless ``auth == "token"`` and ``tls``, or
    ``insecure``: anyone on the network could otherwise read tokens and values off the
    wire, or (``auth="none"``) act for any session whose id they can guess.

    >>> check_bind("127.0.0.1", "none", tls=False, insecure=False)   # loopback: fine
    >>> check_bind("0.0.0.0", "token", tls=False, insecure=True)     # told to: fine
    >>> check_bind("0.0.0.0", "token", tls=False, insecure=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dspex_rx.errors.InvalidValueError: refusing to serve on ... '0.0.0.0' without TLS: ...
    """
    check_auth_mode(auth)
    if insecure or is_loopback(host):
        return
    missing = []
    if not tls:
        missing.append("TLS")
    if auth != "token":
        missing.append(f"token authentication (auth is {auth!r})")
    if not missing:
        return
    raise InvalidValueError(
        f"refusing to serve on non-loopback address {host!r} without "
        f"{' and '.join(missing)}: pass tls_cert and tls_key (CLI: --tls-cert PATH "
        "--tls-key PATH) with auth='token' (CLI: --auth token), or bind 127.0.0.1, or "
        "accept the risk with insecure=True (CLI: --insecure)"
    )


def read_pem(value: Pem, what: str) -> bytes:
    """PEM bytes from bytes (taken as they are), a string holding PEM text, or a path.

    >>> read_pem(b"-----BEGIN CERTIFICATE-----...", "ca_cert")[:5]
    b'-----'
    """
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data = value.encode("ascii")
    elif isinstance(value, str | os.PathLike):
        try:
            with open(value, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidValueError(
                f"cannot read {what} from {os.fspath(value)!r}: {exc}"
            ) from None
    else:
        raise InvalidValueError(
            f"{what} must be PEM bytes or a path, got {type(value).__name__}"
        )
    if not data.strip():
        raise InvalidValueError(f"{what} is empty")
    return data


def server_credentials(
    tls_cert: Pem | None, tls_key: Pem | None
) -> grpc.ServerCredentials | None:
    """Server TLS credentials from a certificate chain and its private key (PEM paths or
    bytes); None when neither is given. One without the other is refused.

    >>> server_credentials(None, None) is None
    True

    Example: ``server_credentials("server.pem", "server.key")`` for a TLS server.
    """
    if tls_cert is None and tls_key is None:
        return None
    if tls_cert is None or tls_key is None:
        raise InvalidValueError("TLS needs both tls_cert and tls_key (PEM paths or bytes)")
    return grpc.ssl_server_credentials(
        [(read_pem(tls_key, "tls_key"), read_pem(tls_cert, "tls_cert"))]
    )


def channel_credentials(ca_cert: Pem | None = None) -> grpc.ChannelCredentials:
    """Client TLS credentials that trust ``ca_cert`` (PEM path or bytes), or the system's
    root certificates when it is None.

    Example: ``channel_credentials("ca.pem")`` trusts the CA in ca.pem.
    """

    roots = read_pem(ca_cert, "ca_cert") if ca_cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots)
