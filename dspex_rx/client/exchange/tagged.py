"""The JSON, YAML and pickle files: a document as a tree of plain values, with what JSON
and YAML cannot say exactly (arrays, NaN/inf, dicts with a tag key) as tagged objects.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from dspex_rx.client.exchange.document import TAG, ExportFormatError, Untag
from dspex_rx.core.types import INT64_MAX
from dspex_rx.errors import DspexError
from dspex_rx.wire import codec


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
    """Python values as a tree JSON and YAML hold exactly (the tags: document.py).

    >>> _tag({"x": float("nan"), "a": np.arange(2, dtype=np.int32)})
    {'x': {'$dspex': 'float', 'value': 'nan'}, 'a': {'$dspex': 'ndarray', 'dtype': 'int32', \
'shape': [2], 'data': 'AAAAAAEAAAA='}}
    """
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


def _native(value: Any, where: str) -> Any:
    return value


def _untag(value: Any, where: str) -> Any:
    """The inverse of ``_tag``: tagged objects back to arrays, non-finite floats, odd dicts;
    ``where`` names the place in errors.

    >>> _untag({"$dspex": "dict", "items": [["$dspex", 1]]}, "value")
    {'$dspex': 1}
    """
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
