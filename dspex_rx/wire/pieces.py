"""Parsing a large protobuf message in pieces of bounded size, so no single parse holds the
interpreter lock for long; and the one top-level string a caller needs before parsing.

protobuf parses a message in one C call that keeps the GIL: a 6 MB list of a million
values holds it for about 0.2 s, and a server loop waiting for the GIL waits that long.
``merge_in_pieces`` walks the wire format itself and hands protobuf slices of at most
about ``limit`` bytes: a run of consecutive fields is merged into the message (repeated
fields append, singular messages merge: the wire format's own rule for concatenated
messages), and a field too big for one piece is parsed the same way into its sub-message
(a new element for a repeated field). Between pieces other threads get the GIL.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

# The most nested levels of large fields followed (protobuf's own recursion limit).
MAX_PIECE_DEPTH = 100
PIECE_BYTES = 64 * 1024

_LENGTH_DELIMITED = 2


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError(f"varint too long at byte {pos}")


def fields(data: bytes, start: int, end: int) -> Any:
    """Walk the top-level fields of ``data[start:end]``: ``(number, wire_type,
    field_start, value_start, value_end)`` each (the value of a length-delimited field is
    its payload; of others, its bytes). Groups and unknown wire types raise ``DecodeError``.

    >>> [f[:2] for f in fields(b"\\x0a\\x01x\\x10\\x05", 0, 5)]
    [(1, 2), (2, 0)]
    """
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError(f"field number 0 at byte {field_start}")
        if wire_type == 0:
            value_start = pos
            _, pos = _varint(data, pos, end)
        elif wire_type == 1:
            value_start, pos = pos, pos + 8
        elif wire_type == 5:
            value_start, pos = pos, pos + 4
        elif wire_type == _LENGTH_DELIMITED:
            length, value_start = _varint(data, pos, end)
            pos = value_start + length
        else:
            raise DecodeError(f"wire type {wire_type} at byte {field_start} is not supported")
        if pos > end:
            raise DecodeError(f"field {number} at byte {field_start} runs past the end")
        yield number, wire_type, field_start, value_start, pos


def top_level_string(data: bytes, number: int) -> str:
    """The value of top-level string field ``number`` (the last one, as a parse keeps),
    "" when absent or unreadable: cheap, it skips over every other field's payload.

    >>> top_level_string(b"\\x0a\\x03abc\\x12\\x01x", 1)
    'abc'
    """
    found = ""
    try:
        for field_number, wire_type, _, start, end in fields(data, 0, len(data)):
            if field_number == number and wire_type == _LENGTH_DELIMITED:
                found = bytes(data[start:end]).decode("utf-8")
    except (DecodeError, UnicodeDecodeError):
        return ""
    return found


def merge_in_pieces(message: Any, data: bytes, limit: int = PIECE_BYTES) -> None:
    """Merge serialized ``data`` into ``message`` in pieces of about ``limit`` bytes; the
    same message as ``message.MergeFromString(data)``. Bad bytes raise ``DecodeError``.

    >>> from dspex_rx.v1 import value_pb2 as vpb
    >>> whole = vpb.Value(list_value=vpb.ListValue(values=[vpb.Value(int_value=i)
    ...                                                       for i in range(1000)]))
    >>> parsed = vpb.Value()
    >>> merge_in_pieces(parsed, whole.SerializeToString(), limit=100)
    >>> parsed == whole
    True
    """
    try:
        _merge(message, bytes(data), 0, len(data), limit, 0)
    except RecursionError:
        raise DecodeError("the message nests too deeply") from None


def _splittable(field: Any) -> bool:
    return (
        field is not None
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and not field.message_type.GetOptions().map_entry
    )


def _merge(message: Any, data: bytes, start: int, end: int, limit: int, depth: int) -> None:
    if end - start <= limit:
        message.MergeFromString(data[start:end])
        return
    if depth > MAX_PIECE_DEPTH:
        raise DecodeError("the message nests too deeply")
    by_number = message.DESCRIPTOR.fields_by_number
    run = pos = start
    # The walk visits every field of a large message, a million for a list of a million
    # values: the common case (a one-byte key and a one-byte length) is read inline.
    while pos < end:
        field_start = pos
        key = data[pos]
        if key < 0x80 and key & 7 == _LENGTH_DELIMITED and pos + 1 < end:
            length = data[pos + 1]
            if length < 0x80:
                value_start = pos + 2
                pos = value_start + length
                if pos > end:
                    raise DecodeError(f"field at byte {field_start} runs past the end")
                if pos - run >= limit:
                    message.MergeFromString(data[run:pos])
                    run = pos
                continue
        number, wire_type, field_start, value_start, pos = next(fields(data, pos, end))
        field = by_number.get(number)
        if wire_type == _LENGTH_DELIMITED and pos - value_start > limit and _splittable(field):
            if field_start > run:
                message.MergeFromString(data[run:field_start])
            if field.is_repeated:
                sub = getattr(message, field.name).add()
            else:
                sub = getattr(message, field.name)
                # A singular message is present once it is on the wire, even if empty.
                sub.SetInParent()
            _merge(sub, data, value_start, pos, limit, depth + 1)
            run = pos
        elif pos - run >= limit:
            message.MergeFromString(data[run:pos])
            run = pos
    if end > run:
        message.MergeFromString(data[run:end])
