"""The memory account, per session and in total: pinned state must fit the budgets, retention
is evicted oldest first.

Each stored item costs its encoded bytes plus a fixed overhead (``ITEM_OVERHEAD``).

Current values and optimization records are *pinned* and must fit ``max_session_bytes``;
history and the replay log are *retention*, dropped oldest first when the budget needs room.
A component the engine holds (``Accounts``), over the session tables the backend holds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Sequence

from dspex_rx.core.access import AccessRule
from dspex_rx.core.identity import RetiredIds
from dspex_rx.core.limits import Limits, too_many
from dspex_rx.store.backend import Backend
from dspex_rx.store.records import (
    ITEM_OVERHEAD,
    OPTIMIZATION_EVENT,
    ChangeEvent,
    Commit,
    HistoryEntry,
    VariableRecord,
)
from dspex_rx.store.state import ClientLease, Replicated, Session, TailChange


def _event_cost(event: ChangeEvent) -> int:
    # The memory account's charge for one logged event beyond the values it shares with
    # history: the objects of its own metadata (a dependency note, a status dict).
    metadata = event.metadata
    if event.update_type == "dependency_changed":
        extra = len(metadata.get("source_variables", ()))
    elif event.update_type == OPTIMIZATION_EVENT:
        extra = len(metadata) + len(metadata.get("best_metrics") or ())
    else:
        extra = 0
    return ITEM_OVERHEAD + 64 * extra


def _commit_cost(commit: Commit) -> int:
    return ITEM_OVERHEAD + sum(_event_cost(e) for e in commit.events)


def _session_cost(session: Session) -> int:
    return ITEM_OVERHEAD + session.metadata_size


# A retired id beyond its characters: the 32-byte digest of its token, its claim number,
# and the entry holding them (as every item, ITEM_OVERHEAD).
RETIRED_ID_COST = ITEM_OVERHEAD + 32 + 8


def retired_cost(retired: RetiredIds) -> int:
    """What the retired ids cost the store's budget (``max_store_bytes``): per id its
    characters plus ``RETIRED_ID_COST``.

    >>> retired = RetiredIds(10); retired.retire("bob", "bob-token")
    >>> retired_cost(retired) == 3 + RETIRED_ID_COST
    True
    """
    return len(retired) * RETIRED_ID_COST + retired.id_chars


def _client_cost(lease: ClientLease) -> int:
    return ITEM_OVERHEAD + len(lease.name)


def _rules_cost(rules: Iterable[AccessRule]) -> int:
    # What the memory account charges for a variable's access rules (pinned, like
    # constraints): per rule its pattern, permissions and conditions.
    return sum(
        ITEM_OVERHEAD + len(rule.session_pattern) + 16 * len(rule.permissions)
        + 32 * len(rule.conditions)
        for rule in rules
    )


def _recount(session: Session) -> None:
    # A session's account from its state alone (check's arithmetic), with an empty
    # graveyard and its superseded history in supersession order.
    superseded = []
    current = history = entries = 0
    for var_id, kept in session.history.items():
        current += kept[-1].size
        history += sum(e.size for e in kept)
        entries += len(kept)
        superseded += [(after.revision, var_id, before.version)
                       for before, after in itertools.pairwise(kept)]
    session.superseded = deque(sorted(superseded))
    session.current_bytes, session.history_bytes = current, history
    session.history_entries = entries
    session.other_bytes = _other_cost(session)
    session.log_bytes = sum(_commit_cost(c) for c in session.log)
    session.graveyard, session.graveyard_bytes = [], 0


def _other_cost(session: Session) -> int:
    # The session's other_bytes as its state implies them (check and rebuild).
    return (
        _session_cost(session)
        + sum(_client_cost(c) for c in session.clients.values())
        + session.graph.bytes
        + sum(lease.size for kept in session.recent_leases.values() for lease in kept)
        + sum(_rules_cost(rules) for rules in session.rules.values())
        + sum(e.size for kept in session.evaluations.values() for e in kept)
        + sum(session.fixed.values())
    )


class Accounts:
    """The memory accounts of every session the backend holds, and the totals over them.

    The engine charges through it and asks it for room before any write; it evicts
    retention and compacts the backend's logs to stay within the budgets.

    >>> from dspex_rx.core.limits import DEFAULT_LIMITS
    >>> from dspex_rx.store.memory import MemoryBackend
    >>> accounts = Accounts(DEFAULT_LIMITS, MemoryBackend())
    >>> accounts.used_bytes, accounts.pinned_bytes
    (0, 0)
    """

    def __init__(
        self, limits: Limits, backend: Backend, retired: RetiredIds | None = None
    ) -> None:
        self.limits = limits
        self._backend = backend
        # Ended sessions' ids (identity.py): no session's, but the store holds them, so
        # they count toward max_store_bytes (retired_bytes), pinned: only trim drops them.
        self.retired = retired if retired is not None else RetiredIds(limits.max_retired_sessions)
        # The memory accounts of all sessions together (see Session.used / pinned).
        self.used_bytes = 0
        self.pinned_bytes = 0

    @property
    def retired_bytes(self) -> int:
        """What the retired ids cost (``retired_cost``), beside the sessions' accounts.

        Example: ``accounts.retired_bytes`` grows by an id's cost as its session ends.
        """
        return retired_cost(self.retired)

    def forget_session(self, session: Session) -> None:
        """Drop a removed session's account from the totals.

        Example: ``accounts.forget_session(store.session(sid))`` as the session goes.
        """
        self.used_bytes -= session.used
        self.pinned_bytes -= session.pinned

    def charge(self, session: Session, kind: str, delta: int) -> None:
        """Add ``delta`` bytes to one field of a session's account.

        Example: ``accounts.charge(session, "other_bytes", 200)`` charges 200 pinned bytes.
        """
        # Every change to a session's account goes through here, so the store's totals
        # follow. ``kind`` names a byte field of Session; current_bytes is a part of
        # history_bytes (so not added to ``used`` again); it and other_bytes are pinned.
        if not delta:
            return
        setattr(session, kind, getattr(session, kind) + delta)
        if kind != "current_bytes":
            self.used_bytes += delta
        if kind in ("current_bytes", "other_bytes"):
            self.pinned_bytes += delta

    def check_room(self, session: Session, added: int) -> None:
        """Refuse (``ResourceExhaustedError``) pinned growth past the budgets.

        Example: ``accounts.check_room(session, 1024)`` passes while 1 KiB more fits.
        """
        # Refuse, before anything changes, a write after which the pinned bytes (current
        # records and other state) would not fit the budgets. Retention (history, log) is
        # dropped to make room after the write, so it never refuses one.
        if added <= 0:
            return
        limits = self.limits
        after = session.pinned + added
        if after > limits.max_session_bytes:
            raise too_many(
                f"session {session.id!r} would hold {after} bytes of current values and "
                "records", after, "max_session_bytes", limits.max_session_bytes,
            )
        total = self.pinned_bytes + self.retired_bytes + added
        if total > limits.max_store_bytes:
            raise too_many(
                f"the server would hold {total} bytes of current values, records and "
                "retired session ids",
                total, "max_store_bytes", limits.max_store_bytes,
            )

    def make_room(self, session: Session) -> None:
        """Evict retention until the session and the store fit their budgets.

        Example: ``accounts.make_room(session)`` after a commit.
        """
        limits = self.limits
        self._evict(session, limits.max_session_bytes)
        budget = limits.max_store_bytes - self.retired_bytes
        if self.used_bytes > budget:
            # The writer's own retention goes first, then other sessions'.
            for victim in [session, *self._backend.sessions.values()]:
                excess = self.used_bytes - budget
                if excess <= 0:
                    break
                self._evict(victim, victim.used - excess)

    def _evict(self, session: Session, target: int) -> None:
        # Drop retention, oldest first, until the session's account is at most ``target``:
        # values already out of history but still held by the log, then superseded
        # history entries, then log commits. Current records are never dropped.
        while session.used > target:
            if session.graveyard:
                self.trim_log(session, session.graveyard[0][0])
            elif not self._drop_oldest_history(session):
                if not session.log:
                    return
                self.trim_log(session, session.log[0].revision)

    def _drop_oldest_history(self, session: Session) -> bool:
        order = session.superseded
        while order:
            superseded_at, var_id, version = order.popleft()
            entries = session.history.get(var_id)
            if entries is None or len(entries) < 2 or entries[0].version != version:
                continue  # already gone
            entry = entries.popleft()
            self._backend.touch(session.id, var_id)  # changed outside a commit
            session.history_entries -= 1
            self.charge(session, "history_bytes", -entry.size)
            self._bury(session, superseded_at, entry.size)
            return True
        return False

    def _compact_superseded(self, session: Session) -> None:
        def retained(item: tuple[int, str, int]) -> bool:
            entries = session.history.get(item[1])
            return entries is not None and entries[0].version <= item[2] < entries[-1].version

        session.superseded = deque(item for item in session.superseded if retained(item))

    def forget_history(
        self, session: Session, entries: Sequence[HistoryEntry], revision: int
    ) -> None:
        """Release a deleted variable's history once the log no longer holds it.

        Example: ``accounts.forget_history(session, entries, revision)`` on delete.
        """
        # A deleted variable's history: the log holds its values until ``revision``.
        total = sum(e.size for e in entries)
        session.history_entries -= len(entries)
        self.charge(session, "current_bytes", -entries[-1].size)
        self.charge(session, "history_bytes", -total)
        self._bury(session, revision, total)

    def _bury(self, session: Session, release_after: int, size: int) -> None:
        heapq.heappush(session.graveyard, (release_after, size))
        self.charge(session, "graveyard_bytes", size)
        self._release(session)

    def _release(self, session: Session) -> None:
        graveyard = session.graveyard
        while graveyard and graveyard[0][0] <= session.log_floor:
            self.charge(session, "graveyard_bytes", -heapq.heappop(graveyard)[1])

    def trim_log(self, session: Session, through: int) -> None:
        """Compact the session's log through a revision, releasing what only it held.

        Example: ``accounts.trim_log(session, 10)`` drops commits up to revision 10.
        """
        # Drop logged commits up to revision ``through``: a resume from before them gets
        # a resync (the log's contract), and values only they held are released.
        for commit in self._backend.compact(session.id, through):
            self.charge(session, "log_bytes", -_commit_cost(commit))
        self._release(session)

    def rebuild(self) -> None:
        """Compute every session's account, and the totals, from the state (after a
        durable backend loaded it): what ``check`` expects, with an empty graveyard (the
        log's values were loaded with it) and superseded history in supersession order.

        Example: ``accounts.rebuild()`` then ``accounts.check()`` passes.
        """
        self.used_bytes = self.pinned_bytes = 0
        for session in self._backend.sessions.values():
            _recount(session)
            self.used_bytes += session.used
            self.pinned_bytes += session.pinned

    def resettle(self, replicated: Replicated) -> None:
        """Bring the accounts of the sessions another writer changed (a replica's rows
        applied in place) up to date, and drop those of the sessions it removed.

        A changed session's account follows the tails that moved (a write costs what it
        added and trimmed), so a replica keeps up with another's writes however long a
        session's history and log are; a new session is counted whole.

        Example: ``accounts.resettle(Replicated([session]))`` after another replica's write.
        """
        for session in replicated.gone:
            self.forget_session(session)
        for session in replicated.changed:
            self.used_bytes -= session.used
            self.pinned_bytes -= session.pinned
            if session.id in replicated.fresh:
                _recount(session)
            else:
                self._follow(session, replicated.history.get(session.id, {}),
                             replicated.log.get(session.id))
            self.used_bytes += session.used
            self.pinned_bytes += session.pinned

    def _follow(self, session: Session, history: dict[str, TailChange],
                log: TailChange | None) -> None:
        # The session's account after another writer's change, from what moved: the
        # same figures ``check`` computes from the whole state.
        added: list[tuple[int, str, int]] = []
        for var_id, change in history.items():
            session.history_bytes += (sum(e.size for e in change.appended)
                                      - sum(e.size for e in change.popped))
            session.history_entries += len(change.appended) - len(change.popped)
            kept = session.history.get(var_id)
            session.current_bytes += ((kept[-1].size if kept else 0)
                                      - (change.before_last.size if change.before_last else 0))
            # Each appended entry supersedes the one before it, if that one is still held.
            before = change.before_last if len(change.popped) < change.before_len else None
            for entry in change.appended:
                if before is not None:
                    added.append((entry.revision, var_id, before.version))
                before = entry
        superseded = session.superseded
        superseded.extend(sorted(added))  # all newer than what the queue holds
        if log is not None:
            session.log_bytes += (sum(_commit_cost(c) for c in log.appended)
                                  - sum(_commit_cost(c) for c in log.popped))
        session.other_bytes = _other_cost(session)
        # Trimmed entries leave stale items in the queue (eviction skips them); drop them
        # before they outnumber the live ones.
        if len(superseded) > 2 * session.history_entries + 64:
            self._compact_superseded(session)
        self._release(session)

    def check(self) -> None:
        """Recompute every memory account from the state; ``AssertionError`` on any
        difference (``MemoryStore.check_accounts``).

        Example: ``accounts.check()`` returns None when every account adds up.
        """
        used = pinned = 0
        for session in self._backend.sessions.values():
            current = history = entries = 0
            assert set(session.history) == set(session.variables), session.id
            for var_id, kept in session.history.items():
                versions = [e.version for e in kept]
                assert versions, f"empty history of {var_id}"
                assert versions[-1] == session.variables[var_id].version, (var_id, versions)
                assert versions == list(range(versions[0], versions[-1] + 1)), versions
                current += kept[-1].size
                history += sum(e.size for e in kept)
                entries += len(kept)
            other = _other_cost(session)
            log = sum(_commit_cost(c) for c in session.log)
            grave = sum(size for _, size in session.graveyard)
            actual = (session.current_bytes, session.history_bytes, session.other_bytes,
                      session.log_bytes, session.graveyard_bytes, session.history_entries)
            expected = (current, history, other, log, grave, entries)
            assert actual == expected, (session.id, actual, expected)
            used += session.used
            pinned += session.pinned
        assert (self.used_bytes, self.pinned_bytes) == (used, pinned), (
            (self.used_bytes, self.pinned_bytes), (used, pinned)
        )
        ids = [sid for sid, _ in self.retired.items()]
        assert self.retired.id_chars == sum(map(len, ids)), (self.retired.id_chars, ids)

    def records_cost(
        self, session: Session, records: Sequence[VariableRecord], metadata_size: int = 0
    ) -> int:
        """How many pinned bytes committing these records adds.

        Example: ``accounts.records_cost(session, [record])`` before ``check_room``.
        """
        # How much a commit of these records adds to the pinned bytes: each becomes its
        # variable's newest history entry, replacing the one it has (if any).
        added = 0
        for record in records:
            added += ITEM_OVERHEAD + record.size + metadata_size
            entries = session.history.get(record.id)
            if entries:
                added -= entries[-1].size
        return added

    def remember(self, session: Session, var_id: str) -> None:
        """Account the entry a commit appended to a variable's history (its newest) and
        drop the oldest past ``history_size``.

        Example: ``accounts.remember(session, "var_t_1")`` in a commit's settle step.
        """
        # The hot path of every write: the account is updated field by field here (the
        # same arithmetic as charge). The previous newest entry stops being current.
        entries = session.history[var_id]
        entry = entries[-1]
        size = added = entry.size
        if len(entries) > 1:
            previous = entries[-2]
            session.current_bytes -= previous.size
            self.pinned_bytes -= previous.size
            session.superseded.append((entry.revision, var_id, previous.version))
            if len(entries) > self.limits.history_size:
                dropped = entries.popleft()
                added -= dropped.size
                session.history_entries -= 1
                # The log holds its value up to the commit of the version after it.
                heapq.heappush(session.graveyard, (entries[0].revision, dropped.size))
                session.graveyard_bytes += dropped.size
                self.used_bytes += dropped.size
        session.history_entries += 1
        session.history_bytes += added
        self.used_bytes += added
        session.current_bytes += size
        self.pinned_bytes += size
        if session.graveyard and session.graveyard[0][0] <= session.log_floor:
            self._release(session)
        if len(session.superseded) > 2 * (session.history_entries - len(session.history)) + 1024:
            self._compact_superseded(session)

    def seeded(self, session: Session, var_id: str, count: int) -> None:
        """Account an imported variable's restored older versions (the oldest ``count``
        entries of its history, which the commit appended), as retention.

        Example: ``accounts.seeded(session, var_id, 3)`` in a commit's settle step.
        """
        # The newest restored entry counts as current until remember supersedes it.
        kept = list(itertools.islice(session.history[var_id], count))
        if not kept:
            return
        session.history_entries += len(kept)
        self.charge(session, "history_bytes", sum(e.size for e in kept))
        self.charge(session, "current_bytes", kept[-1].size)
        for entry in kept[:-1]:
            session.superseded.append((entry.revision, var_id, entry.version))
