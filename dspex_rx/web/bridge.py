"""The reactive-UI bridge as one Starlette app (``app(session)``): its routes, the JSON
snapshots (variables, a variable's history, optimizations), errors as HTTP answers, and the
optional bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from dspex_rx.client import SessionContext
from dspex_rx.web.feed import DEFAULT_MAX_BUFFER
from dspex_rx.web.jsonsafe import array_mode, to_json
from dspex_rx.web.streams import MAX_ITERATIONS, Streams, message_of, status_for

# The page's files, read once: three small files, so no file serving machinery (or
# worker threads) at request time.
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# What a request without the token may fetch: the page and its files hold no data.
PUBLIC_PATHS = ("/", "/static/app.js", "/static/style.css", "/static/index.html")


def error_response(error: BaseException) -> JSONResponse:
    """``{"error": message}`` with the error's HTTP status.

    Example: ``error_response(KeyError("no variable 'x'")).status_code`` is 404.
    """
    return JSONResponse({"error": message_of(error)}, status_code=status_for(error))


class BearerToken:
    """ASGI middleware: every request but the page's own files needs ``token`` as
    ``Authorization: Bearer <token>`` or ``?token=<token>`` (browsers cannot set headers on
    an ``EventSource``); otherwise 401 (a WebSocket is refused before it opens).

    Example: ``BearerToken(app, "s3cret")`` wraps an ASGI app.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def allowed(self, scope: Scope) -> bool:
        """Whether the request carries the token (or asks for a public file).

        Example: ``middleware.allowed(scope)`` is True for ``GET /?`` without a token.
        """
        if scope["type"] == "http" and scope.get("path", "/") in PUBLIC_PATHS:
            return True
        for key, value in scope.get("headers", []):
            if key == b"authorization" and value.startswith(b"Bearer "):
                return hmac.compare_digest(value[7:], self.token)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[-1].encode()
        return bool(given) and hmac.compare_digest(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401,
                        "reason": "a bearer token is required"})
            return
        response = JSONResponse(
            {"error": "this bridge needs its token: Authorization: Bearer <token> or "
                      "?token=<token>"},
            status_code=401, headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def _handled(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (KeyError, PermissionError, ValueError, TypeError) as error:
            return error_response(error)

    return wrapped


class Snapshots:
    """The JSON endpoints: the variables, one variable, its history, the optimizations.

    Example: ``Snapshots(session).variables`` is the ``GET /variables`` endpoint.
    """

    def __init__(self, session: SessionContext) -> None:
        self.session = session

    async def variables(self, request: Request) -> Response:
        """``GET /variables[?pattern=regex]``: every variable's entry with its value.

        Example: ``GET /vars/variables`` answers ``[{"name": "t", "value": 0.7, ...}]``.
        """
        arrays = array_mode(request.query_params.get("arrays"))
        entries = await self.session.list_variables(request.query_params.get("pattern"))
        entries.sort(key=lambda e: str(e["name"]))
        return JSONResponse([to_json(e, arrays) for e in entries])

    async def variable(self, request: Request) -> Response:
        """``GET /variables/{name}``: one variable's entry (404 if unknown).

        Example: ``GET /vars/variables/t`` answers ``{"name": "t", "value": 0.7, ...}``.
        """
        arrays = array_mode(request.query_params.get("arrays"))
        name = request.path_params["name"]
        entries = await self.session.get_variables([name], include_metadata=True)
        return JSONResponse(to_json(entries[name], arrays))

    async def history(self, request: Request) -> Response:
        """``GET /variables/{name}/history[?limit=n]``: past values, newest first.

        Example: ``GET /vars/variables/t/history?limit=5`` answers the newest five.
        """
        arrays = array_mode(request.query_params.get("arrays"))
        limit = _int(request.query_params.get("limit", "100"), "limit")
        entries = await self.session.get_variable_history(request.path_params["name"], limit)
        return JSONResponse(to_json(entries, arrays))

    async def optimizations(self, request: Request) -> Response:
        """``GET /optimizations``: the status of every variable that has had a run, the
        running ones first.

        Example: ``GET /vars/optimizations`` answers ``[{"variable": "t", "state":
        "running", "iteration": 3, ...}]``.
        """
        statuses = []
        for entry in await self.session.list_variables():
            status = await self.session.get_optimization_status(entry["name"])
            if status["optimization_id"] is not None:
                statuses.append(status)
        statuses.sort(key=lambda s: (not s["is_optimizing"], str(s["variable"])))
        return JSONResponse(to_json(statuses))

    async def optimization(self, request: Request) -> Response:
        """``GET /optimizations/{name}``: the status and the current run's iterations
        (``iteration``, ``value``, ``metrics``, ``score``), oldest first.

        Example: ``GET /vars/optimizations/t`` answers ``{"status": {...}, "iterations":
        [...]}``.
        """
        name = request.path_params["name"]
        limit = _int(request.query_params.get("limit", str(MAX_ITERATIONS)), "limit")
        status = await self.session.get_optimization_status(name)
        iterations: list[dict[str, Any]] = []
        if status["optimization_id"] is not None:
            iterations = await self.session.get_optimization_history(
                name, limit, optimizer_id=status["optimization_id"]
            )
        return JSONResponse(to_json({"status": status, "iterations": iterations}))


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None


def _page_response(name: str) -> Callable[[Request], Awaitable[Response]]:
    body = resources.files("dspex_rx.web").joinpath("static", name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, media_type=PAGE_FILES[name],
                        headers={"Cache-Control": "no-cache"})

    return serve


def app(
    session: SessionContext,
    *,
    token: str | None = None,
    page: bool = True,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    keepalive: float = 15.0,
    poll_interval: float = 2.0,
) -> ASGIApp:
    """The bridge: an ASGI app over one session, acting as that session (whoever reaches it
    sees what the session may see). Paths are relative, so it mounts anywhere.

    JSON: ``GET /variables``, ``/variables/{name}``, ``/variables/{name}/history``,
    ``/optimizations``, ``/optimizations/{name}``. Streams: ``GET /events`` (Server-Sent
    Events of every variable) and ``/variables/{name}/events`` (one), ``WS /ws`` and
    ``/variables/{name}/ws`` (the same as JSON messages), ``GET
    /optimizations/{name}/events`` (status and iterations). ``?arrays=base64`` sends arrays
    in full. Each stream starts with the current value, then every change; a reader more
    than ``max_buffer`` updates behind gets each variable's latest only (``conflated``).
    An idle SSE stream sends a comment every ``keepalive`` seconds; the all-variables
    streams look for new variables every ``poll_interval`` seconds. ``token`` requires a
    bearer token; ``page=False`` leaves out the web view (``/`` and ``/static``).

    Example: ``starlette_app.mount("/vars", dspex_rx.web.app(session))`` serves the bridge
    under ``/vars``; ``dspex_rx.web.app(session, token="s3cret")`` asks for a token.
    """
    snapshots = Snapshots(session)
    streams = Streams(session, max_buffer=max_buffer, keepalive=keepalive,
                      poll_interval=poll_interval)
    routes: list[Route | WebSocketRoute] = [
        Route("/variables", _handled(snapshots.variables)),
        Route("/events", _handled(streams.session_events)),
        WebSocketRoute("/ws", streams.session_socket),
        Route("/variables/{name}", _handled(snapshots.variable)),
        Route("/variables/{name}/history", _handled(snapshots.history)),
        Route("/variables/{name}/events", _handled(streams.variable_events)),
        WebSocketRoute("/variables/{name}/ws", streams.variable_socket),
        Route("/optimizations", _handled(snapshots.optimizations)),
        Route("/optimizations/{name}", _handled(snapshots.optimization)),
        Route("/optimizations/{name}/events", _handled(streams.optimization_events)),
    ]
    if page:
        routes.append(Route("/", _page_response("index.html")))
        routes.extend(Route(f"/static/{name}", _page_response(name)) for name in PAGE_FILES)
    starlette = Starlette(routes=routes)
    starlette.state.streams = streams  # what is open, for a look from outside (tests)
    bridge: ASGIApp = starlette
    if token:
        bridge = BearerToken(bridge, token)
    return bridge
