"""Reading the data file back into live state: Session objects, variable owners, counters
and retired ids, and the image's shadows of what the file holds.

Clients recorded as attached get a fresh heartbeat window (``last_seen`` = now): they
re-attach or expire as after a network cut.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.core.graph import DependencyGraph
from dspex_rx.store.sqlite.codec import EVALUATIONS, HISTORY, LOG, loads
from dspex_rx.store.sqlite.image import Image
from dspex_rx.store.state import ClientLease, Session


@dataclass(slots=True)
class Loaded:
    """Everything a data file holds, as live state.

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
    """A row the server cannot read back (the file was changed by something else).

    >>> str(CorruptRow("sessions", "s"))
    "('sessions', 's')"
    """


def _load(data: bytes, table: str, key: str) -> Any:
    try:
        return loads(data)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError,
            ValueError, IndexError) as exc:
        raise CorruptRow(table, key) from exc


def load(db: sqlite3.Connection, now: float) -> Loaded:
    """Read the whole file (one read transaction, so a consistent state).

    Example: ``load(db, time.time()).sessions["s"].revision``.
    """
    out = Loaded()
    db.execute("BEGIN")
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        out.revision = int(meta.get("revision", 0))
        out.next_id = int(meta.get("next_id", 1))
        for sid, header_blob, graph_blob in db.execute("SELECT id, header, graph FROM sessions"):
            out.sessions[sid] = _session(sid, _load(header_blob, "sessions", sid),
                                         _load(graph_blob, "sessions", sid), now)
        for sid, var_id, blob in db.execute("SELECT session, id, row FROM variables"):
            session = out.sessions.get(sid)
            if session is None:
                raise CorruptRow("variables", f"{sid}/{var_id} (no such session)")
            _variable(session, var_id, _load(blob, "variables", var_id))
            out.owners[var_id] = sid
        _tails(db, out)
        for sid, digest, claim in db.execute(
            "SELECT id, digest, claim FROM retired ORDER BY ord"
        ):
            out.retired[sid] = (bytes(digest), int(claim))
        top = db.execute("SELECT max(ord) FROM retired").fetchone()[0] or 0
        out.image.know_retired(out.retired, top)
    finally:
        db.execute("COMMIT")
    return out


def _session(sid: str, header: dict[str, Any], graph: DependencyGraph, now: float) -> Session:
    session = Session(
        sid, header["metadata"], header["created_at"], revision=header["revision"],
        metadata_size=header["metadata_size"], token=header["token"], claim=header["claim"],
        incarnation=header["incarnation"], log_floor=header["log_floor"], graph=graph,
    )
    session.clients = {cid: ClientLease(name, ttl, now)
                       for cid, (name, ttl) in header["clients"].items()}
    if hasattr(session, "idle_since"):
        idle = header.get("idle_since")
        # A session idle before the restart stays idle; its wait starts again at the
        # restart (time the server was down does not count against it).
        session.idle_since = now if idle is not None else None
    return session


def _variable(session: Session, var_id: str, row: tuple[Any, ...]) -> None:
    record, rules, fixed, lease, recent = row
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


def _tails(db: sqlite3.Connection, out: Loaded) -> None:
    rows = db.execute("SELECT session, kind, var, seq, item FROM entries "
                      "ORDER BY session, kind, var, seq")
    current: tuple[str, int, str] | None = None
    items: deque[Any] = deque()
    first = 0
    last_seq = -1
    for sid, kind, var_id, seq, blob in rows:
        key = (sid, kind, var_id)
        if key != current:
            if current is not None:
                _place(out, current, items, first, last_seq)
            current, items, first = key, deque(), seq
        items.append(_load(blob, "entries", f"{sid}/{kind}/{var_id}/{seq}"))
        last_seq = seq
    if current is not None:
        _place(out, current, items, first, last_seq)


def _place(out: Loaded, key: tuple[str, int, str], items: deque[Any], first: int,
           last_seq: int) -> None:
    sid, kind, var_id = key
    session = out.sessions.get(sid)
    if session is None:
        raise CorruptRow("entries", f"{sid}/{kind}/{var_id} (no such session)")
    if kind == HISTORY:
        session.history[var_id] = items
    elif kind == EVALUATIONS:
        session.evaluations[var_id] = items
    elif kind == LOG:
        session.log = items
    else:
        raise CorruptRow("entries", f"{sid}/{kind}/{var_id} (unknown kind)")
    out.image.know(sid, kind, var_id, first, last_seq + 1, items[-1])
