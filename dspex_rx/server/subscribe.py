"""A Session stream's Subscribe request: the ack, then initial values, or the replay of
each involved session's log since ``from_revision`` (a resync where the log is gone).
"""

from __future__ import annotations

from collections.abc import Sequence

from dspex_rx.errors import DspexError
from dspex_rx.server.encode import current, name_seen_by
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.server.rpc import MAX_ERROR_MESSAGE, Service, clip
from dspex_rx.store import Commit, MemoryStore, VariableRecord
from dspex_rx.v1 import session_pb2 as spb


def subscribe(
    service: Service, session_id: str, subscriber: Subscriber, request: spb.Subscribe
) -> None:
    """Answer one Subscribe request on ``subscriber``'s queue: a ``Subscribed`` ack (or a
    refusal of this request only), then the values the request asked for.

    Synchronous from lookup to queueing: no commit can fall between the snapshot (or the
    replay) and the first live event, because nothing else runs meanwhile.

    Example: ``service._subscribe(sid, subscriber, request)`` queues the ack and values.
    """
    _Subscription(service.store, session_id, subscriber, request).answer()


class _Subscription:
    # One Subscribe request while it is answered: what it found, and whose they are.

    def __init__(
        self, store: MemoryStore, session_id: str, subscriber: Subscriber,
        request: spb.Subscribe,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.subscriber = subscriber
        self.request = request
        self.since = request.from_revision
        self.found: list[VariableRecord] = []
        # Other sessions' variables among those found, by owner session; their ids.
        self.owners: dict[str, list[VariableRecord]] = {}
        self.foreign: set[str] = set()
        self.revision = 0

    def refuse(self, error: str, kind: str) -> None:
        # Only this request fails; the stream and its other watches go on.
        self.subscriber.push_control(
            spb.Subscribed(
                request_id=self.request.request_id, revision=self.store.revision,
                error=clip(error, MAX_ERROR_MESSAGE), error_kind=kind,
            )
        )

    def answer(self) -> None:
        store, session_id, request = self.store, self.session_id, self.request
        store.session(session_id)  # a closed session raises here
        if not request.refs:
            self.refuse("subscribe needs at least one variable", "invalid_value")
            return
        try:
            # Another session's variable needs observe; one it cannot see is missing.
            found, missing = store.get_many(session_id, list(request.refs), "observe")
            self.subscriber.check_room(r.id for r in found)
        except DspexError as exc:
            self.refuse(str(exc), exc.kind)
            return
        self.found = found
        absent = set(missing)
        known = dict(zip([r for r in request.refs if r not in absent], found, strict=True))
        resuming = self.since > 0
        for record in found:
            owner = store.owner_of(record.id) or session_id
            if owner != session_id:
                self.owners.setdefault(owner, []).append(record)
        commits = self._log() if resuming else None
        gone = self._deleted(commits, absent) if missing and commits is not None else {}
        missing = [ref for ref in missing if ref not in gone]
        if missing and not resuming:
            self.refuse(
                f"no variable(s) {', '.join(map(repr, missing))} in session {session_id!r}",
                "not_found",
            )
            return
        known.update(gone)
        ids = self._ack(known, missing)
        if resuming:
            self._resume(commits, ids)
        elif request.include_initial:
            self.subscriber.push_frame(
                PendingFrame(self.revision, [current(r) for r in found], "initial")
            )

    def _log(self) -> list[Commit] | None:
        # The log of every session involved, merged by (store-wide) revision; None if any
        # no longer reaches back (the whole request resyncs), or if the resume point is
        # one the store has not reached: its state went back (a backup restored, an
        # in-memory server restarted), and a replay would silently skip what changed.
        if self.since > self.store.revision:
            return None
        commits = self.store.commits_since(self.session_id, self.since)
        merged = list(commits or ())
        for owner in self.owners:
            more = self.store.commits_since(owner, self.since)
            if commits is None or more is None:
                return None
            merged += more
        if commits is not None and self.owners:
            return sorted(merged, key=lambda c: c.revision)
        return commits

    def _deleted(self, commits: list[Commit], absent: set[str]) -> dict[str, VariableRecord]:
        # Deleted since the watcher's last revision: it still gets the missed changes
        # and the delete from the log, for its own variables only. Another session's
        # deleted variable took its rules with it, so whether this stream ever could
        # observe it is unknown: it is reported missing, like one never seen.
        gone: dict[str, VariableRecord] = {}
        for commit in commits:
            if commit.session_id not in (self.session_id, ""):
                continue
            for event in commit.events:
                if event.update_type == "deleted" and event.record.id in absent:
                    gone[event.record.id] = event.record
        return gone

    def _ack(self, known: dict[str, VariableRecord], missing: list[str]) -> list[str]:
        # Watch what was found, then queue the ack; returns the ids answered.
        answered = [r for r in self.request.refs if r in known]
        ids = [known[ref].id for ref in answered]
        names = [name_seen_by(self.store, self.session_id, known[ref]) for ref in answered]
        self.foreign = {r.id for rs in self.owners.values() for r in rs}
        self.subscriber.watch(r.id for r in self.found if r.id not in self.foreign)
        for owner, records in self.owners.items():
            self.subscriber.watch_foreign(owner, records)
        self.revision = self.store.revision
        self.subscriber.push_control(
            spb.Subscribed(
                request_id=self.request.request_id,
                variable_ids=ids,
                names=names,
                refs=answered,
                missing=missing,
                revision=self.revision,
            )
        )
        return ids

    def _resume(self, commits: list[Commit] | None, ids: list[str]) -> None:
        # What the watcher missed since ``from_revision``: the log's events, or a resync.
        found, foreign, subscriber = self.found, self.foreign, self.subscriber
        if commits is None:
            self._resync(found, [r for r in found if r.id not in foreign])
            return
        # Another session's variable whose rights may have changed within the range
        # (a permissions commit, or a rule with a time condition) is resynced, current
        # value only: a replay could hand over values from before observe was granted.
        changed = {i for c in commits if c.session_id != self.session_id
                   for i in c.permissions if i in foreign}
        changed |= {i for i in foreign if self.store.timed_rules(self.session_id, i)}
        wanted = set(ids) - changed
        for commit in commits:
            events = [e for e in commit.events if e.record.id in wanted]
            if events and commit.session_id != self.session_id:
                events = subscriber.redact(events)
            if events:
                subscriber.push_frame(PendingFrame(commit.revision, events))
        if changed:
            self._resync([r for r in found if r.id in changed], None)
        if self.request.include_initial:
            # A resume that also asks for the current values (a client whose break
            # fell before a subscription's initial value): after the replay, so a
            # value the replay already brought is a repeat the client drops.
            initial = [current(r) for r in found if r.id in wanted]
            if initial:
                subscriber.push_frame(PendingFrame(self.revision, initial, "initial"))

    def _resync(
        self, records: Sequence[VariableRecord], own: list[VariableRecord] | None
    ) -> None:
        # Current values instead of a replay, then how the optimization runs since
        # went: of ``own`` (this session's) and of the other sessions' ``records``.
        self.subscriber.push_frame(
            PendingFrame(self.revision, [current(r) for r in records], "resync")
        )
        ids = {r.id for r in records}
        statuses = (
            self.store.status_events(self.session_id, own, self.since)
            if own is not None else []
        )
        for owner, owned in self.owners.items():
            statuses += self.subscriber.redact(self.store.status_events(
                owner, [r for r in owned if r.id in ids], self.since
            ))
        if statuses:
            self.subscriber.push_frame(PendingFrame(self.revision, statuses))
