"""Calls from another peer address, for the per-peer limits: a loopback TCP relay whose
connections to the server leave from ``127.0.0.x`` (Linux routes all of 127/8 to lo),
and raw ``InitializeSession`` calls over a plain grpc.aio stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import grpc
import trio

from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc

Refusal = tuple[grpc.StatusCode, str, dict[str, str]]


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@asynccontextmanager
async def from_peer(target: str, source: str) -> AsyncIterator[str]:
    """A loopback address to call instead of ``target``: the server sees the call come
    from ``source`` (e.g. ``"127.0.0.2"``)."""
    host, port = target.rsplit(":", 1)

    async def relay(client: trio.SocketStream) -> None:
        async with client:
            upstream = await trio.open_tcp_stream(host, int(port), local_address=source)
            async with upstream, trio.open_nursery() as pipes:
                pipes.start_soon(_pump, client, upstream)
                pipes.start_soon(_pump, upstream, client)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
        yield f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


def _run(target: str, calls: Callable[[pb_grpc.VariablesStub], Awaitable[Any]]) -> Any:
    import asyncio

    async def main() -> Any:
        async with grpc.aio.insecure_channel(target) as channel:
            return await calls(pb_grpc.VariablesStub(channel))

    return asyncio.run(main())


async def raw(target: str, calls: Callable[[pb_grpc.VariablesStub], Awaitable[Any]]) -> Any:
    """Run ``calls(stub)`` on a fresh grpc.aio channel (its own loop, a worker thread)."""
    return await trio.to_thread.run_sync(_run, target, calls)


def refusal(exc: grpc.aio.AioRpcError) -> Refusal:
    """(status, message, trailing metadata) of a refused call."""
    trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    return exc.code(), exc.details() or "", trailing


async def initialize(
    target: str, count: int, *, session_id: str = "", ttl: float = 0.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[pb.InitializeSessionResponse | Refusal]:
    """``count`` InitializeSession calls in a row; each answer, or each refusal."""

    async def calls(stub: pb_grpc.VariablesStub) -> list[Any]:
        out: list[Any] = []
        for _ in range(count):
            try:
                out.append(await stub.InitializeSession(
                    pb.InitializeSessionRequest(session_id=session_id, ttl_seconds=ttl),
                    metadata=metadata,
                ))
            except grpc.aio.AioRpcError as exc:
                out.append(refusal(exc))
        return out

    result: list[pb.InitializeSessionResponse | Refusal] = await raw(target, calls)
    return result
