"""Writes forwarded to the write leader: a replica that does not lead sends its callers'
write RPCs to the replica that does, on one Calls stream, and answers them itself.
"""

# Why: replicas over one etcd all compare one head row per flush, so with writers on each
# two of three flushes lose and redo their work (bench_replicas: 0.2-0.39x raw etcd with
# writers on all three, 0.5x with one writing replica). Forwarding is only about speed:
# the leader's flushes are guarded by the same compare, so a stale or doubled leader, or a
# write made locally while the leader is unreachable, costs a conflict, never a lost write.

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any

import grpc

from dspex_rx.errors import ConflictError, DspexError, RateLimitedError, StorageError
from dspex_rx.logs import get_logger
from dspex_rx.server import offload
from dspex_rx.server.leader_link import FORWARDED_KEY, GRPC_MAX_MESSAGE, LeaderLink, NotSent
from dspex_rx.v1 import calls_pb2 as cpb
from dspex_rx.wire.channel import (
    AFTER_KEY,
    ASKS_LEADER_KEY,
    LEADER_KEY,
    POSITION_KEY,
    position_in,
)

log = get_logger("dspex_rx.server")

# The metadata keys of positions and of the leader's address (wire/channel.py, as the
# client reads and sends them too): the leader answers a forwarded write with its
# position (POSITION_KEY), and runs one only once it holds what the forwarding replica
# held (AFTER_KEY), so a write never overtakes what its caller saw there (a session just
# created on the follower, a variable just registered).
# A caller's metadata that travels with its forwarded request (the session token).
FORWARDED_METADATA = ("x-dspex-session-token",)
# After the link to the leader failed, writes are made here for this long (doubling while
# it keeps failing, reset by an answer): a dead leader's key lives until its lease ends.
FIRST_PAUSE = 0.5
LAST_PAUSE = 8.0
# How long the session's next call here waits for this replica to hold a forwarded
# write (its etcd watch brings it), so that it shows it; past it the call runs anyway:
# the write is stored, this replica is behind and catching up. (The write's own answer
# does not wait: the caller has its value, and a call that does not follow it should
# not pay a watch's delay: sequential writes rotated over 3 replicas ran at 0.65x.)
HOLD_WAIT = 5.0
# How long a follower waits for the leader's answer to a repeatable call before making it
# itself: half of what is left of the caller's deadline, so a slow, dying or behind leader
# never makes the client's healthy connection to this replica look dead (it would drop
# its watches' cache and reset its streams); REPEATABLE_WAIT where the call has no
# deadline. Not less: each beat made here races the leader's flushes for etcd's head row
# (a conflict, a re-read), just when the leader is slow already.
REPEATABLE_WAIT = 1.0


def repeatable_wait(context: Any) -> float:
    """How long to wait for the leader's answer to a repeatable call: half of what is
    left of its deadline, or ``REPEATABLE_WAIT`` without one.

    >>> class Call:
    ...     def __init__(self, left): self.left = left
    ...     def time_remaining(self): return self.left
    >>> repeatable_wait(Call(2.0)), repeatable_wait(Call(None)), repeatable_wait(object())
    (1.0, 1.0, 1.0)
    """
    remaining = getattr(context, "time_remaining", None)
    left = remaining() if remaining is not None else None
    return REPEATABLE_WAIT if left is None else max(0.0, left / 2)


def advertised_address(host: str, port: int) -> str:
    """Where other replicas reach a server bound to ``host``: the host itself, or this
    machine's name for a wildcard address.

    >>> advertised_address("127.0.0.1", 50051), advertised_address("::1", 7)
    ('127.0.0.1:50051', '[::1]:7')
    """
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class Refused(Exception):
    """The leader refused a forwarded call: end the caller's call with the same status,
    details and trailers (the error's kind and details travel there).

    >>> Refused(5, "no such variable", ()).code.name
    'NOT_FOUND'
    """

    def __init__(self, code: int, details: str, trailers: Sequence[tuple[str, str]]) -> None:
        super().__init__(details)
        self.code = next((c for c in grpc.StatusCode if c.value[0] == code),
                         grpc.StatusCode.UNKNOWN)
        self.details = details
        self.trailers = tuple(trailers)


def relayed(metadata: Sequence[tuple[str, Any]] | None) -> bool:
    """Whether a call's metadata says another replica forwarded it here.

    >>> relayed(((FORWARDED_KEY, "1"),)), relayed(()), relayed(None)
    (True, False, False)
    """
    return any(key == FORWARDED_KEY for key, _ in metadata or ())


