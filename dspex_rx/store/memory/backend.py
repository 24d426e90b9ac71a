"""MemoryBackend: the Backend over today's in-process state (Session objects in a dict).

Writes are serialised (one open write txn, and the engine never yields), so a commit never
conflicts and ``sync`` has nothing to wait for.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence

from dspex_rx.logs import get_logger
from dspex_rx.store.backend import Backend, ReadTxn, RevisionConflict, WriteTxn
from dspex_rx.store.memory.txn import _apply_change, _apply_graph, _MemoryRead, _MemoryWrite
from dspex_rx.store.records import ChangeEvent, Commit, HistoryEntry, Listener
from dspex_rx.store.state import Session

log = get_logger("dspex_rx.store")


class MemoryBackend(Backend):
    """Sessions, records, the revision counter and the commit logs, in memory.

    >>> from dspex_rx.store.state import Session
    >>> backend = MemoryBackend()
    >>> backend.add_session(Session("s", {}, 0.0))
    >>> with backend.write() as txn:
    ...     commit = txn.commit("s", (), timestamp=1.0)
    >>> commit.revision, backend.revision, len(backend.commits_since("s", 0))
    (1, 1, 1)
    """

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._owners: dict[str, str] = {}
        self._revision = 0
        self._ids = itertools.count(1)
        self._open: _MemoryWrite | None = None
        self._view = _MemoryRead(self)

    @property
    def revision(self) -> int:
        """The newest committed revision.

        >>> MemoryBackend().revision
        0
        """
        return self._revision

    @property
    def sessions(self) -> dict[str, Session]:
        """The live sessions by id (the dict itself).

        >>> MemoryBackend().sessions
        {}
        """
        return self._sessions

    def read(self) -> ReadTxn:
        """A read view at the newest revision; it refuses reads once a commit moved on.

        >>> MemoryBackend().read().revision
        0
        """
        return _MemoryRead(self)

    def write(self) -> WriteTxn:
        """Open the one write txn.

        >>> backend = MemoryBackend(); txn = backend.write(); txn.base_revision
        0
        """
        if self._open is not None:
            raise RuntimeError("a write txn is already open on this backend (one at a time)")
        self._open = _MemoryWrite(self)
        return self._open

    def next_id(self) -> int:
        """The next number of the id sequence.

        >>> backend = MemoryBackend(); backend.next_id(), backend.next_id()
        (1, 2)
        """
        return next(self._ids)

    def add_session(self, session: Session) -> None:
        """Hold a new session.

        >>> backend = MemoryBackend(); backend.add_session(Session("s", {}, 0.0))
        >>> list(backend.sessions)
        ['s']
        """
        self._sessions[session.id] = session

    def remove_session(
        self, session_id: str, *, settle: Callable[[Session], None] | None = None
    ) -> Session:
        """Drop a session and its variables' owners, settle, tell its watchers ``None``.

        >>> backend = MemoryBackend(); backend.add_session(Session("s", {}, 0.0))
        >>> backend.remove_session("s").id
        's'
        """
        session = self._sessions.pop(session_id)
        for var_id in session.variables:
            self._owners.pop(var_id, None)
        if settle is not None:
            settle(session)
        _tell(session, None)
        session.listeners.clear()
        return session

    def commits_since(self, session_id: str, revision: int) -> list[Commit] | None:
        """The logged commits after ``revision``, or None past the log's horizon.

        >>> backend = MemoryBackend(); backend.add_session(Session("s", {}, 0.0))
        >>> backend.commits_since("s", 0)
        []
        """
        session = self._sessions[session_id]
        if revision < session.log_floor:
            return None
        return [c for c in session.log if c.revision > revision]

    def compact(self, session_id: str, through: int) -> list[Commit]:
        """Drop logged commits up to ``through``; a resume from before them gets None.

        >>> backend = MemoryBackend(); backend.add_session(Session("s", {}, 0.0))
        >>> backend.compact("s", 0)
        []
        """
        session = self._sessions[session_id]
        dropped = []
        while session.log and session.log[0].revision <= through:
            dropped.append(session.log.popleft())
        session.log_floor = max(session.log_floor, min(through, session.revision))
        return dropped

    def watch(
        self, session_id: str, listener: Listener, *, foreign: bool = False
    ) -> Callable[[], None]:
        """Add a watcher of the session's commits; returns its remover.

        >>> backend = MemoryBackend(); backend.add_session(Session("s", {}, 0.0))
        >>> stop = backend.watch("s", print); stop()
        """
        session = self._sessions[session_id]
        session.listeners.append(listener)
        if foreign:
            session.foreign_listeners += 1

        def remove() -> None:
            if listener in session.listeners:
                session.listeners.remove(listener)
                if foreign:
                    # A durable backend may have put a stored copy in the session's
                    # place, holding the same list (durable/carry.py): count there.
                    holder = self._sessions.get(session_id)
                    if holder is None or holder.listeners is not session.listeners:
                        holder = session
                    holder.foreign_listeners -= 1

        return remove

    async def sync(self, revision: int) -> None:
        """Memory holds nothing durable: a committed revision is as durable as it gets.

        >>> import asyncio; asyncio.run(MemoryBackend().sync(0))
        """
        if revision > self._revision:
            raise ValueError(f"revision {revision} is not committed (newest {self._revision})")

    def _apply(self, txn: _MemoryWrite, session_id: str, events: Sequence[ChangeEvent],
               timestamp: float, permissions: Sequence[str],
               settle: Callable[[Commit], None] | None) -> Commit:
        if txn.base_revision != self._revision:  # cannot happen while writes are serialised
            raise RevisionConflict(f"the store moved on from revision {txn.base_revision}")
        if txn.mixed or txn.staged_session not in (None, session_id):
            raise ValueError(f"a commit of session {session_id!r} staged another session's")
        session = self._sessions[session_id]
        revision = self._revision + 1
        for var_id, record in txn.staged.items():
            if record is None:
                gone = session.variables.pop(var_id, None)  # None: put and deleted in txn
                if gone is not None:
                    del session.names[gone.name]
                    self._owners.pop(var_id, None)
            else:
                session.variables[var_id] = record
                session.names[record.name] = var_id
                self._owners.setdefault(var_id, session_id)  # an owner never changes
        if txn.graph_ops:
            _apply_graph(session.graph, txn.graph_ops)
        history = session.history
        for _, var_id, change in txn.table_ops or ():
            if type(change) is HistoryEntry:  # every write's: inlined
                kept = history.get(var_id)
                if kept is None:
                    kept = history[var_id] = deque()
                kept.append(change)
            else:
                _apply_change(session, var_id, change)
        for var_id, rules in txn.staged_rules.items():
            if rules:
                session.rules[var_id] = rules
            else:
                session.rules.pop(var_id, None)
        session.revision = self._revision = revision
        commit = Commit(revision, tuple(events), timestamp, session_id, tuple(permissions))
        session.log.append(commit)
        self._open = None
        if settle is not None:
            settle(commit)
        _tell(session, commit)
        return commit


def _tell(session: Session, commit: Commit | None) -> None:
    # Every watcher of the session, in the order they came (a copy: one may leave).
    for listener in list(session.listeners):
        _notify(listener, commit)


def _notify(listener: Listener, commit: Commit | None) -> None:
    try:
        listener(commit)
    except Exception:
        # A broken watcher must not undo or block a committed write.
        log.exception("listener_failed")
