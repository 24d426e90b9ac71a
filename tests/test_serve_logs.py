"""``dspex-rx serve --log-format json``: every stderr line is JSON; session lifecycle
(created, attached, detached, closed, expired) and refused writes (which variable, why,
the error kind and code) are logged at info, never with a token. Console stays key=value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import trio
from serve_process import Served

import dspex_rx
from dspex_rx.logs import _JsonLines, configure, get_logger
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc


@pytest.fixture
def served() -> Iterator[tuple[Served, str]]:
    """A memory-store server logging JSON (a session ends with its last client):
    (process, target)."""
    server = Served("--port", "0", "--storage", "memory", "--log-format", "json")
    try:
        port = server.wait_for("server_started")["port"]
        yield server, f"127.0.0.1:{port}"
    finally:
        server.kill()


def events(server: Served, name: str) -> list[dict[str, Any]]:
    return [r for r in server.records() if r["event"] == name]


def abandon_session(target: str, session_id: str) -> str:
    # A client that creates a session with a 0.1 s lease and never heartbeats nor closes,
    # so the server's expiry ends the session; returns its token.
    with grpc.insecure_channel(target) as channel:
        answer = pb_grpc.VariablesStub(channel).InitializeSession(
            pb.InitializeSessionRequest(session_id=session_id, ttl_seconds=0.1))
    return str(answer.session_token)


async def test_json_logs_show_session_lifecycle_and_refused_writes_without_tokens(
        served: tuple[Served, str]) -> None:
    server, target = served
    tokens = []
    async with dspex_rx.connect(target, session_id="stranger") as stranger:
        tokens.append(stranger.token)
        async with dspex_rx.connect(target, session_id="logged") as owner:
            tokens.append(owner.token)
            var_id = await owner.register_variable(
                "t", "float", 0.5, constraints={"max": 1.0},
                access_rules=[{"session_pattern": "stranger", "permissions": ["read"]}])
            async with dspex_rx.connect(target, session_id="logged", token=owner.token):
                pass
            with pytest.raises(ValueError, match="above max"):
                await owner.set_variable("t", 5.0)
            with pytest.raises(dspex_rx.ConflictError):
                await owner.set_variable("t", 0.1, expected_version=7)
            async with owner.optimization_lease("t", "manual"):
                # A plain write while the lease is held carries no fencing token.
                with pytest.raises(dspex_rx.OptimizationLockedError):
                    await owner.set_variable("t", 0.2)
            with pytest.raises(PermissionError):
                await stranger.set_variable(var_id, 0.3)
            results = await owner.update_variables({"t": 0.4, "nope": 1}, atomic=False)
            assert results["t"] is True and results["nope"] is not True
    tokens.append(await trio.to_thread.run_sync(abandon_session, target, "abandoned"))
    await trio.to_thread.run_sync(server.wait_for, "session_expired")
    assert await trio.to_thread.run_sync(server.stop) == 0

    lifecycle = [(r["event"], r["session_id"]) for r in server.records()
                 if r["event"].startswith("session_")]
    assert lifecycle == [
        ("session_created", "stranger"), ("session_created", "logged"),
        ("session_attached", "logged"), ("session_detached", "logged"),
        ("session_closed", "logged"), ("session_closed", "stranger"),
        ("session_created", "abandoned"), ("session_expired", "abandoned"),
    ]
    assert all(r["level"] == "info" for r in server.records()
               if r["event"].startswith("session_"))

    refused = events(server, "write_refused")
    why = [(r["method"], r["variable"], r["reason"], r["kind"], r["code"]) for r in refused]
    assert why == [
        ("SetVariable", "t", "validation", "invalid_value", "INVALID_ARGUMENT"),
        ("SetVariable", "t", "conflict", "conflict", "FAILED_PRECONDITION"),
        ("SetVariable", "t", "fencing", "locked", "FAILED_PRECONDITION"),
        ("SetVariable", var_id, "permission", "permission_denied", "PERMISSION_DENIED"),
        ("UpdateVariables", "nope", "not_found", "not_found", "NOT_FOUND"),
    ]
    assert [r["session_id"] for r in refused] == ["logged"] * 3 + ["stranger", "logged"]
    assert all(r["level"] == "info" for r in refused)
    assert "above max" in refused[0]["error"]
    text = "\n".join(server.lines)
    for token in tokens:
        assert token and token not in text


def test_a_record_of_another_logger_is_a_json_line_too() -> None:
    import logging

    record = logging.LogRecord("grpc._server", logging.WARNING, __file__, 1,
                               "peer %s went away", ("ipv4:1.2.3.4",), None)
    line = json.loads(_JsonLines().format(record))
    assert (line["level"], line["logger"], line["event"]) == (
        "warning", "grpc._server", "peer ipv4:1.2.3.4 went away")


def test_configure_switches_the_format_of_loggers_made_before(
        capsys: pytest.CaptureFixture[str]) -> None:
    log = get_logger("dspex_rx.test_format")
    try:
        configure("info", "json")
        log.info("switched", answer=42)
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (line["event"], line["answer"], line["level"]) == ("switched", 42, "info")
        configure("info", "console")
        log.info("switched", answer=43)
        assert "event='switched'" in capsys.readouterr().err
        with pytest.raises(ValueError, match="'xml' is not one of console, json"):
            configure("info", "xml")
    finally:
        configure("warning", "console")
