"""The format versions a reader accepts: the check of a parsed tree's header, and the reader
of format_version 1 that checks every field into the current document layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from dspex_rx.client.exchange.document import FORMAT_NAME, MAX_SECONDS, ExportFormatError, Untag
from dspex_rx.core.types import INT64_MAX, INT64_MIN


def _format_version(tree: Any) -> int:
    if not isinstance(tree, dict) or tree.get("format") != FORMAT_NAME:
        raise ExportFormatError(
            f"not a dspex-rx export (expected an object with 'format': {FORMAT_NAME!r})"
        )
    version = tree.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportFormatError(f"'format_version' must be a positive integer, got {version!r}")
    if version not in _READERS:
        raise ExportFormatError(
            f"this export has format_version {version}, newer than this dspex-rx reads (up "
            f"to {max(_READERS)}); upgrade dspex-rx to import it"
        )
    return version


# ------------------------------------------------------------ format_version 1


class _Fields:
    # Checks one object of the document: required and optional keys of given kinds.

    def __init__(self, obj: Any, where: str, keys: set[str]) -> None:
        if not isinstance(obj, dict):
            raise ExportFormatError(f"{where}: expected an object, got {_kind(obj)}")
        unknown = sorted(set(map(str, obj)) - keys)
        if unknown:
            raise ExportFormatError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                f"(expected {', '.join(sorted(keys))})"
            )
        self.obj, self.where = obj, where

    def get(self, key: str, kind: str, default: Any = ...) -> Any:
        if key not in self.obj:
            if default is ...:
                raise ExportFormatError(f"{self.where}.{key} is missing")
            return default
        value = self.obj[key]
        ok = _KIND_CHECKS[kind]
        if not ok(value):
            wanted = {
                "str": "a string", "bool": "true or false", "int": "a 64-bit integer",
                "time": "a time in seconds since 1970", "object": "an object",
                "list": "a list",
            }[kind]
            raise ExportFormatError(
                f"{self.where}.{key}: expected {wanted}, got "
                f"{_kind(value)}"
            )
        return float(value) if kind == "time" else value


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool)
    and INT64_MIN <= v <= INT64_MAX,
    "time": lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    and math.isfinite(v) and 0 <= v <= MAX_SECONDS,
    "object": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
}


def _kind(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


_TOP_KEYS = {"format", "format_version", "exported_at", "session_id", "revision",
             "include_history", "include_dependencies", "variables"}
_VARIABLE_KEYS = {"name", "type", "value", "constraints", "metadata", "description",
                  "version", "created_at", "updated_at", "updated_by", "history",
                  "dependencies", "access_rules"}
_HISTORY_KEYS = {"version", "value", "updated_at", "updated_by", "metadata", "revision"}
_DEPENDENCY_KEYS = {"name", "type", "metadata"}
_RULE_KEYS = {"session_pattern", "permissions", "conditions", "claim"}


def _read_v1(tree: dict[str, Any], untag: Untag) -> dict[str, Any]:
    top = _Fields(tree, "the export", _TOP_KEYS)
    document: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": top.get("format_version", "int"),
        "exported_at": top.get("exported_at", "time", 0.0),
        "session_id": top.get("session_id", "str", ""),
        "revision": top.get("revision", "int", 0),
        "include_history": top.get("include_history", "bool", False),
        "include_dependencies": top.get("include_dependencies", "bool", False),
    }
    variables = []
    for index, raw in enumerate(top.get("variables", "list")):
        named = raw.get("name") if isinstance(raw, dict) else None
        where = f"variables[{index}]" + (f" ({named!r})" if isinstance(named, str) else "")
        fields = _Fields(raw, where, _VARIABLE_KEYS)
        name = fields.get("name", "str")
        variable: dict[str, Any] = {
            "name": name,
            "type": fields.get("type", "str"),
            "value": untag(_value(raw, where), f"{where}.value"),
            "constraints": untag(fields.get("constraints", "object", {}), f"{where}.constraints"),
            "metadata": untag(fields.get("metadata", "object", {}), f"{where}.metadata"),
            "description": fields.get("description", "str", ""),
            "version": fields.get("version", "int"),
            "created_at": fields.get("created_at", "time", 0.0),
            "updated_at": fields.get("updated_at", "time", 0.0),
            "updated_by": fields.get("updated_by", "str", ""),
        }
        history = raw.get("history")
        if history is not None:
            entries = fields.get("history", "list")
            variable["history"] = [
                _history_entry(entry, f"{where}.history[{i}]", untag)
                for i, entry in enumerate(entries)
            ]
        dependencies = raw.get("dependencies")
        if dependencies is not None:
            deps = fields.get("dependencies", "list")
            variable["dependencies"] = [
                _dependency(dep, f"{where}.dependencies[{i}]", untag)
                for i, dep in enumerate(deps)
            ]
        if raw.get("access_rules") is not None:
            variable["access_rules"] = [
                _access_rule(rule, f"{where}.access_rules[{i}]")
                for i, rule in enumerate(fields.get("access_rules", "list"))
            ]
        variables.append(variable)
    document["variables"] = variables
    return document


def _value(raw: Mapping[str, Any], where: str) -> Any:
    if "value" not in raw:
        raise ExportFormatError(f"{where}.value is missing")
    return raw["value"]


def _history_entry(raw: Any, where: str, untag: Untag) -> dict[str, Any]:
    fields = _Fields(raw, where, _HISTORY_KEYS)
    return {
        "version": fields.get("version", "int"),
        "value": untag(_value(raw, where), f"{where}.value"),
        "updated_at": fields.get("updated_at", "time", 0.0),
        "updated_by": fields.get("updated_by", "str", ""),
        "metadata": untag(fields.get("metadata", "object", {}), f"{where}.metadata"),
        "revision": fields.get("revision", "int", 0),
    }


def _dependency(raw: Any, where: str, untag: Untag) -> dict[str, Any]:
    fields = _Fields(raw, where, _DEPENDENCY_KEYS)
    return {
        "name": fields.get("name", "str"),
        "type": fields.get("type", "str", "data"),
        "metadata": untag(fields.get("metadata", "object", {}), f"{where}.metadata"),
    }


def _access_rule(raw: Any, where: str) -> dict[str, Any]:
    # The shape only: which permission names and condition keys exist, and what they
    # allow, is the store's to say (access.check_rules), reported as an import error.
    fields = _Fields(raw, where, _RULE_KEYS)
    pattern = fields.get("session_pattern", "str")
    permissions = fields.get("permissions", "list")
    if not all(isinstance(p, str) for p in permissions):
        raise ExportFormatError(
            f"{where}.permissions: expected a list of strings, got {_kind(permissions)}"
        )
    conditions = fields.get("conditions", "object", {})
    for key, value in conditions.items():
        if not isinstance(key, str):
            raise ExportFormatError(
                f"{where}.conditions: keys must be strings, got {_kind(key)}"
            )
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ExportFormatError(
                f"{where}.conditions.{key}: expected a number, got {_kind(value)}"
            )
    claim = fields.get("claim", "int", 0)
    if claim < 0:
        raise ExportFormatError(f"{where}.claim: expected a non-negative integer, got {claim}")
    return {"session_pattern": pattern, "permissions": list(permissions),
            "conditions": dict(conditions), **({"claim": claim} if claim else {})}


_READERS: dict[int, Callable[[dict[str, Any], Untag], dict[str, Any]]] = {1: _read_v1}
