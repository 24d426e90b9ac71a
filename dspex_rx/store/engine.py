"""MemoryStore: the store's public entry point, the engine's parts over one Backend."""

from __future__ import annotations

from typing import Any

from dspex_rx.store.exchange import Exchange


class MemoryStore(Exchange):
    """The store: sessions and variables, validated, access-checked and accounted, over a
    Backend (``backend=``; by default a MemoryBackend, so today's arguments keep their meaning).

    >>> from dspex_rx.store import VariableSpec
    >>> store = MemoryStore()
    >>> session, client_id, _ = store.initialize_session()
    >>> specs = [VariableSpec("t", "float", 0.5)]
    >>> records, revision = store.register(session.id, specs, actor=session.id)
    >>> store.get(session.id, "t").value, revision
    (0.5, 1)
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Optimizations running when a durable store stopped have no holder any more, and
        # their fencing tokens must never be accepted again.
        self._end_leases_of_old_holders("the server restarted")
        # Derivation owners keep their tokens, with a fresh window to renew in.
        self._refresh_derivations()
