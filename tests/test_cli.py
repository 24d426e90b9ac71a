"""`dspex-rx serve` as a user runs it: starts, answers health checks and reflection, serves
the API, and stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import dspex_rx

SCRIPT = Path(sys.executable).parent / "dspex-rx"


def start(*args: str) -> tuple[subprocess.Popen[str], int]:
    # ``dspex-rx serve`` in a child process; returns it once it logged its port.
    proc = subprocess.Popen(
        [str(SCRIPT), "serve", "--host", "127.0.0.1", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    port = 0
    for line in proc.stderr:  # blocks until the server logs its port, or exits
        match = re.search(r"event='server_started'.*port=(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    assert port, "dspex-rx serve exited before serving"
    return proc, port


@pytest.fixture
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    extra = getattr(request, "param", [])
    proc, port = start("--port", "0", "--data-dir", str(tmp_path / "data"), *extra)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_health_reflection_and_sigterm(served: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dspex_rx.v1.Variables"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = {s.name for r in replies for s in r.list_services_response.service}
        assert {"dspex_rx.v1.Variables", "grpc.health.v1.Health"} <= services

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert "event='shutdown_requested'" in rest
    assert "event='server_stopped'" in rest


async def test_served_api_from_trio(served: tuple[subprocess.Popen[str], int]) -> None:
    _, port = served
    async with dspex_rx.connect(f"127.0.0.1:{port}", session_id="cli_check") as session:
        await session.register_variable("temperature", "float", 0.7)
        await session.set_variable("temperature", 0.9)
        assert await session.get_variable("temperature") == 0.9


@pytest.mark.parametrize("served", [["--max-value-bytes", "1000", "--max-sessions", "1"]],
                         indirect=True)
async def test_every_limit_is_a_serve_flag(served: tuple[subprocess.Popen[str], int]) -> None:
    _, port = served
    async with dspex_rx.connect(f"127.0.0.1:{port}") as session:
        with pytest.raises(ValueError, match="above the max_value_bytes limit of 1000"):
            await session.register_variable("s", "string", "x" * 2000)
        with pytest.raises(dspex_rx.errors.ResourceExhaustedError, match="max_sessions limit"):
            async with dspex_rx.connect(f"127.0.0.1:{port}"):
                pass


def test_a_bad_limit_flag_is_refused() -> None:
    done = subprocess.run([str(SCRIPT), "serve", "--max-depth", "40"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "max_depth is at most 32" in done.stderr
    usage = subprocess.run([str(SCRIPT), "serve", "--help"], capture_output=True, text=True,
                           timeout=60).stdout
    assert "--max-message-bytes" in usage and "--max-subscriptions-per-stream" in usage


def test_serve_with_etcd_refuses_an_empty_endpoint_list() -> None:
    done = subprocess.run([str(SCRIPT), "serve", "--storage", "etcd", "--etcd-endpoints", " , "],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--etcd-endpoints names no etcd member (host:port)" in done.stderr


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dspex-rx {version('dspex-rx')}"
    assert re.fullmatch(r"dspex-rx \d+\.\d+\.\d+\S*", done.stdout.strip())


def test_the_one_command_line_holds_the_server_shell_and_web_commands() -> None:
    done = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    commands = set(re.findall(r"^    (\w+)", done.stdout, flags=re.MULTILINE))
    assert "set (put)" in done.stdout
    assert {"serve", "backup", "restore", "export", "get", "set", "watch", "ls",
            "history", "rollback", "rm", "import", "deps", "optimize", "sessions",
            "session", "health", "ui"} <= commands