async def catch_up(store: Any, metadata: Sequence[tuple[str, Any]] | None) -> None:
    """Before a request that says what its caller saw (``AFTER_KEY``: a forwarding
    replica's position, or a ``direct_writes`` client's) runs: wait (at most
    ``HOLD_WAIT``) until the store holds that much.

    Example: ``await catch_up(service.store, metadata)`` as ``calls.py`` reads a request.
    """
    after = position_in(metadata, AFTER_KEY)
    if after > store.position and not await store.holds(after, HOLD_WAIT):
        log.warning("forwarded_write_ahead_of_leader", after=after, held=store.position,
                    waited=HOLD_WAIT)


# Refusals that say "try again" themselves, with what a retry needs to know.
_RETRYABLE = (StorageError, ConflictError, RateLimitedError)


def unplaced(store: Any, metadata: Sequence[tuple[str, Any]] | None,
             error: DspexError) -> DspexError:
    """The refusal to answer a call with: ``error``, unless its caller (a replica that
    forwarded it, or a client writing to the leader directly) said it held a later
    position than this replica does (``catch_up`` waited ``HOLD_WAIT`` in vain). Then
    the refusal came from an older state than its caller saw ("no session" for a
    session made there a moment ago, a client "not attached"): no flush compared
    anything, so nothing else would catch it, and a client told by its heartbeat that
    its session is gone gives it up for good. Such a call is answered with a
    ``StorageError`` (UNAVAILABLE: try again) instead.

    >>> from dspex_rx.errors import SessionNotFoundError
    >>> class Behind:
    ...     position = 1000
    >>> gone = SessionNotFoundError("no session 's'")
    >>> type(unplaced(Behind(), ((FORWARDED_KEY, "1"), (AFTER_KEY, "1042")), gone)).__name__
    'StorageError'
    >>> unplaced(Behind(), ((FORWARDED_KEY, "1"), (AFTER_KEY, "999")), gone) is gone
    True
    """
    after = position_in(metadata, AFTER_KEY)
    if after <= store.position or isinstance(error, _RETRYABLE):
        # Caught up; or a refusal that says try again already (and what was kept).
        return error
    return StorageError(
        f"this replica does not hold yet what this call's caller saw (position {after}, "
        f"it holds {store.position}), so its refusal ({error}) came from an older state; "
        "nothing was changed: try again")


async def relay(call: Any, request: Any, forwarder: Forwarder, lane: Any,
                repeatable: bool = False) -> Any:
    """Run one write RPC on the leader: sent in the session's order (its ``lane``) and
    answered as the leader answered; the session's next calls here wait until this
    replica holds the write, so they see it. A refusal raises ``Refused``, a link that
    failed after the request left ``StorageError``; one that failed before returns
    ``RunHere`` (make the call here).

    Example: ``return await relay(call, request, service.forward, lane)`` in ``rpc.Unary``.
    """
    data = request.data if isinstance(request, offload.Large) else request.SerializeToString()
    metadata = [(key, value) for key, value in call.context.invocation_metadata() or ()
                if key in FORWARDED_METADATA]
    if repeatable:
        # Made twice is made once (``Unary(repeatable=True)``): no mark, no order.
        return await _relay_repeatable(call, data, metadata, forwarder)
    # The session's writes before this one (not those behind it in the lane: they wait
    # for this one's turn), then this one's own mark.
    before = forwarder.all_holding(call.session_id)
    held = forwarder.hold(call.session_id)
    answer: asyncio.Future[cpb.CallReply] | None = None
    try:
        if lane is not None:
            await lane.turn()
        if earlier := forwarder.elsewhere(before):
            # The session's earlier writes made here (not yet stored) or left on a link
            # since replaced (a new leader): sent now, this one could run at the leader
            # before them, and they after it.
            await asyncio.wait(earlier)
        metadata.append((AFTER_KEY, str(call.store.position)))
        answer = forwarder.send(call.method, data, metadata, held)
        if lane is not None:
            lane.leave()
        # Shielded: a caller giving up must not cancel the answer still due (below).
        try:
            reply = await asyncio.shield(answer)
        except NotSent:
            # The link failed before this request left (a leader that just died): made
            # here instead, its mark kept until it is stored. The calls it failed wake in
            # the order they were sent, and each waits for the session's earlier ones.
            return RunHere(held)
        trailers = _accepted(reply)
        position = position_in(trailers, POSITION_KEY)
        forwarder.held_at(call.store, position, held)
        # What the leader stored: the session's next call here waits for that position.
        # Where the leader is only to a caller that asks (a ``direct_writes`` client,
        # which sends this RPC there itself from now on): it is the address replicas
        # advertise to each other, not one every client needs to know.
        trailers = [(POSITION_KEY, str(position))]
        if any(key == ASKS_LEADER_KEY for key, _ in
               call.context.invocation_metadata() or ()):
            trailers.insert(0, (LEADER_KEY, forwarder.leader))
        call.context.set_trailing_metadata(tuple(trailers))
        return offload.Serialized(reply.response)
    except BaseException:
        if answer is not None and not answer.done():
            # Given up on (cancelled) with its request gone to the leader, which may
            # still run it: the session's later writes wait for its answer still, or one
            # sent on a new leader's link ran first and this one after it.
            answer.add_done_callback(lambda _: _answered(answer, held))
        else:
            free(held)
        raise


