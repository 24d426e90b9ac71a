"""Session lifecycle: create or attach (tokens and identity claims), heartbeat, close, expire.

Each session keeps a secret token, made when it is created. The store only keeps and
compares it; who must present it, and how it travels, is the server's business.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Mapping
from typing import Any

from dspex_rx.core.access import ANY_SESSION
from dspex_rx.core.identity import is_glob
from dspex_rx.core.limits import too_many
from dspex_rx.errors import AuthenticationError, InvalidValueError, SessionNotFoundError
from dspex_rx.store.accounts import _client_cost, _session_cost
from dspex_rx.store.checks import MAX_TTL, NAME_RE, _random_id, _show
from dspex_rx.store.leasing import Leasing
from dspex_rx.store.state import ClientLease, Session


def new_token() -> str:
    """A session's secret: 32 random bytes, URL-safe. The prefix keeps it from starting
    with "-" (1 token in 64 did), which a command line takes for an option:
    ``dspex-rx get x --token -Qx...`` was a usage error.

    >>> token = new_token()
    >>> token.startswith("tok_"), len(token)
    (True, 47)
    """
    return "tok_" + secrets.token_urlsafe(32)


def _check_token(session: Session, token: str) -> None:
    # The messages say why, never what was sent or expected.
    if not token:
        raise AuthenticationError(
            f"session {session.id!r} needs its session token, and none was presented"
        )
    if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), session.token.encode()):
        raise AuthenticationError(
            f"the session token presented is not the token of session {session.id!r}"
        )


class Sessions(Leasing):
    """The engine's session lifecycle part.

    Example: ``store.initialize_session("s")`` returns ``(session, client_id, True)``.
    """

    def initialize_session(
        self,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        client_name: str = "",
        *,
        token: str = "",
        require_token: bool = False,
        principal_key: str = "",
        create: bool = True,
    ) -> tuple[Session, str, bool]:
        """Create a session, or attach to an existing one; returns (session, client_id, created).

        A new session gets a fresh secret ``session.token``. With ``require_token``,
        attaching to an existing session needs that ``token``, and so does creating again
        the id of an ended session (which then keeps its token). Creating an id in a
        namespace of ``principals`` needs that principal's ``principal_key``. A refusal is
        ``AuthenticationError``, and nothing changes. With ``create=False`` the call only
        joins: an id with no live session is ``SessionNotFoundError`` (no empty session is
        made, no ended id revived), and an empty id is ``InvalidValueError``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("session_123")
        >>> _, _, again = store.initialize_session("session_123", token=session.token,
        ...                                         require_token=True)
        >>> created, again
        (True, False)
        >>> store.initialize_session("nobody_here", create=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dspex_rx.errors.SessionNotFoundError: no session 'nobody_here' to join ...
        """
        if ttl is not None and not (ttl == 0 or (math.isfinite(ttl) and 0 < ttl <= MAX_TTL)):
            raise InvalidValueError(
                f"session ttl must be between 0 and {MAX_TTL:g} seconds (0 for the server "
                f"default), got {ttl!r}"
            )
        # The server's terms, not the caller's: a client that stops heartbeating is
        # detached after at most max_session_ttl, whatever it asked (the answer says).
        ttl = min(ttl or self.default_ttl, self.limits.max_session_ttl)
        now = self._clock()
        created = False
        limits = self.limits
        if session_id:
            if not isinstance(session_id, str) or not NAME_RE.fullmatch(session_id):
                raise InvalidValueError(
                    f"session id {_show(session_id)} is not valid (letters, digits, _ . - /; "
                    "up to 256 characters, not starting with a digit)"
                )
        elif not create:
            raise InvalidValueError(
                "create=False joins an existing session, so it needs that session's id; "
                "none was given (pass session_id, or create=True for a new session)"
            )
        else:
            session_id = "sess_" + secrets.token_hex(8)
        self._check_reason("client name", client_name)
        client = ClientLease(client_name, ttl, now)
        session = self._sessions.get(session_id)
        if session is None and not create:
            # Before the claim checks: a join that finds nothing changes nothing.
            raise SessionNotFoundError(
                f"no session {session_id!r} to join (create=False): it was never created, or "
                "it ended (its last client left and the server's session TTL ran out); "
                "check the id, or pass create=True to start a new session with this id"
            )
        if session is None:
            returning = self._check_claim(session_id, token, require_token, principal_key)
            clean, size = self._clean_metadata(session_id, metadata, "session metadata")
            if len(self._sessions) >= limits.max_sessions and not self._evict_idle():
                raise too_many(
                    f"the server already holds {len(self._sessions)} sessions",
                    len(self._sessions) + 1, "max_sessions", limits.max_sessions,
                )
            session = Session(
                session_id, clean, now, metadata_size=size,
                token=token if returning else new_token(),
                claim=self._retired.claim_of(session_id) if returning else _random_id(),
                incarnation=_random_id(),
            )
            self._accounts.check_room(session, _session_cost(session) + _client_cost(client))
            self._retired.revive(session_id)
            self._backend.add_session(session)
            self._accounts.charge(session, "other_bytes", _session_cost(session))
            created = True
        else:
            if require_token:
                _check_token(session, token)
            if len(session.clients) >= limits.max_clients_per_session:
                raise too_many(
                    f"session {session_id!r} already has {len(session.clients)} clients "
                    "attached", len(session.clients) + 1, "max_clients_per_session",
                    limits.max_clients_per_session,
                )
            self._accounts.check_room(session, _client_cost(client))
        client_id = "cli_" + secrets.token_hex(8)
        session.clients[client_id] = client
        session.idle_since = None
        self._accounts.charge(session, "other_bytes", _client_cost(client))
        self._backend.touch(session.id)
        return session, client_id, created

    def _evict_idle(self) -> bool:
        # At max_sessions, a session no client is attached to (kept only for the
        # session_ttl courtesy) gives way to a new one: the longest idle goes, as expiry
        # would have removed it; whether there was one. Without this, sessions left idle
        # by a flood (or by clients that never came back) locked everyone out.
        idle = [s for s in self._sessions.values() if not s.clients]
        if not idle:
            return False
        now = self._clock()
        oldest = min(idle, key=lambda s: now if s.idle_since is None else s.idle_since)
        self._remove(oldest)
        return True

    def _check_claim(
        self, session_id: str, token: str, require_token: bool, principal_key: str
    ) -> bool:
        # May this caller create ``session_id``? True when it is the claimant of a retired
        # id coming back (it keeps its token). Reserved ids need the principal's key
        # whatever the auth mode (Server refuses principals without token auth).
        self.principals.check_key(session_id, principal_key)
        if not self._retired.claims(session_id):
            return False
        if self._retired.token_matches(session_id, token):
            return True
        if not require_token or self.principals.owner(session_id) is not None:
            return False  # the principal's key is the claim; the old token is not needed
        said = "no token was presented" if not token else "the token presented is not its"
        raise AuthenticationError(
            f"session id {session_id!r} belonged to a session that has ended; only that "
            f"session's token can create it again, and {said} (choose another id, or "
            "leave it empty for a fresh one)"
        )

    def authenticate(self, session_id: str, token: str) -> Session:
        """The live session if ``token`` is its secret; ``SessionNotFoundError`` if there is
        no such session, ``AuthenticationError`` if the token is missing or not its own.

        The comparison takes the same time wherever the token differs.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> store.authenticate("s", session.token).id
        's'
        """
        session = self.session(session_id)
        _check_token(session, token)
        return session

    def visible_sessions(
        self, session_id: str = "", token: str = "", principal_key: str = "", *,
        everything: bool = False,
    ) -> list[Session]:
        """The live sessions a caller may see, sorted by id: ``session_id`` when ``token``
        is its own (else ``AuthenticationError``, or ``SessionNotFoundError`` for no such
        session), and every session whose id lies in a principal namespace that
        ``principal_key`` opens; ``everything`` (a server without token checks) shows all.

        >>> from dspex_rx.store import MemoryStore
        >>> store = MemoryStore()
        >>> mine, _, _ = store.initialize_session("mine")
        >>> _ = store.initialize_session("theirs")
        >>> [s.id for s in store.visible_sessions("mine", mine.token)]
        ['mine']
        >>> [s.id for s in store.visible_sessions(everything=True)]
        ['mine', 'theirs']
        """
        if everything:
            return sorted(self._sessions.values(), key=lambda s: s.id)
        seen: dict[str, Session] = {}
        if session_id:
            seen[session_id] = self.authenticate(session_id, token)
        if principal_key:
            for session in self._sessions.values():
                namespace = self.principals.owner(session.id)
                if namespace is not None and namespace.key_matches(principal_key):
                    seen[session.id] = session
        return [seen[key] for key in sorted(seen)]

    def heartbeat(self, session_id: str, client_id: str) -> float:
        """Keep a client attached; returns when it will expire without another heartbeat.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore(clock=lambda: 100.0)
        >>> session, client_id, _ = store.initialize_session("s", ttl=30)
        >>> store.heartbeat("s", client_id)
        130.0
        """
        session = self.session(session_id)
        lease = session.clients.get(client_id)
        if lease is None:
            raise SessionNotFoundError(
                f"client {_show(client_id)} is not attached to session {session_id!r} "
                "(expired?)",
                detached=True,
            )
        lease.last_seen = self._clock()
        # Stored too: another replica of a shared store must see the client is alive.
        self._backend.touch(session.id)
        return lease.last_seen + lease.ttl

    def close_session(self, session_id: str, client_id: str) -> bool:
        """Detach a client; returns whether the session went with it. With ``session_ttl``
        0 a session and its variables go with its last client; otherwise it is kept,
        idle, for ``session_ttl`` seconds (``expire`` removes it after), and a client may
        join it again meanwhile.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> store.close_session("s", client_id), store.session_ids()
        (True, [])
        >>> kept = MemoryStore(session_ttl=3600, clock=lambda: 50.0)
        >>> session, client_id, created = kept.initialize_session("s")
        >>> kept.close_session("s", client_id), kept.session("s").idle_since
        (False, 50.0)
        """
        session = self.session(session_id)
        client = session.clients.pop(client_id, None)
        if client is not None:
            self._accounts.charge(session, "other_bytes", -_client_cost(client))
            self._backend.touch(session.id)
        if not session.clients and not self.session_ttl:
            self._remove(session)
            return True
        # Its optimizations end with it: nothing is left to renew them, and waiting for
        # their TTL would lock the variables for nothing.
        self._release_client_leases(
            session, client_id, "failed", f"its holder ({client_id}) closed its connection"
        )
        if not session.clients:
            self._idle(session, self._clock())
        return False

    def _idle(self, session: Session, now: float) -> None:
        # The last client left a session the store keeps: its TTL counts from now (from
        # the first time it was seen without clients, if that was earlier).
        if session.idle_since is None:
            session.idle_since = now
            self._backend.touch(session.id)

    def _remove(self, session: Session) -> None:
        def settle(gone: Session) -> None:
            # After the session left the table, before its watchers hear None.
            self._retired.retire(gone.id, gone.token, gone.claim)
            self._retired.trim(self._named_ids)
            self._accounts.forget_session(gone)
            self._end_held_leases(gone.id, "failed", f"its holder session {gone.id} went away")

        self._backend.remove_session(session.id, settle=settle)

    def _named_ids(self) -> set[str]:
        # The exact ids some rule names: their retired claims must outlive any cap.
        return {
            rule.session_pattern
            for session in self._sessions.values()
            for rules in session.rules.values()
            for rule in rules
            if rule.session_pattern != ANY_SESSION and not is_glob(rule.session_pattern)
        }

    def expire(self) -> list[str]:
        """Drop clients silent past their TTL; then remove the sessions left with none
        (with ``session_ttl``, once they have had none for longer than it); returns the
        ids removed.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> now = [0.0]
        >>> store = MemoryStore(clock=lambda: now[0])
        >>> _ = store.initialize_session("s", ttl=10)
        >>> now[0] = 11.0
        >>> store.expire()
        ['s']
        >>> kept = MemoryStore(clock=lambda: now[0], session_ttl=100)
        >>> _ = kept.initialize_session("s", ttl=10)
        >>> now[0] = 22.0
        >>> kept.expire(), kept.session("s").idle_since
        ([], 22.0)
        >>> now[0] = 123.0
        >>> kept.expire()
        ['s']
        """
        now = self._clock()
        removed = []
        for session in list(self._sessions.values()):
            self._expire_leases(session)
            for client_id, lease in list(session.clients.items()):
                if now - lease.last_seen > lease.ttl:
                    del session.clients[client_id]
                    self._accounts.charge(session, "other_bytes", -_client_cost(lease))
                    self._backend.touch(session.id)
                    # A session that stays (other clients, or a session TTL) must end
                    # this client's leases itself; a removed one ends them as it goes.
                    if session.clients or self.session_ttl:
                        self._release_client_leases(
                            session, client_id, "expired",
                            f"its holder ({client_id}) stopped heartbeating",
                        )
            if session.clients:
                continue
            if self.session_ttl:
                # idle_since is None when it lost its last client just now, or when it
                # came without one (a durable backend reopened): its TTL starts now.
                self._idle(session, now)
                assert session.idle_since is not None
                if now - session.idle_since <= self.session_ttl:
                    continue
            self._remove(session)
            removed.append(session.id)
        return removed
