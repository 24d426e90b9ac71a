"""Regression tests for what the property tests found (test_property_store.py in-process,
test_property_wire.py over the wire), one case each. Every one of these once escaped as a
stray builtin (TypeError, RecursionError, ...) or was stored although the wire cannot
carry it back, which broke every later read, listing and watch of the session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from wire import field, nested_list, raw_unary

import dspex_rx
import dspex_rx.wire.codec
from dspex_rx.client.transport import Transport
from dspex_rx.errors import DspexError
from dspex_rx.server import SERVICE_NAME, EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.security import token_metadata

SELF: list[Any] = []
SELF.append(SELF)
Case = Callable[[MemoryStore, str], object]

CASES: dict[str, Case] = {
    "dependencies-none": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], dependencies=None)], actor="t"),  # type: ignore[arg-type]
    "dependencies-int": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], dependencies=5)], actor="t"),  # type: ignore[arg-type]
    "constraints-a-string": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], constraints="ab")], actor="t"),  # type: ignore[arg-type]
    "description-not-unicode": lambda s, sid: s.register(
        sid, [VariableSpec("n", "list", [], description="\ud800")], actor="t"),
    "string-value-not-unicode": lambda s, sid: s.set(sid, "s", "\ud800", actor="t"),
    "metadata-not-unicode": lambda s, sid: s.set(sid, "a", [2], metadata={"k": "\udfff"},
                                                 actor="t"),
    "value-refers-to-itself": lambda s, sid: s.set(sid, "a", SELF, actor="t"),
    "metadata-refers-to-itself": lambda s, sid: s.update_many(
        sid, [("a", [3])], metadata={"k": SELF}, actor="t"),
    "source-not-a-string": lambda s, sid: s.set(sid, "a", [2], source=5, actor="t"),  # type: ignore[arg-type]
    "reason-not-a-string": lambda s, sid: s.rollback(sid, "a", 1, reason=5, actor="t"),  # type: ignore[arg-type]
    "glob-not-a-string": lambda s, sid: s.list(sid, 5),  # type: ignore[arg-type]
    "session-id-not-a-string": lambda s, sid: s.initialize_session(5),  # type: ignore[arg-type]
    "refs-not-a-list": lambda s, sid: s.get_many(sid, None),  # type: ignore[arg-type]
    "update-entry-too-short": lambda s, sid: s.update_many(sid, [("a",)], actor="t"),  # type: ignore[list-item]
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_in_process_misuse_is_refused_with_a_dspex_error_and_changes_nothing(case: str) -> None:
    store = MemoryStore()
    sid = store.initialize_session()[0].id
    store.register(sid, [VariableSpec("a", "list", [1]), VariableSpec("s", "string", "x")],
                   actor="t")
    before = {r.id: r.version for r in store.list(sid)}
    with pytest.raises(DspexError):
        CASES[case](store, sid)
    assert {r.id: r.version for r in store.list(sid)} == before
    store.check_accounts()


async def test_write_metadata_too_deep_to_send_back_is_never_stored(
    server: EmbeddedServer,
) -> None:
    # Found by the wire property test: an UpdateVariables whose metadata nests 33 lists
    # deep committed (the metadata merges into the variable's), then ListVariables of
    # the session failed with "value nests deeper than 32 levels" for good.
    async with dspex_rx.connect(server.target) as session:
        await session.register_variable("a", "float", 0.5)
        wire = Transport(server.target)
        await wire.open()
        try:
            entry = pb.UpdateVariablesRequest().updates.add(ref="a")
            entry.value.CopyFrom(dspex_rx.wire.codec.encode(0.25))
            deep = field(1, field(1, b"k") + field(2, nested_list(33)))
            request = (field(1, session.session_id.encode()) + field(2, entry.SerializeToString())
                       + field(3, deep))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_unary(wire, "UpdateVariables", request, pb.UpdateVariablesResponse,
                                metadata=token_metadata(session.token))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "metadata nests 33 levels deep" in (refused.value.details() or "")
            listed = await wire.unary(f"/{SERVICE_NAME}/ListVariables",
                                      pb.ListVariablesRequest(session_id=session.session_id),
                                      pb.ListVariablesResponse,
                                      metadata=token_metadata(session.token))
            assert [v.name for v in listed.variables] == ["a"]
        finally:
            await wire.close()
        assert await session.get_variable("a", bypass_cache=True) == 0.5
