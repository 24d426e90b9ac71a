"""Rate limits of the server: token buckets per peer address and per session id for
``InitializeSession`` and failed authentications, and the sessions each peer made.

Kept in memory on purpose: a restart starts every bucket full, which costs an attacker
nothing it could not get by waiting a minute, and keeps the hot path free of storage.
The numbers are ``Limits`` fields (``inits_per_minute_per_peer`` ...): a bucket holds up
to that many tokens and refills evenly over a minute.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import math
import time
from collections.abc import Callable

from dspex_rx.core.limits import Limits, too_many
from dspex_rx.errors import RateLimitedError

MINUTE = 60.0
# Buckets kept per kind before full ones are forgotten (a full bucket is the same as none)
# and, past that, the oldest down to three quarters: session ids are the caller's to
# choose, so their buckets must not grow without bound.
MAX_KEYS = 65_536


# Cached: every authenticated call asks, with one of a few peer strings, and parsing the
# address was a tenth of a pipelined write's server time.
@functools.lru_cache(maxsize=4096)
def peer_address(peer: str) -> str:
    """The address a caller is counted by: gRPC's ``context.peer()`` without the port;
    an IPv6 address by its /64 (one host usually holds a whole /64), an IPv4-mapped one
    as IPv4, and every Unix-socket caller as ``unix``.

    >>> peer_address("ipv4:127.0.0.1:50321")
    '127.0.0.1'
    >>> peer_address("ipv6:[2001:db8::1:2]:443")
    '2001:db8::/64'
    >>> peer_address("ipv6:[::ffff:10.0.0.7]:80"), peer_address("unix:/tmp/s")
    ('10.0.0.7', 'unix')
    """
    scheme, _, rest = (peer or "").partition(":")
    if scheme in ("unix", "unix-abstract"):
        return "unix"
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host or peer or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Buckets:
    """Token buckets by key, all alike: each holds up to ``per_minute`` tokens and gains
    ``per_minute / 60`` a second; a key never seen is a full bucket.

    >>> now = [0.0]
    >>> buckets = Buckets(2, lambda: now[0])
    >>> buckets.take("a"), buckets.take("a"), buckets.wait("a")
    (True, True, 30.0)
    >>> now[0] = 30.0
    >>> buckets.take("a"), buckets.take("b")
    (True, True)
    """

    __slots__ = ("_clock", "_levels", "capacity", "rate")

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / MINUTE
        self._clock = clock
        # key -> (tokens, when counted), oldest touched first.
        self._levels: dict[str, tuple[float, float]] = {}

    def tokens(self, key: str) -> float:
        """The tokens ``key`` has now.

        >>> Buckets(5, lambda: 0.0).tokens("a")
        5.0
        """
        kept = self._levels.get(key)
        if kept is None:
            return self.capacity
        tokens, then = kept
        # max(0, ...): a clock that steps back refills nothing rather than draining.
        return min(self.capacity, tokens + max(0.0, self._clock() - then) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a whole token (0 when it has one now).

        >>> Buckets(60, lambda: 0.0).wait("a")
        0.0
        """
        missing = 1.0 - self.tokens(key)
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, key: str) -> bool:
        """Take a token if ``key`` has one; whether it had.

        >>> Buckets(1, lambda: 0.0).take("a")
        True
        """
        tokens = self.tokens(key)
        if tokens < 1.0:
            return False
        self._set(key, tokens - 1.0)
        return True

    def spend(self, key: str) -> None:
        """Take a token whether or not one is there (never below empty): a failure has
        happened already and must count.

        >>> buckets = Buckets(1, lambda: 0.0); buckets.spend("a"); buckets.spend("a")
        >>> buckets.tokens("a")
        0.0
        """
        self._set(key, max(0.0, self.tokens(key) - 1.0))

    def __len__(self) -> int:
        return len(self._levels)

    def _set(self, key: str, tokens: float) -> None:
        levels = self._levels
        levels.pop(key, None)  # re-inserted: newest last
        levels[key] = (tokens, self._clock())
        if len(levels) > MAX_KEYS:
            # Down to three quarters, so this scan runs once per MAX_KEYS/4 new keys at
            # most, never on every call of a caller that keeps the map full.
            for old in [k for k in levels if self.tokens(k) >= self.capacity]:
                del levels[old]
            excess = len(levels) - (MAX_KEYS - MAX_KEYS // 4)
            for old in list(itertools.islice(levels, max(0, excess))):
                del levels[old]


def _seconds(wait: float) -> str:
    # Rounded up to the millisecond: a caller that waits this long finds a token.
    return f"{math.ceil(wait * 1000) / 1000:g}"


class Guard:
    """The server's rate limits and per-peer session counts, from ``limits``.

    ``clock`` (monotonic seconds) times the buckets; tests give a fake one.

    >>> now = [0.0]
    >>> guard = Guard(Limits(inits_per_minute_per_peer=1), clock=lambda: now[0])
    >>> guard.admit_init("10.0.0.1", "")
    >>> guard.admit_init("10.0.0.1", "")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dspex_rx.errors.RateLimitedError: too many InitializeSession calls from 10.0.0.1: ...
    >>> guard.admit_init("10.0.0.2", "")  # another peer has its own bucket
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.inits_by_peer = Buckets(limits.inits_per_minute_per_peer, clock)
        self.inits_by_session = Buckets(limits.inits_per_minute_per_session, clock)
        self.failures_by_peer = Buckets(limits.auth_failures_per_minute_per_peer, clock)
        self.failures_by_session = Buckets(limits.auth_failures_per_minute_per_session, clock)
        # peer -> {session id: incarnation} of the sessions it created; checked against
        # the store when counted, so sessions that ended need no notice here.
        self._made: dict[str, dict[str, int]] = {}
        self._entries = 0  # in _made, all peers together

    def admit_init(self, peer: str, session_id: str) -> None:
        """Take an ``InitializeSession`` token of ``peer`` and of ``session_id`` (when one
        is named), or refuse with ``RateLimitedError`` taking none; then refuse too while
        either has no failed authentication left (``admit_auth``).

        Example: ``guard.admit_init("10.0.0.1", "bob")`` before the store's call.
        """
        limits = self.limits
        waits = [(self.inits_by_peer.wait(peer), f"from {peer}",
                  "inits_per_minute_per_peer", limits.inits_per_minute_per_peer)]
        if session_id:
            waits.append((self.inits_by_session.wait(session_id), f"for session {session_id!r}",
                           "inits_per_minute_per_session",
                           limits.inits_per_minute_per_session))
        self._refuse("InitializeSession calls", waits)
        self.admit_auth(peer, session_id)
        self.inits_by_peer.take(peer)
        if session_id:
            self.inits_by_session.take(session_id)

    def admit_auth(self, peer: str, session_id: str = "") -> None:
        """Refuse (``RateLimitedError``) an authentication while ``peer``, or
        ``session_id`` when one is named, has no failure left in its bucket.

        Example: ``guard.admit_auth("10.0.0.1")`` before checking a token.
        """
        limits = self.limits
        waits = [(self.failures_by_peer.wait(peer), f"from {peer}",
                  "auth_failures_per_minute_per_peer",
                  limits.auth_failures_per_minute_per_peer)]
        if session_id:
            waits.append((self.failures_by_session.wait(session_id),
                          f"for session {session_id!r}", "auth_failures_per_minute_per_session",
                          limits.auth_failures_per_minute_per_session))
        self._refuse("failed authentications", waits)

    def failed(self, peer: str, session_id: str = "") -> None:
        """Count a failed authentication against ``peer`` and ``session_id``.

        Example: ``guard.failed("10.0.0.1", "bob")`` after a wrong token.
        """
        self.failures_by_peer.spend(peer)
        if session_id:
            self.failures_by_session.spend(session_id)

    def _refuse(self, what: str, waits: list[tuple[float, str, str, int]]) -> None:
        wait, where, name, limit = max(waits, key=lambda item: item[0])
        if wait > 0:
            after = _seconds(wait)
            raise RateLimitedError(
                f"too many {what} {where}: the {name} limit of {limit} per minute is used "
                f"up; retry after {after} s", limit=name, retry_after=after,
            )

    def check_sessions(self, peer: str, attached: Callable[[str, int], bool]) -> None:
        """Refuse (``ResourceExhaustedError``) a new session from ``peer`` while it has
        made ``max_sessions_per_peer`` that still have a client; ``attached(id,
        incarnation)`` says whether a session it made is live with a client.

        Example: ``guard.check_sessions("10.0.0.1", attached)`` before creating.
        """
        made = self._made.get(peer)
        if not made:
            return
        for session_id, incarnation in list(made.items()):
            if not attached(session_id, incarnation):
                del made[session_id]
                self._entries -= 1
        if not made:
            del self._made[peer]
        cap = self.limits.max_sessions_per_peer
        if len(made) >= cap:
            raise too_many(
                f"{peer} already has {len(made)} sessions with a client attached",
                len(made) + 1, "max_sessions_per_peer", cap,
            )

    def made(self, peer: str, session_id: str, incarnation: int,
             attached: Callable[[str, int], bool]) -> None:
        """Count a session ``peer`` just created; past ``max_sessions`` entries in all,
        the ones no longer attached are dropped.

        Example: ``guard.made("10.0.0.1", "sess_1", 7, attached)`` after creating.
        """
        made = self._made.setdefault(peer, {})
        self._entries += session_id not in made
        made[session_id] = incarnation
        if self._entries > 2 * self.limits.max_sessions:
            # Peers that never come back would keep their ended sessions here forever.
            for other in list(self._made):
                kept = {sid: inc for sid, inc in self._made[other].items() if attached(sid, inc)}
                if kept:
                    self._made[other] = kept
                else:
                    del self._made[other]
            self._entries = sum(map(len, self._made.values()))

    def sessions_of(self, peer: str) -> int:
        """How many sessions ``peer`` made that were attached when last counted.

        >>> Guard(Limits()).sessions_of("10.0.0.1")
        0
        """
        return len(self._made.get(peer, ()))
