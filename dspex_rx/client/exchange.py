"""The export/import file formats (JSON, YAML, Parquet, pickle) and the versioned document
they hold; client-side only: the wire carries a typed ``VariablesSnapshot`` either way."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import yaml

from dspex_rx.core.types import INT64_MAX, INT64_MIN
from dspex_rx.errors import DspexError, InvalidValueError, VariableTypeError
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

    Example::

        with pytest.raises(ValueError, match="not valid JSON"):
            exchange.read_snapshot(b"{oops", "json")
    """


def check_format(format: str) -> str:
    """The format name, checked; ``parquet`` also needs pyarrow (``ImportError`` naming the
    extra to install when it is missing).

    Example::

        >>> check_format("yaml")
        'yaml'
    """
    if format not in FORMATS:
        raise InvalidValueError(
            f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}"
        )
    if format == "parquet":
        _pyarrow()
    return format


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(
            "format 'parquet' needs pyarrow, an optional dependency of dspex-rx: "
            "pip install 'dspex-rx[parquet]'"
        ) from exc
    return pyarrow, pyarrow.parquet


# ------------------------------------------------------------------ wire <-> document


def _plain(msg: Any) -> Any:
    # Format version 1 holds plain values: an array from torch is an array, a dict whose
    # keys were converted is a dict (the marks of how a value was written are not kept).
    return codec.present(codec.decode(msg), "numpy")


def snapshot_to_document(msg: pb.VariablesSnapshot) -> dict[str, Any]:
    """The export document (plain Python, arrays as read-only numpy) of a wire snapshot.

    Example::

        document = snapshot_to_document(response.snapshot)
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

    Example::

        snapshot = document_to_snapshot(read_document(data, "json"))
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


# ----------------------------------------------------------------------- writing


def write_document(document: Mapping[str, Any], format: str) -> bytes:
    """Serialize an export document in ``format`` (``json``, ``yaml``, ``parquet``,
    ``pickle``).

    Example::

        data = write_document(snapshot_to_document(snapshot), "yaml")
    """
    writer = _WRITERS[check_format(format)]
    return writer(document)


def _write_json(document: Mapping[str, Any]) -> bytes:
    text = json.dumps(_tag(document), ensure_ascii=False, allow_nan=False, indent=2)
    return (text + "\n").encode("utf-8")


class _YamlDumper(yaml.SafeDumper):
    """SafeDumper, except that strings holding NEL (U+0085) are double-quoted: PyYAML
    writes NEL raw in other styles, where a reader takes it for a line break."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if "\x85" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_YamlDumper.add_representer(str, _represent_str)


def _write_yaml(document: Mapping[str, Any]) -> bytes:
    text = yaml.dump(
        _tag(document), Dumper=_YamlDumper, allow_unicode=True, sort_keys=False,
        default_flow_style=False, width=120,
    )
    return text.encode("utf-8")


def _write_pickle(document: Mapping[str, Any]) -> bytes:
    return pickle.dumps(dict(document), protocol=pickle.HIGHEST_PROTOCOL)


