"""The reactive-UI bridge over a real loopback socket: hypercorn's trio worker in the test's
trio run, a real session against the shared embedded server, httpx for SSE and JSON and
httpx-ws for WebSockets."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import reactivex
import trio
from helpers import until
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, aconnect_ws
from optimization_helpers import FLOAT, Gate
from reactivex import operators as ops

import dspex_rx
from dspex_rx.server import EmbeddedServer
from dspex_rx.web.serve import hypercorn_config, serve_bridge

GUARD = 10.0  # wall-clock bound on any one wait for the real server: a hang guard only


@asynccontextmanager
async def serving(bridge: Any) -> AsyncIterator[str]:
    """``bridge`` on 127.0.0.1 (a free port) for the block; its base URL."""
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve_bridge, bridge, "127.0.0.1", 0)
        yield url
        nursery.cancel_scope.cancel()


def served(session: dspex_rx.SessionContext, **options: Any) -> Any:
    """The bridge of ``session`` (``app(session, **options)``), served for the block."""
    return serving(dspex_rx.web.app(session, **options))


class Events:
    """The ``(event, data)`` frames of an open SSE response, read one at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> tuple[str, dict[str, Any]]:
        event, data = "", ""
        with trio.fail_after(GUARD):
            async for line in self.lines:
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and event:
                    return event, json.loads(data)
        raise AssertionError("the stream ended")


@asynccontextmanager
async def sse(client: httpx.AsyncClient, path: str) -> AsyncIterator[Events]:
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Events(response)


