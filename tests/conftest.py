"""Shared fixtures: one real gRPC server on its own thread (127.0.0.1, port 0), a
fresh session per test, and the loopback OpenAI stub for the DSPy tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

# DSPy's real LM path may import litellm, which downloads a model price table on import
# unless told to use its bundled copy; tests never touch the network. Set before any
# test module can import it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import etcd_service
import pytest
import shell_run
from calls_gate import Gate
from openai_stub import OpenAIStub, arithmetic

import dspex_rx
from dspex_rx.server import EmbeddedServer


@pytest.fixture(scope="session")
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as embedded:
        yield embedded


@pytest.fixture
async def session(server: EmbeddedServer) -> AsyncIterator[dspex_rx.SessionContext]:
    async with dspex_rx.connect(server.target) as s:
        yield s


@pytest.fixture
async def two(
    server: EmbeddedServer,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, dspex_rx.SessionContext]]:
    """Two connections to one shared session: a writer and a watcher."""
    async with dspex_rx.connect(server.target) as writer:  # noqa: SIM117 - needs writer's id
        async with dspex_rx.connect(server.target, session_id=writer.session_id,
                                    token=writer.token) as watcher:
            yield writer, watcher


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    """A running loopback OpenAI-compatible stub answering "What is a + b?" (DSPy tests)."""
    with OpenAIStub(arithmetic) as running:
        yield running


# etcd (issue #15): one member for the run, and members of a test's own for restarts and
# faults. Without etcd these skip with the reason; in CI they fail (tests/etcd_service.py).
@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of one etcd member shared by the whole run."""
    etcd_service.require_binary()
    with etcd_service.running_member(tmp_path_factory.mktemp("etcd")) as member:
        yield member.endpoint


@pytest.fixture
def etcd_member(tmp_path: Path) -> Iterator[etcd_service.EtcdMember]:
    """A member of this test's own (stop/start, kill -9 and restart on the same data dir)."""
    etcd_service.require_binary()
    with etcd_service.running_member(tmp_path / "etcd") as member:
        yield member


@pytest.fixture(scope="session")
def shell_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``dspex-rx serve`` (in memory, sessions kept 600 s) the shell tests share."""
    with shell_run.served(tmp_path_factory.mktemp("serve"), "--session-ttl", "600") as address:
        yield address


@pytest.fixture
def sh(shell_target: str) -> shell_run.Shell:
    """A ``dspex-rx`` runner with a new session of its own on ``shell_target``."""
    shell = shell_run.Shell(shell_target)
    shell.new()
    return shell


@pytest.fixture
def gate(server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> Gate:
    """GetVariable of ref \"slow\" held on the server until ``gate.open()``."""
    g = Gate(server)
    # An instance attribute: the Calls stream looks its handlers up per request, the
    # unary registration keeps the real one.
    monkeypatch.setattr(server.service, "GetVariable", g, raising=False)
    return g
