"""The durable backend: the store's state in one SQLite file under a data dir
(``SqliteBackend``), and its online snapshot, restore and export (``backup``).
"""

from __future__ import annotations

from dspex_rx.store.sqlite.backend import SqliteBackend
from dspex_rx.store.sqlite.codec import FILE_NAME

__all__ = ["FILE_NAME", "SqliteBackend"]
