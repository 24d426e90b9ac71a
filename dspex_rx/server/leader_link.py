"""The link from a replica to its write leader: one Calls stream carrying the callers'
forwarded write RPCs, packed into frames, with answers routed back by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from dspex_rx.errors import StorageError
from dspex_rx.v1 import calls_pb2 as cpb

# Metadata of a forwarded request: the leader runs it itself, never forwarding it again,
# so two replicas that each think the other leads cannot bounce a write.
FORWARDED_KEY = "x-dspex-forwarded"
CALLS_METHOD = "/dspex_rx.v1.Variables/Calls"


class NotSent(StorageError):
    """A forwarded request that never left this replica (its link failed first): the
    replica makes the call itself instead, as nothing of it reached the leader.

    >>> isinstance(NotSent("the link failed"), StorageError)
    True
    """
# gRPC's own limit of a message's size, where the link's options give none.
GRPC_MAX_MESSAGE = 4 * 1024 * 1024
# Bytes a request adds to its frame beside its own: the field's tag and length.
CALL_FRAMING = 8


class LeaderLink:
    """One Calls stream to the leader: requests packed per message as they queue up
    (within ``max_frame`` bytes), answers routed back by id; once it fails, every request
    still waiting fails, saying whether it had left. ``up`` is called once the leader
    serves the stream, ``failed(link, why)`` once it failed.

    Example: ``link = LeaderLink("10.0.0.2:50051", options, failed, up)``;
    ``reply = await link.send("SetVariable", data, metadata)`` once ``link.ready``.
    """

    def __init__(self, target: str, options: Sequence[tuple[str, Any]],
                 failed: Callable[[LeaderLink, str], None], up: Callable[[], None],
                 max_frame: int = GRPC_MAX_MESSAGE) -> None:
        self.target = target
        self._max_frame = max_frame
        self._up = up
        # Set once the leader's first (empty) frame came: requests are sent only then.
        self.ready = False
        self._retiring = False
        self._failed = failed
        self._ids = itertools.count(1)
        self._queue: list[cpb.CallRequest] = []
        # Answers due, by request id; ids in ``_queue`` have not left yet.
        self._waiting: dict[int, asyncio.Future[cpb.CallReply]] = {}
        self._wake = asyncio.Event()
        self._channel = grpc.aio.insecure_channel(target, options=list(options))
        self._task = asyncio.get_running_loop().create_task(self._run())
        # Done once the link ended and its channel closed.
        self.closed: asyncio.Future[None] = self._task

    def send(self, method: str, data: bytes,
             metadata: Sequence[tuple[str, str]]) -> asyncio.Future[cpb.CallReply]:
        """Queue one request (marked forwarded, with the caller's ``metadata``); the
        future is its answer.

        Example: ``answer = link.send("SetVariable", data, (("x-dspex-session-token", t),))``.
        """
        call_id = next(self._ids)
        answer: asyncio.Future[cpb.CallReply] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = answer
        request = cpb.CallRequest(id=call_id, method=method, request=data)
        request.metadata.add(key=FORWARDED_KEY, value="1")
        for key, value in metadata:
            request.metadata.add(key=key, value=value)
        self._queue.append(request)
        self._wake.set()
        return answer

    def retire(self) -> None:
        """Take no more requests' turn: close once the last answer came.

        Example: ``old.retire()`` when a new leader is named.
        """
        # Closed once its last answer came (a new leader's link takes new requests).
        self._retiring = True
        self._wake.set()

    async def _run(self) -> None:
        call = self._channel.stream_stream(
            CALLS_METHOD, request_serializer=cpb.CallFrame.SerializeToString,
            response_deserializer=cpb.ReplyFrame.FromString)()
        reader: asyncio.Task[None] | None = None
        try:
            # The server's empty first frame says it serves the stream: nothing is
            # written before it (a write racing UNIMPLEMENTED reads as INTERNAL).
            await call.read()
            self.ready = True
            self._up()
            reader = asyncio.get_running_loop().create_task(self._read(call))
            while True:
                if not self._queue:
                    if self._retiring and not self._waiting:
                        break
                    self._wake.clear()
                    wake = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait((wake, reader), return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
                    if reader.done():
                        reader.result()
                        raise ConnectionError("the leader ended the Calls stream")
                    continue
                await call.write(self._frame())
        except asyncio.CancelledError:
            self._fail("the forwarding link was closed")
            raise
        except Exception as exc:
            error = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
            self._fail(str(error))
        finally:
            if reader is not None:
                reader.cancel()
            call.cancel()
            await self._channel.close()

    def _frame(self) -> cpb.CallFrame:
        # The queue's head, as much as one message may carry (at least one request: one
        # too large for it is the leader's to refuse, with the same limit as here).
        taken = size = 0
        for request in self._queue:
            size += request.ByteSize() + CALL_FRAMING
            if taken and size > self._max_frame:
                break
            taken += 1
        frame = cpb.CallFrame(calls=self._queue[:taken])
        del self._queue[:taken]
        return frame

    async def _read(self, call: Any) -> None:
        while True:
            frame = await call.read()
            if frame is grpc.aio.EOF:
                return
            for reply in frame.replies:
                answer = self._waiting.pop(reply.id, None)
                if answer is not None and not answer.done():
                    answer.set_result(reply)
            self._wake.set()

    def _fail(self, error: str) -> None:
        self.ready = False
        unsent = {request.id for request in self._queue}
        self._queue = []
        # In id order, so the calls waiting wake in the order they were sent.
        for call_id in sorted(self._waiting):
            answer = self._waiting[call_id]
            if answer.done():
                continue
            if call_id in unsent:
                answer.set_exception(NotSent(
                    f"the write leader at {self.target} could not be reached ({error}); "
                    "nothing of this write was sent: try again"))
            else:
                answer.set_exception(StorageError(
                    f"the write leader at {self.target} did not answer ({error}): the "
                    "write may have been kept or not; reads show whichever happened"))
        self._waiting.clear()
        self._failed(self, error)

    async def close(self) -> None:
        """End the stream now (what waits fails) and close the channel.

        Example: ``await link.close()`` as the server stops.
        """
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
