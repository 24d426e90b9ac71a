"""Batches: register_variables and update_variables are all-or-nothing when atomic, and
report per-variable results when not."""

from __future__ import annotations

import numpy as np
import pytest

from dspex_rx import SessionContext


async def _snapshot(session: SessionContext) -> dict[str, tuple[object, int]]:
    return {i["name"]: (i["value"], i["version"]) for i in await session.list_variables()}


async def test_register_variables_returns_ids_under_one_revision(session: SessionContext) -> None:
    before = session.revision
    ids = await session.register_variables(
        [
            {"name": "temperature", "type": "float", "initial_value": 0.7,
             "constraints": {"min": 0.0, "max": 2.0}},
            {"name": "max_tokens", "type": "integer", "initial_value": 256},
            {"name": "emb", "type": "embedding", "value": np.ones(3, dtype=np.float32)},
        ]
    )
    assert list(ids) == ["temperature", "max_tokens", "emb"]
    assert all(ids[name].startswith(f"var_{name}_") for name in ids)
    # One commit: every variable carries the one revision it took (revisions are
    # store-wide, so only "newer than before" is known in advance).
    assert session.revision > before
    infos = await session.list_variables()
    assert {i["revision"] for i in infos} == {session.revision}


@pytest.mark.parametrize(
    ("bad_entry", "error", "match"),
    [
        ({"name": "b", "type": "float", "initial_value": 5.0, "constraints": {"max": 1.0}},
         ValueError, "above max"),
        ({"name": "b", "type": "integer", "initial_value": "x"}, TypeError, "expected integer"),
        ({"name": "a", "type": "integer", "initial_value": 1}, ValueError, "already exists"),
        ({"name": "b", "type": "nope", "initial_value": 1}, ValueError, "unknown variable type"),
        ({"name": "b", "type": "float", "initial_value": 1.0, "constraints": {"mn": 0}},
         ValueError, "unknown constraint"),
    ],
)
async def test_register_variables_is_all_or_nothing(
    session: SessionContext, bad_entry: dict[str, object], error: type[Exception], match: str
) -> None:
    await session.register_variable("existing", "integer", 7)
    before_revision = session.revision
    before = await _snapshot(session)
    with pytest.raises(error, match=match):
        await session.register_variables(
            [{"name": "a", "type": "integer", "initial_value": 1}, bad_entry,
             {"name": "c", "type": "string", "initial_value": "x"}]
        )
    assert await _snapshot(session) == before
    assert (await session.get_variables(["existing"], include_metadata=True))["existing"][
        "session_revision"] == before_revision


async def test_register_variables_refuses_entries_without_name(session: SessionContext) -> None:
    with pytest.raises(ValueError, match="entry 1 needs at least 'name' and 'type'"):
        await session.register_variables(
            [{"name": "a", "type": "integer", "initial_value": 1}, {"type": "integer"}]
        )
    with pytest.raises(ValueError, match="unknown keys"):
        await session.register_variables(
            [{"name": "a", "type": "integer", "initial_value": 1, "colour": "red"}]
        )
    assert await session.list_variables() == []


async def _three(session: SessionContext) -> None:
    await session.register_variables(
        [
            {"name": "temperature", "type": "float", "initial_value": 0.7,
             "constraints": {"min": 0.0, "max": 2.0}},
            {"name": "max_tokens", "type": "integer", "initial_value": 256},
            {"name": "model", "type": "choice", "initial_value": "gpt-4",
             "constraints": {"choices": ["gpt-4", "claude"]}},
        ]
    )


async def test_update_variables_atomic_success(session: SessionContext) -> None:
    await _three(session)
    before = session.revision
    results = await session.update_variables(
        {"temperature": 0.9, "max_tokens": 512, "model": "claude"}, metadata={"why": "tune"}
    )
    assert results == {"temperature": True, "max_tokens": True, "model": True}
    assert session.revision == before + 1
    got = await session.get_variables(["temperature", "max_tokens", "model"],
                                      include_metadata=True)
    assert [got[n]["value"] for n in got] == [0.9, 512, "claude"]
    assert {got[n]["revision"] for n in got} == {before + 1}
    assert {got[n]["metadata"]["why"] for n in got} == {"tune"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"max_tokens": "lots"}, "expected integer"),
        ({"model": "llama"}, "not one of the choices"),
        ({"nope": 1}, "no variable 'nope'"),
        ({"max_tokens": float("nan")}, "expected integer"),
        ({"max_tokens": {1, 2}}, "cannot send"),
    ],
)
async def test_update_variables_atomic_failure_applies_nothing(
    session: SessionContext, bad: dict[str, object], message: str
) -> None:
    await _three(session)
    before_revision = session.revision
    before = await _snapshot(session)
    assert "temperature" not in bad
    updates = {"temperature": 1.5, **bad}
    results = await session.update_variables(updates)
    (bad_name,) = bad
    assert isinstance(results[bad_name], str)
    assert message in results[bad_name]
    assert results["temperature"] == f"not applied: the atomic batch failed on {bad_name!r}"
    assert await _snapshot(session) == before
    await session.set_variable("temperature", 0.1)
    assert session.revision == before_revision + 1  # the failed batch took no revision


async def test_update_variables_non_atomic_applies_valid_entries(session: SessionContext) -> None:
    await _three(session)
    before = session.revision
    results = await session.update_variables(
        {"temperature": 3.0, "max_tokens": 100, "model": "claude", "ghost": 1}, atomic=False
    )
    assert results["max_tokens"] is True
    assert results["model"] is True
    assert isinstance(results["temperature"], str) and "above max 2.0" in results["temperature"]
    assert isinstance(results["ghost"], str) and "no variable 'ghost'" in results["ghost"]
    assert list(results) == ["temperature", "max_tokens", "model", "ghost"]
    values = await session.get_variables(["temperature", "max_tokens", "model"])
    assert values == {"temperature": 0.7, "max_tokens": 100, "model": "claude"}
    assert session.revision == before + 1


async def test_update_variables_same_variable_twice_is_refused(session: SessionContext) -> None:
    await _three(session)
    var_id = (await session.get_variables(["max_tokens"], include_metadata=True))["max_tokens"][
        "id"]
    results = await session.update_variables({"max_tokens": 1, var_id: 2})
    assert "more than once" in str(results[var_id])
    assert await session.get_variable("max_tokens") == 256


# -------------------------------------------------------------------- what a batch caches


# Guards: a lean batch answer omitted [1.0, 2.0] (== [1, 2]); the client cached its ints.
async def test_batch_write_caches_the_normalized_list_items(session: SessionContext) -> None:
    # item_type float turns [1, 2] into [1.0, 2.0] on the server, but same_value([1, 2],
    # [1.0, 2.0]) is True (list == list compares 1 == 1.0), so the lean batch answer omits
    # the stored value and the client caches the ints it sent.
    await session.register_variable("xs", "list", [0.5], constraints={"item_type": "float"})
    results = await session.update_variables({"xs": [1, 2]})
    assert results == {"xs": True}
    stored = await session.get_variable("xs", bypass_cache=False)
    server = await session.get_variable("xs", bypass_cache=True)
    assert [type(x) for x in server] == [float, float]
    assert [type(x) for x in stored] == [float, float], stored
