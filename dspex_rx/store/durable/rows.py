"""The store's state as rows of one ordered key-value space, and the two writes a flush is
made of (``Put``, ``Delete``): what a durable backend stores, whatever stores it.

Keys are ``table`` and parts joined by NUL (never in a session or variable id), with
sequence numbers zero-padded, so byte order is the order a tail is read back in. Values
are pickles of the store's own objects: whoever can write the rows can run code in the
server, so they are kept only where the server's own files are.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from dspex_rx.store.state import Session

# The tables, in the order a load applies them (a row refers only to earlier tables').
META, SESSIONS, VARIABLES, ENTRIES, RETIRED = "meta", "sessions", "variables", "entries", "retired"
TABLES = (META, SESSIONS, VARIABLES, ENTRIES, RETIRED)
# The kinds of ``entries`` rows (ordered tails of a session).
HISTORY, EVALUATIONS, LOG = 1, 2, 3
SEP = b"\x00"
_SEQ_DIGITS = 20


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` at a row's key.

    >>> Put(META, ("revision",), b"7").table
    'meta'
    """

    table: str
    key: tuple[str | int, ...]
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete a row, or (``prefix``) every row under a key, or (``below``) the rows under a
    key whose last part is a sequence number below it (and not below ``since``: a range
    from 0 makes etcd walk every row ever deleted in it, until it compacts). With
    ``prefix``, ``after`` and ``before`` (a last key part) narrow it to the rows strictly
    between those two rows: etcd refuses a txn that deletes a range and puts a key
    inside it.

    >>> Delete(ENTRIES, ("s", HISTORY, "var_t_1"), below=4).below
    4
    """

    table: str
    key: tuple[str | int, ...]
    prefix: bool = False
    below: int | None = None
    after: str | None = None
    before: str | None = None
    since: int = 0


Op = Put | Delete


def encode_key(table: str, key: tuple[str | int, ...]) -> bytes:
    """A row's key as bytes, in the space's order.

    >>> encode_key(ENTRIES, ("s", LOG, "", 2))
    b'entries\\x00s\\x00003\\x00\\x0000000000000000000002'
    """
    parts = [table.encode()]
    for part in key:
        if isinstance(part, int):
            parts.append(_int(part, len(parts)))
        else:
            parts.append(part.encode("utf-8", "surrogatepass"))
    return SEP.join(parts)


def _int(part: int, position: int) -> bytes:
    # An entries row's kind (after the table and session: position 2) in 3 digits, its
    # sequence number in 20, so byte order is number order.
    return str(part).zfill(3 if position == 2 else _SEQ_DIGITS).encode()


def prefix_range(table: str, key: tuple[str | int, ...]) -> tuple[bytes, bytes]:
    """The keys of every row under ``key``: ``[start, end)``.

    >>> prefix_range(VARIABLES, ("s",))
    (b'variables\\x00s\\x00', b'variables\\x00s\\x01')
    """
    start = encode_key(table, key) + SEP
    return start, start[:-1] + b"\x01"


def below_range(table: str, key: tuple[str | int, ...], below: int,
                since: int = 0) -> tuple[bytes, bytes]:
    """The keys of the rows under ``key`` whose sequence number is below ``below`` (and
    not below ``since``).

    >>> below_range(ENTRIES, ("s", HISTORY, "v"), 2)[1].endswith(b"00000000000000000002")
    True
    >>> below_range(ENTRIES, ("s", HISTORY, "v"), 9, since=7)[0].endswith(b"0000007")
    True
    """
    start = encode_key(table, key) + SEP
    return start + (_int(since, 4) if since else b""), start + _int(below, 4)


def delete_range(op: Delete) -> tuple[bytes, bytes] | None:
    """The keys a ``Delete`` removes as ``[start, end)``, or None for its one row.

    >>> delete_range(Delete(VARIABLES, ("s",), prefix=True))
    (b'variables\\x00s\\x00', b'variables\\x00s\\x01')
    >>> delete_range(Delete(VARIABLES, ("s", "var_t_1"))) is None
    True
    >>> delete_range(Delete(VARIABLES, ("s",), prefix=True, after="a", before="b"))
    (b'variables\\x00s\\x00a\\x00', b'variables\\x00s\\x00b')
    """
    if op.below is not None:
        return below_range(op.table, op.key, op.below, op.since)
    if op.prefix:
        start, end = prefix_range(op.table, op.key)
        # The row right after ``after`` is ``after`` + NUL (no id holds a NUL).
        if op.after is not None:
            start = encode_key(op.table, (*op.key, op.after)) + SEP
        if op.before is not None:
            end = encode_key(op.table, (*op.key, op.before))
        return start, end
    return None


def decode_key(raw: bytes) -> tuple[str, tuple[str | int, ...]]:
    """A row's table and key parts from its bytes (numbers where the schema has them).

    >>> decode_key(encode_key(ENTRIES, ("s", LOG, "", 2)))
    ('entries', ('s', 3, '', 2))
    """
    table, *parts = raw.split(SEP)
    name = table.decode()
    decoded: list[str | int] = [p.decode("utf-8", "surrogatepass") for p in parts]
    if name == ENTRIES:
        decoded[1], decoded[3] = int(decoded[1]), int(decoded[3])
    return name, tuple(decoded)


def dumps(obj: Any) -> bytes:
    """The stored bytes of a store object.

    >>> loads(dumps({"t": 0.5}))
    {'t': 0.5}
    """
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """A store object from its stored bytes (only ever bytes this server wrote).

    >>> loads(dumps([1, 2]))
    [1, 2]
    """
    return pickle.loads(data)


def session_header(session: Session) -> dict[str, Any]:
    """The stored part of a session beside its variables and tails.

    >>> from dspex_rx.store.state import Session
    >>> session_header(Session("s", {}, 1.0))["created_at"]
    1.0
    """
    return {
        "metadata": session.metadata, "created_at": session.created_at,
        "revision": session.revision, "metadata_size": session.metadata_size,
        "token": session.token, "claim": session.claim, "incarnation": session.incarnation,
        "log_floor": session.log_floor,
        "clients": {cid: (c.name, c.ttl, c.last_seen) for cid, c in session.clients.items()},
        "idle_since": session.idle_since,
    }


def variable_row(session: Session, var_id: str) -> tuple[Any, ...]:
    """A variable's stored row: record, rules, fixed cost, latest and recent leases (one
    pickle, so the latest lease stays the same object as its entry among the recent ones),
    and its derivation lease (None when it has none).

    Example: ``variable_row(session, "var_t_1")[0]`` is its record.
    """
    return (
        session.variables[var_id], session.rules.get(var_id, ()), session.fixed.get(var_id, 0),
        session.leases.get(var_id), list(session.recent_leases.get(var_id, ())),
        session.derivations.get(var_id),
    )
