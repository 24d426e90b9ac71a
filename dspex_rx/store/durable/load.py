"""Rows back into live state: Session objects, variable owners, counters and retired ids,
and the image's shadows of what the rows hold.

Clients recorded as attached get a fresh heartbeat window (``last_seen`` = now): they
re-attach or expire as after a network cut.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.store.durable.image import Image, tail_table
from dspex_rx.store.durable.rows import (
    ENTRIES,
    LOG,
    META,
    RETIRED,
    SESSIONS,
    TABLES,
    VARIABLES,
    decode_key,
    loads,
)
from dspex_rx.store.state import ClientLease, Session


@dataclass(slots=True)
class Loaded:
    """Everything a set of rows holds, as live state.

    >>> Loaded().revision
    0
    """

    sessions: dict[str, Session] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    revision: int = 0
    next_id: int = 1
    # Retired ids, oldest first: id -> (token digest, claim).
    retired: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    image: Image = field(default_factory=Image)


class CorruptRow(Exception):
    """A row the server cannot read back (something else changed the stored rows).

    >>> str(CorruptRow("sessions", "s"))
    "('sessions', 's')"
    """


def _load(data: bytes, table: str, key: object) -> Any:
    try:
        return loads(data)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError,
            ValueError, IndexError) as exc:
        raise CorruptRow(table, key) from exc


def row_key(raw_key: bytes) -> tuple[str, tuple[str | int, ...]]:
    """A stored row's table and key parts; ``CorruptRow`` for a key this server does not
    write (a load refuses it, a replica's replay falls back to a full read).

    >>> row_key(b"sessions\\x00s")
    ('sessions', ('s',))
    """
    try:
        return decode_key(raw_key)
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise CorruptRow("?", raw_key) from exc


def load(rows: Iterable[tuple[bytes, bytes]], now: float | None) -> Loaded:
    """Live state from every stored row (key, value), given in key order; ``now`` is the
    start time every client's heartbeat window begins at (None: as stored).

    >>> load([], 0.0).sessions
    {}
    """
    by_table: dict[str, list[tuple[tuple[str | int, ...], bytes]]] = {t: [] for t in TABLES}
    for raw_key, value in rows:
        table, key = row_key(bytes(raw_key))
        if table not in by_table:
            raise CorruptRow(table, key)
        by_table[table].append((key, bytes(value)))
    out = Loaded()
    meta = {key[0]: value for key, value in by_table[META]}
    try:
        out.revision = int(meta.get("revision", b"0"))
        out.next_id = int(meta.get("next_id", b"1"))
    except ValueError as exc:
        raise CorruptRow(META, "revision/next_id") from exc
    for (sid, *_), value in by_table[SESSIONS]:
        header, graph = _load(value, SESSIONS, sid)
        out.sessions[str(sid)] = _session(str(sid), header, graph, now)
    for (sid, var_id, *_), value in by_table[VARIABLES]:
        session = _owner(out, VARIABLES, sid, var_id)
        _variable(session, str(var_id), _load(value, VARIABLES, var_id))
        out.owners[str(var_id)] = str(sid)
    _tails(out, by_table[ENTRIES])
    retired = []
    for (sid, *_), value in by_table[RETIRED]:
        digest, claim, order = _load(value, RETIRED, sid)
        retired.append((order, str(sid), bytes(digest), int(claim)))
    retired.sort()
    out.retired = {sid: (digest, claim) for _, sid, digest, claim in retired}
    out.image.know_retired(out.retired, retired[-1][0] if retired else 0)
    return out


def _owner(out: Loaded, table: str, sid: object, what: object) -> Session:
    session = out.sessions.get(str(sid))
    if session is None:
        raise CorruptRow(table, f"{sid}/{what} (no such session)")
    return session


def _session(sid: str, header: dict[str, Any], graph: Any, now: float | None) -> Session:
    # ``now``: a restart's time, from which every client gets a fresh heartbeat window;
    # None (a replica applying another's rows) keeps each client's last heartbeat.
    session = Session(
        sid, header["metadata"], header["created_at"], revision=header["revision"],
        metadata_size=header["metadata_size"], token=header["token"], claim=header["claim"],
        incarnation=header["incarnation"], log_floor=header["log_floor"], graph=graph,
    )
    session.clients = {cid: ClientLease(kept[0], kept[1], kept[2] if now is None else now)
                       for cid, kept in header["clients"].items()}
    # A session idle before the restart stays idle; its wait starts again at the restart
    # (time the server was down does not count against it).
    idle = header.get("idle_since")
    session.idle_since = idle if now is None or idle is None else now
    return session


def _variable(session: Session, var_id: str, row: tuple[Any, ...]) -> None:
    # Rows written before derivation leases have five parts.
    record, rules, fixed, lease, recent, *later = row
    derivation = later[0] if later else None
    session.variables[var_id] = record
    session.names[record.name] = var_id
    if rules:
        session.rules[var_id] = rules
    if fixed:
        session.fixed[var_id] = fixed
    if lease is not None:
        session.leases[var_id] = lease
        if lease.active:
            session.running[var_id] = lease
    if recent:
        session.recent_leases[var_id] = deque(recent)
    if derivation is not None:
        session.derivations[var_id] = derivation


def _tails(out: Loaded, rows: list[tuple[tuple[str | int, ...], bytes]]) -> None:
    # Rows come in key order: each tail's items together, by sequence number.
    current: tuple[str | int, ...] | None = None
    items: deque[Any] = deque()
    first = last = 0
    for key, value in rows:
        tail, seq = key[:3], int(key[3])
        if tail != current:
            if current is not None:
                _place(out, current, items, first, last)
            current, items, first = tail, deque(), seq
        items.append(_load(value, ENTRIES, key))
        last = seq
    if current is not None:
        _place(out, current, items, first, last)


def _place(out: Loaded, key: tuple[str | int, ...], items: deque[Any], first: int,
           last: int) -> None:
    sid, kind, var_id = str(key[0]), int(key[1]), str(key[2])
    session = _owner(out, ENTRIES, sid, f"{kind}/{var_id}")
    table = tail_table(session, kind)
    if kind == LOG:
        session.log = items
    elif table is not None:
        table[var_id] = items
    else:
        raise CorruptRow(ENTRIES, f"{sid}/{kind}/{var_id} (unknown kind)")
    out.image.know(sid, kind, var_id, first, last + 1, items[-1])
