"""The SQLite file of a durable store: where it lives in the data dir, its schema (the
rows of `store/durable/rows.py` in one key-value table) and format version, opening it
(WAL, ``synchronous=FULL``, an exclusive lock on the dir) and refusing a bad one.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from dspex_rx.errors import StorageError

FILE_NAME = "dspex-rx.sqlite3"
LOCK_NAME = "LOCK"
# Bumped when a stored shape changes; a file of another format is refused, not guessed at.
FORMAT = 1

# The rows (store/durable/rows.py: key bytes in the space's order, pickled values); the
# data dir must be trusted like the server's own code, which is why it is created 0700.
SCHEMA = """
CREATE TABLE IF NOT EXISTS file_info (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
"""


def _refuse(path: Path, why: str, cause: BaseException | None = None) -> StorageError:
    error = StorageError(
        f"the data file {path} {why}; refusing to start rather than serve it empty or "
        "half-read (restore a backup with 'dspex-rx restore', or move the file away "
        "to start afresh)", path=str(path),
    )
    error.__cause__ = cause
    return error


def lock_dir(data_dir: Path) -> int:
    """Create the data dir (``0700``) if needed and hold its lock; returns the lock's fd.

    A second server on the same dir is refused: two writers would corrupt the file.
    Example: ``fd = lock_dir(Path("dspex-rx-data"))``; closing ``fd`` releases it.
    """
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot use data dir {data_dir}: {exc.strerror or exc}",
                           path=str(data_dir)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StorageError(
            f"data dir {data_dir} is in use by another dspex-rx server (its LOCK is held); "
            "stop that server or give another --data-dir", path=str(data_dir),
        ) from None
    return fd


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open the data file (creating its schema when ``create``), checked: a file that is
    not a dspex-rx store of this format, or fails SQLite's quick check, is refused with
    ``StorageError``.

    Example: ``db = connect(Path("dspex-rx-data/dspex-rx.sqlite3"), create=True)``.
    """
    existed = path.exists() and path.stat().st_size > 0
    try:
        # Autocommit mode: the flush opens its own BEGIN IMMEDIATE .. COMMIT.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _refuse(path, f"cannot be opened ({exc})", exc) from exc
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchone()
        # FULL: a commit returns once the WAL is fsynced, so an acknowledged write
        # survives power loss, not only a process crash.
        db.execute("PRAGMA synchronous=FULL")
        if existed:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise _refuse(path, f"is corrupt (SQLite quick_check: {verdict})")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if not {"file_info", "kv"} <= tables:
                raise _refuse(path, "is an SQLite file, but not a dspex-rx store")
        elif not create:
            raise _refuse(path, "does not exist")
        db.executescript(SCHEMA)
        stored = db.execute("SELECT value FROM file_info WHERE key='format'").fetchone()
        if stored is None:
            if existed:
                raise _refuse(path, "has no format version (not a complete dspex-rx store)")
            db.execute("INSERT INTO file_info VALUES ('format', ?)", (FORMAT,))
        elif int(stored[0]) != FORMAT:
            raise _refuse(path, f"is of format {stored[0]}; this server reads format {FORMAT}")
    except StorageError:
        db.close()
        raise
    except sqlite3.OperationalError as exc:
        db.close()
        # A read-only dir or file, a full disk: the file may be fine, the server cannot
        # write it, and a store that cannot acknowledge writes must not start.
        raise StorageError(
            f"the data file {path} cannot be written ({exc}); refusing to start a server "
            f"that could not keep what it acknowledges: check the permissions of "
            f"{path.parent} and its free space", path=str(path),
        ) from exc
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _refuse(path, f"is not a readable SQLite database ({exc})", exc) from exc
    return db
