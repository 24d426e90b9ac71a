"""One consistent read of every row under an etcd prefix, page by page (each at the first
page's revision, so a store of any size is one snapshot without an answer past gRPC's
message limit): the requests and what each answer or error means; the caller makes the
calls, blocking or awaited.
"""

from __future__ import annotations

import grpc

from dspex_rx.etcd_v3 import rpc_pb2 as etcd


class PagedRead:
    """The state of one full read of ``[prefix, end)``: ask ``request()``, hand each answer
    to ``took`` (True once the last page came) and each error's code to ``again`` (True:
    ask again, the page halved or the snapshot started over; False: give up).

    >>> pages = PagedRead(b"p/", b"p0", b"p/meta", page_keys=1000)
    >>> pages.request().limit, pages.took(etcd.RangeResponse()), pages.rows
    (1000, True, [])
    """

    def __init__(self, prefix: bytes, end: bytes, head: bytes, page_keys: int,
                 restarts: int = 3) -> None:
        self.prefix, self.end, self.head = prefix, end, head
        self.limit, self.restarts = page_keys, restarts
        # The rows so far (keys without the prefix), the etcd revision of the snapshot
        # (the first page's), and the head row's mod revision in it (0: no head row).
        self.rows: list[tuple[bytes, bytes]] = []
        self.revision = 0
        self.head_revision = 0
        self._start = prefix

    def request(self) -> etcd.RangeRequest:
        """The next page's Range.

        Example: ``stub.Range(pages.request())``.
        """
        return etcd.RangeRequest(key=self._start, range_end=self.end, limit=self.limit,
                                 revision=self.revision)

    def took(self, reply: etcd.RangeResponse) -> bool:
        """Take one page's answer; True once every row was read (``rows`` sorted).

        Example: ``done = pages.took(reply)``.
        """
        self.revision = self.revision or reply.header.revision
        cut = len(self.prefix)
        for kv in reply.kvs:
            if kv.key == self.head:
                self.head_revision = kv.mod_revision
            self.rows.append((kv.key[cut:], kv.value))
        if not reply.more or not reply.kvs:
            self.rows.sort()
            return True
        self._start = reply.kvs[-1].key + b"\0"
        return False

    def again(self, code: grpc.StatusCode | None) -> bool:
        """Whether a failed page may be asked again: one too large to receive is asked
        in halves; a snapshot compacted away between pages starts over (a few times).

        >>> PagedRead(b"p/", b"p0", b"h", 8).again(grpc.StatusCode.RESOURCE_EXHAUSTED)
        True
        """
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            return True
        if code == grpc.StatusCode.OUT_OF_RANGE and self.revision and self.restarts:
            self.restarts -= 1
            self.rows, self._start, self.revision, self.head_revision = [], self.prefix, 0, 0
            return True
        return False
