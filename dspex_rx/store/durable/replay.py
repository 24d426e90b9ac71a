"""Another writer's row changes applied to the live state in place (a replica catching up
from its watch), with the image's shadows kept true, and the new commits to tell watchers.

The rows are the ones ``image.Image.batch`` writes, in the order it writes them: a
session's row before its variables', a tail's deletes before its puts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.store.durable.image import Image, live_tail, tail_table
from dspex_rx.store.durable.load import CorruptRow, _load, _session, _variable, row_key
from dspex_rx.store.durable.rows import (
    ENTRIES,
    HISTORY,
    LOG,
    META,
    RETIRED,
    SESSIONS,
    VARIABLES,
)
from dspex_rx.store.records import Commit
from dspex_rx.store.state import Session, TailChange

# How many parts each table's keys have (the meta rows are told apart by name).
_PARTS = {SESSIONS: 1, VARIABLES: 2, ENTRIES: 4, RETIRED: 1}


@dataclass(slots=True)
class Replayed:
    """What applying a batch of rows changed beyond the sessions themselves.

    >>> Replayed().commits
    []
    """

    # New commits, in order, with the session they belong to.
    commits: list[tuple[Session, Commit]] = field(default_factory=list)
    # Sessions that went (their watchers hear None), the ids of those whose rows changed
    # and of those that are new (their accounts are computed whole).
    gone: list[Session] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    fresh: set[str] = field(default_factory=set)
    # How each history (by session, then variable) and each log moved: the accounts
    # follow these instead of recounting every entry of the session.
    history: dict[str, dict[str, TailChange]] = field(default_factory=dict)
    log: dict[str, TailChange] = field(default_factory=dict)
    revision: int | None = None
    next_id: int | None = None
    # The retired ids that changed (None: deleted), when any did.
    retired: dict[str, tuple[bytes, int] | None] = field(default_factory=dict)
    # Each session's revision before the replay raised it (what its watchers were told):
    # where a full read's catch-up tells them from if applying fails half-way.
    told: dict[str, int] = field(default_factory=dict)


def replay(
    sessions: dict[str, Session], owners: dict[str, str], image: Image,
    changes: list[tuple[bool, bytes, bytes]], out: Replayed | None = None,
) -> Replayed:
    """Apply ``(is_put, key, value)`` row changes, in order, to ``sessions`` and ``owners``
    (and the image's shadows); returns what else changed (``out``, when given: the
    caller keeps it if this raises).

    >>> from dspex_rx.store.durable.rows import encode_key
    >>> out = replay({}, {}, Image(), [(True, encode_key(META, ("revision",)), b"3")])
    >>> out.revision
    3
    """
    out = Replayed() if out is None else out
    for is_put, raw_key, value in changes:
        # A key or counter this server never wrote is a row it cannot apply, as at load
        # (a ValueError here used to end the replica's watch for good).
        table, key = row_key(raw_key)
        if table != META and len(key) != _PARTS.get(table):
            raise CorruptRow(table, key)  # (an unknown table too)
        if table == META:
            try:
                number = int(value) if is_put else 0
            except ValueError as exc:
                raise CorruptRow(META, key) from exc
            if key == ("revision",):
                out.revision = number
            elif key == ("next_id",):
                out.next_id = number
        elif table == SESSIONS:
            out.touched.add(str(key[0]))
            _session_row(sessions, owners, image, out, str(key[0]), is_put, value)
        elif table == VARIABLES:
            out.touched.add(str(key[0]))
            _variable_row(sessions, owners, str(key[0]), str(key[1]), is_put, value)
        elif table == ENTRIES:
            out.touched.add(str(key[0]))
            _entry_row(sessions, image, out, key, is_put, value)
        elif table == RETIRED:
            sid = str(key[0])
            if is_put:
                digest, claim, _ = _load(value, RETIRED, sid)
                out.retired[sid] = (bytes(digest), int(claim))
            else:
                out.retired[sid] = None
    return out


def _session_row(sessions: dict[str, Session], owners: dict[str, str], image: Image,
                 out: Replayed, sid: str, is_put: bool, value: bytes) -> None:
    session = sessions.get(sid)
    fresh = None
    if is_put:
        header, graph = _load(value, SESSIONS, sid)
        fresh = _session(sid, header, graph, None)  # clients' heartbeats as stored
    # A header of another incarnation: the session ended and was created again in that
    # one write (its header row overwritten, never deleted: etcd refuses a txn that
    # deletes a key and puts it), so its watchers hear that it went.
    if session is not None and (fresh is None or fresh.incarnation != session.incarnation):
        del sessions[sid]
        for var_id in session.variables:
            owners.pop(var_id, None)
        image.forget_session(sid)
        out.gone.append(session)
        session = None
    if fresh is None:
        return
    if session is None:
        sessions[sid] = fresh
        out.fresh.add(sid)
        return
    # The same object stays (watchers and the engine hold it); its header changes.
    for name in ("metadata", "created_at", "metadata_size", "token", "claim",
                 "incarnation", "log_floor", "graph", "idle_since", "clients"):
        setattr(session, name, getattr(fresh, name))
    out.told.setdefault(sid, session.revision)
    session.revision = max(session.revision, fresh.revision)


def _variable_row(sessions: dict[str, Session], owners: dict[str, str], sid: str,
                  var_id: str, is_put: bool, value: bytes) -> None:
    session = sessions.get(sid)
    if session is None:
        if not is_put:
            return  # its session went first, in the same write
        raise CorruptRow(VARIABLES, f"{sid}/{var_id} (no such session)")
    old = session.variables.pop(var_id, None)
    if old is not None:
        session.names.pop(old.name, None)
    for table in (session.rules, session.fixed, session.leases, session.running,
                  session.recent_leases, session.derivations):
        table.pop(var_id, None)
    if is_put:
        _variable(session, var_id, _load(value, VARIABLES, var_id))
        owners[var_id] = sid
    else:
        owners.pop(var_id, None)


def _entry_row(sessions: dict[str, Session], image: Image, out: Replayed,
               key: tuple[str | int, ...], is_put: bool, value: bytes) -> None:
    sid, kind, var_id, seq = str(key[0]), int(key[1]), str(key[2]), int(key[3])
    session = sessions.get(sid)
    if session is None:
        if not is_put:
            return  # its session went first, in the same write
        raise CorruptRow(ENTRIES, f"{sid}/{kind}/{var_id} (no such session)")
    items = _tail(session, kind, var_id)
    change = _change(out, sid, kind, var_id, items)
    if is_put:
        item = _load(value, ENTRIES, key)
        items.append(item)
        if change is not None:
            change.appended.append(item)
        image.appended(sid, kind, var_id, seq, item)
        if kind == LOG:
            out.told.setdefault(sid, session.revision)
            session.revision = max(session.revision, item.revision)
            out.commits.append((session, item))
        return
    # Deletes trim a tail from its front (or drop it whole, front to back).
    if items:
        dropped = items.popleft()
        if change is not None:
            change.popped.append(dropped)
    image.trimmed(sid, kind, var_id, seq, items[-1] if items else None)
    table = tail_table(session, kind)
    if not items and table is not None:
        table.pop(var_id, None)


def _change(out: Replayed, sid: str, kind: int, var_id: str,
            items: deque[Any]) -> TailChange | None:
    # The first change to a tail in this batch records what it held before.
    if kind == LOG:
        change = out.log.get(sid)
        if change is None:
            change = out.log[sid] = TailChange(len(items), items[-1] if items else None)
        return change
    if kind != HISTORY:
        return None  # evaluations are counted with the session's other state
    by_var = out.history.setdefault(sid, {})
    change = by_var.get(var_id)
    if change is None:
        change = by_var[var_id] = TailChange(len(items), items[-1] if items else None)
    return change


def _tail(session: Session, kind: int, var_id: str) -> deque[Any]:
    found = live_tail(session, kind, var_id, create=True)
    if found is None:
        raise CorruptRow(ENTRIES, f"{session.id}/{kind}/{var_id} (unknown kind)")
    return found


def merge_retired(current: Iterable[tuple[str, tuple[bytes, int]]],
                  changed: Mapping[str, tuple[bytes, int] | None],
                  ) -> dict[str, tuple[bytes, int]]:
    """The retired ids after a replayed write: ``current`` (oldest first) with ``changed``
    applied; a changed one moves last (the newest retired), None removes it.

    >>> merge_retired([("a", (b"x", 1)), ("b", (b"y", 2))], {"a": (b"z", 3), "b": None})
    {'a': (b'z', 3)}
    """
    merged = dict(current)
    for sid, kept in changed.items():
        merged.pop(sid, None)
        if kept is not None:
            merged[sid] = kept
    return merged
