"""Export and import (issue #6): every format round-trips every type bit for bit, with
history and dependencies; merge strategies; dry runs; all-or-nothing imports; refusals of
pickle without trust, newer format versions and garbage, each naming what was wrong."""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import sys
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import TensorDouble, settle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dspex_rx
from dspex_rx.client import exchange
from dspex_rx.core.types import validate_stored, validate_value
from dspex_rx.server import EmbeddedServer

FORMATS = ["json", "yaml", "parquet", "pickle"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# NEL (U+0085) is here because PyYAML writes it raw unless the string is double-quoted.
UNICODE = 'héllo 世界 🚀\n\t"quoted" \\ yes: null ~ # \x85 \u2028 \ufeff'

rng = np.random.default_rng(6)
EMBEDDING = rng.normal(size=768).astype(np.float32)
WEIGHTS = np.array([[1 / 3, -0.0, 1e-300], [math.pi, -2.5, 7.0]], dtype=np.float64)
MASK = np.array([[-128, 0, 127], [1, -1, 5]], dtype=np.int8)


@pytest.fixture
async def fresh(server: EmbeddedServer) -> AsyncIterator[dspex_rx.SessionContext]:
    async with dspex_rx.connect(server.target) as s:
        yield s


def revision_of(server: EmbeddedServer, session: dspex_rx.SessionContext) -> int:
    sid = session.session_id
    return server.call(lambda: server.store.session(sid).revision)


async def populate(s: dspex_rx.SessionContext) -> None:
    """One variable of every type (some with history), and dependencies between them."""
    await s.register_variables([
        {"name": "temperature", "type": "float", "initial_value": 0.7,
         "constraints": {"min": 0.0, "max": 2.0}, "metadata": {"owner": "me", "tags": [1, "a"]},
         "description": "sampling temperature"},
        {"name": "ratio", "type": "float", "initial_value": 0.5,
         "constraints": {"allow_nan": True, "allow_inf": True}},
        {"name": "max_tokens", "type": "integer", "initial_value": INT64_MIN},
        {"name": "prompt", "type": "string", "initial_value": UNICODE},
        {"name": "verbose", "type": "boolean", "initial_value": True},
        {"name": "model", "type": "choice", "initial_value": "gpt-4",
         "constraints": {"choices": ["gpt-3.5", "gpt-4"]}},
        {"name": "strategy", "type": "module", "initial_value": "ChainOfThought",
         "constraints": {"choices": ["Predict", "ChainOfThought"]}},
        {"name": "context_embedding", "type": "embedding", "initial_value": EMBEDDING,
         "constraints": {"dimensions": 768, "normalize": True}},
        {"name": "weights", "type": "tensor", "initial_value": WEIGHTS,
         "constraints": {"shape": [2, 3], "dtype": "float64"}},
        {"name": "mask", "type": "tensor", "initial_value": MASK,
         "constraints": {"dtype": "int8"}},
        {"name": "stops", "type": "list",
         "initial_value": ["\n", "END", 1, 2.5, None, True, {"a": [1]}]},
        {"name": "config", "type": "dict",
         "initial_value": {"a": 1, "nested": {"b": [1, 2.0, "x"], "$dspex": "odd"}, "": None}},
        {"name": "effective_temperature", "type": "float", "initial_value": 0.7,
         "dependencies": ["temperature"]},
    ])
    await s.add_dependency("effective_temperature", "max_tokens", "constraint", {"why": "cap"})
    await s.set_variable("temperature", 0.9, metadata={"reason": "sweep"})
    await s.set_variable("temperature", 1.1)
    await s.set_variable("ratio", math.nan)
    await s.set_variable("ratio", -math.inf)
    await s.set_variable("max_tokens", INT64_MAX)
    await s.set_variable("context_embedding", EMBEDDING[::-1].copy())


def assert_same(a: Any, b: Any, where: str = "value") -> None:
    """Equal in type and value; arrays in dtype, shape and bytes; NaN equals NaN; -0.0
    is not 0.0."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.tobytes() == b.tobytes(), f"{where}: array bytes differ"
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        ), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


async def described(s: dspex_rx.SessionContext) -> dict[str, dict[str, Any]]:
    return {info["name"]: info for info in await s.list_variables()}


def document(data: bytes) -> dict[str, Any]:
    return json.loads(data)  # type: ignore[no-any-return]


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("format", FORMATS)
async def test_round_trip_into_a_fresh_session_reproduces_everything(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext,
    server: EmbeddedServer, format: str,
) -> None:
    await populate(session)
    data = await session.export_variables(format, include_history=True)
    # Revisions are the store's (one counter for all sessions), so one commit is one
    # step of the store's counter.
    before = server.call(lambda: server.store.revision)
    report = await fresh.import_variables(data, format, trusted=format == "pickle")
    assert report["errors"] == 0 and report["applied"]
    assert report["imported"] == 13 and report["skipped"] == 0
    assert report["dependencies_added"] == 2
    # one commit for the whole import
    assert revision_of(server, fresh) == report["revision"] == before + 1

    source, target = await described(session), await described(fresh)
    assert sorted(source) == sorted(target)
    for name, info in source.items():
        other = target[name]
        for key in ("type", "constraints", "description", "version"):
            assert_same(info[key], other[key], f"{name}.{key}")
        assert_same(info["value"], other["value"], f"{name}.value")
        assert_same(await session.get_variable(name), await fresh.get_variable(name), name)
    assert target["temperature"]["metadata"] == source["temperature"]["metadata"]
    assert target["temperature"]["metadata"]["owner"] == "me"
    assert target["temperature"]["metadata"]["tags"] == [1, "a"]
    assert target["temperature"]["version"] == 3

    for name in source:
        old = await session.get_variable_history(name)
        new = await fresh.get_variable_history(name)
        assert [e["version"] for e in old] == [e["version"] for e in new], name
        for a, b in zip(old, new, strict=True):
            assert_same(a["value"], b["value"], f"{name} history v{a['version']}")
        # Older versions come back as they were written; the newest is the import's write.
        for a, b in zip(old[1:], new[1:], strict=True):
            assert (a["updated_by"], a["metadata"]) == (b["updated_by"], b["metadata"])
        assert new[0]["metadata"]["imported_from"] == session.session_id
        assert new[0]["metadata"]["format_version"] == 1
    ratio = await fresh.get_variable_history("ratio")
    assert ratio[0]["value"] == -math.inf and math.isnan(ratio[1]["value"])

    deps = await fresh.get_dependencies("effective_temperature")
    assert {(d["name"], d["type"]) for d in deps} == {
        ("temperature", "data"), ("max_tokens", "constraint")
    }
    assert next(d for d in deps if d["name"] == "max_tokens")["metadata"] == {"why": "cap"}


async def test_without_history_new_variables_start_at_version_one(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await populate(session)
    data = await session.export_variables("json")
    assert "history" not in document(data)["variables"][0]
    await fresh.import_variables(data)
    assert (await described(fresh))["temperature"]["version"] == 1
    assert await fresh.get_variable("temperature") == 1.1
    history = await fresh.get_variable_history("temperature")
    assert [e["version"] for e in history] == [1]


async def test_json_holds_arrays_as_tagged_little_endian_bytes(
    session: dspex_rx.SessionContext,
) -> None:
    await populate(session)
    doc = document(await session.export_variables("json"))
    assert doc["format"] == "dspex-rx/variables" and doc["format_version"] == 1
    variables = {v["name"]: v for v in doc["variables"]}
    tagged = variables["mask"]["value"]
    assert tagged == {"$dspex": "ndarray", "dtype": "int8", "shape": [2, 3],
                      "data": base64.b64encode(MASK.tobytes()).decode()}
    stored = await session.get_variable("context_embedding")
    emb = variables["context_embedding"]["value"]
    assert (emb["dtype"], emb["shape"]) == ("float32", [768])
    assert base64.b64decode(emb["data"]) == stored.astype("<f4").tobytes()
    assert variables["ratio"]["value"] == {"$dspex": "float", "value": "-inf"}
    assert variables["max_tokens"]["value"] == INT64_MAX


async def test_yaml_export_is_plain_yaml(session: dspex_rx.SessionContext) -> None:
    await populate(session)
    doc = yaml.safe_load(await session.export_variables("yaml"))
    variables = {v["name"]: v for v in doc["variables"]}
    assert variables["prompt"]["value"] == UNICODE
    assert variables["weights"]["value"]["shape"] == [2, 3]


async def test_filter_pattern_exports_matching_names_only(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variables([
        {"name": "model.name", "type": "string", "initial_value": "a"},
        {"name": "model.size", "type": "integer", "initial_value": 7},
        {"name": "temperature", "type": "float", "initial_value": 0.5},
        {"name": "my_model", "type": "string", "initial_value": "b"},
    ])

    async def exported(pattern: str, glob: bool = False) -> list[str]:
        data = await session.export_variables(filter_pattern=pattern, glob=glob)
        return [v["name"] for v in document(data)["variables"]]

    # Issue #12: the spec's filter_pattern is a regex; as a glob it matched nothing.
    assert await exported(r".*model.*") == ["model.name", "model.size", "my_model"]
    assert await exported("^model.*$") == ["model.name", "model.size"]
    assert await exported("model") == ["model.name", "model.size", "my_model"]  # re.search
    assert await exported(r".*temperature.*") == ["temperature"]
    assert await exported("model.*", glob=True) == ["model.name", "model.size"]
    assert await exported("nothing") == []
    with pytest.raises(ValueError, match=r"filter_pattern '\*model' is not a valid RE2 "
                                         r"regular expression: no argument for repetition"):
        await session.export_variables(filter_pattern="*model")
    with pytest.raises(ValueError, match=r"filter_pattern '\(\?<=x\)m'.*lookbehind"):
        await session.export_variables(filter_pattern="(?<=x)m")


async def test_import_accepts_text_and_reports_each_variable(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variable("a", "integer", 1)
    text = (await session.export_variables("yaml")).decode()
    report = await fresh.import_variables(text, "yaml")
    assert report["details"] == [
        {"name": "a", "action": "create", "version": 1, "message": "new variable"}
    ]


# ----------------------------------------------------------------- merge strategies


async def overlapping(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> bytes:
    """An export of temperature/config/new_one, and a target that has temperature and
    config already (plus a variable of its own)."""
    await session.register_variables([
        {"name": "temperature", "type": "float", "initial_value": 0.7,
         "constraints": {"min": 0.0, "max": 2.0}, "metadata": {"owner": "import"},
         "description": "from the file"},
        {"name": "config", "type": "dict", "initial_value": {"a": 1, "b": 2}},
        {"name": "new_one", "type": "integer", "initial_value": 5},
    ])
    await fresh.register_variables([
        {"name": "temperature", "type": "float", "initial_value": 0.2,
         "constraints": {"min": 0.0, "max": 1.0}, "metadata": {"team": "here"},
         "description": "local"},
        {"name": "config", "type": "dict", "initial_value": {"b": 0, "c": 3}},
        {"name": "local", "type": "string", "initial_value": "mine"},
    ])
    return await session.export_variables("json", include_history=True)


async def test_replace_writes_imported_values_as_new_versions(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    data = await overlapping(session, fresh)
    report = await fresh.import_variables(data, merge_strategy="replace")
    actions = {d["name"]: d["action"] for d in report["details"]}
    assert actions == {"config": "replace", "new_one": "create", "temperature": "replace"}
    info = await described(fresh)
    assert info["temperature"]["value"] == 0.7 and info["temperature"]["version"] == 2
    assert info["temperature"]["metadata"]["owner"] == "import"
    assert "team" not in info["temperature"]["metadata"]
    assert info["temperature"]["description"] == "from the file"
    # The session's constraints stand: an import never redefines a variable.
    assert info["temperature"]["constraints"] == {"min": 0.0, "max": 1.0}
    message = next(d["message"] for d in report["details"] if d["name"] == "temperature")
    assert "constraints kept" in message and "history not restored" in message
    assert await fresh.get_variable("config") == {"a": 1, "b": 2}
    assert await fresh.get_variable("local") == "mine"
    history = await fresh.get_variable_history("temperature")
    assert [(e["version"], e["value"]) for e in history] == [(2, 0.7), (1, 0.2)]
    assert history[0]["metadata"]["merge_strategy"] == "replace"


async def test_keep_leaves_existing_variables_alone(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    data = await overlapping(session, fresh)
    report = await fresh.import_variables(data, merge_strategy="keep")
    assert report["imported"] == 1 and report["skipped"] == 2
    assert await fresh.get_variable("temperature") == 0.2
    assert await fresh.get_variable("config") == {"b": 0, "c": 3}
    assert await fresh.get_variable("new_one") == 5
    assert (await described(fresh))["temperature"]["version"] == 1


async def test_merge_merges_dicts_and_metadata_and_skips_the_unchanged(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, server: EmbeddedServer
) -> None:
    data = await overlapping(session, fresh)
    report = await fresh.import_variables(data, merge_strategy="merge")
    assert report["imported"] == 3
    assert await fresh.get_variable("config") == {"b": 2, "c": 3, "a": 1}
    info = (await described(fresh))["temperature"]
    assert info["value"] == 0.7
    assert (info["metadata"]["owner"], info["metadata"]["team"]) == ("import", "here")
    assert info["description"] == "from the file"
    # Importing the same file again changes nothing: every variable is skipped.
    before = revision_of(server, fresh)
    again = await fresh.import_variables(data, merge_strategy="merge")
    assert again["skipped"] == 3 and again["imported"] == 0 and not again["applied"]
    assert {d["message"] for d in again["details"]} == {"unchanged"}
    assert revision_of(server, fresh) == before


async def test_unknown_merge_strategy_is_refused(session: dspex_rx.SessionContext) -> None:
    with pytest.raises(ValueError, match="merge_strategy must be one of replace, keep, merge"):
        await session.import_variables(b"{}", merge_strategy="overwrite")


async def test_watchers_see_an_import_as_one_change_with_its_metadata(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    data = await overlapping(session, fresh)
    async with fresh.watch_variable("temperature", include_initial=False) as watch:
        await fresh.import_variables(data)
        await settle(fresh)
        update = await watch.__anext__()
    assert update.value == 0.7 and update.old_value == 0.2
    assert update.metadata["imported_from"] == session.session_id


# ------------------------------------------------------------- dry run, atomicity


async def test_dry_run_reports_and_changes_nothing(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, server: EmbeddedServer
) -> None:
    data = await overlapping(session, fresh)
    before = revision_of(server, fresh)
    report = await fresh.import_variables(data, merge_strategy="merge", dry_run=True)
    assert report["dry_run"] and not report["applied"] and report["errors"] == 0
    assert {d["name"]: (d["action"], d["version"]) for d in report["details"]} == {
        "config": ("merge", 2), "new_one": ("create", 1), "temperature": ("merge", 2)
    }
    assert revision_of(server, fresh) == before
    assert await fresh.get_variable("config") == {"b": 0, "c": 3}
    assert await fresh.get_variable("new_one", default="<absent>") == "<absent>"


def edited(data: bytes, edit: Any) -> bytes:
    doc = document(data)
    edit(doc)
    return json.dumps(doc).encode()


async def test_one_bad_entry_means_nothing_is_applied(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, server: EmbeddedServer
) -> None:
    data = await overlapping(session, fresh)

    def break_new_one(doc: dict[str, Any]) -> None:
        doc["variables"].append({"name": "bad", "type": "float", "value": 5.0, "version": 1,
                                 "constraints": {"max": 1.0}})

    before = revision_of(server, fresh)
    report = await fresh.import_variables(edited(data, break_new_one))
    assert report["error_details"] == ["variable 'bad': 5.0 is above max 1.0"]
    assert report["imported"] == 0 and not report["applied"]
    bad = next(d for d in report["details"] if d["name"] == "bad")
    assert (bad["action"], bad["error_kind"]) == ("error", "invalid_value")
    others = [d for d in report["details"] if d["name"] != "bad"]
    assert all(d["message"] == "not applied: the import failed on 'bad'" for d in others)
    assert revision_of(server, fresh) == before
    assert await fresh.get_variable("temperature") == 0.2
    assert await fresh.get_variable("new_one", default="<absent>") == "<absent>"


async def test_an_existing_value_outside_the_sessions_constraints_fails_the_import(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variable("temperature", "float", 1.5)
    await fresh.register_variable("temperature", "float", 0.2, constraints={"max": 1.0})
    report = await fresh.import_variables(await session.export_variables())
    assert report["error_details"] == ["variable 'temperature': 1.5 is above max 1.0"]
    assert await fresh.get_variable("temperature") == 0.2


async def test_an_import_never_changes_a_type(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variable("n", "float", 1.0)
    await fresh.register_variable("n", "integer", 1)
    report = await fresh.import_variables(await session.export_variables())
    assert "is a integer in the session but a float in the import" in report["error_details"][0]
    assert report["details"][0]["error_kind"] == "type_error"


async def test_dependencies_must_exist_and_close_no_cycle(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variables([
        {"name": "a", "type": "integer", "initial_value": 1},
        {"name": "b", "type": "integer", "initial_value": 2, "dependencies": ["a"]},
    ])
    data = await session.export_variables()

    def dangling(doc: dict[str, Any]) -> None:
        doc["variables"][1]["dependencies"].append({"name": "nowhere"})

    report = await fresh.import_variables(edited(data, dangling))
    assert report["error_details"] == [
        "variable 'b' depends on 'nowhere', which is neither in the import nor in the session"
    ]

    def cycle(doc: dict[str, Any]) -> None:
        doc["variables"][0]["dependencies"] = [{"name": "b"}]

    report = await fresh.import_variables(edited(data, cycle))
    assert report["error_details"] == ["dependency would create a cycle: b -> a -> b"]
    assert await fresh.list_variables() == []

    # A dependency on a variable the session has (not in the file) is fine.
    await fresh.register_variable("a", "integer", 10)
    only_b = await session.export_variables(filter_pattern="b")
    report = await fresh.import_variables(only_b)
    assert report["errors"] == 0 and report["dependencies_added"] == 1
    assert [d["name"] for d in await fresh.get_dependencies("b")] == ["a"]


async def test_malformed_history_is_refused(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variable("x", "integer", 1, constraints={"max": 10})
    await session.set_variable("x", 2)
    await session.set_variable("x", 3)
    data = await session.export_variables(include_history=True)

    def gap(doc: dict[str, Any]) -> None:
        del doc["variables"][0]["history"][1]

    report = await fresh.import_variables(edited(data, gap))
    assert report["error_details"] == [
        "variable 'x': history entry 1: versions must be consecutive, oldest first "
        "(version 3 follows 1)"
    ]

    def bad_old_value(doc: dict[str, Any]) -> None:
        doc["variables"][0]["history"][0]["value"] = 99

    report = await fresh.import_variables(edited(data, bad_old_value))
    assert report["error_details"] == [
        "variable 'x': history entry 0 (version 1): 99 is above max 10"
    ]

    def short(doc: dict[str, Any]) -> None:
        doc["variables"][0]["version"] = 4

    report = await fresh.import_variables(edited(data, short))
    assert "history ends at version 3 but the variable is at version 4" in (
        report["error_details"][0])
    assert await fresh.list_variables() == []


async def test_duplicate_names_are_refused(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variable("x", "integer", 1)

    def twice(doc: dict[str, Any]) -> None:
        doc["variables"].append(doc["variables"][0])

    report = await fresh.import_variables(edited(await session.export_variables(), twice))
    assert report["error_details"] == ["variable 'x' appears more than once in the import"]


async def test_a_variable_under_optimization_is_not_overwritten(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variable("t", "float", 0.5)
    await fresh.register_variable("t", "float", 0.1)
    sid = fresh.session_id
    client = fresh._client_id  # a lease needs an attached holder
    server.call(lambda: server.store.start_optimization(
        sid, "t", optimizer_type="random", client_id=client))
    report = await fresh.import_variables(await session.export_variables())
    assert report["details"][0]["error_kind"] == "locked"
    assert "locked for optimization" in report["error_details"][0]
    # keep does not touch it, so the lease is no obstacle.
    assert (await fresh.import_variables(await session.export_variables(),
                                         merge_strategy="keep"))["errors"] == 0


# -------------------------------------------------------------------------- refusals


async def test_pickle_is_refused_unless_trusted(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    await session.register_variable("x", "integer", 1)
    data = await session.export_variables("pickle")
    with pytest.raises(ValueError, match=r"unpickling runs code .* trusted=True"):
        await fresh.import_variables(data, "pickle")
    assert await fresh.list_variables() == []
    assert (await fresh.import_variables(data, "pickle", trusted=True))["imported"] == 1


@pytest.mark.parametrize("format", ["json", "yaml", "parquet"])
async def test_a_newer_format_version_is_refused(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, format: str
) -> None:
    await session.register_variable("x", "integer", 1)
    doc = exchange.read_document(await session.export_variables("json"), "json")
    doc["format_version"] = 2
    data = exchange.write_document(doc, format)
    with pytest.raises(ValueError, match="format_version 2, newer than this dspex-rx reads "
                                         r"\(up to 1\); upgrade"):
        await fresh.import_variables(data, format)


# Guards issue #17: files with format_version 0, -1, 2 and 99 were all imported.
@pytest.mark.parametrize("format", ["json", "yaml", "parquet", "pickle"])
@pytest.mark.parametrize(("version", "refusal"), [
    (0, r"'format_version' must be a positive integer, got 0$"),
    (-1, r"'format_version' must be a positive integer, got -1$"),
    (2, r"format_version 2, newer than this dspex-rx reads \(up to 1\); upgrade"),
    (99, r"format_version 99, newer than this dspex-rx reads \(up to 1\); upgrade"),
])
async def test_an_unknown_format_version_is_refused_and_nothing_is_imported(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, format: str,
    version: int, refusal: str,
) -> None:
    await session.register_variable("x", "integer", 1)
    doc = exchange.read_document(await session.export_variables("json"), "json")
    doc["format_version"] = version
    data = exchange.write_document(doc, format)
    with pytest.raises(exchange.ExportFormatError, match=refusal):
        await fresh.import_variables(data, format, trusted=True)
    assert await fresh.list_variables() == []


# Guards: the ImportError said pip install 'dspex-rx[parquet]', but no index has dspex-rx.
async def test_a_missing_pyarrow_names_the_install_command_that_works_from_a_checkout(
    session: dspex_rx.SessionContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError) as info:
        await session.export_variables("parquet")
    assert str(info.value).endswith("from the dspex-rx checkout (the folder with "
                                    "pyproject.toml): pip install -e '.[parquet]'")
    assert "dspex-rx[parquet]" not in str(info.value)
    with pytest.raises(ImportError, match="needs pyarrow"):
        await session.import_variables(b"PAR1", "parquet")


async def test_an_unknown_format_is_refused(session: dspex_rx.SessionContext) -> None:
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        await session.export_variables("csv")


def _json_export() -> bytes:
    doc = {"format": "dspex-rx/variables", "format_version": 1, "variables": [
        {"name": "x", "type": "integer", "value": 1, "version": 1}]}
    return json.dumps(doc).encode()


def _parquet_export() -> bytes:
    return exchange.write_document(exchange.read_document(_json_export(), "json"), "parquet")


GARBAGE = [
    ("json", b"\x00\xffgarbage", "JSON import: the data is not UTF-8 text"),
    ("json", _json_export()[:40], "JSON import: not valid JSON .*truncated"),
    ("json", b"[1, 2]", "JSON import: not a dspex-rx export"),
    ("json", b"", "JSON import: the data is empty"),
    ("json", _json_export().replace(b'"version": 1}', b'"version": "abc"}'),
     r"JSON import: variables\[0\] \('x'\).version: expected a 64-bit integer, got str 'abc'"),
    ("json", _json_export().replace(b'"value": 1', b'"valeu": 1'),
     r"JSON import: variables\[0\] \('x'\): unknown field\(s\) 'valeu'"),
    ("json", _json_export().replace(b'"value": 1', b'"value": {"$dspex": "ndarray", '
                                    b'"dtype": "int8", "shape": [3], "data": "AAA="}'),
     r"variables\[0\] \('x'\).value: array of dtype int8 and shape \(3,\) needs 3 bytes, got 2"),
    ("json", _json_export().replace(b'"integer"', b'"integr"'),
     r"JSON import: variables\[0\] \('x'\).type: unknown variable type 'integr'"),
    ("yaml", b"format: [unclosed", "YAML import: not valid YAML"),
    ("yaml", b"\tjust: garbage: here", "YAML import: not valid YAML"),
    ("yaml", b"- 1\n- 2\n", "YAML import: not a dspex-rx export"),
    ("parquet", b"not parquet at all", "Parquet import: not a readable Parquet file"),
    ("parquet", _parquet_export()[:-20], "Parquet import: not a readable Parquet file"),
    ("parquet", _json_export(), "Parquet import: not a readable Parquet file"),
    ("pickle", b"\x80\x05garbage", "pickle import: not a readable pickle"),
    ("pickle", pickle.dumps([1, 2]), "pickle import: not a dspex-rx export"),
]


@pytest.mark.parametrize(("format", "data", "message"), GARBAGE)
async def test_garbage_is_refused_with_a_message_naming_the_problem(
    session: dspex_rx.SessionContext, server: EmbeddedServer,
    format: str, data: bytes, message: str,
) -> None:
    before = revision_of(server, session)
    with pytest.raises(ValueError, match=message):
        await session.import_variables(data, format, trusted=True)
    assert revision_of(server, session) == before
    assert await session.list_variables() == []


async def test_a_value_of_the_wrong_kind_is_an_entry_error(
    session: dspex_rx.SessionContext,
) -> None:
    report = await session.import_variables(
        _json_export().replace(b'"value": 1', b'"value": "one"')
    )
    assert report["error_details"] == ["variable 'x': expected integer, got str 'one'"]
    assert report["details"][0]["error_kind"] == "type_error"


# ------------------------------------------------------------------- pure pieces


def test_a_stored_unit_vector_is_kept_bit_for_bit() -> None:
    # Normalizing again is not idempotent in float64: the last bit can move.
    moved = 0
    for seed in range(50):
        vector = np.random.default_rng(seed).normal(size=64)
        unit = validate_value("e", "embedding", vector, {"normalize": True})
        moved += unit.tobytes() != validate_value(
            "e", "embedding", unit, {"normalize": True}).tobytes()
        assert validate_stored("e", "embedding", unit, {"normalize": True}).tobytes() == \
            unit.tobytes()
    assert moved > 0, "the case this guards against no longer happens"
    scaled = validate_stored("e", "embedding", np.array([3.0, 4.0]), {"normalize": True})
    assert scaled.tolist() == [0.6, 0.8]


plain = st.recursive(
    st.none() | st.booleans() | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.just("$dspex"), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=plain, meta=st.dictionaries(st.text(max_size=8), plain, max_size=3))
def test_text_formats_hold_any_value_exactly(value: Any, meta: dict[str, Any]) -> None:
    doc = {
        "format": "dspex-rx/variables", "format_version": 1, "exported_at": 0.0,
        "session_id": "s", "revision": 1, "include_history": False,
        "include_dependencies": False,
        "variables": [{"name": "v", "type": "dict", "value": {"x": value}, "constraints": {},
                       "metadata": meta, "description": "", "version": 1, "created_at": 0.0,
                       "updated_at": 0.0, "updated_by": ""}],
    }
    for format in ("json", "yaml"):
        back = exchange.read_document(exchange.write_document(doc, format), format)
        assert_same(back["variables"][0]["value"], {"x": value}, format)
        assert_same(back["variables"][0]["metadata"], meta, format)


def test_parquet_keeps_arrays_as_raw_bytes() -> None:
    import pyarrow.parquet as pq

    doc = exchange.read_document(_json_export(), "json")
    doc["variables"][0].update(type="tensor", value=MASK)
    table = pq.read_table(io.BytesIO(exchange.write_document(doc, "parquet")))
    cell = table.column("value").to_pylist()[0]
    assert (cell["dtype"], cell["shape"], cell["data"]) == ("int8", [2, 3], MASK.tobytes())


async def test_merge_that_changes_nothing_is_no_write_even_under_a_lease(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, server: EmbeddedServer
) -> None:
    await session.register_variable("t", "float", 0.5)
    await fresh.register_variable("t", "float", 0.5)
    sid = fresh.session_id
    client = fresh._client_id  # a lease needs an attached holder
    server.call(lambda: server.store.start_optimization(
        sid, "t", optimizer_type="random", client_id=client))
    data = await session.export_variables(include_history=True)
    report = await fresh.import_variables(data, merge_strategy="merge")
    assert report["errors"] == 0 and report["details"][0]["message"] == "unchanged"
    report = await fresh.import_variables(data, merge_strategy="replace", dry_run=True)
    assert report["details"][0]["error_kind"] == "locked"


async def test_import_summary_counts_errors_as_an_int_as_in_the_spec(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext
) -> None:
    # Issue #12: 'errors' was the list of messages; the spec tests `summary['errors'] == 0`.
    await session.register_variable("ok", "integer", 1)
    await session.register_variable("bad", "float", 5.0)
    await session.register_variable("worse", "float", 6.0)
    data = await session.export_variables()
    summary = await fresh.import_variables(data, dry_run=True)
    assert summary["errors"] == 0 and summary["error_details"] == []
    assert summary["imported"] == 3
    if summary["errors"] == 0:  # the spec's own check
        assert (await fresh.import_variables(data))["errors"] == 0
    await session.set_variable("bad", 7.0)
    await session.set_variable("worse", 8.0)
    await fresh.delete_variable("bad")
    await fresh.delete_variable("worse")
    await fresh.register_variable("bad", "float", 0.0, constraints={"max": 1.0})
    await fresh.register_variable("worse", "float", 0.0, constraints={"max": 1.0})
    summary = await fresh.import_variables(await session.export_variables())
    assert summary["errors"] == 2 and isinstance(summary["errors"], int)
    assert summary["error_details"] == [
        "variable 'bad': 7.0 is above max 1.0", "variable 'worse': 8.0 is above max 1.0"]
    assert summary["imported"] == 0 and not summary["applied"]
    assert await fresh.get_variable("bad") == 0.0  # nothing applied


@pytest.mark.parametrize("format", FORMATS)
async def test_converted_keys_and_torch_origin_export_as_plain_values(
    session: dspex_rx.SessionContext, fresh: dspex_rx.SessionContext, format: str
) -> None:
    # Format version 1 holds plain values: the marks of how a value was written (issue
    # #12) stay out of the file, so a pickle never names dspex_rx classes.
    await session.register_variable("cfg", "dict", {1: "a", "x": {2: 3}})
    await session.register_variable("w", "tensor", TensorDouble(np.arange(3.0)))
    data = await session.export_variables(format)
    if format == "pickle":
        assert b"dspex_rx" not in data
    report = await fresh.import_variables(data, format, trusted=format == "pickle")
    assert report["errors"] == 0 and report["imported"] == 2
    assert await fresh.get_variable("cfg") == {"1": "a", "x": {"2": 3}}
    infos = {i["name"]: i for i in await fresh.list_variables()}
    assert "keys_converted" not in infos["cfg"] and "tensor_origin" not in infos["w"]
    assert type(infos["w"]["value"]) is np.ndarray and infos["w"]["value"].tolist() == [0, 1, 2]