def _tag(value: Any) -> Any:
    # Python values -> a tree JSON and YAML hold exactly (see the module docstring).
    if isinstance(value, np.ndarray):
        dtype, shape, data = codec.array_parts(value)
        return {TAG: "ndarray", "dtype": dtype, "shape": shape,
                "data": base64.b64encode(data).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {TAG: "float", "value": "nan" if math.isnan(value) else
                ("inf" if value > 0 else "-inf")}
    if isinstance(value, Mapping):
        items = {key: _tag(item) for key, item in value.items()}
        if TAG in items:
            return {TAG: "dict", "items": [[key, item] for key, item in items.items()]}
        return items
    if isinstance(value, list | tuple):
        return [_tag(item) for item in value]
    return value


def _parquet_types(pa: Any) -> tuple[Any, Any, Any]:
    cell = pa.struct([
        ("json", pa.string()),
        ("dtype", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("data", pa.binary()),
    ])
    history = pa.list_(pa.struct([
        ("version", pa.int64()),
        ("value", cell),
        ("updated_at", pa.float64()),
        ("updated_by", pa.string()),
        ("metadata", pa.string()),
        ("revision", pa.int64()),
    ]))
    dependencies = pa.list_(pa.struct([
        ("name", pa.string()),
        ("type", pa.string()),
        ("metadata", pa.string()),
    ]))
    return cell, history, dependencies


def _parquet_schema(pa: Any, header: bytes) -> Any:
    cell, history, dependencies = _parquet_types(pa)
    return pa.schema(
        [
            ("name", pa.string()),
            ("type", pa.string()),
            ("value", cell),
            ("constraints", pa.string()),
            ("metadata", pa.string()),
            ("description", pa.string()),
            ("version", pa.int64()),
            ("created_at", pa.float64()),
            ("updated_at", pa.float64()),
            ("updated_by", pa.string()),
            ("history", history),
            ("dependencies", dependencies),
            ("access_rules", pa.string()),
        ],
        metadata={PARQUET_HEADER_KEY: header},
    )


def _cell(value: Any) -> dict[str, Any]:
    # Arrays as raw bytes (Parquet's strength); anything else as tagged JSON text.
    if isinstance(value, np.ndarray):
        dtype, shape, data = codec.array_parts(value)
        return {"json": None, "dtype": dtype, "shape": shape, "data": data}
    return {"json": _json_text(value), "dtype": None, "shape": None, "data": None}


def _json_text(value: Any) -> str:
    return json.dumps(_tag(value), ensure_ascii=False, allow_nan=False)


def _write_parquet(document: Mapping[str, Any]) -> bytes:
    pa, pq = _pyarrow()
    header = {key: value for key, value in document.items() if key != "variables"}
    rows = []
    for variable in document["variables"]:
        history = variable.get("history")
        dependencies = variable.get("dependencies")
        rules = variable.get("access_rules")
        rows.append({
            "name": variable["name"],
            "type": variable["type"],
            "value": _cell(variable["value"]),
            "constraints": _json_text(variable["constraints"]),
            "metadata": _json_text(variable["metadata"]),
            "description": variable["description"],
            "version": variable["version"],
            "created_at": variable["created_at"],
            "updated_at": variable["updated_at"],
            "updated_by": variable["updated_by"],
            "history": None if history is None else [
                {**entry, "value": _cell(entry["value"]),
                 "metadata": _json_text(entry["metadata"])}
                for entry in history
            ],
            "dependencies": None if dependencies is None else [
                {**dep, "metadata": _json_text(dep["metadata"])} for dep in dependencies
            ],
            "access_rules": None if rules is None else _json_text(rules),
        })
    schema = _parquet_schema(pa, json.dumps(header).encode("utf-8"))
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


_WRITERS: dict[str, Callable[[Mapping[str, Any]], bytes]] = {
    "json": _write_json,
    "yaml": _write_yaml,
    "parquet": _write_parquet,
    "pickle": _write_pickle,
}


# ----------------------------------------------------------------------- reading


def read_document(data: bytes, format: str, *, trusted: bool = False) -> dict[str, Any]:
    """Parse and check an export: the document with plain Python values (arrays as
    read-only numpy), in the current layout whatever ``format_version`` it was written
    with. Anything unreadable raises ``ExportFormatError`` (a ``ValueError``) naming the
    problem. Pickle runs code from the data while loading, so it is refused unless
    ``trusted``.

    Example::

        document = read_document(path.read_bytes(), "yaml")
    """
    format = check_format(format)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise VariableTypeError(
            f"import data must be bytes, got {type(data).__name__}"
        )
    data = bytes(data)
    if format == "pickle" and not trusted:
        raise ExportFormatError(
            "refusing to load pickle data: unpickling runs code chosen by whoever wrote the "
            "file; pass trusted=True only for data you wrote yourself or trust as code, or "
            "export in json, yaml or parquet instead"
        )
    try:
        if not data:
            raise ExportFormatError("the data is empty")
        tree, untag = _PARSERS[format](data)
        return _READERS[_format_version(tree)](tree, untag)
    except DspexError as exc:
        raise exc.prefixed(f"{_LABELS[format]} import") from None


def read_snapshot(data: bytes, format: str, *, trusted: bool = False) -> pb.VariablesSnapshot:
    """``read_document`` and ``document_to_snapshot`` in one: the wire snapshot of a file.

    Example::

        snapshot = read_snapshot(b'{"format": ...}', "json")
    """
    document = read_document(data, format, trusted=trusted)
    try:
        return document_to_snapshot(document)
    except DspexError as exc:
        raise exc.prefixed(f"{_LABELS[format]} import") from None


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportFormatError(
            f"the data is not UTF-8 text (byte {exc.start}): is it another "
            "format?"
        ) from None


def _parse_json(data: bytes) -> tuple[Any, Untag]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ExportFormatError(f"an object has the key {key!r} twice")
            out[key] = value
        return out

    try:
        tree = json.loads(_text(data), object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            + ("; the data may be truncated"
               if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated")
               else "")
        ) from None
    except RecursionError:
        raise ExportFormatError("the data nests too deeply") from None
    return tree, _untag


def _parse_yaml(data: bytes) -> tuple[Any, Untag]:
    try:
        tree = yaml.safe_load(_text(data))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ExportFormatError(f"not valid YAML ({problem}{where})") from None
    except RecursionError:
        raise ExportFormatError("the data nests too deeply") from None
    return tree, _untag


def _parse_pickle(data: bytes) -> tuple[Any, Untag]:
    try:
        tree = pickle.loads(data)  # only with trusted=True (read_document)
    except Exception as exc:
        raise ExportFormatError(
            f"not a readable pickle ({type(exc).__name__}: {exc})"
        ) from None
    return tree, _native


def _parse_parquet(data: bytes) -> tuple[Any, Untag]:
    pa, pq = _pyarrow()
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:
        raise ExportFormatError(
            f"not a readable Parquet file ({type(exc).__name__}: {exc})"
        ) from None
    raw = (table.schema.metadata or {}).get(PARQUET_HEADER_KEY)
    if raw is None:
        raise ExportFormatError(
            "not a dspex-rx export (its schema metadata has no "
            f"{PARQUET_HEADER_KEY.decode()!r} header)"
        )
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ExportFormatError("the dspex_rx header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ExportFormatError("the dspex_rx header is not an object")
    _format_version(header)  # before reading columns laid out by that version
    columns = set(table.column_names)
    missing = [
        name for name in _parquet_schema(pa, b"").names
        if name not in columns and name not in _OPTIONAL_COLUMNS
    ]
    if missing:
        raise ExportFormatError(f"missing column(s) {', '.join(missing)}")
    variables = [_parquet_row(row, i) for i, row in enumerate(table.to_pylist())]
    return {**header, "variables": variables}, _native


# Columns a reader does without: null-or-absent means "not exported" (access_rules is
# newer than the first Parquet files of format_version 1).
_OPTIONAL_COLUMNS = ("history", "dependencies", "access_rules")


def _parquet_row(row: dict[str, Any], index: int) -> dict[str, Any]:
    where = f"variables[{index}]"
    out = dict(row)
    out["value"] = _from_cell(row["value"], f"{where}.value")
    out["constraints"] = _from_json_text(row["constraints"], f"{where}.constraints")
    out["metadata"] = _from_json_text(row["metadata"], f"{where}.metadata")
    for key in _OPTIONAL_COLUMNS:
        if out.get(key) is None:
            out.pop(key, None)
    if "access_rules" in out:
        # Plain JSON, checked by the reader like any other format's (no tags in rules).
        out["access_rules"] = _plain_json_text(out["access_rules"], f"{where}.access_rules")
    if isinstance(out.get("history"), list):
        out["history"] = [
            {**entry,
             "value": _from_cell(entry.get("value"), f"{where}.history[{i}].value"),
             "metadata": _from_json_text(entry.get("metadata"), f"{where}.history[{i}].metadata")}
            if isinstance(entry, dict) else entry
            for i, entry in enumerate(out["history"])
        ]
    if isinstance(out.get("dependencies"), list):
        out["dependencies"] = [
            {**dep, "metadata": _from_json_text(dep.get("metadata"),
                                                f"{where}.dependencies[{i}].metadata")}
            if isinstance(dep, dict) else dep
            for i, dep in enumerate(out["dependencies"])
        ]
    return out


def _from_cell(cell: Any, where: str) -> Any:
    if not isinstance(cell, dict):
        raise ExportFormatError(f"{where} is missing")
    if cell.get("data") is not None:
        return _array(cell.get("dtype"), cell.get("shape"), cell["data"], where)
    return _from_json_text(cell.get("json"), where)


def _from_json_text(text: Any, where: str) -> Any:
    if not isinstance(text, str):
        raise ExportFormatError(f"{where} is missing")
    try:
        return _untag(json.loads(text), where)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"{where} is not valid JSON ({exc.msg})") from None


def _plain_json_text(text: Any, where: str) -> Any:
    if not isinstance(text, str):
        raise ExportFormatError(f"{where}: expected JSON text, got {_kind(text)}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"{where} is not valid JSON ({exc.msg})") from None


def _native(value: Any, where: str) -> Any:
    return value


def _untag(value: Any, where: str) -> Any:
    # The inverse of _tag: tagged objects back to arrays, non-finite floats, odd dicts.
    if isinstance(value, list):
        return [_untag(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if TAG not in value:
        return {key: _untag(item, f"{where}.{key}") for key, item in value.items()}
    kind = value[TAG]
    if kind == "ndarray":
        _exact_keys(value, {TAG, "dtype", "shape", "data"}, where)
        text = value["data"]
        if not isinstance(text, str):
            raise ExportFormatError(f"{where}.data: expected base64 text")
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ExportFormatError(f"{where}.data: not valid base64") from None
        return _array(value["dtype"], value["shape"], data, where)
    if kind == "float":
        _exact_keys(value, {TAG, "value"}, where)
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        if value["value"] not in special:
            raise ExportFormatError(
                f"{where}: a tagged float is 'nan', 'inf' or '-inf', got {value['value']!r}"
            )
        return special[value["value"]]
    if kind == "dict":
        _exact_keys(value, {TAG, "items"}, where)
        items = value["items"]
        if not isinstance(items, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
            for pair in items
        ):
            raise ExportFormatError(f"{where}.items: expected a list of [key, value] pairs")
        out: dict[str, Any] = {}
        for key, item in items:
            if key in out:
                raise ExportFormatError(f"{where}: the key {key!r} appears twice")
            out[key] = _untag(item, f"{where}.{key}")
        return out
    raise ExportFormatError(f"{where}: unknown tag {TAG}={kind!r}")


def _exact_keys(value: Mapping[str, Any], keys: set[str], where: str) -> None:
    if set(value) != keys:
        raise ExportFormatError(
            f"{where}: a {value[TAG]} tag has the keys {', '.join(sorted(keys))}, got "
            f"{', '.join(sorted(map(str, value)))}"
        )


def _array(dtype: Any, shape: Any, data: Any, where: str) -> np.ndarray:
    if not isinstance(dtype, str):
        raise ExportFormatError(f"{where}.dtype: expected a dtype name, got {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= INT64_MAX for d in shape
    ):
        raise ExportFormatError(f"{where}.shape: expected a list of sizes, got {shape!r}")
    try:
        return codec.array_from_parts(dtype, shape, bytes(data))
    except DspexError as exc:
        raise ExportFormatError(f"{where}: {exc.message}") from None


_PARSERS: dict[str, Callable[[bytes], tuple[Any, Untag]]] = {
    "json": _parse_json,
    "yaml": _parse_yaml,
    "parquet": _parse_parquet,
    "pickle": _parse_pickle,
}


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
