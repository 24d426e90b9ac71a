"""MemoryStore: the store's public entry point, the engine's parts over one Backend."""

from __future__ import annotations

from dspex_rx.store.exchange import Exchange


class MemoryStore(Exchange):
    """Sessions and variables in memory; the default backend.

    Example::

        store = MemoryStore()
        session, client_id, _ = store.initialize_session()
        store.register(session.id, [VariableSpec("t", "float", 0.5)], actor=session.id)
    """
