"""Opening an etcd store: its rows are read in pages at one etcd revision, so a store larger
than one gRPC message opens again intact, and a write landing between two pages is not
half-seen: the snapshot is the first page's revision, the watch brings the rest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_durable_store import dump

from dspex_rx.etcd import EtcdBackend
from dspex_rx.etcd import backend as etcd_backend
from dspex_rx.store import MemoryStore, VariableSpec


@pytest.fixture
def prefix() -> str:
    return f"load-{uuid.uuid4().hex}/"


@pytest.fixture
def stores() -> Iterator[list[MemoryStore]]:
    made: list[MemoryStore] = []
    yield made
    for store in made:
        store.close()


def synced(store: MemoryStore) -> None:
    # A commit is flushed to etcd by the backend's writer; wait until it is stored.
    asyncio.run(store.sync(store.revision))


def open_store(endpoint: str, prefix: str, made: list[MemoryStore]) -> MemoryStore:
    store = MemoryStore(backend=EtcdBackend([endpoint], prefix=prefix), session_ttl=3600)
    made.append(store)
    return store


def big_store(endpoint: str, prefix: str, stores: list[MemoryStore]) -> tuple[list[str], Any]:
    """16 versions of a 300 kB string (about 14 MB of rows with their history), closed;
    returns the values and the state it held."""
    first = open_store(endpoint, prefix, stores)
    first.initialize_session("big")
    first.register("big", [VariableSpec("text", "string", "")], actor="big")
    values = [chr(ord("a") + i) * 300_000 for i in range(16)]
    for value in values:
        first.set("big", "text", value, actor="big")
        synced(first)  # one flush each: a flush of all 16 would pass etcd's request limit
    held = dump(first._backend)
    first.close()
    stores.remove(first)
    return values, held


# Guards: the whole store was read in one Range; past gRPC's 4 MiB receive limit a server
# could not start on its own data (found when pipelined writes let the etcd crash test
# write 6,800 values in 17 s: "Received message larger than max (4283371 vs. 4194304)").
def test_a_store_larger_than_a_grpc_message_opens_again_intact(
    etcd_endpoint: str, prefix: str, stores: list[MemoryStore],
) -> None:
    values, held = big_store(etcd_endpoint, prefix, stores)
    again = open_store(etcd_endpoint, prefix, stores)
    assert again.get("big", "text").value == values[-1]
    assert again.get("big", "text").version == len(values) + 1
    assert dump(again._backend) == held


def test_a_page_too_large_to_receive_is_read_again_in_halves(
    etcd_endpoint: str, prefix: str, stores: list[MemoryStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values, held = big_store(etcd_endpoint, prefix, stores)
    # 1 MiB answers at most: a page of 1,000 keys (14 MB) is refused, then halved.
    monkeypatch.setattr(etcd_backend, "MAX_RECEIVE_BYTES", 1 << 20)
    again = open_store(etcd_endpoint, prefix, stores)
    assert dump(again._backend) == held
    assert again.get("big", "text").value == values[-1]


def test_loading_in_pages_reads_one_snapshot_while_another_replica_writes(
    etcd_endpoint: str, prefix: str, stores: list[MemoryStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = open_store(etcd_endpoint, prefix, stores)
    writer.initialize_session("s")
    writer.register("s", [VariableSpec(f"v{i}", "integer", i) for i in range(6)], actor="s")
    synced(writer)
    before = dump(writer._backend)

    # Pages of two keys, and the other replica writes right after the first page.
    monkeypatch.setattr(etcd_backend, "PAGE_KEYS", 2)
    pages: list[int] = []
    real_range = etcd_backend.etcd_grpc.KVStub

    class Interleaved:
        def __init__(self, channel: Any) -> None:
            self._stub = real_range(channel)
            for name in ("Put", "Txn", "DeleteRange", "Compact"):
                setattr(self, name, getattr(self._stub, name))

        def Range(self, request: Any, **kwargs: Any) -> Any:  # the stub's name
            reply = self._stub.Range(request, **kwargs)
            pages.append(len(reply.kvs))
            if len(pages) == 1:
                writer.set("s", "v0", 100, actor="s")
                writer.register("s", [VariableSpec("late", "integer", 7)], actor="s")
                synced(writer)
            return reply

    monkeypatch.setattr(etcd_backend.etcd_grpc, "KVStub", Interleaved)
    reader = open_store(etcd_endpoint, prefix, stores)
    assert len(pages) > 3 and max(pages) <= 2  # it really read in pages
    # The state as it was when the first page was read: neither later write shows.
    assert dump(reader._backend) == before
    assert reader.get("s", "v0").value == 0
