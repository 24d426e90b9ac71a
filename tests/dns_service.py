"""Owns the test DNS server: a tiny authoritative responder on 127.0.0.1 (UDP, a free port)
that answers A queries for the names it is given, so a client can resolve a name with
several addresses through a real DNS lookup, without touching /etc/hosts.

    with DnsService({"replicas.dspex.test": ["127.0.0.1", "127.0.0.2"]}) as dns:
        dns.address        # "127.0.0.1:<port>": gRPC's target dns://127.0.0.1:<port>/name:P
        dns.queries        # [("replicas.dspex.test", 1), ...]: every question it was asked

A name it holds: an A query gets every address (one record each), any other type an empty
NOERROR answer (the name exists, without that type). Any other name: NXDOMAIN. Stdlib only.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3

_HEADER = struct.Struct("!HHHHHH")  # id, flags, qd/an/ns/ar counts
_QR, _AA, _RD, _RA = 0x8000, 0x0400, 0x0100, 0x0080
_OPCODE = 0x7800
# An answer's name is the question's: a compression pointer to offset 12, right after the
# header, where the (only) question's name starts.
_NAME_POINTER = 0xC00C


def read_question(message: bytes) -> tuple[str, int, int, int]:
    """The first question of a DNS ``message``: (lowercase name without the final dot,
    qtype, qclass, offset just past the question). ``ValueError`` for a malformed one.

    >>> query = bytes(12) + b"\\x01a\\x04test\\x00" + struct.pack("!HH", TYPE_A, CLASS_IN)
    >>> read_question(query)
    ('a.test', 1, 1, 24)
    """
    if len(message) < _HEADER.size:
        raise ValueError("shorter than a DNS header")
    labels: list[str] = []
    offset = _HEADER.size
    while True:
        if offset >= len(message):
            raise ValueError("the name runs past the message")
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:  # a question's name is never compressed (nothing precedes it)
            raise ValueError("a compressed or extended label in the question")
        labels.append(message[offset:offset + length].decode("ascii").lower())
        offset += length
    if offset + 4 > len(message):
        raise ValueError("the question has no type and class")
    qtype, qclass = struct.unpack_from("!HH", message, offset)
    return ".".join(labels), qtype, qclass, offset + 4


def answer(query: bytes, records: Mapping[str, Sequence[str]], ttl: int) -> bytes | None:
    """The reply to a raw ``query`` from ``records`` (lowercase name -> IPv4 addresses),
    or None for a message that cannot be answered (a reply, or no header).

    >>> query = struct.pack("!HHHHHH", 7, _RD, 1, 0, 0, 0) + b"\\x01a\\x00\\x00\\x01\\x00\\x01"
    >>> reply = answer(query, {"a": ["10.0.0.1", "10.0.0.2"]}, ttl=1)
    >>> struct.unpack_from("!HHHHHH", reply)   # id 7, QR AA RD RA, 1 question, 2 answers
    (7, 34176, 1, 2, 0, 0)
    >>> socket.inet_ntoa(reply[-4:])
    '10.0.0.2'
    """
    if len(query) < _HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(query)
    if flags & _QR:
        return None  # a reply sent to us: never answer one (no loops)
    reply_flags = _QR | _AA | _RA | (flags & (_OPCODE | _RD))
    try:
        if qdcount != 1 or flags & _OPCODE:
            raise ValueError("only a standard query with one question is answered")
        name, qtype, qclass, end = read_question(query)
    except (ValueError, UnicodeDecodeError):
        return _HEADER.pack(ident, reply_flags | RCODE_FORMERR, 0, 0, 0, 0)
    question = query[_HEADER.size:end]
    if name not in records:
        return _HEADER.pack(ident, reply_flags | RCODE_NXDOMAIN, 1, 0, 0, 0) + question
    addresses = records[name] if qtype == TYPE_A and qclass == CLASS_IN else []
    answers = b"".join(
        struct.pack("!HHHIH", _NAME_POINTER, TYPE_A, CLASS_IN, ttl, 4)
        + socket.inet_aton(address)
        for address in addresses
    )
    return _HEADER.pack(ident, reply_flags | RCODE_OK, 1, len(addresses), 0, 0) + question + answers


class DnsService:
    """An authoritative DNS responder for ``records`` (name -> IPv4 addresses) on
    127.0.0.1, served by a thread for as long as the ``with`` block lasts.

    Example: ``with DnsService({"a.test": ["127.0.0.1"]}) as dns:`` answers at
    ``dns.address``; ``dns.queries`` lists (name, qtype) of every question asked.
    """

    def __init__(self, records: Mapping[str, Sequence[str]], ttl: int = 1) -> None:
        for addresses in records.values():
            for address in addresses:
                socket.inet_aton(address)  # IPv4 only: refuse anything else up front
        self.records = {name.lower().rstrip("."): list(addresses)
                        for name, addresses in records.items()}
        self.ttl = ttl
        self.queries: list[tuple[str, int]] = []
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, the authority of a ``dns://`` gRPC target.

        Example: ``f"dns://{dns.address}/replicas.dspex.test:{port}"``.
        """
        if self._socket is None:
            raise RuntimeError("the DNS service is not running")
        host, port = self._socket.getsockname()
        return f"{host}:{port}"

    def __enter__(self) -> DnsService:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._socket is not None:
            self._socket.close()
        self._thread = self._socket = None

    def _serve(self) -> None:
        sock = self._socket
        assert sock is not None
        while not self._stop.is_set():
            # Wakes every 50 ms to see the stop flag: closing a socket another thread
            # blocks on does not wake it on Linux.
            readable, _, _ = select.select([sock], [], [], 0.05)
            if not readable:
                continue
            query, peer = sock.recvfrom(4096)
            try:
                name, qtype, _, _ = read_question(query)
                self.queries.append((name, qtype))
            except (ValueError, UnicodeDecodeError):
                pass
            reply = answer(query, self.records, self.ttl)
            if reply is not None:
                sock.sendto(reply, peer)
