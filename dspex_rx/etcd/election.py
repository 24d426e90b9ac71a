"""The write-leader election of replicas over one etcd store: which replica holds the
store's leader key under a live lease, and who each replica (candidate or follower) sees
leading.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from dspex_rx.etcd_v3 import rpc_pb2 as etcd
from dspex_rx.etcd_v3 import rpc_pb2_grpc as etcd_grpc
from dspex_rx.etcd_v3.kv_pb2 import Event, KeyValue
from dspex_rx.logs import get_logger

log = get_logger("dspex_rx.etcd")

# Seconds a leader's key outlives it after a crash (a clean stop revokes at once). etcd
# grants no less than its own minimum (2 s with default election timing).
LEASE_TTL = 5
# The pause between tries while etcd is unreachable, doubling up to the cap.
RETRY_MIN, RETRY_MAX = 0.1, 2.0
# gRPC's own reconnect backoff grows to 120 s; an election that must notice etcd back
# within a lease's life caps it near our own pause cap.
_RECONNECT_MS = 2000
DELETE = Event.DELETE


def leader_key(prefix: bytes) -> bytes:
    """The election's key for the store under ``prefix``: outside the prefix's range
    [prefix, prefix-with-last-byte+1) so the backend's watch of the prefix never sees it:
    prefix[:-1] + b"\\x00write-leader". ValueError for an empty prefix (or one ending in a
    zero byte, whose range would hold the key).

    >>> leader_key(b"stores/a/")
    b'stores/a\\x00write-leader'
    >>> b"stores/a/" <= leader_key(b"stores/a/") < b"stores/a0"
    False
    >>> leader_key(b"")
    Traceback (most recent call last):
    ...
    ValueError: a leader key needs a non-empty store prefix not ending in a zero byte, got b''
    """
    if not prefix or prefix[-1] == 0:
        raise ValueError("a leader key needs a non-empty store prefix not ending in a zero "
                         f"byte, got {prefix!r}")
    return prefix[:-1] + b"\x00write-leader"


class _Ended(Exception):
    """An etcd stream ended without an error (the member went away): a retry like one."""


class WriteLeader:
    """One replica's part in the election of its store's write leader: campaigns for
    ``key`` under a lease (unless ``address`` is ""), keeps the lease alive while it
    leads, and follows who leads through a watch of the key.

    Example: ``election = WriteLeader(backend._target, leader_key(backend.prefix),
    "10.0.0.5:50051", options=backend._options)``, then
    ``asyncio.create_task(election.run())``; ``election.leading``, ``election.leader``.
    """

    def __init__(self, target: str, key: bytes, address: str, *, ttl: int = LEASE_TTL,
                 options: Sequence[tuple[str, Any]] = (), timeout: float = 5.0) -> None:
        self.target, self.key, self.address = target, key, address
        self.ttl, self.timeout = ttl, timeout
        self.options = list(options)
        if not any(name == "grpc.max_reconnect_backoff_ms" for name, _ in self.options):
            self.options.append(("grpc.max_reconnect_backoff_ms", _RECONNECT_MS))
        self.leader = ""
        self.leading = False
        self._callbacks: list[Callable[[str], None]] = []
        # The lease this replica campaigns with (0: none); kept across an outage, since
        # etcd may still hold the key under it when it is back.
        self._lease = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._up = False
        self._first = True

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` (on the loop) with the new leader ("" = none known) whenever
        ``leader`` changes.

        Example: ``election.on_change(lambda leader: print("writes go to", leader))``.
        """
        self._callbacks.append(callback)

    async def run(self) -> None:
        """Campaign and follow until cancelled; on cancellation revoke this replica's lease
        (so another takes over at once, not after the TTL) and close the channel. gRPC
        errors are retried, never raised.

        Example: ``task = asyncio.create_task(election.run())``; ``task.cancel()`` to stop.
        """
        channel = grpc.aio.insecure_channel(self.target, options=self.options)
        self._kv = etcd_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        self._leases = etcd_grpc.LeaseStub(channel)  # type: ignore[no-untyped-call]
        self._watches = etcd_grpc.WatchStub(channel)  # type: ignore[no-untyped-call]
        pause, broken = RETRY_MIN, False
        try:
            while True:
                self._up = False
                try:
                    await self._session()
                except (grpc.RpcError, TimeoutError, _Ended) as exc:
                    if self._up or not broken:  # said once per outage, not at every retry
                        log.warning("etcd_election_broken", target=self.target,
                                    error=_why(exc))
                    broken = True
                    pause = RETRY_MIN if self._up else min(pause * 2, RETRY_MAX)
                    await asyncio.sleep(pause)
                else:
                    broken = broken and not self._up
                    # At once: each such end is a change in etcd (the key gone or taken).
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            await self._resign()
            raise
        finally:
            if self._expiry is not None:
                self._expiry.cancel()  # (a no-op once it ran)
            await channel.close()

    async def _session(self) -> None:
        # Campaign (or read who leads), then follow the key until a change needs a new
        # campaign (the key deleted, or the lease lost): returns then; raises on errors.
        renewals = self._leases.LeaseKeepAlive() if self.address else None
        tasks: list[asyncio.Task[None]] = []
        try:
            if renewals is None:
                reply = await self._kv.Range(etcd.RangeRequest(key=self.key),
                                             timeout=self.timeout)
                kvs, revision = list(reply.kvs), reply.header.revision
            else:
                campaign = await self._campaign(renewals)
                if campaign is None:
                    return
                kvs, revision = campaign
            self._read(kvs)
            tasks.append(asyncio.create_task(self._follow(revision)))
            if self.leading and renewals is not None:
                tasks.append(asyncio.create_task(self._keep(renewals)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the error that ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if renewals is not None:
                renewals.cancel()

    async def _campaign(self, renewals: Any) -> tuple[list[Any], int] | None:
        # A lease kept across an outage is tried first: etcd may hold the key under it.
        if self._lease and not await self._renew(renewals):
            self._lease = 0
        if not self._lease:
            sent = asyncio.get_running_loop().time()
            grant = await self._leases.LeaseGrant(etcd.LeaseGrantRequest(TTL=self.ttl),
                                                  timeout=self.timeout)
            self._lease = grant.ID
            self._renewed(sent, grant.TTL)
        mine = KeyValue(key=self.key, value=self.address.encode(), lease=self._lease)
        free = etcd.Compare(key=self.key, target=etcd.Compare.CREATE,
                            result=etcd.Compare.EQUAL, create_revision=0)
        reply = await self._claim(free)
        held = [] if reply is None else reply.responses[0].response_range.kvs
        if self._first and held and held[0].value == mine.value and held[0].lease != mine.lease:
            # This address's key from an earlier run of this replica (it crashed, its
            # lease lives on for up to a TTL): taken over rather than waited out. Only at
            # the first campaign, so two replicas misconfigured with one address settle.
            reply = await self._claim(etcd.Compare(
                key=self.key, target=etcd.Compare.MOD, result=etcd.Compare.EQUAL,
                mod_revision=held[0].mod_revision))
        if reply is None:
            return None
        self._first = False
        if reply.succeeded:
            return [mine], reply.header.revision
        kvs = list(reply.responses[0].response_range.kvs)
        if not any(kv.lease == self._lease for kv in kvs):
            # Lost: the lease would only keep a key this replica does not hold.
            lost, self._lease = self._lease, 0
            await self._revoke(lost)
        return kvs, reply.header.revision

    async def _claim(self, compare: etcd.Compare) -> Any:
        # Put this replica's address under its lease if ``compare`` holds, else read the
        # key; None when the lease expired between its renewal and the txn.
        txn = etcd.TxnRequest(
            compare=[compare],
            success=[etcd.RequestOp(request_put=etcd.PutRequest(
                key=self.key, value=self.address.encode(), lease=self._lease))],
            failure=[etcd.RequestOp(request_range=etcd.RangeRequest(key=self.key))])
        try:
            reply = await self._kv.Txn(txn, timeout=self.timeout)
        except grpc.RpcError as exc:
            if getattr(exc, "code", lambda: None)() != grpc.StatusCode.NOT_FOUND:
                raise
            self._lease = 0
            return None
        self._up = True
        return reply

    def _read(self, kvs: list[Any]) -> None:
        # The key as read: held under this replica's lease, someone else's, or nobody's.
        self.leading = bool(kvs and self._lease) and kvs[0].lease == self._lease
        self._see(kvs[0].value.decode() if kvs else "")
        self._up = True

    async def _follow(self, revision: int) -> None:
        call = self._watches.Watch()
        try:
            await call.write(etcd.WatchRequest(create_request=etcd.WatchCreateRequest(
                key=self.key, start_revision=revision + 1)))
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    raise _Ended("the watch of the leader key ended")
                if reply.canceled and reply.compact_revision:
                    return  # compacted past it: read the key again
                if reply.canceled:  # paced like an outage, never a hot loop of watches
                    raise _Ended(f"etcd cancelled the watch: {reply.cancel_reason}")
                for event in reply.events:
                    held = self.leading
                    if event.type == DELETE:
                        self.leading = False
                        self._see("")
                        if self.address:
                            return  # campaign again at once
                    else:
                        self.leading = bool(self._lease) and event.kv.lease == self._lease
                        self._see(event.kv.value.decode())
                        if held and not self.leading:
                            return  # the key changed hands: drop the lease and campaign
        finally:
            call.cancel()

    async def _keep(self, renewals: Any) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not await self._renew(renewals):
                # The lease is gone: the key went with it (its DELETE may come later).
                self.leading, self._lease = False, 0
                if self.leader == self.address:
                    self._see("")
                return
            if not self.leading:
                # Renewed late, past the local expiry: the key is still this lease's
                # (a change of hands would have ended the session through the watch).
                self.leading = True
                self._see(self.address)

    async def _renew(self, renewals: Any) -> bool:
        # One keepalive on the session's stream; True while the lease lives.
        sent = asyncio.get_running_loop().time()
        await renewals.write(etcd.LeaseKeepAliveRequest(ID=self._lease))
        answer = await asyncio.wait_for(renewals.read(), self.timeout)
        if answer is grpc.aio.EOF:
            raise _Ended("the lease keepalive stream ended")
        if answer.TTL <= 0:
            return False
        self._renewed(sent, answer.TTL)
        return True

    def _renewed(self, sent: float, ttl: int) -> None:
        # The lease lives at least ``ttl`` past the request's sending: past that, unless
        # renewed again, this replica may no longer hold the key.
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_at(sent + ttl, self._expired)

    def _expired(self) -> None:
        self.leading = False
        if self.leader == self.address:
            self._see("")

    async def _resign(self) -> None:
        lease, self._lease = self._lease, 0
        self._expired()
        await self._revoke(lease)

    async def _revoke(self, lease: int) -> None:
        # Best effort: a lease not revoked expires after its TTL anyway.
        if lease:
            with contextlib.suppress(grpc.RpcError, TimeoutError):
                await self._leases.LeaseRevoke(etcd.LeaseRevokeRequest(ID=lease),
                                               timeout=self.timeout)

    def _see(self, leader: str) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        for callback in list(self._callbacks):
            try:
                callback(leader)
            except Exception as exc:  # one bad listener must not stop the election
                log.error("etcd_election_callback_failed", error=repr(exc))


def _why(exc: Exception) -> str:
    code = getattr(exc, "code", lambda: None)()
    return f"{code.name}: {exc.details()}" if code else repr(exc)  # type: ignore[attr-defined]
