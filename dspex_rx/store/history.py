"""Variables' retained versions: pages of history (with what expired) and rollback, which
writes an old value as a new version.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dspex_rx.core.limits import check_length, measure_map
from dspex_rx.errors import InvalidValueError, VariableTypeError
from dspex_rx.store.dependencies import Dependencies
from dspex_rx.store.records import HistoryPage, VariableRecord


class History(Dependencies):
    """The engine's history part.

    Example: ``store.history(sid, "t", limit=10).entries`` is newest first.
    """

    def history(
        self, session_id: str, ref: str, limit: int = 100, offset: int = 0
    ) -> HistoryPage:
        """A page of a variable's versions, newest first: versions ``current - offset``
        down to ``current - offset - limit + 1``. Versions of that range that fell out of
        retention are reported in ``expired``, never silently left out.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> _ = store.set("s", "t", 0.9, actor="me")
        >>> [(e.version, e.value) for e in store.history("s", "t", limit=10).entries]
        [(2, 0.9), (1, 0.7)]
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidValueError(f"history limit must be a positive integer, got {limit!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidValueError(f"history offset must be an integer >= 0, got {offset!r}")
        session, record = self._access.locate(self.session(session_id), ref, "read")
        entries = session.history.get(record.id, deque())
        oldest = entries[0].version if entries else record.version
        newest_wanted = record.version - offset
        oldest_wanted = max(1, newest_wanted - limit + 1)
        page = [e for e in reversed(entries) if oldest_wanted <= e.version <= newest_wanted]
        expired = None
        if newest_wanted >= 1 and oldest_wanted < oldest:
            expired = (oldest_wanted, min(newest_wanted, oldest - 1))
        return HistoryPage(page, record.version, oldest, expired, self.history_size)

    def rollback(
        self,
        session_id: str,
        ref: str,
        version: int,
        *,
        reason: str | None = None,
        actor: str,
        expected_version: int | None = None,
    ) -> tuple[VariableRecord, int]:
        """Write a new version whose value is that of ``version`` (history is appended,
        never rewritten); returns (new record, revision). Unknown or expired versions
        raise ``ValueError``. Another session's variable needs ``read`` as well as
        ``write``: choosing a past value is reading the history.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> _ = store.set("s", "t", 0.9, actor="me")
        >>> record, revision = store.rollback("s", "t", 1, reason="bad sweep", actor="me")
        >>> record.version, record.value
        (3, 0.7)
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "write")
        if session is not caller:
            # Rolling back chooses a past value (and the response carries it): that is
            # reading the history, so another session's variable needs read as well.
            self._access.locate(caller, record.id, "read")
        self._expire_leases(session)
        self._check_lease(session, record, None, doing="rolled back")
        self._check_version(record, expected_version)
        if not isinstance(version, int) or isinstance(version, bool) or not (
            1 <= version <= record.version
        ):
            raise InvalidValueError(
                f"variable {record.name!r} has no version {version!r} (versions 1 to "
                f"{record.version})"
            )
        entries = session.history.get(record.id, deque())
        entry = next((e for e in entries if e.version == version), None)
        if entry is None:
            oldest = entries[0].version if entries else record.version
            raise InvalidValueError(
                f"version {version} of variable {record.name!r} is no longer retained "
                f"(the oldest kept is {oldest}; retention is {self.history_size} versions "
                "within the session's memory budget)"
            )
        if session is not caller:
            self._access.locate(caller, record.id, "write", entry.value, check_value=True)
        metadata: dict[str, Any] = {"rollback_to": version}
        if reason is not None:
            if not isinstance(reason, str):
                raise VariableTypeError("a rollback reason must be a string")
            check_length("the rollback reason", reason, "max_string_length",
                         self.limits.max_string_length)
            metadata["reason"] = reason
        metadata_size = measure_map(metadata, self.limits, "the rollback's metadata")
        # The stored value, as it was: constraints never change after registration, and
        # validating again is not idempotent (re-normalizing an embedding can move its
        # last bits).
        # The rollback's notes describe this commit (history, watchers), not the variable:
        # they stay out of its user metadata, where they would shadow the user's keys.
        new = self._prepare_write(
            record, entry.value, {}, actor, self._revision + 1, validated=True
        )
        self._accounts.check_room(
            session, self._accounts.records_cost(session, [new], metadata_size)
        )
        written, revision = self._commit(
            session, [new], metadata=metadata, source=actor, metadata_size=metadata_size
        )
        return written[0], revision
