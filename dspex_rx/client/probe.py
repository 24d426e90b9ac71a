"""Calls that need no session of their own: the sessions a caller may see (``ListSessions``)
and the server's gRPC health status, each over a short-lived channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import trio

from dspex_rx.client.transport import Transport
from dspex_rx.errors import ServerUnavailableError
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import SERVICE_NAME, channel_target, grpc_options, unreachable_hint
from dspex_rx.wire.convert import map_rpc_error, seconds
from dspex_rx.wire.security import Pem, channel_credentials, principal_metadata, token_metadata

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def session_info(info: pb.SessionInfo) -> dict[str, Any]:
    """One ``SessionInfo`` as a dict: times in POSIX seconds, ``idle_since`` and
    ``expires_at`` None while a client is attached.

    >>> session_info(pb.SessionInfo(session_id="s", clients=1, variables=2))["variables"]
    2
    """
    return {
        "session_id": info.session_id,
        "created_at": seconds(info.created_at),
        "clients": info.clients,
        "variables": info.variables,
        "revision": info.revision,
        "session_ttl_seconds": info.session_ttl_seconds,
        "idle_since": seconds(info.idle_since) if info.HasField("idle_since") else None,
        "expires_at": seconds(info.expires_at) if info.HasField("expires_at") else None,
    }


def _unreachable(exc: grpc.aio.AioRpcError, target: str, tls: bool) -> BaseException:
    # As connect() does: a server that cannot be reached is one error saying what to
    # change, its gRPC error chained; any other status is the package's error for it.
    code = exc.code()
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return map_rpc_error(exc)
    hint = unreachable_hint(target, exc.details() or "", tls=tls,
                            timed_out=code == grpc.StatusCode.DEADLINE_EXCEEDED)
    return ServerUnavailableError(
        f"cannot connect to the dspex-rx server at {target!r}: {hint}", target=target)


@asynccontextmanager
async def _transport(
    target: str, tls: bool, ca_cert: Pem | None, tls_server_name: str | None,
    timeout: float | None,
) -> AsyncIterator[Transport]:
    channel, host = await trio.to_thread.run_sync(channel_target, target)
    options: list[tuple[str, Any]] = list(grpc_options())
    credentials = None
    if tls or ca_cert is not None:
        credentials = channel_credentials(ca_cert)
        name = tls_server_name or (host if channel != target else None)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
    transport = Transport(channel, options, timeout=timeout, credentials=credentials)
    await transport.open()
    try:
        yield transport
    finally:
        await transport.close()


async def list_sessions(
    target: str, session_id: str = "", *, token: str | None = None,
    principal_key: str | None = None, tls: bool = False, ca_cert: Pem | None = None,
    tls_server_name: str | None = None, timeout: float | None = 10.0,
) -> tuple[list[dict[str, Any]], bool]:
    """The sessions this caller may see, and whether the server showed every session
    (it checks no tokens). With token checks: ``session_id`` when ``token`` is its own
    (``AuthenticationError`` otherwise) and every session in a principal namespace
    ``principal_key`` opens; nothing else, so no stranger's id is ever shown.

    Example: ``sessions, everything = await list_sessions("127.0.0.1:50051", "run_1",
    token=token)`` lists ``run_1`` alone on a server with ``--auth token``.
    """
    metadata = token_metadata(token) + principal_metadata(principal_key)
    async with _transport(target, tls, ca_cert, tls_server_name, timeout) as transport:
        try:
            response = await transport.unary(
                f"/{SERVICE_NAME}/ListSessions", pb.ListSessionsRequest(session_id=session_id),
                pb.ListSessionsResponse, metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            mapped = _unreachable(exc, target, tls or ca_cert is not None)
            if mapped is exc:
                raise
            raise mapped from exc
    return [session_info(info) for info in response.sessions], response.all_sessions


async def health_status(
    target: str, service: str = "", *, tls: bool = False, ca_cert: Pem | None = None,
    tls_server_name: str | None = None, timeout: float | None = 10.0,
) -> str:
    """The server's answer to the standard gRPC health check for ``service`` ("" is the
    whole server): ``"SERVING"``, ``"NOT_SERVING"``, ``"SERVICE_UNKNOWN"``...; a server
    that cannot be reached raises ``ServerUnavailableError`` saying what to change.

    Example: ``await health_status("127.0.0.1:50051")`` is ``"SERVING"`` for a live server.
    """
    from grpc_health.v1 import health_pb2

    async with _transport(target, tls, ca_cert, tls_server_name, timeout) as transport:
        try:
            reply = await transport.unary(
                HEALTH_CHECK, health_pb2.HealthCheckRequest(service=service),
                health_pb2.HealthCheckResponse,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            mapped = _unreachable(exc, target, tls or ca_cert is not None)
            if mapped is exc:
                raise
            raise mapped from exc
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name
