"""Derivation leases as the store keeps them: which client recomputes a derived variable
(its owner, under a fencing token and a TTL), which clients stand by to take over, and
whether the variable is stale (no owner left). No gRPC and no clock here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# How many standbys one derivation keeps, and how many ended tokens it remembers (so a
# stale owner's write is refused with the reason its lease ended).
MAX_STANDBYS = 16
RECENT_TOKENS = 8


@dataclass(slots=True)
class Standby:
    """A client registered to take a derivation over, alive while it renews within the TTL.

    >>> Standby("s", "c2", 40.0).client
    'c2'
    """

    session: str
    client: str
    expires_at: float


@dataclass(slots=True)
class Derivation:
    """The derivation lease of one variable: ``fn(*inputs)`` is kept by the owner
    (``owner_session``/``owner_client``, writing under ``token``, renewing before
    ``expires_at``); ``standbys`` wait in order. With no owner the variable is ``stale``.

    Mutable on purpose: the store is its only writer, and persists it with its variable.

    >>> d = Derivation("var_d_3", ("var_a_1",), 10.0)
    >>> d.take("s", "c1", 7, 5.0); d.role("s", "c1"), d.expires_at
    ('owner', 15.0)
    """

    variable_id: str
    inputs: tuple[str, ...]
    ttl: float
    owner_session: str = ""
    owner_client: str = ""
    token: int = 0
    expires_at: float = 0.0
    standbys: list[Standby] = field(default_factory=list)
    last_computed_revision: int = 0
    stale: bool = False
    stale_reason: str = ""
    # Tokens that no longer write, newest last, each with why its lease ended.
    ended: list[tuple[int, str]] = field(default_factory=list)

    @property
    def owned(self) -> bool:
        """Whether a client holds the lease.

        >>> Derivation("v", ("a",), 1.0).owned
        False
        """
        return bool(self.owner_session)

    def role(self, session_id: str, client_id: str) -> str:
        """``owner``, ``standby`` or ``none``: what this client is to the derivation.

        >>> d = Derivation("v", ("a",), 1.0); d.standbys.append(Standby("s", "c", 2.0))
        >>> d.role("s", "c"), d.role("s", "other")
        ('standby', 'none')
        """
        if self.owned and (self.owner_session, self.owner_client) == (session_id, client_id):
            return "owner"
        if self.standby(session_id, client_id) is not None:
            return "standby"
        return "none"

    def standby(self, session_id: str, client_id: str) -> Standby | None:
        """This client's standby entry, or None.

        >>> Derivation("v", ("a",), 1.0).standby("s", "c") is None
        True
        """
        for entry in self.standbys:
            if (entry.session, entry.client) == (session_id, client_id):
                return entry
        return None

    def take(self, session_id: str, client_id: str, token: int, now: float) -> None:
        """Make this client the owner under a new ``token`` (leaving the standbys, and the
        variable no longer stale).

        >>> d = Derivation("v", ("a",), 3.0, stale=True); d.take("s", "c", 9, 1.0)
        >>> d.token, d.stale, d.expires_at
        (9, False, 4.0)
        """
        self.standbys = [s for s in self.standbys if (s.session, s.client) != (session_id,
                                                                                client_id)]
        self.owner_session, self.owner_client, self.token = session_id, client_id, token
        self.expires_at = now + self.ttl
        self.stale, self.stale_reason = False, ""

    def give_up(self, why: str) -> None:
        """The owner's lease ends: its token is refused from now on, with ``why``.

        >>> d = Derivation("v", ("a",), 3.0); d.take("s", "c", 9, 1.0); d.give_up("lapsed")
        >>> d.owned, d.ended
        (False, [(9, 'lapsed')])
        """
        if self.token:
            self.ended = [*self.ended, (self.token, why)][-RECENT_TOKENS:]
        self.owner_session = self.owner_client = ""
        self.token = 0
        self.expires_at = 0.0

    def ended_why(self, token: int) -> str | None:
        """Why the lease of an ended ``token`` ended, or None for a token never seen.

        >>> d = Derivation("v", ("a",), 3.0, ended=[(9, "lapsed")]); d.ended_why(9)
        'lapsed'
        """
        for old, why in reversed(self.ended):
            if old == token:
                return why
        return None

    def status(self, name: str, input_names: Mapping[str, str]) -> dict[str, Any]:
        """The status as plain values (``input_names``: input ids to names).

        >>> d = Derivation("v", ("var_a_1",), 3.0); d.take("s", "c", 9, 1.0)
        >>> d.status("d", {"var_a_1": "a"})["owner"], d.status("d", {})["inputs"]
        ('c', ['var_a_1'])
        """
        return {
            "variable": name,
            "inputs": [input_names.get(i, i) for i in self.inputs],
            "owner": self.owner_client if self.owned else None,
            "owner_session": self.owner_session or None,
            "standbys": [s.client for s in self.standbys],
            "standby_sessions": [s.session for s in self.standbys],
            "last_computed_revision": self.last_computed_revision,
            "stale": self.stale,
            "stale_reason": self.stale_reason,
            "ttl": self.ttl,
            "expires_at": self.expires_at if self.owned else None,
        }