async def _relay_repeatable(call: Any, data: bytes, metadata: list[tuple[str, str]],
                            forwarder: Forwarder) -> Any:
    # Sent at once, unmarked; made here instead if the leader does not answer within
    # ``repeatable_wait``, its link fails (sent or not: made twice is made once) or it says
    # "try again" (a leader behind this replica, which holds the session).
    metadata.append((AFTER_KEY, str(call.store.position)))
    wait = repeatable_wait(call.context)
    answer = forwarder.send(call.method, data, metadata)
    try:
        # (Not wait_for: on 3.11 it can swallow a cancel that comes with the answer.)
        async with asyncio.timeout(wait):
            reply = await asyncio.shield(answer)
    except (TimeoutError, StorageError) as exc:
        log.info("forwarded_call_made_here", method=call.method,
                 why=str(exc) or f"no answer within {wait:.3g} s")
        return RunHere(None)
    finally:
        if not answer.done():
            answer.add_done_callback(_unread)
    if reply.code == grpc.StatusCode.UNAVAILABLE.value[0]:
        log.info("forwarded_call_made_here", method=call.method, why=reply.details)
        return RunHere(None)
    _accepted(reply)
    return offload.Serialized(reply.response)


def _accepted(reply: cpb.CallReply) -> list[tuple[str, str]]:
    # The trailers of the leader's answer, or its refusal raised as it made it, less the
    # position the leader ran it at: passed on, it told the client that this replica held
    # it, and its later calls here went without theirs.
    trailers = [(pair.key, pair.value) for pair in reply.trailers]
    if reply.code != 0:
        raise Refused(reply.code, reply.details,
                      [(key, value) for key, value in trailers if key != POSITION_KEY])
    return trailers


def _unread(answer: asyncio.Future[Any]) -> None:
    # An answer nobody waits for any more (made here meanwhile, or given up on).
    if not answer.cancelled():
        answer.exception()


class RunHere:
    """What ``relay`` returns for a call whose request never left, or a repeatable one
    the leader did not answer in time: the caller makes it itself and resolves ``held``
    (the call's mark; None for a repeatable call, which has none) once it is stored.

    >>> RunHere(None).held is None
    True
    """

    __slots__ = ("held",)

    def __init__(self, held: Any) -> None:
        self.held = held


def free(held: asyncio.Future[None]) -> None:
    """Let the session's later calls past a write's mark (once: a mark may be freed by
    its answer, its wait running out, a failure or the forwarder closing, first wins).

    Example: ``free(mine)`` once a write made here is stored.
    """
    if not held.done():
        held.set_result(None)


def _answered(answer: asyncio.Future[Any], held: asyncio.Future[None]) -> None:
    # A given-up write's answer came (or its link failed): nobody reads it.
    _unread(answer)
    free(held)


