"""The test DNS server answers raw DNS queries as an authoritative server must: every A
record of a name it holds, NXDOMAIN for another name, an empty answer for a type it lacks,
the query's id and question echoed, answers pointing at the question's name."""

from __future__ import annotations

import socket
import struct

import pytest
from dns_service import CLASS_IN, TYPE_A, TYPE_AAAA, DnsService

RECORDS = {"Replicas.Dspex.Test": ["127.0.0.1", "127.0.0.2", "10.1.2.3"]}


def query(ident: int, name: str, qtype: int) -> bytes:
    """A standard query with recursion desired, one question, built by hand."""
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return header + labels + b"\x00" + struct.pack("!HH", qtype, CLASS_IN)


def ask(dns: DnsService, message: bytes) -> bytes:
    host, port = dns.address.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)  # a hang guard: the responder answers at once
        sock.sendto(message, (host, int(port)))
        reply, _ = sock.recvfrom(4096)
    return reply


def parse(reply: bytes, question_length: int) -> tuple[int, int, int, list[tuple[int, str]]]:
    """(id, flags, question count, [(ttl, address)]) of a reply to one question."""
    ident, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", reply)
    assert (nscount, arcount) == (0, 0)
    offset = 12 + question_length
    answers = []
    for _ in range(ancount):
        pointer, rtype, rclass, ttl, length = struct.unpack_from("!HHHIH", reply, offset)
        assert (pointer, rtype, rclass, length) == (0xC00C, TYPE_A, CLASS_IN, 4)
        offset += 12
        answers.append((ttl, socket.inet_ntoa(reply[offset:offset + 4])))
        offset += 4
    assert offset == len(reply)
    return ident, flags, qdcount, answers


def test_an_a_query_gets_every_address_of_the_name_in_order_with_the_question_echoed() -> None:
    with DnsService(RECORDS, ttl=1) as dns:
        message = query(0xBEEF, "replicas.DSPEX.test", TYPE_A)
        reply = ask(dns, message)
    ident, flags, qdcount, answers = parse(reply, len(message) - 12)
    assert ident == 0xBEEF
    assert flags == 0x8000 | 0x0400 | 0x0100 | 0x0080  # QR AA RD RA, NOERROR
    assert qdcount == 1 and reply[12:len(message)] == message[12:]  # as asked, case too
    assert answers == [(1, "127.0.0.1"), (1, "127.0.0.2"), (1, "10.1.2.3")]
    assert dns.queries == [("replicas.dspex.test", TYPE_A)]


def test_an_unknown_name_is_nxdomain_and_a_missing_type_an_empty_answer() -> None:
    with DnsService(RECORDS) as dns:
        unknown = query(1, "other.dspex.test", TYPE_A)
        ident, flags, qdcount, answers = parse(ask(dns, unknown), len(unknown) - 12)
        assert (ident, flags & 0x000F, qdcount, answers) == (1, 3, 1, [])  # NXDOMAIN
        aaaa = query(2, "replicas.dspex.test", TYPE_AAAA)
        ident, flags, qdcount, answers = parse(ask(dns, aaaa), len(aaaa) - 12)
        assert (ident, flags & 0x000F, flags & 0x0400, answers) == (2, 0, 0x0400, [])
        assert dns.queries == [("other.dspex.test", TYPE_A),
                               ("replicas.dspex.test", TYPE_AAAA)]


def test_a_malformed_query_gets_formerr_and_the_responder_keeps_answering() -> None:
    with DnsService(RECORDS) as dns:
        truncated = query(3, "replicas.dspex.test", TYPE_A)[:20]  # the name cut short
        reply = ask(dns, truncated)
        assert struct.unpack_from("!HHHHHH", reply) == (3, 0x8000 | 0x0400 | 0x0100 | 0x0080
                                                        | 1, 0, 0, 0, 0)
        message = query(4, "replicas.dspex.test", TYPE_A)
        assert len(parse(ask(dns, message), len(message) - 12)[3]) == 3


def test_only_ipv4_addresses_are_accepted() -> None:
    with pytest.raises(OSError):
        DnsService({"a.test": ["::1"]})
