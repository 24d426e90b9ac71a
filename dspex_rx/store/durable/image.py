"""The durable image's bookkeeping: which parts of the live state changed since the last
flush, and the row writes (``rows.Put``/``Delete``) that bring the stored rows up to them.

The live state is the memory backend's Session objects; this module only reads them. Tails
(history, evaluations, the commit log) are appended at the end and trimmed at the front, so
a flush writes their new items and deletes the trimmed ones, never the whole tail.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.store.durable.rows import (
    ENTRIES,
    EVALUATIONS,
    HISTORY,
    LOG,
    META,
    RETIRED,
    SESSIONS,
    VARIABLES,
    Delete,
    Op,
    Put,
    dumps,
    session_header,
    variable_row,
)
from dspex_rx.store.state import Session


def tail_table(session: Session, kind: int) -> dict[str, deque[Any]] | None:
    """The session's per-variable tails of ``kind`` (its history or its evaluations);
    None for the log (one tail) and for a kind the rows do not know.

    >>> tail_table(Session("s", {}, 0.0), HISTORY)
    {}
    """
    if kind == HISTORY:
        return session.history
    if kind == EVALUATIONS:
        return session.evaluations
    return None


def live_tail(session: Session, kind: int, var_id: str, *,
              create: bool = False) -> deque[Any] | None:
    """The live items of one tail (the session's log, or a variable's history or
    evaluations), made empty if absent and ``create``; else None if absent, or if
    ``kind`` is unknown.

    >>> session = Session("s", {}, 0.0)
    >>> live_tail(session, HISTORY, "v"), live_tail(session, HISTORY, "v", create=True)
    (None, deque([]))
    """
    if kind == LOG:
        return session.log
    table = tail_table(session, kind)
    if table is None:
        return None
    found = table.get(var_id)
    if found is None and create:
        found = table[var_id] = deque()
    return found


def newest_held(items: Sequence[object], last: object) -> int:
    """The index of ``last`` (the newest item the rows hold of a tail) among the live
    ``items``, searched from the end, where it usually is: the items after it are new.
    -1 when it is not live any more.

    >>> newest_held(["a", "b", "c"], "b"), newest_held(["a"], "z")
    (1, -1)
    """
    for offset, item in enumerate(reversed(items)):
        if item is last:
            return len(items) - 1 - offset
    return -1


@dataclass(slots=True)
class Dirty:
    """What changed in one session since the last flush.

    >>> Dirty().variables
    set()
    """

    header: bool = False
    graph: bool = False
    log: bool = False
    variables: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Tail:
    # What the file holds of one tail: sequence numbers [first, next) and the object the
    # newest row was written from (compared by identity with the live tail's items).
    first: int
    next: int
    last: object


class Image:
    """What the file holds, as far as a flush needs to know: the tails' shadows and the
    retired ids written; ``batch`` turns what changed into statements.

    >>> from dspex_rx.store.state import Session
    >>> image = Image()
    >>> session = Session("s", {}, 0.0)
    >>> ops = image.batch({"s": session}, {"s": Dirty(header=True)}, (), 0, 1, None)
    >>> [(type(op).__name__, op.table) for op in ops]
    [('Put', 'sessions'), ('Put', 'meta'), ('Put', 'meta')]
    """

    def __init__(self) -> None:
        self._tails: dict[tuple[str, int, str], _Tail] = {}
        self._retired: dict[str, tuple[bytes, int]] = {}
        self._retired_ord = 0
        # What the last ``batch`` replaced, so a batch the storage refused can be taken
        # back (``rollback``): each tail's shadow before it (None: it had none), and the
        # retired ids' shadow.
        self._undo: dict[tuple[str, int, str], _Tail | None] = {}
        self._undo_retired: tuple[dict[str, tuple[bytes, int]], int] | None = None
        # Where the tails of a session created again in this batch start numbering: after
        # its old incarnation's rows, which the same batch deletes.
        self._renumber: dict[tuple[str, int, str], int] = {}

    def know(self, session_id: str, kind: int, var_id: str, first: int, next_: int,
             last: object) -> None:
        """Record what the file holds of a tail (as loaded).

        Example: ``image.know("s", HISTORY, "var_t_1", 0, 3, entries[-1])``.
        """
        if next_ > first:
            self._tails[(session_id, kind, var_id)] = _Tail(first, next_, last)

    def know_retired(self, retired: Mapping[str, tuple[bytes, int]], ord_: int) -> None:
        """Record the retired ids the file holds (as loaded).

        Example: ``image.know_retired({"bob": (digest, 7)}, 1)``.
        """
        self._retired = dict(retired)
        self._retired_ord = ord_

    def appended(self, session_id: str, kind: int, var_id: str, seq: int,
                 item: object) -> None:
        """Record that the rows gained a tail item (another writer put it).

        Example: ``image.appended("s", LOG, "", 7, commit)``.
        """
        key = (session_id, kind, var_id)
        tail = self._tails.get(key)
        if tail is None:
            self._tails[key] = _Tail(seq, seq + 1, item)
        else:
            tail.next, tail.last = seq + 1, item

    def trimmed(self, session_id: str, kind: int, var_id: str, seq: int,
                last: object | None) -> None:
        """Record that the rows lost a tail's item ``seq`` from its front (another writer
        deleted it); ``last`` is the newest live item left, None when none is.

        Example: ``image.trimmed("s", HISTORY, "var_t_1", 3, entries[-1])``.
        """
        key = (session_id, kind, var_id)
        tail = self._tails.get(key)
        if tail is None:
            return
        tail.first = seq + 1
        if last is None or tail.first >= tail.next:
            del self._tails[key]

    def set_retired(self, retired: Mapping[str, tuple[bytes, int]]) -> None:
        """Record the retired ids the rows hold now (another writer changed them).

        Example: ``image.set_retired({"bob": (digest, 7)})``.
        """
        self._retired = dict(retired)

    def tails(self) -> list[tuple[tuple[str, int, str], int, int, object]]:
        """Every tail the rows hold: its key (session, kind, variable), the sequence numbers
        ``[first, next)`` held, and the newest item.

        >>> Image().tails()
        []
        """
        return [(key, t.first, t.next, t.last) for key, t in self._tails.items()]

    def rollback(self) -> None:
        """Take the last ``batch`` back: the shadows are again what the rows held before
        it (the storage refused it).

        >>> image = Image(); image.know("s", 3, "", 0, 2, "c2")
        >>> image.batch({}, {}, ["s"], 0, 1, None)[0].table  # the session "s" is deleted
        'sessions'
        >>> image.tails(); image.rollback(); image.tails()
        []
        [(('s', 3, ''), 0, 2, 'c2')]
        """
        for key, old in self._undo.items():
            if old is None:
                self._tails.pop(key, None)
            else:
                self._tails[key] = old
        if self._undo_retired is not None:
            self._retired, self._retired_ord = self._undo_retired
        self._undo, self._undo_retired = {}, None

    def forget_session(self, session_id: str) -> None:
        """Drop the shadows of a removed session's tails.

        Example: ``image.forget_session("s")`` as the session's rows are deleted.
        """
        for key in [k for k in self._tails if k[0] == session_id]:
            del self._tails[key]

    def batch(
        self,
        sessions: Mapping[str, Session],
        dirty: Mapping[str, Dirty],
        gone: Iterable[str],
        revision: int,
        next_id: int,
        retired: Mapping[str, tuple[bytes, int]] | None,
    ) -> list[Op]:
        """The row writes of what changed: removed sessions, then each dirty
        session's header, graph, variables and tails, then the retired ids (when given)
        and the counters. Shadows move to what the writes make the rows.

        Example: ``image.batch(backend.sessions, dirty, gone, 7, 3, None)``.
        """
        out: list[Op] = []
        self._undo, self._undo_retired = {}, None
        self._renumber = {}
        for session_id in dict.fromkeys(gone):
            for key in [k for k in self._tails if k[0] == session_id]:
                self._undo.setdefault(key, self._tails[key])
            again = sessions.get(session_id)
            if again is not None and session_id in dirty:
                self._recreated(out, again, dirty[session_id])
                continue
            self.forget_session(session_id)
            out.append(Delete(SESSIONS, (session_id,)))
            out.append(Delete(VARIABLES, (session_id,), prefix=True))
            out.append(Delete(ENTRIES, (session_id,), prefix=True))
        for session_id, changed in dirty.items():
            session = sessions.get(session_id)
            if session is None:
                continue  # removed after it changed: its rows went with ``gone``
            self._session(out, session, changed)
        if retired is not None:
            self._retired_rows(out, retired)
        out.append(Put(META, ("revision",), str(revision).encode()))
        out.append(Put(META, ("next_id",), str(next_id).encode()))
        return out

    def _recreated(self, out: list[Op], session: Session, changed: Dirty) -> None:
        # A session ended and created again under its id before this flush: its old rows
        # go, but etcd refuses a txn that deletes a range and puts a key inside it, so
        # no delete may cover a row the new session writes. Its header is overwritten;
        # the variable rows are deleted around the new ones; each old tail is deleted
        # up to its end, and the new session's items are numbered after it, so a
        # replica replaying the rows drops the old items before it appends the new.
        sid = session.id
        new = sorted((v for v in changed.variables if v in session.variables),
                     key=lambda v: v.encode("utf-8", "surrogatepass"))
        bounds: list[str | None] = [None, *new, None]
        out.extend(Delete(VARIABLES, (sid,), prefix=True, after=lo, before=hi)
                   for lo, hi in itertools.pairwise(bounds))
        for key in [k for k in self._tails if k[0] == sid]:
            tail = self._tails.pop(key)
            out.append(Delete(ENTRIES, key, below=tail.next))
            self._renumber[key] = tail.next

    def _session(self, out: list[Op], session: Session, changed: Dirty) -> None:
        sid = session.id
        if changed.header or changed.graph:
            out.append(Put(SESSIONS, (sid,), dumps((session_header(session), session.graph))))
        for var_id in changed.variables:
            if var_id in session.variables:
                out.append(Put(VARIABLES, (sid, var_id), dumps(variable_row(session, var_id))))
            else:
                out.append(Delete(VARIABLES, (sid, var_id)))
            self._tail(out, sid, HISTORY, var_id, session.history.get(var_id, ()))
            self._tail(out, sid, EVALUATIONS, var_id, session.evaluations.get(var_id, ()))
        if changed.log:
            self._tail(out, sid, LOG, "", session.log)

    def _tail(self, out: list[Op], sid: str, kind: int, var_id: str,
              items: Sequence[object]) -> None:
        # Find the newest item the file holds among the live ones (from the end: usually
        # a few new ones follow it); the ones after it are new, the ones the file holds
        # before what is still live were trimmed.
        key = (sid, kind, var_id)
        tail = self._tails.get(key)
        self._undo.setdefault(key, tail)
        held = newest_held(items, tail.last) if tail is not None else -1
        new = list(itertools.islice(reversed(items), len(items) - held - 1))[::-1]
        if tail is not None and held < 0:
            # Nothing the file holds is live any more (dropped, or dropped and refilled):
            # delete what it holds, below the new items' numbers (a range over them too
            # is a txn etcd refuses).
            out.append(Delete(ENTRIES, key, below=tail.next))
            first = tail.next
        elif tail is not None:
            first = tail.next - held - 1
            if first > tail.first:
                # From the first row held, not from 0: etcd walks every key ever deleted
                # in a range (until it compacts), so a range from 0 made each trim, and
                # each write, dearer as the store aged.
                out.append(Delete(ENTRIES, key, below=first, since=tail.first))
        else:
            first = self._renumber.get(key, 0)
        start = tail.next if tail is not None else first
        out.extend(Put(ENTRIES, (*key, start + i), dumps(item)) for i, item in enumerate(new))
        if items:
            self._tails[key] = _Tail(first if held >= 0 else start, start + len(new),
                                     items[-1])
        else:
            self._tails.pop(key, None)

    def _retired_rows(self, out: list[Op], retired: Mapping[str, tuple[bytes, int]]) -> None:
        shadow = self._retired
        if self._undo_retired is None:
            self._undo_retired = (dict(shadow), self._retired_ord)
        out.extend(Delete(RETIRED, (sid,)) for sid in shadow if sid not in retired)
        for sid, (digest, claim) in retired.items():
            if shadow.get(sid) != (digest, claim):
                self._retired_ord += 1
                out.append(Put(RETIRED, (sid,), dumps((digest, claim, self._retired_ord))))
        self._retired = dict(retired)
