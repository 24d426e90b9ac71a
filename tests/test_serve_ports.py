"""``dspex-rx serve`` refuses ports it cannot own: a gRPC or metrics port another process
serves (exit 1, one line naming it, nothing left serving), and a ``--port`` or
``--metrics-port`` outside 0..65535 (refused at parse time, exit 2)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers import wait_for_port
from serve_process import GUARD, SCRIPT, Served

from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc


@pytest.fixture
def first(tmp_path: Path) -> Iterator[int]:
    """A serving ``dspex-rx serve`` (memory store): its port."""
    port_file = tmp_path / "port"
    server = Served("--port", "0", "--storage", "memory", "--port-file", str(port_file))
    try:
        yield wait_for_port(server.proc, port_file, GUARD, lambda: f": {server.lines}")
    finally:
        server.kill()


def echo(port: int) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = pb_grpc.VariablesStub(channel).Echo(pb.EchoRequest(payload=b"still me"),
                                                     timeout=GUARD)
    return bytes(answer.payload)


def test_a_second_serve_on_a_port_in_use_exits_naming_the_port(first: int) -> None:
    # Guards the bug: gRPC's SO_REUSEPORT let a second server bind the same port silently.
    second = Served("--port", str(first), "--storage", "memory")
    try:
        code = second.proc.wait(timeout=GUARD)  # before the fix: it serves on, silently
    finally:
        second.kill()
    second.exit()
    assert code == 1
    assert second.lines[-1] == (
        f"dspex-rx serve: error: cannot serve on 127.0.0.1:{first}: port {first} is in use "
        "by another process, or the address is not this machine's")
    assert echo(first) == b"still me"


@pytest.mark.parametrize(("flag", "value"), [("--port", "99999"), ("--port", "-1"),
                                           ("--port", "http"), ("--metrics-port", "65536")])
def test_a_port_outside_0_to_65535_is_refused_at_parse_time(flag: str, value: str) -> None:
    # Guards the bug: --port 99999 quietly served on a random port.
    done = subprocess.run([str(SCRIPT), "serve", "--storage", "memory", flag, value],
                          capture_output=True, text=True, timeout=GUARD)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dspex-rx serve: error: argument {flag}: ")
    expected = "is not a port number" if value == "http" else \
        f"{value} is not a port: give 0..65535 (0 picks a free one)"
    assert last.endswith(expected)


def test_a_metrics_port_in_use_exits_naming_it_and_serves_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        server = Served("--port", "0", "--storage", "memory", "--log-format", "json",
                        "--metrics-port", str(busy))
        try:
            grpc_port = server.wait_for("server_started")["port"]
            code = server.exit()
        finally:
            server.kill()
    assert code == 1
    assert server.lines[-1] == (f"dspex-rx serve: error: cannot serve metrics on "
                                f"127.0.0.1:{busy}: Address already in use")
    # The gRPC port it had bound was given back when it gave up.
    with socket.socket() as again:
        again.bind(("127.0.0.1", grpc_port))
