"""The bridge's live streams: Server-Sent Events and WebSockets of one variable or of every
variable of the session, and an optimization's status and iterations as they happen."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from dspex_rx.client import SessionContext
from dspex_rx.web.feed import Feed
from dspex_rx.web.jsonsafe import array_mode, to_json, update_event

MAX_ITERATIONS = 1000  # the most iterations one read sends: a new page gets the newest ones
Events = Callable[[], AsyncIterator[tuple[str, dict[str, Any]]]]


def status_for(error: BaseException) -> int:
    """The HTTP status of a client error: 404 unknown, 403 refused, 400 bad input.

    >>> status_for(KeyError("x")), status_for(PermissionError()), status_for(ValueError())
    (404, 403, 400)
    """
    if isinstance(error, KeyError):
        return 404
    if isinstance(error, PermissionError):
        return 403
    if isinstance(error, ValueError | TypeError):
        return 400
    return 500


def message_of(error: BaseException) -> str:
    """An error's message without ``KeyError``'s quotes.

    >>> message_of(KeyError("no variable 'x'"))
    "no variable 'x'"
    """
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One Server-Sent Event frame.

    >>> sse("update", {"name": "t"}, 7)
    b'event: update\\nid: 7\\ndata: {"name": "t"}\\n\\n'
    """
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, allow_nan=False))
    return ("\n".join(lines) + "\n\n").encode()


class EventStream(Response):
    """A ``text/event-stream`` response from an async iterator of ``(event, data)`` (an
    empty event name is an idle tick, sent as a comment line); it ends the iterator (and
    so its subscriptions) when the client goes away, under any ASGI server.

    Example: ``EventStream(events)`` is returned by an endpoint.
    """

    def __init__(self, events: Events) -> None:
        # Not Response.__init__: it would add ``content-length: 0`` for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass events on as they come
        ]
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": self.raw_headers})

        async def emit(body: bytes, more: bool = True) -> bool:
            # Only a failed send means the client left (uvicorn raises OSError then); a
            # PermissionError from the source is an OSError too, and is not that.
            try:
                await send({"type": "http.response.body", "body": body, "more_body": more})
            except OSError:
                return False
            return True

        async def stream(cancel: anyio.CancelScope) -> None:
            iterator = self.events()
            try:
                async for event, data in iterator:
                    # An idle stream still writes now and then: proxies keep it open, and a
                    # browser that left is noticed.
                    frame = sse(event, data, data.get("revision")) if event else b": idle\n\n"
                    if not await emit(frame):
                        return
                await emit(b"", more=False)
            except Exception as error:  # refused or lost mid-stream: say so, end it cleanly
                frame = sse("failed", {"error": message_of(error), "status": status_for(error)})
                await emit(frame, more=False)
            finally:
                with anyio.CancelScope(shield=True):
                    await iterator.aclose()  # type: ignore[attr-defined]
                cancel.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(stream, group.cancel_scope)
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()


async def _send_text(websocket: WebSocket, text: str) -> bool:
    # False when the client left; a source's PermissionError (an OSError) is not caught here.
    try:
        await websocket.send_text(text)
    except (WebSocketDisconnect, OSError, RuntimeError):
        return False
    return True


