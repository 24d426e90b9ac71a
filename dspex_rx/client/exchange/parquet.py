"""The Parquet file: one row per variable, arrays as raw bytes, the header in the schema
metadata; needs the optional pyarrow.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from dspex_rx.client.exchange.document import PARQUET_HEADER_KEY, ExportFormatError, Untag
from dspex_rx.client.exchange.tagged import _array, _native, _tag, _untag
from dspex_rx.client.exchange.versions import _format_version, _kind
from dspex_rx.errors import install_hint
from dspex_rx.wire import codec


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(
            "format 'parquet' needs pyarrow, an optional dependency of dspex-rx: "
            f"{install_hint('parquet')}"
        ) from exc
    return pyarrow, pyarrow.parquet


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
