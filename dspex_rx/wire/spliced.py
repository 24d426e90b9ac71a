"""Serializing an answer that carries large values in pieces of bounded work, so no single
protobuf call holds the interpreter lock for long: each large value is encoded from the
Python value in runs of a few thousand leaves, and the answer around it is serialized
field by field with those bytes spliced in where a placeholder stands.

protobuf serializes a message in one C call that keeps the GIL (~40 ms for a list of a
million ints, several times that on a busy machine); a server loop waiting for the GIL
waits that long. The bytes made here parse to the same message (field order aside, which
protobuf ignores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from dspex_rx.core.types import KeysConvertedDict
from dspex_rx.v1 import value_pb2 as vpb
from dspex_rx.wire import codec

# Leaves encoded by one protobuf call at most (a leaf: a scalar, a string, an array).
PIECE_LEAVES = 4096
# A placeholder ``Value`` holds this string and an index into the pieces.
PLACEHOLDER = "\x00dspex-rx-deferred-value:"

_LIST_VALUE = vpb.Value.DESCRIPTOR.fields_by_name["list_value"].number
_MAP_VALUE = vpb.Value.DESCRIPTOR.fields_by_name["map_value"].number
_VALUES = vpb.ListValue.DESCRIPTOR.fields_by_name["values"].number
_ENTRIES = vpb.MapValue.DESCRIPTOR.fields_by_name["entries"].number
_KEYS_CONVERTED = vpb.MapValue.DESCRIPTOR.fields_by_name["keys_converted"].number
_KEY = vpb.MapEntry.DESCRIPTOR.fields_by_name["key"].number
_ENTRY_VALUE = vpb.MapEntry.DESCRIPTOR.fields_by_name["value"].number


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _weight(value: Any, cap: int) -> int:
    # Leaves in ``value``, counted up to ``cap`` (the walk stops there).
    if isinstance(value, list | tuple):
        items: Any = value
    elif isinstance(value, Mapping):
        items = value.values()
    else:
        return 1
    n = 1
    for item in items:
        n += _weight(item, cap - n) if isinstance(item, list | tuple | Mapping) else 1
        if n >= cap:
            break
    return n


def encode_in_pieces(value: Any, leaves: int = PIECE_LEAVES) -> bytes:
    """The serialized wire ``Value`` of a stored value (as ``codec.encode(value)
    .SerializeToString()`` would parse back), made in pieces of at most about ``leaves``
    leaves each.

    >>> data = encode_in_pieces(list(range(10)), leaves=3)
    >>> codec.decode(vpb.Value.FromString(data))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    if isinstance(value, list | tuple) and value:
        return _field(_LIST_VALUE, b"".join(_list_body(value, leaves)))
    if (
        isinstance(value, Mapping) and value
        and all(isinstance(k, str) for k in value)
    ):
        body = b"".join(_map_body(value, leaves))
        if isinstance(value, KeysConvertedDict):
            body += _varint(_KEYS_CONVERTED << 3) + b"\x01"
        return _field(_MAP_VALUE, body)
    return codec.encode(value).SerializeToString()


def _list_body(items: Sequence[Any], leaves: int) -> Any:
    run: list[Any] = []
    weight = 0
    for item in items:
        size = _weight(item, leaves) if isinstance(item, list | tuple | Mapping) else 1
        if size >= leaves:
            if run:
                yield codec.encode(run).list_value.SerializeToString()
                run, weight = [], 0
            yield _field(_VALUES, encode_in_pieces(item, leaves))
            continue
        run.append(item)
        weight += size
        if weight >= leaves:
            yield codec.encode(run).list_value.SerializeToString()
            run, weight = [], 0
    if run:
        yield codec.encode(run).list_value.SerializeToString()


def _map_body(mapping: Mapping[str, Any], leaves: int) -> Any:
    run: dict[str, Any] = {}
    weight = 0
    for key, item in mapping.items():
        size = _weight(item, leaves) if isinstance(item, list | tuple | Mapping) else 1
        if size >= leaves:
            if run:
                yield codec.encode_map(run).SerializeToString()
                run, weight = {}, 0
            entry = _field(_KEY, key.encode("utf-8")) + _field(
                _ENTRY_VALUE, encode_in_pieces(item, leaves)
            )
            yield _field(_ENTRIES, entry)
            continue
        run[key] = item
        weight += size
        if weight >= leaves:
            yield codec.encode_map(run).SerializeToString()
            run, weight = {}, 0
    if run:
        yield codec.encode_map(run).SerializeToString()


def placeholder(msg: vpb.Value, index: int) -> None:
    """Mark ``msg`` as the place of deferred value ``index`` (``serialize_spliced``).

    >>> msg = vpb.Value(); placeholder(msg, 3); msg.string_value[-1]
    '3'
    """
    msg.string_value = f"{PLACEHOLDER}{index}"


def serialize_spliced(message: Any, pieces: Sequence[bytes | None]) -> bytes:
    """``message`` serialized field by field, each placeholder ``Value`` replaced by its
    piece (``None``: the field left out). Sub-messages without placeholders are
    serialized whole: every large value in an answer is a placeholder.

    >>> from dspex_rx.v1 import variables_pb2 as pb
    >>> answer = pb.GetVariableResponse(revision=4)
    >>> placeholder(answer.variable.value, 0)
    >>> data = serialize_spliced(answer, [encode_in_pieces([1, 2])])
    >>> codec.decode(pb.GetVariableResponse.FromString(data).variable.value)
    [1, 2]
    """
    return _spliced(message, pieces) or b""


def _spliced(message: Any, pieces: Sequence[bytes | None]) -> bytes | None:
    if message.DESCRIPTOR is vpb.Value.DESCRIPTOR:
        if message.WhichOneof("kind") == "string_value" and message.string_value.startswith(
            PLACEHOLDER
        ):
            return pieces[int(message.string_value[len(PLACEHOLDER):])]
        return message.SerializeToString()  # type: ignore[no-any-return]
    out = []
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE and not (
            field.message_type.GetOptions().map_entry
        ):
            for item in value if field.is_repeated else (value,):
                body = _spliced(item, pieces)
                if body is not None:
                    out.append(_field(field.number, body))
            continue
        alone = type(message)()
        if field.is_repeated:
            getattr(alone, field.name).extend(value)
        else:
            setattr(alone, field.name, value)
        out.append(alone.SerializeToString())
    return b"".join(out)
