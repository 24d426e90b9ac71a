"""Backing up and restoring a data dir: an online consistent snapshot of the SQLite file
(SQLite's backup API, safe while the server writes) and putting one back in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from dspex_rx.errors import StorageError
from dspex_rx.store.sqlite.codec import FILE_NAME, connect, lock_dir


def snapshot(data_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Copy the data dir's file to ``out`` as one consistent state (every commit up to a
    point, none after), while a server may be writing it; returns ``out``.

    The copy is checked (SQLite quick check, the store's format) before it is named
    ``out``, so a failed backup never leaves a file that looks good.
    Example: ``snapshot("dspex-rx-data", "backup.sqlite3")``.
    """
    source = Path(data_dir) / FILE_NAME
    target = Path(out)
    if not source.exists():
        raise StorageError(f"no dspex-rx data in {data_dir} (no {FILE_NAME})",
                           path=str(source))
    partial = target.with_name(target.name + ".partial")
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        connect(partial, create=False).close()  # refuses a copy that does not check out
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise StorageError(f"backup of {source} to {target} failed: {exc}",
                           path=str(source)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def restore(backup: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
            force: bool = False) -> Path:
    """Make a snapshot the data dir's file; the server must be stopped (the dir's lock is
    taken), and a dir that holds data already needs ``force``. Returns the file's path.

    Example: ``restore("backup.sqlite3", "dspex-rx-data", force=True)``.
    """
    directory = Path(data_dir)
    target = directory / FILE_NAME
    with tempfile.TemporaryDirectory() as scratch:
        checked = Path(scratch) / FILE_NAME
        try:
            shutil.copyfile(backup, checked)
        except OSError as exc:
            raise StorageError(f"cannot read the backup {backup}: {exc.strerror or exc}",
                               path=str(backup)) from exc
        connect(checked, create=False).close()  # a bad backup is refused before anything
        lock = lock_dir(directory)
        try:
            if target.exists() and not force:
                raise StorageError(
                    f"{directory} already holds a dspex-rx store; restoring over it "
                    "replaces everything in it (pass --force to do so)", path=str(target),
                )
            staged = directory / (FILE_NAME + ".restoring")
            shutil.copyfile(checked, staged)
            with open(staged, "rb+") as f:
                os.fsync(f.fileno())
            for leftover in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (directory / (FILE_NAME + leftover)).unlink()
            os.replace(staged, target)
        finally:
            os.close(lock)
    return target
