"""EtcdBackend: the durable image's rows as etcd keys under a prefix. Each flush is one etcd
txn guarded by the store revision it builds on, so of two replicas writing at once one
conflicts, reads the new state and runs its calls again; a watch brings other replicas'
writes into the live state and to this replica's watchers, in revision order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from dspex_rx.errors import ResourceExhaustedError, StorageError
from dspex_rx.etcd.election import WriteLeader, leader_key
from dspex_rx.etcd.pages import PagedRead
from dspex_rx.etcd_v3 import rpc_pb2 as etcd
from dspex_rx.etcd_v3 import rpc_pb2_grpc as etcd_grpc
from dspex_rx.etcd_v3.kv_pb2 import Event
from dspex_rx.logs import get_logger
from dspex_rx.store.backend import RevisionConflict
from dspex_rx.store.durable.backend import DurableBackend
from dspex_rx.store.durable.budget import FlushBudget
from dspex_rx.store.durable.load import CorruptRow, Loaded
from dspex_rx.store.durable.refusal import OutcomeUnknown
from dspex_rx.store.durable.revert import revert
from dspex_rx.store.durable.rows import (
    ENTRIES,
    LOG,
    META,
    Op,
    Put,
    decode_key,
    delete_range,
    encode_key,
)
from dspex_rx.store.waits import RevisionWaits

log = get_logger("dspex_rx.etcd")

# etcd's own defaults (--max-txn-ops, --max-request-bytes): a flush beyond them is refused
# with a message naming the flag, never cut into txns another replica could see half of.
MAX_TXN_OPS = 128
MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)
# Keys per page of a full read (``pages.py``), and the largest answer the client takes
# from etcd (a page, or a watch answer of several revisions).
PAGE_KEYS = 1000
MAX_RECEIVE_BYTES = 256 * 1024 * 1024
# How long one etcd call may take before the write is refused (etcd down, no quorum).
CALL_TIMEOUT = 5.0
PUT = Event.PUT
# The answers that say etcd did not apply a txn; after any other error it may have.
_NOT_APPLIED = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND,
})
# How long a flush whose txn was not answered looks for it in etcd: an etcd that was
# slow past the call timeout is slow for this too, and the writer waits for both (then
# for the read-back), so it is kept short; past it the outcome is told as unknown.
FIND_WAIT = 1.0
# A pause before the watch is opened again after it broke (etcd restarting).
WATCH_RETRY = 0.2
# How long calls undone by a conflict wait for the watch to bring the write that won
# before the replica reads the whole store instead.
SETTLE_WAIT = 0.5


def value_cap(max_request_bytes: int = MAX_REQUEST_BYTES) -> int:
    """The largest value one etcd write can carry: a set stores it three times in its txn
    (the record, its history entry, the logged commit), with room for the rest.

    >>> value_cap(1536 * 1024)
    502442
    """
    return (max_request_bytes - 64 * 1024) // 3


class EtcdBackend(DurableBackend):
    """The store's state in etcd at ``endpoints`` under ``prefix``; several servers
    (replicas) over the same etcd and prefix share one store.

    ``max_txn_ops`` and ``max_request_bytes`` must not exceed the etcd members' own
    (``--max-txn-ops``, ``--max-request-bytes``).

    Example: ``MemoryStore(backend=EtcdBackend(["127.0.0.1:2379"]))``.
    """

    storage_errors = (grpc.RpcError, StorageError, OSError)
    shared = True

    def __init__(
        self, endpoints: Sequence[str], *, prefix: str = "dspex-rx/",
        clock: Callable[[], float] = time.time, max_txn_ops: int = MAX_TXN_OPS,
        max_request_bytes: int = MAX_REQUEST_BYTES, timeout: float = CALL_TIMEOUT,
    ) -> None:
        super().__init__(clock=clock)
        if not endpoints:
            raise StorageError("an etcd backend needs at least one endpoint (host:port)")
        self.endpoints = list(endpoints)
        self.prefix = prefix.encode()
        # Just past every key under the prefix: the end of its range.
        self._end = self.prefix[:-1] + bytes([self.prefix[-1] + 1])
        # The head row's key as the watch hands keys over (without the prefix).
        self._head_key = encode_key(META, ("revision",))
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        # Writes arriving together wait for room rather than make one txn etcd refuses.
        self._budget = FlushBudget(max_request_bytes, max_txn_ops)
        self.timeout = timeout
        self.refusal_hint = " (is etcd up, with a quorum?)"
        # gRPC picks a reachable member among them and moves on when one goes.
        self._target = ("ipv4:" + ",".join(self.endpoints) if len(self.endpoints) > 1
                        else self.endpoints[0])
        # A watch answer may carry several revisions' events, each up to a request's
        # size: gRPC's default 4 MiB receive limit is too small for that.
        self._options = [("grpc.lb_policy_name", "round_robin"),
                         ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        self._channel = grpc.insecure_channel(self._target, options=self._options)
        self._kv = etcd_grpc.KVStub(self._channel)  # type: ignore[no-untyped-call]
        # Flushes go through grpc.aio on the loop they run on (``_aio_kv``).
        self._aio: tuple[asyncio.AbstractEventLoop, grpc.aio.Channel, etcd_grpc.KVStub] | None
        self._aio = None
        # The etcd revision of the last write of the head row this replica knows of (what
        # the next flush compares), the etcd revision the live state reflects, the last
        # revision the watch brought (this replica's own too: a watch opened again
        # starts after it), and the etcd revisions of this replica's own writes (its
        # watch skips them).
        self._head = 0
        self._seen = 0
        self._delivered = 0
        # The head's revision when a flush lost to another replica's write, and calls
        # waiting (after that conflict) until the live state holds it.
        self._winner = 0
        self._head_waiters = RevisionWaits()
        self._own: set[int] = set()
        # The watch's loop and the loop a flush runs on differ when a program flushes
        # from its own (tests, tools); on a server they are one.
        self._own_lock = threading.Lock()
        # Writes the watch saw while a flush was in flight, told apart after it.
        self._queued: list[tuple[int, list[tuple[bool, bytes, bytes]] | None]] = []
        # The pages the last blocking read took (``_read`` adopts them once loaded).
        self._read_pages: PagedRead | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Future[None] | concurrent.futures.Future[None] | None = None
        try:
            self._start()
        except BaseException:
            self._channel.close()
            raise

    @property
    def where(self) -> str:
        """The etcd cluster, for messages.

        Example: ``backend.where`` is ``"etcd at 127.0.0.1:2379"``.
        """
        return f"etcd at {','.join(self.endpoints)}"

    def _key(self, table: str, key: tuple[str | int, ...]) -> bytes:
        return self.prefix + encode_key(table, key)

    def _rows(self) -> Iterator[tuple[bytes, bytes]]:
        # Every row under the prefix, one snapshot (``pages.py``); blocking: at start,
        # and for a catch-up (which runs where nothing can await).
        pages = self._pages()
        while True:
            try:
                reply = self._kv.Range(pages.request(), timeout=self.timeout)
            except grpc.RpcError as exc:
                if pages.again(_code(exc)):
                    continue
                raise self._unreadable(exc) from exc
            if pages.took(reply):
                self._read_pages = pages
                return iter(pages.rows)

    def _read(self, *, starting: bool = False) -> Loaded:
        try:
            loaded = super()._read(starting=starting)
        finally:
            pages, self._read_pages = self._read_pages, None
        if pages is not None:  # (None: rows from elsewhere, a test's stand-in)
            self._took(pages)
        return loaded

    async def _read_back(self) -> Loaded:
        # The same read awaited through grpc.aio: with etcd slow or without a quorum, a
        # refused write's read-back took the loop for up to the call timeout before.
        pages, stub = self._pages(), self._aio_kv()
        while True:
            try:
                reply = await stub.Range(pages.request(), timeout=self.timeout)
            except grpc.RpcError as exc:
                if pages.again(_code(exc)):
                    continue
                raise self._unreadable(exc) from exc
            if pages.took(reply):
                loaded = self._load(iter(pages.rows))
                self._took(pages)
                return loaded

    def _pages(self) -> PagedRead:
        return PagedRead(self.prefix, self._end, self.prefix + self._head_key, PAGE_KEYS)

    def _unreadable(self, exc: grpc.RpcError) -> StorageError:
        return StorageError(f"cannot read {self.where}: {_why(exc)}{self.refusal_hint}")

    def _took(self, pages: PagedRead) -> None:
        # Only once its rows loaded, as the live state is about to be them: the revision
        # it reflects, and the head the next flush builds on. A read that could not be
        # loaded leaves the old head, or a flush built on the old state would pass.
        self._seen = pages.revision
        self._head = pages.head_revision
        self._head_moved()

    async def _read_after_conflict(self) -> Loaded | None:
        # Another replica wrote first: back to the rows as of the head this replica built
        # on, re-reading only the rows the live objects cannot give back (its whole
        # store was read before: 16 ms at 1,000 rows, on the loop, at every conflict);
        # the watch then brings the write that won. Without a watch, read it all. The
        # read is awaited: done as a blocking call it held the loop for an etcd round
        # trip at every lost race, the watch bringing the winner's write included.
        if not self._head or self._watcher is None:
            return None  # (no rows yet: etcd's revision 0 would mean "now")
        try:
            return await revert(self._sessions, self._image, self._read_at_head)
        except (grpc.RpcError, CorruptRow) as exc:
            log.info("etcd_revert_read_failed", where=self.where, error=repr(exc))
            return None  # compacted past the head, or unreadable: read it all

    async def _read_at_head(self, spans: list[tuple[bytes, bytes]],
                            ) -> list[tuple[bytes, bytes]]:
        # The rows in the key ranges, at the etcd revision of the head this replica holds
        # (one snapshot: every Range of every txn pinned to it; a flush is in flight, so
        # nothing moves the head meanwhile).
        cut, head, stub = len(self.prefix), self._head, self._aio_kv()
        rows: list[tuple[bytes, bytes]] = []
        for at in range(0, len(spans), self.max_txn_ops):
            reads = [etcd.RequestOp(request_range=etcd.RangeRequest(
                key=self.prefix + start, range_end=self.prefix + end, revision=head))
                for start, end in spans[at:at + self.max_txn_ops]]
            reply = await stub.Txn(etcd.TxnRequest(success=reads), timeout=self.timeout)
            for answer in reply.responses:
                rows.extend((kv.key[cut:], kv.value) for kv in answer.response_range.kvs)
        return rows

    async def _store(self, ops: list[Op]) -> None:
        # On the loop, through grpc.aio: a flush costs no hop to the writer thread and
        # back, and no second thread holding the GIL while the loop works (measured: a
        # sequential write's txn took 1.64 ms on the thread against ~1.0 ms alone).
        request = self._txn(ops)  # (refused here if too large: nothing was sent)
        try:
            reply = await self._aio_kv().Txn(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            if _code(exc) in _NOT_APPLIED:
                raise StorageError(f"{self.where} did not take the write: {_why(exc)}",
                                   ) from exc
            # Sent, perhaps applied (etcd's own timeout, a deadline, a dropped connection):
            # never "nothing was kept", as a read-back may well find it stored.
            found = await self._find_txn(request)
            if found is None:
                raise OutcomeUnknown(f"{self.where} did not answer the write: {_why(exc)}",
                                     ) from exc
            revision, ours = found
            if not ours:  # another replica's write came first: this one never applies
                self._winner = revision
                raise RevisionConflict(f"{self.where} moved on (another replica wrote)",
                                       ) from exc
            reply = etcd.TxnResponse(succeeded=True,
                                     header=etcd.ResponseHeader(revision=revision))
        self._committed(reply)

    async def _find_txn(self, request: etcd.TxnRequest) -> tuple[int, bool] | None:
        # Whether a txn sent but not answered was applied. Its compare (the head row last
        # written at ``_head``) fails forever once any other write moves the head, so it
        # was applied iff the first write of the head after ``_head`` is it: that
        # revision (a one-shot watch, which also waits for the txn if still in flight),
        # and whether every key the txn puts holds its value as written there. None: not
        # known (etcd still silent, or compacted past it).
        try:
            return await asyncio.wait_for(self._first_head_write(request),
                                          min(self.timeout, FIND_WAIT))
        except (grpc.RpcError, TimeoutError) as exc:
            log.warning("etcd_txn_outcome_unknown", where=self.where, error=repr(exc))
            return None

    async def _first_head_write(self, request: etcd.TxnRequest) -> tuple[int, bool] | None:
        puts = [op.request_put for op in request.success if op.HasField("request_put")]
        # Only a logged commit (its own timestamp, pickled) is a value no other replica's
        # write holds too: without one, whose write it was cannot be told.
        if not any(_logged(put.key[len(self.prefix):]) for put in puts):
            return None
        aio = self._aio  # (the flush's loop's, as ``_aio_kv`` made it)
        if aio is None or aio[0] is not asyncio.get_running_loop():
            return None
        stub = aio[2]
        call = etcd_grpc.WatchStub(aio[1]).Watch()  # type: ignore[no-untyped-call]
        try:
            await call.write(etcd.WatchRequest(create_request=etcd.WatchCreateRequest(
                key=self.prefix + self._head_key, start_revision=self._head + 1)))
            revision = 0
            async for reply in call:
                if reply.compact_revision or reply.canceled:
                    return None
                if reply.events:
                    revision = reply.events[0].kv.mod_revision
                    break
        finally:
            call.cancel()
        if not revision:
            return None
        reads = etcd.TxnRequest(success=[etcd.RequestOp(request_range=etcd.RangeRequest(
            key=put.key, revision=revision)) for put in puts])
        answer = await stub.Txn(reads, timeout=self.timeout)
        ours = all(
            len(got.response_range.kvs) == 1
            and got.response_range.kvs[0].mod_revision == revision
            and got.response_range.kvs[0].value == put.value
            for put, got in zip(puts, answer.responses, strict=True))
        return revision, ours

    def _aio_kv(self) -> etcd_grpc.KVStub:
        # grpc.aio channels belong to the loop that made them: one per loop the store
        # flushes on (the server's, for its life; a test may use several in turn).
        loop = asyncio.get_running_loop()
        aio = self._aio
        if aio is None or aio[0] is not loop:
            channel = grpc.aio.insecure_channel(self._target, options=self._options)
            stub = etcd_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            aio = self._aio = (loop, channel, stub)
        return aio[2]

    def _txn(self, ops: list[Op]) -> etcd.TxnRequest:
        # One txn, applied only if the head row (which every flush writes) was last
        # written where this replica's live state built on (0: never).
        head = self.prefix + self._head_key
        guard = etcd.Compare(key=head, target=etcd.Compare.MOD, result=etcd.Compare.EQUAL,
                             mod_revision=self._head)
        success = [self._request(op) for op in ops]
        # Too large for etcd: refused before anything is sent, as the caller's own limit
        # (not a storage outage: other writes go on at once).
        if len(success) > self.max_txn_ops:
            raise ResourceExhaustedError(
                f"one write to {self.where} would be {len(success)} row operations, above "
                f"etcd's limit of {self.max_txn_ops} per txn; nothing of it was kept: "
                "write fewer variables per call, or run etcd with a higher --max-txn-ops "
                "and give serve the same --etcd-max-txn-ops",
                limit="etcd --max-txn-ops", value=len(success),
            )
        request = etcd.TxnRequest(compare=[guard], success=success, failure=[
            etcd.RequestOp(request_range=etcd.RangeRequest(key=head))])
        size = request.ByteSize()
        if size > self.max_request_bytes:
            raise ResourceExhaustedError(
                f"one write to {self.where} would be {size} bytes, above etcd's request "
                f"limit of {self.max_request_bytes}; nothing of it was kept: write smaller "
                "values, or run etcd with a higher --max-request-bytes and give serve the "
                "same --etcd-max-request-bytes",
                limit="etcd --max-request-bytes", value=size,
            )
        return request

    def _committed(self, reply: etcd.TxnResponse) -> None:
        if not reply.succeeded:
            # The failure branch read the head: the write that won is at its revision.
            kvs = reply.responses[0].response_range.kvs if reply.responses else ()
            self._winner = kvs[0].mod_revision if kvs else 0
            raise RevisionConflict(f"{self.where} moved on (another replica wrote)")
        if self._watcher is not None:  # only a watch ever removes them again
            with self._own_lock:
                self._own.add(reply.header.revision)
        self._head = reply.header.revision
        # Another replica may have heard of this write first and asked to hold it.
        self._head_moved()

    async def _settle_conflict(self) -> None:
        # Wait (boundedly) until the watch applied the write that won; past the bound, a
        # full read catches up instead.
        target = self._winner
        if not target or self._head >= target or self._watcher is None:
            return
        if not await self._head_waiters.until(target, SETTLE_WAIT):
            # Through the catch-up pause: every call the conflict undid waits here, and
            # each blocking read made alone in turn froze the loop with etcd slow.
            self._fall_behind()

    def _head_moved(self) -> None:
        # The live state holds the head at ``_head`` now: wake who waited for it.
        self._head_waiters.reached(self._head)

    def _request(self, op: Op) -> etcd.RequestOp:
        if isinstance(op, Put):
            return etcd.RequestOp(request_put=etcd.PutRequest(
                key=self._key(op.table, op.key), value=op.value))
        span = delete_range(op)
        if span is not None:
            return etcd.RequestOp(request_delete_range=etcd.DeleteRangeRequest(
                key=self.prefix + span[0], range_end=self.prefix + span[1]))
        return etcd.RequestOp(request_delete_range=etcd.DeleteRangeRequest(
            key=self._key(op.table, op.key)))

    @property
    def position(self) -> int:
        """The etcd revision the live state holds the prefix at (every write to the
        prefix moves its head row): comparable between replicas.

        Example: ``backend.position`` is e.g. ``1042``.
        """
        return self._head

    async def holds(self, position: int, wait: float) -> bool:
        """Whether the live state holds the prefix at etcd revision ``position`` or
        later, waiting at most ``wait`` seconds for the watch to bring it.

        Example: ``await backend.holds(1042, wait=5.0)``.
        """
        return self._head >= position or await self._head_waiters.until(position, wait)

    def write_leader(self, address: str) -> WriteLeader:
        """The election, in this etcd, of the replica of this prefix that takes the
        writes (its key lies outside the prefix, so no replica loads it as a row).

        Example: ``election = backend.write_leader("10.0.0.5:50051")``.
        """
        return WriteLeader(self._target, leader_key(self.prefix), address,
                           options=self._options, timeout=self.timeout)

    # -- other replicas' writes -------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching etcd for other replicas' writes, applied on ``loop`` (the loop
        the store runs on); the server calls it as it starts.

        Example: ``backend.bind_loop(asyncio.get_running_loop())``.
        """
        if self._watcher is not None:
            return
        self._loop = loop
        # On the loop itself (grpc.aio), not a thread: an event costs no thread hop, no
        # sync gRPC stream thread and no call_soon_threadsafe on its way in.
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), loop) if (
            _running_loop() is not loop) else loop.create_task(self._watch())

    async def _watch(self) -> None:
        # One watch over the prefix from just after what the live state reflects; each
        # revision written by another replica is applied as it comes.
        channel = grpc.aio.insecure_channel(self._target, options=self._options)
        watch = etcd_grpc.WatchStub(channel)  # type: ignore[no-untyped-call]
        broken = False
        try:
            while True:
                call = watch.Watch()
                try:
                    # Not from ``_seen`` alone: it does not move for this replica's own
                    # writes, which came again as others' after etcd restarted, or (made
                    # before the watch existed, so not in ``_own``) at its first start.
                    # Every write to the prefix moves the head row, so the live state is
                    # the prefix exactly as of ``_head``.
                    start = max(self._seen, self._delivered, self._head) + 1
                    await call.write(etcd.WatchRequest(create_request=etcd.WatchCreateRequest(
                        key=self.prefix, range_end=self._end, start_revision=start)))
                    async for reply in call:
                        broken = False
                        if reply.compact_revision or reply.canceled:
                            # Past etcd's compaction: only a full read can catch up.
                            self._post(max(reply.compact_revision, self._seen + 1), None)
                            break
                        try:
                            self._replies(reply)
                        except Exception as exc:
                            # Never the watch's end (nothing would start it again): the
                            # state may lack that write, so a full read catches up.
                            log.error("etcd_watch_apply_failed", where=self.where,
                                      error=repr(exc))
                            self._fall_behind()
                except grpc.aio.AioRpcError as exc:
                    # Said once per outage, not at every retry.
                    (log.debug if broken else log.warning)(
                        "etcd_watch_broken", where=self.where, error=_why(exc))
                    broken = True
                except Exception as exc:
                    # Anything else opens the watch again too, after the same pause.
                    log.error("etcd_watch_failed", where=self.where, error=repr(exc))
                    self._fall_behind()
                finally:
                    call.cancel()
                await asyncio.sleep(WATCH_RETRY)
        finally:
            await channel.close()

    def _replies(self, reply: etcd.WatchResponse) -> None:
        # This replica's own writes are known by revision: skipped before their rows are
        # copied out (with one replica, that is every event the watch brings).
        cut = len(self.prefix)
        by_revision: dict[int, list[tuple[bool, bytes, bytes]]] = {}
        if reply.events:  # (in revision order)
            self._delivered = max(self._delivered, reply.events[-1].kv.mod_revision)
        with self._own_lock:
            own, mine = self._own, set()
            for event in reply.events:
                kv = event.kv
                revision = kv.mod_revision
                if revision in own:
                    mine.add(revision)
                    continue
                by_revision.setdefault(revision, []).append(
                    (event.type == PUT, kv.key[cut:], kv.value))
            own -= mine
        for revision, changes in sorted(by_revision.items()):
            self._post(revision, changes)

    def _post(self, revision: int, changes: list[tuple[bool, bytes, bytes]] | None) -> None:
        # What the watch brought, on the loop (a test holds it back here).
        self._foreign_write(revision, changes)

    def _foreign_write(self, revision: int,
                       changes: list[tuple[bool, bytes, bytes]] | None) -> None:
        # A write the watch saw, on the loop. It may be this replica's own, seen before
        # its txn's answer came back: only once no flush is in flight can it be told.
        if self._flushing is not None or self.pending:
            self._queued.append((revision, changes))
            return
        with self._own_lock:
            if revision in self._own:
                self._own.discard(revision)
                return
        if revision <= self._seen:
            return  # a full read already covered it
        if changes is None:
            self.catch_up()
            return
        self.apply_foreign(changes)
        if not self._behind:
            self._seen = max(self._seen, revision)
            # That flush wrote the head row too: the next flush builds on it. Left at the
            # old head, every write after another replica's failed its compare once.
            if any(key == self._head_key for _, key, _ in changes):
                self._head = max(self._head, revision)
                self._head_moved()

    def _after_flush(self) -> None:
        # What the watch saw during the flush: this replica's own writes, or others'
        # that came after (a write before would have failed the flush's compare).
        queued, self._queued = self._queued, []
        for revision, changes in queued:
            self._foreign_write(revision, changes)

    def _release(self) -> None:
        watcher, loop = self._watcher, self._loop
        if watcher is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(watcher.cancel)
        # Dropped, a grpc.aio channel closes itself (its loop may be gone by now).
        self._aio = None
        self._channel.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _logged(raw: bytes) -> bool:
    # Whether a row key is a logged commit's.
    table, key = decode_key(raw)
    return table == ENTRIES and key[1] == LOG


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code: grpc.StatusCode | None = getattr(exc, "code", lambda: None)()
    return code


def _why(exc: grpc.RpcError) -> str:
    code = _code(exc)
    details = getattr(exc, "details", lambda: "")()
    return f"{getattr(code, 'name', code)}: {details}" if code else str(exc)

