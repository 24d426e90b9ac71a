"""A replica's group commit stays within etcd's limits (request bytes, operations per txn):
writes that would make the next flush too large wait for the one before to be stored, so
writes arriving together are all kept instead of all refused together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

import dspex_rx
from dspex_rx.errors import ResourceExhaustedError
from dspex_rx.etcd import EtcdBackend
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.store.backend import RevisionConflict


@contextmanager
def replica(endpoint: str, **options: Any) -> Iterator[tuple[EmbeddedServer, str]]:
    """A server over etcd on a prefix of its own (``options`` go to its backend)."""
    prefix = f"flush-{uuid.uuid4().hex}/"
    server = EmbeddedServer(store=MemoryStore(
        backend=EtcdBackend([endpoint], prefix=prefix, **options), session_ttl=3600))
    server.start()
    try:
        yield server, prefix
    finally:
        server.stop()


async def test_sixteen_large_writes_at_once_are_all_stored(etcd_endpoint: str) -> None:
    # Guards a bug: commits queued while a flush was in flight went into one etcd txn;
    # 16 sets of a 300 kB value made a 14 MB txn, refused, and every one of them failed.
    names = [f"text{i}" for i in range(16)]
    values = {name: chr(ord("a") + i) * 300_000 for i, name in enumerate(names)}
    versions: dict[str, int] = {}
    with replica(etcd_endpoint) as (server, prefix):
        async with dspex_rx.connect(server.target, session_id="big") as session:
            await session.register_variables(
                [{"name": n, "type": "string", "initial_value": ""} for n in names])

            async def write(name: str) -> None:
                versions[name] = await session.set_variable(name, values[name])

            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(write, name)
            assert versions == {name: 2 for name in names}
    assert stored_values(etcd_endpoint, prefix, "big") == values


async def test_many_small_writes_at_once_stay_within_etcds_operations_per_txn(
    etcd_endpoint: str,
) -> None:
    # Guards a bug: 64 writers at once made one txn of about 300 operations, past etcd's
    # default --max-txn-ops (128): every write of that flush failed.
    names = [f"v{i}" for i in range(64)]
    written: dict[str, int] = {}
    with replica(etcd_endpoint, max_txn_ops=128) as (server, prefix):
        async with dspex_rx.connect(server.target, session_id="many") as session:
            for half in (names[:32], names[32:]):  # 64 at once is one txn past the limit
                await session.register_variables(
                    [{"name": n, "type": "integer", "initial_value": 0} for n in half])

            async def write(i: int, name: str) -> None:
                for k in range(1, 4):
                    await session.set_variable(name, 100 * i + k)
                written[name] = 100 * i + 3

            async with trio.open_nursery() as nursery:
                for i, name in enumerate(names):
                    nursery.start_soon(write, i, name)
    assert stored_values(etcd_endpoint, prefix, "many") == written


async def test_one_write_too_large_for_etcd_is_refused_alone_and_writes_go_on(
    etcd_endpoint: str,
) -> None:
    # Guards a bug: it was a storage outage (UNAVAILABLE, which clients retry): every write
    # of the replica was refused for a second after it, and the message asked whether
    # etcd was up.
    with replica(etcd_endpoint, max_txn_ops=128) as (server, prefix):
        async with dspex_rx.connect(server.target, session_id="wide") as session:
            await session.register_variable("kept", "integer", 1)
            with pytest.raises(dspex_rx.ResourceExhaustedError) as refused:
                await session.register_variables(
                    [{"name": f"v{i}", "type": "integer", "initial_value": i}
                     for i in range(64)])
            assert "131 row operations" in str(refused.value)
            assert "--max-txn-ops" in str(refused.value)
            assert "is etcd up" not in str(refused.value)
            # At once, with no pause: the next writes are taken.
            assert await session.set_variable("kept", 2) == 2
            await session.register_variable("after", "integer", 3)
            names = await session.list_variables()
    assert sorted(v["name"] for v in names) == ["after", "kept"]
    assert stored_values(etcd_endpoint, prefix, "wide") == {"kept": 2, "after": 3}


def stored_values(endpoint: str, prefix: str, session_id: str) -> dict[str, Any]:
    """What etcd holds, read by a fresh replica: each variable's value by name."""
    again = MemoryStore(backend=EtcdBackend([endpoint], prefix=prefix))
    try:
        return {r.name: r.value for r in again.session(session_id).variables.values()}
    finally:
        again.close()


# Guards a bug: a write made while a too-large one was undone (its read-back awaited)
# went with it and was answered with that write's ResourceExhaustedError, which is not
# retried: a one-variable set refused as too large.
def test_a_write_made_while_a_too_large_one_is_undone_is_run_again_not_refused(
    etcd_endpoint: str,
) -> None:
    backend = EtcdBackend([etcd_endpoint], prefix=f"wide-{uuid.uuid4().hex}/")
    store = MemoryStore(backend=backend)
    store.initialize_session("s")
    store.register("s", [VariableSpec("kept", "integer", 1)], actor="a")
    asyncio.run(store.sync(store.revision))
    reading = asyncio.Event()
    read_back = backend._read_back

    async def signalled() -> Any:
        reading.set()
        return await read_back()

    backend._read_back = signalled  # type: ignore[method-assign]

    async def wide() -> BaseException | None:
        store.register("s", [VariableSpec(f"v{i}", "integer", i) for i in range(64)],
                       actor="a")  # 131 row operations, above etcd's default 128
        try:
            await store.sync(store.revision)
        except ResourceExhaustedError as exc:
            return exc
        return None

    async def small() -> BaseException | None:
        await reading.wait()  # the wide write was refused; its read-back is awaited
        store.set("s", "kept", 2, actor="b")
        try:
            await store.sync(store.revision)
        except RevisionConflict as exc:
            return exc
        return None

    async def run() -> list[BaseException | None]:
        return await asyncio.gather(wide(), small())

    try:
        refused, rerun = asyncio.run(run())
        assert isinstance(refused, ResourceExhaustedError)
        assert isinstance(rerun, RevisionConflict)  # the server runs such a call again
        store.set("s", "kept", 2, actor="b")
        asyncio.run(store.sync(store.revision))
        assert store.get("s", "kept").value == 2
    finally:
        store.close()


# Guards a bug: a call waiting in room() for the flush ahead of it got that flush's
# ResourceExhaustedError (another call's write too large), though it wrote nothing.
def test_a_write_waiting_for_room_is_not_refused_with_anothers_too_large_write(
    etcd_endpoint: str,
) -> None:
    store = MemoryStore(backend=EtcdBackend([etcd_endpoint],
                                            prefix=f"room-{uuid.uuid4().hex}/"))
    store.initialize_session("s")
    store.register("s", [VariableSpec("kept", "integer", 1)], actor="a")
    asyncio.run(store.sync(store.revision))

    async def run() -> list[BaseException | None]:
        # As the server orders them: the wide call committed and syncs; a small one,
        # arrived meanwhile, waits for room before its handler runs.
        store.register("s", [VariableSpec(f"v{i}", "integer", i) for i in range(64)],
                       actor="a")
        return await asyncio.gather(store.sync(store.revision), store.room(64),
                                    return_exceptions=True)

    try:
        refused, room = asyncio.run(run())
        assert isinstance(refused, ResourceExhaustedError)
        assert room is None
    finally:
        store.close()
