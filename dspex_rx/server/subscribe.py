"""A Session stream's Subscribe request: the ack, then initial values, or the replay of
each involved session's log since ``from_revision`` (a resync where the log is gone).
"""

from __future__ import annotations

from dspex_rx.errors import DspexError
from dspex_rx.server.encode import current, name_seen_by
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.server.rpc import MAX_ERROR_MESSAGE, Service, clip
from dspex_rx.store import Commit, VariableRecord
from dspex_rx.v1 import session_pb2 as spb


def subscribe(
    service: Service, session_id: str, subscriber: Subscriber, request: spb.Subscribe
) -> None:
    """Answer one Subscribe request on ``subscriber``'s queue: a ``Subscribed`` ack (or a
    refusal of this request only), then the values the request asked for.

    Example: ``service._subscribe(sid, subscriber, spb.Subscribe(request_id=1, refs=["t"],
    include_initial=True))`` queues the ack and the initial frame.
    """
    # Synchronous from lookup to queueing: no commit can fall between the snapshot
    # (or the replay) and the first live event, because nothing else runs meanwhile.
    store = service.store
    store.session(session_id)  # a closed session raises here

    def refuse(error: str, kind: str) -> None:
        # Only this request fails; the stream and its other watches go on.
        subscriber.push_control(
            spb.Subscribed(
                request_id=request.request_id, revision=store.revision,
                error=clip(error, MAX_ERROR_MESSAGE), error_kind=kind,
            )
        )

    if not request.refs:
        refuse("subscribe needs at least one variable", "invalid_value")
        return
    try:
        # Another session's variable needs observe; one it cannot see is missing.
        found, missing = store.get_many(session_id, list(request.refs), "observe")
        subscriber.check_room(r.id for r in found)
    except DspexError as exc:
        refuse(str(exc), exc.kind)
        return
    absent = set(missing)
    known = dict(zip([r for r in request.refs if r not in absent], found, strict=True))
    resuming = request.from_revision > 0
    owners: dict[str, list[VariableRecord]] = {}
    for record in found:
        owner = store.owner_of(record.id) or session_id
        if owner != session_id:
            owners.setdefault(owner, []).append(record)
    commits: list[Commit] | None = None
    if resuming:
        # The log of every session involved, merged by (store-wide) revision; if any
        # no longer reaches back, the whole request resyncs.
        commits = store.commits_since(session_id, request.from_revision)
        merged = list(commits or ())
        for owner in owners:
            more = store.commits_since(owner, request.from_revision)
            if commits is None or more is None:
                commits = None
                break
            merged += more
        if commits is not None and owners:
            commits = sorted(merged, key=lambda c: c.revision)
    gone: dict[str, VariableRecord] = {}
    if missing and commits is not None:
        # Deleted since the watcher's last revision: it still gets the missed changes
        # and the delete from the log, for its own variables only. Another session's
        # deleted variable took its rules with it, so whether this stream ever could
        # observe it is unknown: it is reported missing, like one never seen.
        for commit in commits:
            if commit.session_id not in (session_id, ""):
                continue
            for event in commit.events:
                if event.update_type == "deleted" and event.record.id in absent:
                    gone[event.record.id] = event.record
    missing = [ref for ref in missing if ref not in gone]
    if missing and not resuming:
        refuse(
            f"no variable(s) {', '.join(map(repr, missing))} in session {session_id!r}",
            "not_found",
        )
        return
    known.update(gone)
    answered = [r for r in request.refs if r in known]
    ids = [known[ref].id for ref in answered]
    names = [name_seen_by(store, session_id, known[ref]) for ref in answered]
    foreign = {r.id for rs in owners.values() for r in rs}
    subscriber.watch(r.id for r in found if r.id not in foreign)
    for owner, records in owners.items():
        subscriber.watch_foreign(owner, records)
    revision = store.revision
    subscriber.push_control(
        spb.Subscribed(
            request_id=request.request_id,
            variable_ids=ids,
            names=names,
            refs=answered,
            missing=missing,
            revision=revision,
        )
    )

    def resync(records: list[VariableRecord], own: list[VariableRecord] | None) -> None:
        # Current values instead of a replay, then how the optimization runs since
        # went: of ``own`` (this session's) and of the other sessions' ``records``.
        subscriber.push_frame(
            PendingFrame(revision, [current(r) for r in records], "resync")
        )
        ids = {r.id for r in records}
        statuses = (
            store.status_events(session_id, own, request.from_revision)
            if own is not None else []
        )
        for owner, owned in owners.items():
            statuses += subscriber.redact(store.status_events(
                owner, [r for r in owned if r.id in ids], request.from_revision
            ))
        if statuses:
            subscriber.push_frame(PendingFrame(revision, statuses))

    if resuming:
        if commits is None:
            resync(found, [r for r in found if r.id not in foreign])
            return
        # Another session's variable whose rights may have changed within the range
        # (a permissions commit, or a rule with a time condition) is resynced, current
        # value only: a replay could hand over values from before observe was granted.
        changed = {i for c in commits if c.session_id != session_id
                   for i in c.permissions if i in foreign}
        changed |= {i for i in foreign if store.timed_rules(session_id, i)}
        wanted = set(ids) - changed
        for commit in commits:
            events = [e for e in commit.events if e.record.id in wanted]
            if events and commit.session_id != session_id:
                events = subscriber.redact(events)
            if events:
                subscriber.push_frame(PendingFrame(commit.revision, events))
        if changed:
            resync([r for r in found if r.id in changed], None)
        if request.include_initial:
            # A resume that also asks for the current values (a client whose break
            # fell before a subscription's initial value): after the replay, so a
            # value the replay already brought is a repeat the client drops.
            initial = [current(r) for r in found if r.id in wanted]
            if initial:
                subscriber.push_frame(PendingFrame(revision, initial, "initial"))
    elif request.include_initial:
        subscriber.push_frame(
            PendingFrame(revision, [current(r) for r in found], "initial")
        )