class Forwarder:
    """Where this replica's write RPCs go: to ``leader`` (set by the election) while it
    is another replica and a link to it is up (``active``), else here.

    ``address`` is this replica's own advertised address; ``options`` the channel's. The
    link opens as soon as a leader is named, and writes go there only once it is up: a
    write is never queued for a leader that cannot be reached. A link that fails is
    opened again after a pause (``FIRST_PAUSE`` doubling to ``LAST_PAUSE``), writes made
    here meanwhile.

    Example: ``election.on_change(forwarder.set_leader)``; in a write RPC,
    ``if forwarder.active: reply = await forwarder.send("SetVariable", data, metadata)``.
    """

    def __init__(self, address: str, *, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.address = address
        self.leader = ""
        self._options = list(options)
        # What one frame to the leader may hold: the leader refuses a larger message (and
        # the link with it), so queued requests go out in frames within it.
        self._max_frame = dict(self._options).get("grpc.max_send_message_length",
                                                  GRPC_MAX_MESSAGE)
        self._link: LeaderLink | None = None
        # Every link not yet closed: the current one and retired ones still answering.
        self._links: set[LeaderLink] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._pause = FIRST_PAUSE
        self._closed = False
        # Each session's forwarded writes not yet held here: a later call of the same
        # session waits for them, as it would for a write made here (calls.py's order).
        self._holding: dict[str, set[asyncio.Future[None]]] = {}
        # Forwarded writes answered but not yet held here, by position (``_settle``),
        # and in the order they were answered, with when each stops waiting.
        self._unheld: list[tuple[int, int, asyncio.Future[None]]] = []
        self._due: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._order = itertools.count()
        self._settler: asyncio.Task[None] | None = None
        # Set when a write nearer than the one the settler waits for is answered.
        self._nearer: asyncio.Future[None] | None = None
        # The link each of them is out on (none: waiting for its turn, or answered; None:
        # a write made here while the link was down, kept until it is stored).
        self._sent_on: dict[asyncio.Future[None], LeaderLink | None] = {}
        # What was forwarded, by RPC (for tests and the logs).
        self.sent: collections.Counter[str] = collections.Counter()
        self.failed = 0

    @property
    def active(self) -> bool:
        """Whether write RPCs go to the leader now.

        >>> Forwarder("10.0.0.1:50051").active  # no leader named yet
        False
        """
        return self._link is not None and self._link.ready

    def set_leader(self, address: str) -> None:
        """The election names a new leader ("" for none); call it on the server's loop.
        The link to it opens now; while it is this replica, writes are made here.

        Example: ``election.on_change(forwarder.set_leader)``.
        """
        if address == self.leader or self._closed:
            return
        log.info("write_leader_changed", leader=address or None, own=self.address)
        self.leader = address
        self._pause = FIRST_PAUSE
        if self._retry is not None:
            # A retry armed for the old leader's link: left, it opened a second link to
            # the new one, never retired or closed (its calls raced the first one's).
            self._retry.cancel()
            self._retry = None
        link, self._link = self._link, None
        if link is not None:
            # Its requests in flight still get the old leader's answers.
            link.retire()
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self.leader and self.leader != self.address and not self._closed:
            link = self._link = LeaderLink(self.leader, self._options, self._link_failed,
                                           self._link_up, self._max_frame)
            self._links.add(link)
            link.closed.add_done_callback(lambda _: self._links.discard(link))

    def send(self, method: str, data: bytes, metadata: Sequence[tuple[str, str]],
             held: asyncio.Future[None] | None = None) -> asyncio.Future[cpb.CallReply]:
        """Queue one request for the leader (requests leave in the order sent); the
        future is its answer, or a ``StorageError`` saying whether it left. ``held``
        (from ``hold``) notes the link it left on, for ``elsewhere``.

        Example: ``reply = await forwarder.send("SetVariable", data, metadata)``.
        """
        link = self._link
        if link is None or not link.ready:
            # The link failed between the caller's check and its turn: nothing left.
            answer: asyncio.Future[cpb.CallReply] = (
                asyncio.get_running_loop().create_future())
            answer.set_exception(NotSent(
                f"the write leader at {self.leader or '(none)'} could not be reached; "
                "nothing of this write was sent: try again"))
            return answer
        self.sent[method] += 1
        if held is not None and not held.done():
            self._sent_on[held] = link
        return link.send(method, data, metadata)

    def hold(self, session_id: str, *, here: bool = False) -> asyncio.Future[None]:
        """Mark a forwarded write of ``session_id`` (``here``: one made here) as not yet
        held here (stored); set the future's result once it is (``holding`` and
        ``elsewhere`` wait for it).

        Example: ``held = forwarder.hold(sid)`` ... ``free(held)``.
        """
        held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waits = self._holding.setdefault(session_id, set())
        waits.add(held)

        def done(_: object) -> None:
            self._sent_on.pop(held, None)
            waits.discard(held)
            if not waits and self._holding.get(session_id) is waits:
                del self._holding[session_id]

        held.add_done_callback(done)
        if here:
            self._sent_on[held] = None
        return held

    def held_at(self, store: Any, position: int, held: asyncio.Future[None]) -> None:
        """Resolve ``held`` once ``store`` holds ``position`` (at most ``HOLD_WAIT`` on).

        Example: ``forwarder.held_at(call.store, 1042, held)`` after the leader's answer.
        """
        if position <= store.position:
            free(held)
            return
        # Stored at the leader: no longer out on a link, so a write of its session sent
        # on another (``elsewhere``) need not wait for this replica's watch to bring it
        # (the session's calls here still do, ``holding``).
        self._sent_on.pop(held, None)
        loop = asyncio.get_running_loop()
        entry = (position, next(self._order), held)
        heapq.heappush(self._unheld, entry)
        self._due.append((loop.time() + HOLD_WAIT, held))
        if self._settler is None or self._settler.done():
            self._settler = loop.create_task(self._settle(store))
        elif self._unheld[0] is entry and self._nearer is not None and not self._nearer.done():
            # The settler waits for a farther position: this one is held first.
            self._nearer.set_result(None)

    async def _settle(self, store: Any) -> None:
        # One task for every write waiting to be held: it waits for the nearest position
        # until the oldest write's HOLD_WAIT ends, each write's own (one HOLD_WAIT after
        # another, a replica whose watch stalled held the N-th write's session N times
        # as long, and ever longer as writes kept coming), and looks again when a nearer
        # position is answered (else that write waited for the farther one too).
        loop = asyncio.get_running_loop()
        try:
            while self._pending():
                position = self._unheld[0][0]
                wait = max(0.0, self._due[0][0] - loop.time())
                nearer = self._nearer = loop.create_future()
                holds = loop.create_task(store.holds(position, wait))
                try:
                    await asyncio.wait((holds, nearer), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._nearer = None
                    if not holds.done():
                        holds.cancel()
                reached = holds.result() if holds.done() else None
                upto = max(store.position, position) if reached else store.position
                if reached is False:
                    log.warning("forwarded_write_not_held", position=position,
                                held=store.position, waited=HOLD_WAIT)
                    # The oldest write waited its HOLD_WAIT, and any as old (the oldest
                    # goes even if the store answered early, so this loop cannot spin).
                    _, held = self._due.popleft()
                    free(held)
                    now = loop.time()
                    while self._due and self._due[0][0] <= now:
                        _, held = self._due.popleft()
                        free(held)
                while self._unheld and self._unheld[0][0] <= upto:
                    _, _, held = heapq.heappop(self._unheld)
                    free(held)
        except Exception:
            # Left waiting, the sessions' next calls here would wait for ever.
            log.exception("forwarded_write_settler_failed")
            self._release()

    def _pending(self) -> bool:
        # Drops what was resolved already (by its position or its HOLD_WAIT).
        while self._unheld and self._unheld[0][2].done():
            heapq.heappop(self._unheld)
        while self._due and self._due[0][1].done():
            self._due.popleft()
        return bool(self._unheld)

    def _release(self) -> None:
        # Every write still waiting to be held stops waiting.
        for _, _, held in self._unheld:
            free(held)
        self._unheld.clear()
        self._due.clear()

    def holding(self, session_id: str) -> list[asyncio.Future[None]]:
        """The forwarded writes of ``session_id`` a call made now must wait for.

        >>> Forwarder("a:1").holding("s")
        []
        """
        return [held for held in self._holding.get(session_id, ())
                if held not in self._sent_on or self._sent_on[held] is not None]

    def all_holding(self, session_id: str) -> list[asyncio.Future[None]]:
        """The writes of ``session_id`` not yet held here, made here ones too.

        >>> Forwarder("a:1").all_holding("s")
        []
        """
        return list(self._holding.get(session_id, ()))

    def elsewhere(self, earlier: list[asyncio.Future[None]]) -> list[asyncio.Future[None]]:
        """Of a session's ``earlier`` writes not yet held here (``all_holding``), those
        not on the current link: made here, or left on a link since replaced. A write to
        forward waits for them, since only one link keeps the order of what it carries.

        >>> Forwarder("a:1").elsewhere([])
        []
        """
        return [held for held in earlier if not held.done()
                and held in self._sent_on and self._sent_on[held] is not self._link]

    def _link_up(self) -> None:
        # The leader answers again: the next failure pauses briefly, not for long.
        self._pause = FIRST_PAUSE

    def _link_failed(self, link: LeaderLink, error: str) -> None:
        self.failed += 1
        if link is not self._link:
            return
        self._link = None
        log.warning("write_leader_unreachable", leader=self.leader, error=error,
                    writes_here_for=self._pause)
        self._retry = asyncio.get_running_loop().call_later(self._pause, self._connect)
        self._pause = min(self._pause * 2, LAST_PAUSE)

    async def close(self) -> None:
        """Close the link to the leader (its requests in flight fail).

        Example: ``await forwarder.close()`` as the server stops.
        """
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._settler is not None:
            self._settler.cancel()
        self._release()
        self._link = None
        for link in list(self._links):
            await link.close()
