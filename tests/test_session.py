"""Sessions and the core variable API against a real server: lookup by name and id,
defaults, isolation, shared sessions, concurrency, metadata, listing and deletion."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import trio

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.server import EmbeddedServer


async def test_get_by_name_and_by_id(session: SessionContext) -> None:
    var_id = await session.register_variable("temperature", "float", 0.7)
    assert var_id.startswith("var_temperature_")
    assert await session.get_variable("temperature") == 0.7
    assert await session.get_variable(var_id) == 0.7
    await session.set_variable(var_id, 0.8)
    assert await session.get_variable("temperature") == 0.8
    both = await session.get_variables(["temperature", var_id])
    assert both == {"temperature": 0.8, var_id: 0.8}


async def test_unknown_variable_raises_key_error_unless_default(session: SessionContext) -> None:
    with pytest.raises(KeyError, match="no variable 'missing'") as info:
        await session.get_variable("missing")
    assert isinstance(info.value, dspex_rx.VariableNotFoundError)
    assert await session.get_variable("missing", default=3) == 3
    # The spec: a None default means "no default", so it raises too.
    with pytest.raises(KeyError, match="no variable 'missing'"):
        await session.get_variable("missing", default=None)
    assert await session.get_variable("missing", default=0) == 0  # falsy but given
    with pytest.raises(KeyError, match="missing"):
        await session.set_variable("missing", 1)
    with pytest.raises(KeyError, match="missing"):
        await session.delete_variable("missing")


async def test_get_variables_defaults_and_missing(session: SessionContext) -> None:
    await session.register_variable("a", "integer", 1)
    got = await session.get_variables(["a", "b"], defaults={"b": 2})
    assert got == {"a": 1, "b": 2}
    # As in get_variable, a None default is no default (issue #12).
    with pytest.raises(KeyError, match=r"no variable\(s\) 'b' in session"):
        await session.get_variables(["a", "b"], defaults={"b": None})
    assert await session.get_variables(["b"], defaults={"b": 0}) == {"b": 0}
    with pytest.raises(KeyError, match=r"'b', 'c'"):
        await session.get_variables(["a", "b", "c"])
    with pytest.raises(ValueError, match="list of names"):
        await session.get_variables("a")  # type: ignore[arg-type]


async def test_get_variables_include_metadata(session: SessionContext) -> None:
    await session.register_variable(
        "t", "float", 0.5, constraints={"min": 0.0, "max": 1.0}, metadata={"owner": "ops"}
    )
    await session.set_variable("t", 0.6, metadata={"reason": "sweep"})
    entry = (await session.get_variables(["t"], include_metadata=True, include_stats=True))["t"]
    assert entry["value"] == 0.6
    # System fields are keys of their own; the user's metadata is under 'metadata', as given.
    assert entry["name"] == "t"
    assert entry["type"] == "float"
    assert entry["constraints"] == {"min": 0.0, "max": 1.0}
    assert entry["version"] == 2
    assert entry["revision"] == session.revision
    assert entry["updated_by"] == session.session_id
    assert entry["metadata"] == {"owner": "ops", "reason": "sweep"}  # merged with the update's
    assert entry["updated_at"] >= entry["created_at"]
    assert entry["updated_at"].tzinfo is datetime.UTC
    assert entry["stats"]["version"] == 2
    assert entry["stats"]["create_revision"] < entry["stats"]["mod_revision"]


async def test_sessions_are_isolated(server: EmbeddedServer) -> None:
    async with dspex_rx.connect(server.target) as one, dspex_rx.connect(server.target) as two:
        assert one.session_id != two.session_id
        await one.register_variable("secret", "string", "one's")
        with pytest.raises(KeyError):
            await two.get_variable("secret")
        assert await two.list_variables() == []
        await two.register_variable("secret", "string", "two's")
        assert await one.get_variable("secret") == "one's"
        assert await two.get_variable("secret") == "two's"


async def test_shared_session_lives_until_last_client_closes(server: EmbeddedServer) -> None:
    first = await SessionContext("shared_demo", server.target).initialize()
    assert first.created
    second = await SessionContext("shared_demo", server.target, token=first.token).initialize()
    assert not second.created
    await first.register_variable("x", "integer", 1)
    assert await second.get_variable("x") == 1
    await first.close()
    await second.set_variable("x", 2)  # the session outlives its first client
    assert await second.get_variable("x") == 2
    await second.close()
    # The id stays claimed by its token: a stranger cannot take it, its holder can.
    with pytest.raises(dspex_rx.AuthenticationError, match="belonged to a session that has"):
        await SessionContext("shared_demo", server.target).initialize()
    async with dspex_rx.connect(server.target, session_id="shared_demo",
                                token=first.token) as third:
        assert third.created and third.token == first.token
        assert await third.list_variables() == []


async def test_register_existing_name_is_refused(session: SessionContext) -> None:
    await session.register_variable("model", "string", "gpt-4")
    with pytest.raises(ValueError, match="'model' already exists") as info:
        await session.register_variable("model", "string", "claude")
    assert isinstance(info.value, dspex_rx.AlreadyExistsError)
    assert await session.get_variable("model") == "gpt-4"


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "x" * 300, "semi;colon"])
async def test_invalid_names_are_refused(session: SessionContext, bad: str) -> None:
    with pytest.raises(ValueError, match="not valid"):
        await session.register_variable(bad, "integer", 1)


async def test_hundred_concurrent_sets_take_hundred_revisions(session: SessionContext) -> None:
    await session.register_variable("counter", "integer", 0)
    start = (await session.get_variables(["counter"], include_metadata=True))["counter"]
    versions: list[int] = []

    async def writer(i: int) -> None:
        versions.append(await session.set_variable("counter", i))

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(writer, i)

    end = (await session.get_variables(["counter"], include_metadata=True))["counter"]
    assert end["version"] == 101
    assert end["revision"] == start["revision"] + 100
    assert sorted(versions) == list(range(2, 102))  # each write got its own version
    assert end["value"] in range(100)


async def test_revision_moves_once_per_write(session: SessionContext) -> None:
    # Revisions are store-wide (other sessions' writes take some too), so each write is
    # compared with the revision it returned, not with a count.
    seen = [session.revision]
    await session.register_variable("a", "integer", 1)
    seen.append(session.revision)
    await session.register_variables(
        [{"name": "b", "type": "integer", "initial_value": 1},
         {"name": "c", "type": "integer", "initial_value": 1}]
    )
    seen.append(session.revision)
    await session.update_variables({"a": 2, "b": 2, "c": 2})
    seen.append(session.revision)
    await session.set_variable("a", 3)
    seen.append(session.revision)
    await session.delete_variable("c")
    seen.append(session.revision)
    assert seen == sorted(set(seen))  # each write took a new, greater revision
    infos = {i["name"]: i for i in await session.list_variables()}
    assert infos["a"]["revision"] == seen[4]
    assert infos["b"]["revision"] == seen[3]
    assert infos["a"]["version"] == 3
    assert infos["b"]["version"] == 2


async def test_list_variables_by_pattern_and_delete(session: SessionContext) -> None:
    await session.register_variables(
        [{"name": n, "type": "float", "initial_value": 0.1}
         for n in ("model.temperature", "model.top_p", "retriever.k")]
    )
    names = [i["name"] for i in await session.list_variables(r"^model\.")]
    assert names == ["model.temperature", "model.top_p"]
    assert len(await session.list_variables()) == 3
    assert await session.delete_variable("model.top_p") is True
    assert [i["name"] for i in await session.list_variables("model.*", glob=True)] == [
        "model.temperature"
    ]
    with pytest.raises(KeyError):
        await session.get_variable("model.top_p")
    # A deleted name can be registered again, under a new id.
    new_id = await session.register_variable("model.top_p", "integer", 5)
    assert await session.get_variable(new_id) == 5


async def test_create_if_missing(session: SessionContext) -> None:
    version = await session.set_variable("fresh", 42, create_if_missing=True)
    assert version == 1
    info = (await session.get_variables(["fresh"], include_metadata=True))["fresh"]
    assert info["type"] == "integer"
    await session.set_variable("fresh", 43, create_if_missing=True)
    assert await session.get_variable("fresh") == 43
    with pytest.raises(TypeError, match="embedding or a tensor; pass type_hint"):
        await session.set_variable("unsure", np.zeros(3), create_if_missing=True)
    with pytest.raises(TypeError, match="cannot send a value of type object"):
        await session.set_variable("unsure", object(), create_if_missing=True)
    assert await session.set_variable(
        "unsure", np.zeros(3), create_if_missing=True, type_hint="tensor"
    ) == 1


async def test_spec_form_initialize_and_close(server: EmbeddedServer) -> None:
    session = SessionContext("session_123", server.target)
    await session.initialize()
    assert session.session_id == "session_123"
    await session.register_variable("temperature", "float", 0.7)
    assert await session.get_variable("temperature") == 0.7
    await session.close()
    await session.close()  # idempotent
    with pytest.raises(RuntimeError, match="the session is closed"):
        await session.get_variable("temperature")
    fresh = SessionContext("session_456", server.target)
    with pytest.raises(RuntimeError, match="not initialized"):
        await fresh.get_variable("temperature")


async def test_malformed_access_rules_are_refused_clearly(session: SessionContext) -> None:
    # Access rules are built (tests/test_access.py); a rule of the wrong shape is refused.
    with pytest.raises(ValueError, match="unknown key"):
        await session.register_variable("d", "float", 1.0, access_rules=[{"allow": "*"}])


async def test_list_variables_searches_a_regex_like_export_and_takes_globs_on_request(
    session: SessionContext,
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 1}
         for n in ("model", "model.top_p", "my_model", "modelx", "retriever.k")]
    )

    async def names(pattern: str, glob: bool = False) -> list[str]:
        return [i["name"] for i in await session.list_variables(pattern, glob=glob)]

    # A regex is searched anywhere in the name (re.search): the spec's patterns work.
    assert await names(r".*model.*") == ["model", "model.top_p", "modelx", "my_model"]
    assert await names("model") == ["model", "model.top_p", "modelx", "my_model"]
    assert await names("^model.*$") == ["model", "model.top_p", "modelx"]
    assert await names("^model$") == ["model"]
    # "model.*" as a regex is "model" then anything; as a glob, a dot must follow "model".
    assert await names("model.*", glob=True) == ["model.top_p"]
    assert await names("*model*", glob=True) == ["model", "model.top_p", "modelx", "my_model"]
    with pytest.raises(ValueError, match=r"pattern '\*model\*' is not a valid RE2 regular "
                                         r"expression: no argument for repetition operator"):
        await session.list_variables("*model*")  # a glob passed as a regex: refused, named


async def test_user_metadata_comes_back_exactly_as_given(session: SessionContext) -> None:
    # Issue #12: user keys 'type' and 'description' were shadowed by the system fields.
    given = {"description": "LLM generation temperature", "type": "x", "version": "mine"}
    await session.register_variable("temperature", "float", 0.7, metadata=given,
                                    description="the system's description")
    entry = (await session.get_variables(["temperature"], include_metadata=True))["temperature"]
    assert entry["metadata"] == given
    assert (entry["type"], entry["description"], entry["version"]) == (
        "float", "the system's description", 1)
    listed = (await session.list_variables("^temperature$"))[0]
    assert listed["metadata"] == given and listed["type"] == "float"
    # A rollback's notes describe the commit (history), never the variable's metadata.
    await session.set_variable("temperature", 0.9, metadata={"reason": "user_preference"})
    await session.rollback_variable("temperature", 1, reason="diverged")
    entry = (await session.get_variables(["temperature"], include_metadata=True))["temperature"]
    assert entry["metadata"] == {**given, "reason": "user_preference"}
    assert entry["version"] == 3 and entry["value"] == 0.7
    history = await session.get_variable_history("temperature", limit=2)
    assert [h["metadata"] for h in history] == [
        {"rollback_to": 1, "reason": "diverged"}, {"reason": "user_preference"}]


async def test_register_and_set_take_the_spec_positional_order(session: SessionContext) -> None:
    base = await session.register_variable("base", "float", 0.5)
    # name, type, initial_value, constraints, metadata, dependencies, access_rules
    var_id = await session.register_variable(
        "derived", "float", 0.7, {"min": 0.0}, {"why": "spec"}, [base], None
    )
    assert [d["variable_id"] for d in await session.get_dependencies(var_id)] == [base]
    with pytest.raises(TypeError, match="positional"):
        await session.register_variable(  # type: ignore[misc]
            "x", "float", 0.1, None, None, None, None, "a description")
    # name, value, metadata, create_if_missing, type_hint
    assert await session.set_variable("cfg", {"k": "v"}, {"src": "ui"}, True, "dict") == 1
    assert await session.get_variable("cfg") == {"k": "v"}
    with pytest.raises(TypeError, match="positional"):
        await session.set_variable("cfg", {}, None, False, None, 1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        await session.update_variables({"base": 0.1}, None, True, {"base": 1})  # type: ignore[misc]