async def test_sse_of_a_variable_sends_its_current_value_then_each_set_in_order(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("temperature", "float", 0.5)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client, sse(
        client, "/variables/temperature/events"
    ) as events:
        event, first = await events.next()
        assert event == "update"
        assert (first["name"], first["value"], first["version"], first["update_type"]) == (
            "temperature", 0.5, 1, "initial")
        versions = [await session.set_variable("temperature", v) for v in (0.6, 0.7, 0.8)]
        got = [(await events.next())[1] for _ in range(3)]
    assert [(e["name"], e["value"], e["version"]) for e in got] == [
        ("temperature", 0.6, versions[0]), ("temperature", 0.7, versions[1]),
        ("temperature", 0.8, versions[2])]
    revisions = [first["revision"]] + [e["revision"] for e in got]
    assert revisions == sorted(set(revisions))  # strictly increasing
    assert all(e["update_type"] == "value_change" and e["conflated"] is False for e in got)


async def test_sse_of_the_session_carries_every_variable_and_finds_new_ones(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("a", "integer", 1)
    await session.register_variable("b", "string", "x")
    async with served(session, poll_interval=0.05) as url, httpx.AsyncClient(
        base_url=url
    ) as client, sse(client, "/events") as events:
        initial = {data["name"]: data["value"] for _, data in [await events.next(),
                                                               await events.next()]}
        assert initial == {"a": 1, "b": "x"}
        await session.set_variable("b", "y")
        assert (await events.next())[1]["value"] == "y"
        # Registered after the stream opened: found by the next listing, current value first.
        await session.register_variable("c", "boolean", True)
        _, new = await events.next()
        assert (new["name"], new["value"], new["update_type"]) == ("c", True, "initial")
        await session.set_variable("c", False)
        assert ((await events.next())[1]["name"], ) == ("c",)


async def test_websocket_of_a_variable_sends_json_messages_in_order(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("step", "integer", 0)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client, aconnect_ws(
        "/variables/step/ws", client
    ) as ws:
        with trio.fail_after(GUARD):
            first = await ws.receive_json()
            assert (first["name"], first["value"], first["version"]) == ("step", 0, 1)
            for n in (1, 2, 3):
                await session.set_variable("step", n)
            got = [await ws.receive_json() for _ in range(3)]
    assert [(m["value"], m["version"]) for m in got] == [(1, 2), (2, 3), (3, 4)]
    assert [m["revision"] for m in got] == sorted({m["revision"] for m in got})


async def test_websocket_of_the_session_sends_every_variable(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("x", "integer", 1)
    await session.register_variable("y", "integer", 2)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client, aconnect_ws(
        "/ws", client
    ) as ws:
        with trio.fail_after(GUARD):
            initial = {m["name"]: m["value"] for m in [await ws.receive_json(),
                                                       await ws.receive_json()]}
            await session.set_variable("y", 20)
            changed = await ws.receive_json()
    assert initial == {"x": 1, "y": 2}
    assert (changed["name"], changed["value"], changed["version"]) == ("y", 20, 2)


async def test_arrays_are_summarised_by_default_and_sent_whole_as_base64_on_request(
    session: dspex_rx.SessionContext,
) -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    await session.register_variable("weights", "tensor", weights)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        summary = (await client.get("/variables/weights")).json()["value"]
        assert summary == {"type": "ndarray", "shape": [3, 4], "dtype": "float32",
                           "head": [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "size": 12}
        async with sse(client, "/variables/weights/events?arrays=base64") as events:
            _, event = await events.next()
    whole = event["value"]
    assert (whole["shape"], whole["dtype"], whole["byteorder"]) == ([3, 4], "float32", "little")
    decoded = np.frombuffer(base64.b64decode(whole["base64"]), dtype="<f4").reshape(3, 4)
    assert np.array_equal(decoded, weights)
    assert "head" not in whole


async def test_unknown_variable_is_a_404_naming_it_on_every_endpoint(
    session: dspex_rx.SessionContext,
) -> None:
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/variables/nope", "/variables/nope/history", "/variables/nope/events",
                     "/optimizations/nope", "/optimizations/nope/events"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "'nope'" in response.json()["error"], path
        async with aconnect_ws("/variables/nope/ws", client) as ws:
            with trio.fail_after(GUARD):
                message = await ws.receive_json()
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_json()
        assert "'nope'" in message["error"]
        assert closed.value.code == 4404


async def test_bad_query_values_are_a_400_saying_what_was_wrong(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("t", "float", 0.5)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        arrays = await client.get("/variables/t?arrays=hex")
        limit = await client.get("/variables/t/history?limit=many")
    assert arrays.status_code == 400
    assert arrays.json()["error"] == "arrays must be one of summary, base64, got 'hex'"
    assert limit.status_code == 400
    assert limit.json()["error"] == "limit must be an integer, got 'many'"


async def test_snapshot_and_history_endpoints_return_the_stored_values(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("lr", "float", 0.1)
    await session.register_variable("name", "string", "run")
    for value in (0.2, 0.3):
        await session.set_variable("lr", value)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        listing = (await client.get("/variables")).json()
        history = (await client.get("/variables/lr/history")).json()
        newest = (await client.get("/variables/lr/history?limit=1")).json()
    assert [(e["name"], e["value"], e["version"], e["type"]) for e in listing] == [
        ("lr", 0.3, 3, "float"), ("name", "run", 1, "string")]
    assert [(e["version"], e["value"]) for e in history] == [(3, 0.3), (2, 0.2), (1, 0.1)]
    assert [e["version"] for e in newest] == [3]


async def test_a_closed_stream_ends_its_subscriptions(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("t", "float", 0.5)
    bridge = dspex_rx.web.app(session)
    streams = bridge.state.streams  # type: ignore[attr-defined]
    async with serving(bridge) as url, httpx.AsyncClient(base_url=url) as client:
        async with sse(client, "/variables/t/events") as events:
            await events.next()
            assert streams.open == 1
        await until(lambda: streams.open == 0, "the SSE stream was ended")
        async with aconnect_ws("/ws", client) as ws:
            with trio.fail_after(GUARD):
                await ws.receive_json()
            assert streams.open == 1
        await until(lambda: streams.open == 0, "the WebSocket stream was ended")


async def test_a_token_is_asked_of_every_data_request_but_not_of_the_page(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("t", "float", 0.5)
    async with served(session, token="s3cret") as url, httpx.AsyncClient(base_url=url) as c:
        refused = await c.get("/variables/t")
        wrong = await c.get("/variables/t", headers={"Authorization": "Bearer nope"})
        header = await c.get("/variables/t", headers={"Authorization": "Bearer s3cret"})
        query = await c.get("/variables/t?token=s3cret")
        page = await c.get("/")
        script = await c.get("/static/app.js")
        with pytest.raises(WebSocketUpgradeError) as refused_ws:
            async with aconnect_ws("/variables/t/ws", c):
                pass
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert refused_ws.value.response.status_code == 403  # closed before it was accepted
    assert "Authorization: Bearer" in refused.json()["error"]
    assert (header.json()["value"], query.json()["value"]) == (0.5, 0.5)
    assert (page.status_code, script.status_code) == (200, 200)
    assert "<title>dspex-rx</title>" in page.text


async def test_optimizations_list_their_status_and_each_iterations_value_and_metric(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("t", "float", 0.5, constraints=FLOAT)
    gate = Gate()
    await session.start_optimization("t", "grid_search", {"n_points": 3}, objective=gate)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        await gate.arrived(1)
        running = (await client.get("/optimizations")).json()
        assert [(s["variable"], s["state"], s["is_optimizing"]) for s in running] == [
            ("t", "running", True)]
        async with sse(client, "/optimizations/t/events") as events:
            event, status = await events.next()
            assert (event, status["state"], status["iteration"]) == ("status", "running", 0)
            points = []
            for n in (2, 3):
                gate.release()
                await gate.arrived(n)
            gate.release()
            final = await session.wait_for_optimization("t")
            while len(points) < 3 or status["state"] == "running":
                event, data = await events.next()
                if event == "iteration":
                    points.append(data)
                else:
                    status = data
        detail = (await client.get("/optimizations/t")).json()
    history = await session.get_optimization_history("t")
    expected = [(h["iteration"], h["value"], h["score"]) for h in history]
    assert [(p["iteration"], p["value"], p["score"]) for p in points] == expected
    assert [(p["iteration"], p["value"], p["score"]) for p in detail["iterations"]] == expected
    assert [p["iteration"] for p in points] == [1, 2, 3]
    assert points[0]["metrics"] == history[0]["metrics"]
    assert status["state"] == final["state"] == "completed"
    assert detail["status"]["best_value"] == final["best_value"]


def test_the_bridge_runs_under_asyncio_through_the_portal(server: EmbeddedServer) -> None:
    # uvicorn/FastAPI users: the same app on an asyncio server (hypercorn's asyncio worker
    # here), the trio-native session reached through the portal.
    import asyncio

    from hypercorn.asyncio import serve

    async def main() -> tuple[list[Any], list[Any], int]:
        async with dspex_rx.connect(server.target) as session:
            await session.register_variable("t", "float", 0.5)
            with socket.socket() as probe:  # a free port: the asyncio worker cannot say
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            stop = asyncio.Event()
            serving = asyncio.create_task(serve(
                dspex_rx.web.app(session), hypercorn_config("127.0.0.1", port),
                shutdown_trigger=stop.wait,  # type: ignore[arg-type]
            ))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                async with asyncio.timeout(GUARD):
                    while True:  # polls a real socket until it listens: a hang guard
                        try:
                            listing = (await client.get("/variables")).json()
                            break
                        except httpx.ConnectError:
                            await asyncio.sleep(0.02)
                    async with client.stream("GET", "/variables/t/events") as response:
                        lines = response.aiter_lines()
                        events = []
                        async for line in lines:
                            if line.startswith("data: "):
                                events.append(json.loads(line[6:]))
                                if len(events) == 1:
                                    await session.set_variable("t", 0.6)
                                    await session.set_variable("t", 0.7)
                                if len(events) == 3:
                                    break
                    async with aconnect_ws("/ws", client) as ws:
                        first = await ws.receive_json()
            stop.set()
            await serving
            return listing, events, first["version"]

    listing, events, ws_version = asyncio.run(main())
    assert [(e["name"], e["value"]) for e in listing] == [("t", 0.5)]
    assert [(e["value"], e["version"], e["update_type"]) for e in events] == [
        (0.5, 1, "initial"), (0.6, 2, "value_change"), (0.7, 3, "value_change")]
    assert ws_version == 3


async def test_session_streams_keep_to_the_pattern_and_refuse_a_bad_one(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("model.lr", "float", 0.1)
    await session.register_variable("data.size", "integer", 10)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        bad = await client.get("/events", params={"pattern": "("})
        async with sse(client, "/events?pattern=%5Emodel%5C.") as events:
            _, first = await events.next()
            await session.set_variable("data.size", 11)  # not matched: never sent
            await session.set_variable("model.lr", 0.2)
            _, second = await events.next()
    assert bad.status_code == 400 and "pattern" in bad.json()["error"]
    assert [(e["name"], e["value"]) for e in (first, second)] == [
        ("model.lr", 0.1), ("model.lr", 0.2)]


async def test_a_stream_whose_source_fails_ends_with_an_error_event(
    session: dspex_rx.SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Bug: an error mid-stream (access revoked, session lost) broke the response with a
    # server error instead of telling the page why its stream ended.
    await session.register_variable("t", "float", 0.5)
    real = session.observe

    def revoked(name: str, include_initial: bool = True) -> Any:
        first = real(name, include_initial).pipe(ops.take(1))
        return reactivex.concat(first, reactivex.throw(PermissionError("no read access to 't'")))

    monkeypatch.setattr(session, "observe", revoked)
    async with served(session) as url, httpx.AsyncClient(base_url=url) as client:
        async with client.stream("GET", "/variables/t/events") as response:
            with trio.fail_after(GUARD):
                body = (await response.aread()).decode()
        async with aconnect_ws("/variables/t/ws", client) as ws:
            with trio.fail_after(GUARD):
                first, error = await ws.receive_json(), await ws.receive_json()
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_json()
    frames = [frame for frame in body.split("\n\n") if frame.startswith("event:")]
    assert [f.splitlines()[0] for f in frames] == ["event: update", "event: failed"]
    assert json.loads(frames[1].splitlines()[-1][6:]) == {
        "error": "no read access to 't'", "status": 403}
    assert first["value"] == 0.5
    assert error == {"error": "no read access to 't'"}
    assert closed.value.code == 4403
