"""Shared fixtures: one real gRPC server on its own thread (127.0.0.1, port 0) and a
fresh session per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

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