class Streams:
    """The stream endpoints of one bridge, acting as its session.

    Example: ``Streams(session).variable_events`` is ``GET /variables/{name}/events``.
    """

    def __init__(self, session: SessionContext, *, max_buffer: int = 256,
                 keepalive: float = 15.0, poll_interval: float = 2.0) -> None:
        self.session = session
        self.max_buffer = max_buffer
        self.keepalive = keepalive
        self.poll_interval = poll_interval
        self.open = 0  # streams being served: each one's subscriptions end with it

    async def _one(self, name: str, arrays: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        feed = Feed(self.max_buffer)
        self.open += 1
        try:
            feed.follow(self.session.observe(name), name)
            while True:
                update = await feed.next(self.keepalive)
                yield ("update", update_event(update, arrays)) if update else ("", {})
        finally:
            feed.close()
            self.open -= 1

    async def _all(self, pattern: str | None, arrays: str
                   ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        feed = Feed(self.max_buffer)
        self.open += 1
        try:
            while True:
                # Variables registered after the stream opened are found by listing again.
                for entry in await self.session.list_variables(pattern):
                    feed.follow(self.session.observe(entry["name"]), entry["name"], fatal=False)
                deadline = anyio.current_time() + self.poll_interval
                while (left := deadline - anyio.current_time()) > 0:
                    update = await feed.next(left)
                    if update is not None:
                        yield "update", update_event(update, arrays)
                yield "", {}
        finally:
            feed.close()
            self.open -= 1

    async def variable_events(self, request: Request) -> Response:
        """``GET /variables/{name}/events``: SSE ``update`` events of one variable, the
        current value first (404 before the stream if the variable is unknown).

        Example: ``GET /vars/variables/t/events`` streams ``event: update`` frames.
        """
        name = request.path_params["name"]
        arrays = array_mode(request.query_params.get("arrays"))
        await self.session.get_variables([name])  # unknown: KeyError, answered 404
        return EventStream(lambda: self._one(name, arrays))

    async def session_events(self, request: Request) -> Response:
        """``GET /events[?pattern=regex]``: SSE ``update`` events of every variable of the
        session (those matching ``pattern``), each one's current value first.

        Example: ``GET /vars/events`` streams every variable's changes.
        """
        pattern = request.query_params.get("pattern")
        arrays = array_mode(request.query_params.get("arrays"))
        await self.session.list_variables(pattern)  # a bad pattern: 400 before the stream
        return EventStream(lambda: self._all(pattern, arrays))

    async def _socket(self, websocket: WebSocket,
                      events: Callable[[], AsyncIterator[tuple[str, dict[str, Any]]]]) -> None:
        await websocket.accept()

        async def until_closed(cancel: anyio.CancelScope) -> None:
            try:
                while True:
                    await websocket.receive_text()
            except (WebSocketDisconnect, RuntimeError, KeyError):
                pass
            cancel.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(until_closed, group.cancel_scope)
            iterator = events()
            try:
                async for event, data in iterator:
                    if event and not await _send_text(websocket, json.dumps(data,
                                                                            allow_nan=False)):
                        break
            except Exception as error:  # refused or lost mid-stream: say so, then close
                with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                    await self._refuse(websocket, error, accepted=True)
            finally:
                with anyio.CancelScope(shield=True):
                    await iterator.aclose()  # type: ignore[attr-defined]
            group.cancel_scope.cancel()

    async def _refuse(self, websocket: WebSocket, error: BaseException,
                      accepted: bool = False) -> None:
        if not accepted:
            await websocket.accept()
        await websocket.send_text(json.dumps({"error": message_of(error)}))
        await websocket.close(code=4000 + status_for(error), reason=message_of(error)[:120])

    async def variable_socket(self, websocket: WebSocket) -> None:
        """``WS /variables/{name}/ws``: one JSON message per update of one variable, the
        current value first. An unknown variable: an ``{"error": ...}`` message, then close
        code 4404.

        Example: ``ws://127.0.0.1:8080/variables/t/ws`` receives ``{"name": "t", ...}``.
        """
        name = websocket.path_params["name"]
        try:
            arrays = array_mode(websocket.query_params.get("arrays"))
            await self.session.get_variables([name])
        except (KeyError, PermissionError, ValueError) as error:
            await self._refuse(websocket, error)
            return
        await self._socket(websocket, lambda: self._one(name, arrays))

    async def session_socket(self, websocket: WebSocket) -> None:
        """``WS /ws[?pattern=regex]``: one JSON message per update of every variable.

        Example: ``ws://127.0.0.1:8080/ws`` receives every variable's changes.
        """
        pattern = websocket.query_params.get("pattern")
        try:
            arrays = array_mode(websocket.query_params.get("arrays"))
            await self.session.list_variables(pattern)
        except (KeyError, PermissionError, ValueError) as error:
            await self._refuse(websocket, error)
            return
        await self._socket(websocket, lambda: self._all(pattern, arrays))

    async def _optimization(self, name: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        # Statuses are cumulative and the iterations are read back from the history, so
        # keeping only a flag ("something changed") loses nothing and buffers nothing.
        wake = [anyio.Event()]  # replaced after each wake-up: anyio events cannot be reset

        def on_status(_: dict[str, Any]) -> None:
            wake[0].set()

        subscription = self.session.observe_optimization(name).subscribe(on_status)
        self.open += 1
        try:
            run: str | None = None
            seen = 0
            while True:
                status = await self.session.get_optimization_status(name)
                if status["optimization_id"] != run:
                    run, seen = status["optimization_id"], 0
                # Only the entries past the last one sent: the newest (iteration - seen)
                # of the history, a few more in case the count runs ahead, never all of
                # it again (a long run would cost O(n) per iteration).
                need = int(status["iteration"]) - seen
                if run is not None and need > 0:
                    for entry in await self.session.get_optimization_history(
                        name, min(need + 8, MAX_ITERATIONS), optimizer_id=run
                    ):
                        if entry["iteration"] > seen:
                            seen = entry["iteration"]
                            yield "iteration", to_json({"variable": name, **entry})
                yield "status", to_json(status)
                while not wake[0].is_set():
                    with anyio.move_on_after(self.keepalive):
                        await wake[0].wait()
                    if not wake[0].is_set():
                        yield "", {}
                wake[0] = anyio.Event()
        finally:
            subscription.dispose()
            self.open -= 1

    async def optimization_events(self, request: Request) -> Response:
        """``GET /optimizations/{name}/events``: SSE ``iteration`` events (``iteration``,
        ``value``, ``metrics``, ``score``), oldest first, and a ``status`` event after
        each change; the current run's iterations and status come first.

        Example: ``GET /vars/optimizations/t/events`` streams a run's progress.
        """
        name = request.path_params["name"]
        await self.session.get_optimization_status(name)  # unknown: 404 before the stream
        return EventStream(lambda: self._optimization(name))
