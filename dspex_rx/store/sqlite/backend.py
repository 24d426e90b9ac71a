"""SqliteBackend: the durable backend's rows in one SQLite file under a data dir, each flush
one ``BEGIN IMMEDIATE .. COMMIT`` (WAL, ``synchronous=FULL``: one fsync per flush).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dspex_rx.errors import StorageError
from dspex_rx.store.durable.backend import DurableBackend
from dspex_rx.store.durable.rows import Delete, Op, Put, delete_range, encode_key
from dspex_rx.store.sqlite.codec import FILE_NAME, connect, lock_dir


class SqliteBackend(DurableBackend):
    """The store's state in ``data_dir/dspex-rx.sqlite3``.

    The directory is created (``0700``) and locked: a second server on it is refused. A
    corrupt or foreign file is refused with ``StorageError``, never emptied.

    >>> import asyncio, tempfile
    >>> from dspex_rx.store.state import Session
    >>> data = tempfile.mkdtemp()
    >>> backend = SqliteBackend(data)
    >>> backend.add_session(Session("s", {}, 0.0))
    >>> with backend.write() as txn:
    ...     commit = txn.commit("s", (), timestamp=1.0)
    >>> asyncio.run(backend.sync(commit.revision)); backend.close()
    >>> again = SqliteBackend(data)
    >>> again.revision, list(again.sessions)
    (1, ['s'])
    >>> again.close()
    """

    storage_errors = (sqlite3.Error, OSError)

    def __init__(
        self, data_dir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock=clock)
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / FILE_NAME
        self.refusal_hint = " (free disk space, check its permissions)"
        self._lock = lock_dir(self.data_dir)
        try:
            self._db = connect(self.path, create=True)
            try:
                self._start()
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            os.close(self._lock)
            raise

    @property
    def where(self) -> str:
        """The data file, for messages.

        Example: ``backend.where`` names ``dspex-rx-data/dspex-rx.sqlite3``.
        """
        return f"the data file {self.path}"

    def _rows(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            # One read transaction: every row of one committed state.
            self._db.execute("BEGIN")
            try:
                yield from self._db.execute("SELECT k, v FROM kv ORDER BY k")
            finally:
                self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{self.where} cannot be read ({exc}); refusing to start rather than serve "
                "it half-read", path=str(self.path),
            ) from exc

    def _write(self, ops: list[Op]) -> None:
        # On the writer thread: one transaction, one fsync (synchronous=FULL).
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            puts: list[tuple[bytes, bytes]] = []  # consecutive puts go in one executemany
            for op in ops:
                if isinstance(op, Put):
                    puts.append((encode_key(op.table, op.key), op.value))
                    continue
                if puts:
                    db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", puts)
                    puts = []
                _delete(db, op)
            if puts:
                db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", puts)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _release(self) -> None:
        self._db.close()
        os.close(self._lock)


def _delete(db: sqlite3.Connection, op: Delete) -> None:
    span = delete_range(op)
    if span is not None:
        db.execute("DELETE FROM kv WHERE k >= ? AND k < ?", span)
    else:
        db.execute("DELETE FROM kv WHERE k = ?", (encode_key(op.table, op.key),))
