"""Property test of the store called in-process (an embedding program's view): Python
values the wire cannot even carry (lone surrogates, self-referencing lists, sets, huge
ints, numpy scalars, wrong argument types) must be refused with a dspex error, never
stored, never raised as a stray builtin; after every step the invariants hold
(``MemoryStore.check_accounts`` and the checks of the wire property test) and a refused
call changed nothing. Derandomized and bounded, like the wire test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_property_wire import LIMITS, check_invariants, snapshot

from dspex_rx.errors import DspexError
from dspex_rx.store import MemoryStore, VariableSpec

NAMES = ["a", "b", "c"]
SELF: list[Any] = []
SELF.append(SELF)
DEEP: list[Any] = [1]
for _ in range(40):
    DEEP = [DEEP]
ODD = st.sampled_from([
    "\ud800", 2**70, -(2**64), {1, 2}, (1, 2), np.float64(0.5), np.int64(3), b"raw", SELF,
    {"k": "\udfff"}, {1: "x"}, DEEP,
    float("nan"), np.zeros(3, "float32"), np.zeros((2, 2), "object"), None, object(),
])
PLAIN = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-1, 1) | st.text(max_size=4)
# Plain values first (hypothesis favours the first branch), odd ones mixed in.
VALUES = st.recursive(PLAIN, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=2), inner, max_size=3), max_leaves=8) | ODD
TYPES = st.sampled_from(["float", "integer", "string", "list", "dict", "tensor", "embedding",
                         "choice", "bogus", 3, None])
MAPS = st.none() | st.dictionaries(st.text(max_size=3), VALUES, max_size=3) | ODD
DEPENDENCIES = st.sampled_from([(), ["a"], ("b",), None, "a", [None], ["a", "a"]])


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    name = draw(st.sampled_from(NAMES) | st.sampled_from(["", None, 7, "x" * 300]))
    op = draw(st.sampled_from(["register", "set", "update", "delete", "depend", "rollback",
                               "list", "optimize", "get_many"]))
    if op == "get_many":
        return "get_many", (draw(st.sampled_from([["a"], ("a", "b"), None, "ab", [None]])),), {}
    if op == "register":
        spec = VariableSpec(name, draw(TYPES), draw(VALUES), draw(MAPS), draw(MAPS),
                            draw(st.sampled_from(["", "d", None, "\ud800"])),
                            draw(DEPENDENCIES))
        return "register", ([spec],), {}
    if op == "set":
        return "set", (name, draw(VALUES)), {
            "metadata": draw(MAPS), "create_if_missing": draw(st.booleans()),
            "source": draw(st.sampled_from([None, "s", 5])),
            "expected_version": draw(st.sampled_from([None, 0, 1, -1, "1"]))}
    if op == "update":
        updates: Any = draw(st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=4))
        if not draw(st.sampled_from([True, True, True, False])):
            updates = draw(st.sampled_from(
                [[("a",)], None, [["a", 1, 2, 3]], ["a"], [("a", 1, "x")]]))
        return "update_many", (updates,), {"metadata": draw(MAPS),
                                           "atomic": draw(st.booleans())}
    if op == "delete":
        return "delete", (name,), {"cascade": draw(st.booleans())}
    if op == "depend":
        return "add_dependency", (name, draw(st.sampled_from(NAMES))), {
            "metadata": draw(MAPS), "dependency_type": draw(st.sampled_from(["data", "x"]))}
    if op == "rollback":
        return "rollback", (name, draw(st.sampled_from([1, 2, 0, -1, "1", None]))), {
            "reason": draw(st.sampled_from([None, "r", 5, "\ud800"]))}
    if op == "list":
        return "list", (draw(st.sampled_from([None, "*", "[", "*" * 5000, 5])),), {}
    return "start_optimization", (name,), {
        "optimizer_type": draw(st.sampled_from(["grid", None, "a b"])),
        "config": draw(MAPS), "max_iterations": draw(st.sampled_from([3, 0, True, "3"])),
        "ttl": draw(st.sampled_from([None, 0.0, -1.0, float("nan")]))}


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(calls(), min_size=1, max_size=25))
def test_in_process_calls_with_any_python_values(
    ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
) -> None:
    store = MemoryStore(limits=LIMITS, log_size=5)
    sid = store.initialize_session()[0].id
    for method, args, kwargs in ops:
        if method in ("set", "update_many", "rollback"):
            kwargs = {**kwargs, "actor": "t"}
        if method == "register":
            args = (*args, "t")
        before = snapshot(store, sid)
        try:
            getattr(store, method)(sid, *args, **kwargs)
        except DspexError:
            assert snapshot(store, sid) == before, method
        check_invariants(store)
