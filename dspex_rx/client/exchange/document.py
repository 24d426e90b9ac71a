"""The export document (format_version 1): its constants, its error, and its conversion
to and from the wire ``VariablesSnapshot``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dspex_rx.errors import DspexError, InvalidValueError
from dspex_rx.v1 import value_pb2
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import (
    DEPENDENCY_FROM_PB,
    DEPENDENCY_TO_PB,
    rules_from_pb,
    seconds,
    timestamp,
    type_from_pb,
    type_to_pb,
)

# The document (format_version 1; ARCHITECTURE.md, "Export and import"):
#   {"format": "dspex-rx/variables", "format_version": 1, "exported_at", "session_id",
#    "revision", "include_history", "include_dependencies",
#    "variables": [{"name", "type", "value", "constraints", "metadata", "description",
#                   "version", "created_at", "updated_at", "updated_by",
#                   "history": [{"version", "value", "updated_at", "updated_by",
#                                "metadata", "revision"}, ...],   # oldest first; optional
#                   "dependencies": [{"name", "type", "metadata"}, ...],  # optional
#                   "access_rules": [{"session_pattern", "permissions": [...],  # optional,
#                                     "conditions": {key: number},  # when it has any
#                                     "claim": int}, ...]}]}  # optional: identity.py
# JSON and YAML hold what they cannot say exactly as tagged objects: an array is
# {"$dspex": "ndarray", "dtype", "shape", "data": base64 of its little-endian C-order
# bytes}, NaN/inf {"$dspex": "float", "value": "nan" | "inf" | "-inf"}, a dict with a
# "$dspex" key of its own {"$dspex": "dict", "items": [[key, value], ...]}. Parquet has
# one row per variable, arrays as raw bytes, access_rules as JSON text (null when there
# are none), the header in the schema metadata; pickle holds the document as Python
# objects. A file without access_rules (written before they existed) reads the same.
FORMAT_NAME = "dspex-rx/variables"
FORMAT_VERSION = 1
FORMATS: tuple[str, ...] = ("json", "yaml", "parquet", "pickle")
TAG = "$dspex"
_LABELS = {"json": "JSON", "yaml": "YAML", "parquet": "Parquet", "pickle": "pickle"}
PARQUET_HEADER_KEY = b"dspex_rx"
# Times are POSIX seconds up to the year 9999 (what a protobuf Timestamp holds).
MAX_SECONDS = 253_402_300_799.0

Untag = Callable[[Any, str], Any]


class ExportFormatError(InvalidValueError):
    """The data is not a readable export: garbage, truncated, the wrong format, a field of
    the wrong kind, or a newer ``format_version``. The message names what was wrong.

    >>> from dspex_rx.client.exchange import read_snapshot
    >>> try:
    ...     read_snapshot(b"{oops", "json")
    ... except ExportFormatError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    JSON import: not valid JSON (Expecting property name ... at line 1 column 2)
    """


# ------------------------------------------------------------------ wire <-> document


def _plain(msg: Any) -> Any:
    # Format version 1 holds plain values: an array from torch is an array, a dict whose
    # keys were converted is a dict (the marks of how a value was written are not kept).
    return codec.present(codec.decode(msg), "numpy")


def snapshot_to_document(msg: pb.VariablesSnapshot) -> dict[str, Any]:
    """The export document (plain Python, arrays as read-only numpy) of a wire snapshot.

    >>> snapshot = pb.VariablesSnapshot(session_id="s1", revision=3)
    >>> item = snapshot.variables.add(name="t", type=type_to_pb("float"), version=1)
    >>> codec.fill(item.value, 0.5)
    >>> document = snapshot_to_document(snapshot)
    >>> document["revision"], document["variables"][0]["value"]
    (3, 0.5)
    """
    variables = []
    for item in msg.variables:
        variable: dict[str, Any] = {
            "name": item.name,
            "type": type_from_pb(item.type),
            "value": _plain(item.value),
            "constraints": codec.decode_map(item.constraints),
            "metadata": codec.decode_map(item.metadata),
            "description": item.description,
            "version": item.version,
            "created_at": seconds(item.created_at),
            "updated_at": seconds(item.updated_at),
            "updated_by": item.updated_by,
        }
        if item.has_history:
            variable["history"] = [
                {
                    "version": entry.version,
                    "value": _plain(entry.value),
                    "updated_at": seconds(entry.updated_at),
                    "updated_by": entry.updated_by,
                    "metadata": codec.decode_map(entry.metadata),
                    "revision": entry.revision,
                }
                for entry in item.history
            ]
        if item.has_dependencies:
            variable["dependencies"] = [
                {
                    "name": dep.name,
                    "type": DEPENDENCY_FROM_PB.get(dep.dependency_type, "data"),
                    "metadata": codec.decode_map(dep.metadata),
                }
                for dep in item.dependencies
            ]
        if item.access_rules:
            variable["access_rules"] = rules_from_pb(item.access_rules)
        variables.append(variable)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "exported_at": seconds(msg.exported_at),
        "session_id": msg.session_id,
        "revision": msg.revision,
        "include_history": msg.include_history,
        "include_dependencies": msg.include_dependencies,
        "variables": variables,
    }


def document_to_snapshot(document: Mapping[str, Any]) -> pb.VariablesSnapshot:
    """The wire snapshot of a checked document (see ``read_document``); a value that cannot
    travel raises an error naming its variable and field.

    >>> snapshot = pb.VariablesSnapshot(revision=3)
    >>> item = snapshot.variables.add(name="t", type=type_to_pb("float"), version=1)
    >>> codec.fill(item.value, 0.5)
    >>> back = document_to_snapshot(snapshot_to_document(snapshot))
    >>> back.variables[0].name, back.variables[0].value == item.value, back.format_version
    ('t', True, 1)
    """
    out = pb.VariablesSnapshot(
        format_version=document["format_version"],
        session_id=document["session_id"],
        revision=document["revision"],
        exported_at=timestamp(document["exported_at"]),
        include_history=document["include_history"],
        include_dependencies=document["include_dependencies"],
    )
    for index, variable in enumerate(document["variables"]):
        where = f"variables[{index}] ({variable['name']!r})"
        msg = out.variables.add(
            name=variable["name"],
            description=variable["description"],
            version=variable["version"],
            created_at=timestamp(variable["created_at"]),
            updated_at=timestamp(variable["updated_at"]),
            updated_by=variable["updated_by"],
        )
        try:
            msg.type = type_to_pb(variable["type"])  # type: ignore[assignment]
        except DspexError as exc:
            raise ExportFormatError(f"{where}.type: {exc.message}") from None
        _fill(msg.value, variable["value"], f"{where}.value")
        msg.constraints.CopyFrom(_map(variable["constraints"], f"{where}.constraints"))
        msg.metadata.CopyFrom(_map(variable["metadata"], f"{where}.metadata"))
        if variable.get("history") is not None:
            msg.has_history = True
            for i, entry in enumerate(variable["history"]):
                item = msg.history.add(
                    version=entry["version"],
                    updated_at=timestamp(entry["updated_at"]),
                    updated_by=entry["updated_by"],
                    revision=entry["revision"],
                )
                _fill(item.value, entry["value"], f"{where}.history[{i}].value")
                item.metadata.CopyFrom(_map(entry["metadata"], f"{where}.history[{i}].metadata"))
        if variable.get("dependencies") is not None:
            msg.has_dependencies = True
            for i, dep in enumerate(variable["dependencies"]):
                kind = DEPENDENCY_TO_PB.get(dep["type"])
                if kind is None:
                    raise ExportFormatError(
                        f"{where}.dependencies[{i}].type: must be one of "
                        f"{', '.join(DEPENDENCY_TO_PB)}, got {dep['type']!r}"
                    )
                msg.dependencies.add(
                    name=dep["name"],
                    dependency_type=kind,
                    metadata=_map(dep["metadata"], f"{where}.dependencies[{i}].metadata"),
                )
        for i, rule in enumerate(variable.get("access_rules") or ()):
            msg.access_rules.add(
                session_pattern=rule["session_pattern"],
                permissions=rule["permissions"],
                conditions=_map(rule["conditions"], f"{where}.access_rules[{i}].conditions"),
                claim=rule.get("claim", 0),
            )
    return out


def _fill(msg: codec.Value, value: Any, where: str) -> None:
    try:
        codec.fill(msg, value)
    except DspexError as exc:
        raise exc.prefixed(where) from None


def _map(value: Mapping[str, Any], where: str) -> value_pb2.MapValue:
    try:
        return codec.encode_map(value)
    except DspexError as exc:
        raise exc.prefixed(where) from None
