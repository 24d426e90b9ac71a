"""The chaos proxy: a trio TCP proxy between clients and a server that can cut, delay or
black-hole each connection it carries, by hand or at random from a seeded RNG.

A black hole stops forwarding without closing anything: bytes stay unread in the
kernel's buffers, as a dead network path leaves them unacknowledged, so the peers see
silence, not an error; ``heal`` lets them through again (the TCP stream stays intact, as
it would when a path comes back before TCP gives up).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

CHUNK = 65536
FAULTS = ("cut", "delay", "black_hole")


@dataclass
class Link:
    """One proxied connection: its two sockets and how it forwards right now.

    >>> Link(1).mode
    'open'
    """

    number: int
    mode: str = "open"  # "open", "delay" or "black_hole"; "cut" once closed
    delay: float = 0.0
    forwarded: int = 0
    _healed: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def alive(self) -> bool:
        """Whether it is still open (not cut, not ended by a peer).

        >>> Link(1).alive
        True
        """
        return self.mode != "cut"


@dataclass
class FaultCounts:
    """How many faults of each kind the proxy made.

    >>> FaultCounts().total
    0
    """

    cut: int = 0
    delay: int = 0
    black_hole: int = 0

    @property
    def total(self) -> int:
        """All faults together.

        >>> FaultCounts(cut=2, delay=1).total
        3
        """
        return self.cut + self.delay + self.black_hole


class ChaosProxy:
    """Listens on 127.0.0.1 (port 0) and forwards each connection to ``upstream()``
    (a function, so a server restarted on another port can be followed).

    Example: ``port = await nursery.start(proxy.serve)``; ``proxy.black_hole_all()``
    silences every connection, ``proxy.heal_all()`` lets them talk again,
    ``proxy.cut_all()`` closes them.
    """

    def __init__(self, upstream: Callable[[], tuple[str, int]]) -> None:
        self.upstream = upstream
        self.links: list[Link] = []
        self.counts = FaultCounts()
        # New connections are black-holed from their first byte (a path that is down).
        self.black_hole_new = False
        self.port = 0
        self._numbers = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    @property
    def live(self) -> list[Link]:
        """The links still open.

        Example: ``len(proxy.live)`` is how many connections it carries now.
        """
        return [link for link in self.links if link.alive]

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled; ``task_status`` gets the port.

        Example: ``port = await nursery.start(proxy.serve)``.
        """
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        link = Link(next(self._numbers))
        if self.black_hole_new:
            link.mode = "black_hole"
        self.links.append(link)
        host, port = self.upstream()
        try:
            server = await trio.open_tcp_stream(host, port)
        except OSError:
            link.mode = "cut"
            await client.aclose()
            return
        with link._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, link, client, server)
                nursery.start_soon(self._pump, link, server, client)
        link.mode = "cut"
        with trio.CancelScope(shield=True):
            await client.aclose()
            await server.aclose()

    async def _pump(self, link: Link, source: trio.SocketStream,
                    sink: trio.SocketStream) -> None:
        # Reads and writes are ordered per direction: a delayed chunk is held before it is
        # sent, and nothing after it overtakes it.
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def forward() -> None:
            try:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await sink.send_all(data)
                    link.forwarded += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                link._scope.cancel()  # the other peer is gone: end the link

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                while True:
                    while link.mode == "black_hole":
                        await link._healed.wait()
                    data = await source.receive_some(CHUNK)
                    if not data:
                        break
                    while link.mode == "black_hole":  # black-holed while reading
                        await link._healed.wait()
                    due = trio.current_time() + (link.delay if link.mode == "delay" else 0.0)
                    send.send_nowait((due, data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            send.close()
        # One side ended: end the whole link, as a TCP peer closing would.
        link._scope.cancel()

    # ---- faults by hand

    def cut(self, link: Link) -> None:
        """Close both sides of ``link`` now.

        Example: ``proxy.cut(proxy.live[0])``.
        """
        if link.alive:
            self.counts.cut += 1
            link.mode = "cut"
            link._scope.cancel()

    def delay(self, link: Link, seconds: float) -> None:
        """Hold every chunk on ``link`` ``seconds`` before forwarding it.

        Example: ``proxy.delay(proxy.live[0], 0.05)``.
        """
        if link.alive:
            self.counts.delay += 1
            link.mode, link.delay = "delay", seconds
            link._healed.set()

    def black_hole(self, link: Link) -> None:
        """Stop forwarding on ``link`` without closing it.

        Example: ``proxy.black_hole(proxy.live[0])``.
        """
        if link.alive:
            self.counts.black_hole += 1
            link.mode = "black_hole"
            link._healed = trio.Event()

    def heal(self, link: Link) -> None:
        """Forward on ``link`` at once again (ends a delay or a black hole).

        Example: ``proxy.heal(proxy.live[0])``.
        """
        if link.alive:
            link.mode, link.delay = "open", 0.0
            link._healed.set()

    def cut_all(self) -> None:
        """Cut every live link.

        Example: ``proxy.cut_all()``; clients see their connections reset.
        """
        for link in self.live:
            self.cut(link)

    def black_hole_all(self, new_too: bool = False) -> None:
        """Black-hole every live link (and, with ``new_too``, every later one).

        Example: ``proxy.black_hole_all(new_too=True)``: the server is unreachable.
        """
        self.black_hole_new = new_too
        for link in self.live:
            self.black_hole(link)

    def heal_all(self) -> None:
        """Heal every live link; new links are forwarded again.

        Example: ``proxy.heal_all()`` after ``proxy.black_hole_all(new_too=True)``.
        """
        self.black_hole_new = False
        for link in self.live:
            self.heal(link)

    # ---- faults at random

    def random_fault(self, rng: random.Random, max_delay: float = 0.2) -> tuple[str, Link] | None:
        """Pick a live link and a fault from ``rng`` and apply it; None if no link is live.
        A delay lasts until the next heal; so does a black hole.

        Example: ``proxy.random_fault(random.Random(7))`` is e.g. ``("cut", link)``.
        """
        live = self.live
        if not live:
            return None
        link = rng.choice(live)
        kind = rng.choice(FAULTS)
        if kind == "cut":
            self.cut(link)
        elif kind == "delay":
            self.delay(link, rng.uniform(0.001, max_delay))
        else:
            self.black_hole(link)
        return kind, link
