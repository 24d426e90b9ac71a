"""A durable server as its clients see it: after a restart on the same data dir, revisions
and versions continue, a watch resumes from its last revision with no gap and no RESYNC,
clients re-attach by themselves; a disk that refuses a write fails that writer with a clear
StorageError while reads go on; `dspex-rx backup/restore/export` round-trip a data dir.

Real-time loops are hang guards only (the restart is a real socket going away).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import SCRIPT, cli_server, through_reconnect, until

import dspex_rx
from dspex_rx.client.updates import VariableUpdate
from dspex_rx.errors import StorageError
from dspex_rx.server import EmbeddedServer


def restart(server: EmbeddedServer, data: Path) -> EmbeddedServer:
    # Same port, same data dir: what a supervisor restarting the process does.
    port = int(server.target.rsplit(":", 1)[1])
    server.stop()
    again = EmbeddedServer(port=port, data_dir=data)
    again.start()
    return again


async def test_after_a_restart_writes_continue_and_a_watch_resumes_without_a_gap(
    tmp_path: Path,
) -> None:
    server = EmbeddedServer(data_dir=tmp_path)
    server.start()
    seen: list[VariableUpdate] = []
    try:
        async with dspex_rx.connect(server.target, session_id="job") as writer, \
                dspex_rx.connect(server.target, session_id="job", token=writer.token,
                                 create=False) as watcher:
            await writer.register_variable("t", "integer", 0)
            watcher.observe("t").subscribe(seen.append)
            await until(lambda: bool(seen), "the initial value", 30)
            for value in (1, 2, 3):
                await writer.set_variable("t", value)
            await watcher.sync()
            server = await trio.to_thread.run_sync(restart, server, tmp_path)
            # Both clients carry on by themselves: the writer's next call goes through
            # the reconnected channel, the watcher's stream resumes from its revision.
            await through_reconnect(lambda: writer.set_variable("t", 4))
            for value in (5, 6):
                await writer.set_variable("t", value)
            await until(lambda: seen and seen[-1].value == 6, "the watcher saw 6", 30)
            assert await watcher.get_variable("t", bypass_cache=True) == 6
    finally:
        server.stop()
    values = [u.value for u in seen]
    assert values == [0, 1, 2, 3, 4, 5, 6]
    assert [u.version for u in seen] == list(range(1, 8))
    assert [u.update_type for u in seen] == ["initial"] + ["value_change"] * 6
    revisions = [u.revision for u in seen[1:]]
    assert revisions == sorted(set(revisions))


async def test_a_session_outlives_its_last_client_and_the_server(tmp_path: Path) -> None:
    async with dspex_rx.connect(data_dir=tmp_path, session_id="run_1") as first:
        await first.register_variable("lr", "float", 0.1)
        await first.set_variable("lr", 0.02)
        token = first.token
    async with dspex_rx.connect(data_dir=tmp_path, session_id="run_1", token=token,
                                create=False) as second:
        assert not second.created
        assert await second.get_variable("lr") == 0.02
        history = await second.get_variable_history("lr")
        assert [entry["value"] for entry in history] == [0.02, 0.1]  # newest first
    with pytest.raises(dspex_rx.SessionNotFoundError):
        async with dspex_rx.connect(data_dir=tmp_path, session_id="run_2", create=False):
            pass


async def test_a_refused_disk_write_is_a_clear_error_and_reads_go_on(tmp_path: Path) -> None:
    server = EmbeddedServer(data_dir=tmp_path)
    server.start()
    try:
        async with dspex_rx.connect(server.target) as session:
            await session.register_variable("t", "integer", 0)
            backend: Any = server.store._backend
            write = backend._write

            def full(batch: Any) -> None:
                raise sqlite3.OperationalError("database or disk is full")

            backend._write = full
            with pytest.raises(StorageError, match="database or disk is full"):
                await session.set_variable("t", 1)
            assert await session.get_variable("t", bypass_cache=True) == 0
            backend._write = write
            backend._refusing_until = 0.0
            await session.set_variable("t", 2)
            assert await session.get_variable("t", bypass_cache=True) == 2
    finally:
        server.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


async def test_backup_restore_and_export_of_a_data_dir(tmp_path: Path) -> None:
    data, snapshot = tmp_path / "data", tmp_path / "snap.sqlite3"
    async with cli_server(tmp_path) as target, \
            dspex_rx.connect(target, session_id="kept") as session:
        await session.register_variable("t", "float", 0.5)
        await session.set_variable("t", 0.25)
        token = session.token
        # An online backup while the server runs, and an export beside it.
        done = run("backup", "--data-dir", str(data), str(snapshot))
        assert done.returncode == 0, done.stderr
        exported = run("export", "--data-dir", str(data))
        assert exported.returncode == 0, exported.stderr
        await session.set_variable("t", 0.75)  # after the backup
        refused = run("restore", "--data-dir", str(data), str(snapshot))
        assert refused.returncode == 1 and "in use by another" in refused.stderr
    (document,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert document["session_id"] == "kept"
    (variable,) = document["snapshot"]["variables"]
    assert variable["name"] == "t" and len(variable["history"]) == 2
    assert "token" not in exported.stdout
    refused = run("restore", "--data-dir", str(data), str(snapshot))
    assert refused.returncode == 1 and "--force" in refused.stderr
    done = run("restore", "--data-dir", str(data), str(snapshot), "--force")
    assert done.returncode == 0, done.stderr
    (tmp_path / "port").unlink()  # the first server's
    async with cli_server(tmp_path) as target:
        session = await dspex_rx.SessionContext("kept", target, create=False,
                                                token=token).initialize()
        try:
            assert await session.get_variable("t") == 0.25  # the backup's state
        finally:
            await session.close()
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"not a database" * 100)
    refused = run("restore", "--data-dir", str(data), str(bad), "--force")
    assert refused.returncode == 1 and "refusing" in refused.stderr


def test_serve_refuses_a_corrupt_data_file_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "dspex-rx.sqlite3").write_bytes(b"garbage" * 1000)
    done = subprocess.run([str(SCRIPT), "serve", "--port", "0", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "dspex-rx.sqlite3" in done.stderr
    assert (tmp_path / "dspex-rx.sqlite3").read_bytes() == b"garbage" * 1000


async def test_an_expiry_is_made_durable_without_waiting_for_a_call(tmp_path: Path) -> None:
    # Regression: an expired session stayed in the file until some later call synced.
    from dspex_rx.store import MemoryStore
    from dspex_rx.store.sqlite import SqliteBackend

    now = [1000.0]
    store = MemoryStore(backend=SqliteBackend(tmp_path), clock=lambda: now[0])
    with EmbeddedServer(store=store, expire_interval=0.01) as server:
        server.call(lambda: store.initialize_session("brief", ttl=10))
        now[0] += 11
        await until(lambda: server.call(lambda: "brief" not in store.session_ids()
                                        and not store.pending), "the expiry synced")
        server.stop()  # no call came after the expiry
        store._backend.close()
    reopened = SqliteBackend(tmp_path)
    assert "brief" not in reopened.sessions
    reopened.close()


async def test_a_watch_resuming_past_a_restored_backup_gets_the_restored_values(
    tmp_path: Path,
) -> None:
    # Regression (#17's "resume from the future"): a watch whose last revision is past
    # the restored state's resumed silently, and its actors dropped the older versions.
    from dspex_rx.store.sqlite.backup import restore, snapshot

    data, backup = tmp_path / "data", tmp_path / "backup.sqlite3"
    server = EmbeddedServer(data_dir=data)
    server.start()
    seen: list[VariableUpdate] = []
    try:
        async with dspex_rx.connect(server.target, session_id="job") as writer, \
                dspex_rx.connect(server.target, session_id="job", token=writer.token,
                                 create=False) as watcher:
            await writer.register_variable("t", "integer", 0)
            watcher.observe("t").subscribe(seen.append)
            await until(lambda: bool(seen), "the initial value", 30)
            await writer.set_variable("t", 1)
            await until(lambda: seen[-1].value == 1, "1", 30)
            await trio.to_thread.run_sync(snapshot, data, backup)
            for value in (2, 3):
                await writer.set_variable("t", value)
            await until(lambda: seen[-1].value == 3, "3", 30)
            port = int(server.target.rsplit(":", 1)[1])
            server.stop()
            await trio.to_thread.run_sync(lambda: restore(backup, data, force=True))
            server = EmbeddedServer(port=port, data_dir=data)
            await trio.to_thread.run_sync(server.start)
            await until(lambda: seen[-1].value == 1, "the restored value", 30)
            await through_reconnect(lambda: writer.set_variable("t", 5))
            await until(lambda: seen[-1].value == 5, "a write after the restore", 30)
    finally:
        server.stop()
    assert [(u.value, u.version, u.update_type) for u in seen] == [
        (0, 1, "initial"), (1, 2, "value_change"), (2, 3, "value_change"),
        (3, 4, "value_change"), (1, 2, "resync"), (5, 3, "value_change"),
    ]
