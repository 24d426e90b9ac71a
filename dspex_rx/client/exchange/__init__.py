"""The export/import file formats (JSON, YAML, Parquet, pickle) and the versioned document
they hold; client-side only: the wire carries a typed ``VariablesSnapshot`` either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dspex_rx.client.exchange.document import (
    _LABELS,
    FORMAT_NAME,
    FORMAT_VERSION,
    FORMATS,
    MAX_SECONDS,
    PARQUET_HEADER_KEY,
    TAG,
    ExportFormatError,
    Untag,
    document_to_snapshot,
    snapshot_to_document,
)
from dspex_rx.client.exchange.parquet import _parse_parquet, _pyarrow, _write_parquet
from dspex_rx.client.exchange.tagged import (
    _parse_json,
    _parse_pickle,
    _parse_yaml,
    _write_json,
    _write_pickle,
    _write_yaml,
)
from dspex_rx.client.exchange.versions import _READERS, _format_version
from dspex_rx.errors import DspexError, InvalidValueError, VariableTypeError
from dspex_rx.v1 import variables_pb2 as pb

__all__ = [
    "FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_SECONDS",
    "PARQUET_HEADER_KEY",
    "TAG",
    "ExportFormatError",
    "Untag",
    "check_format",
    "document_to_snapshot",
    "read_document",
    "read_snapshot",
    "snapshot_to_document",
    "write_document",
]


def check_format(format: str) -> str:
    """The format name, checked; ``parquet`` also needs pyarrow (``ImportError`` naming the
    extra to install when it is missing).

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


# ----------------------------------------------------------------------- writing


def write_document(document: Mapping[str, Any], format: str) -> bytes:
    """Serialize an export document in ``format`` (``json``, ``yaml``, ``parquet``,
    ``pickle``).

    >>> from dspex_rx.v1 import variables_pb2 as pb
    >>> document = snapshot_to_document(pb.VariablesSnapshot(revision=3))
    >>> write_document(document, "yaml").splitlines()[:2]
    [b'format: dspex-rx/variables', b'format_version: 1']
    """
    writer = _WRITERS[check_format(format)]
    return writer(document)


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

    >>> read_document(b'{"format": "dspex-rx/variables", "format_version": 1, "variables": []}',
    ...               "json")["revision"]
    0
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

    >>> read_snapshot(b'{"format": "dspex-rx/variables", "format_version": 1, "revision": 7, '
    ...               b'"variables": []}', "json").revision
    7
    """
    document = read_document(data, format, trusted=trusted)
    try:
        return document_to_snapshot(document)
    except DspexError as exc:
        raise exc.prefixed(f"{_LABELS[format]} import") from None


_PARSERS: dict[str, Callable[[bytes], tuple[Any, Untag]]] = {
    "json": _parse_json,
    "yaml": _parse_yaml,
    "parquet": _parse_parquet,
    "pickle": _parse_pickle,
}
