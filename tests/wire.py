"""Hand-made wire bytes for hostile-input tests: messages protobuf's own encoder would
never produce (bad UTF-8, nesting past every limit), sent through a raw ``Transport``."""

from __future__ import annotations

from typing import Any

from dspex_rx.client.transport import Transport
from dspex_rx.server import SERVICE_NAME


class Raw:
    """Bytes that pass for a message: ``Transport`` calls ``SerializeToString``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def flag(number: int, value: int = 1) -> bytes:
    """A varint field."""
    return varint(number << 3) + varint(value)


def nested_list(depth: int, leaf: bytes = field(4, b"x")) -> bytes:
    """A Value: ``depth`` lists around a string (list_value = 6, ListValue.values = 1)."""
    value = leaf
    for _ in range(depth):
        value = field(6, field(1, value))
    return value


def nested_map(depth: int, leaf: bytes = field(4, b"x")) -> bytes:
    """A Value: ``depth`` maps around a string (map_value = 7, entries = 1, key/value)."""
    value = leaf
    for _ in range(depth):
        value = field(7, field(1, field(1, b"k") + field(2, value)))
    return value


async def raw_unary(transport: Transport, method: str, data: bytes, response_type: type,
                    **options: Any) -> object:
    """A unary call with hand-made bytes; ``options`` (``metadata=`` with the session
    token, ``timeout=``) go to ``Transport.unary``."""
    return await transport.unary(f"/{SERVICE_NAME}/{method}", Raw(data),  # type: ignore[arg-type]
                                 response_type, **options)
