"""Whole-server administration from the data dir: ``export`` every session of a durable
store (from a consistent snapshot, while the server runs) as JSON Lines.

Admin only by the file system: reading the data dir (created 0700) is what it takes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from dspex_rx.server.handlers.exchange import snapshot_to_pb
from dspex_rx.store import MemoryStore
from dspex_rx.store.sqlite import FILE_NAME, SqliteBackend
from dspex_rx.store.sqlite.backup import snapshot
from dspex_rx.v1 import variables_pb2 as pb


def export_server(data_dir: str | Path) -> Iterator[dict[str, Any]]:
    """One document per session of the store in ``data_dir``: its id, revision, metadata
    and every variable with its retained history, dependencies and access rules (the wire
    ``VariablesSnapshot`` as JSON). Session tokens are never exported.

    Example: ``for doc in export_server("dspex-rx-data"): print(doc["session_id"])``.
    """
    with tempfile.TemporaryDirectory() as scratch:
        snapshot(data_dir, Path(scratch) / FILE_NAME)
        store = MemoryStore(backend=SqliteBackend(scratch))
        try:
            for session_id in sorted(store.session_ids()):
                session = store.session(session_id)
                wire = pb.VariablesSnapshot()
                snapshot_to_pb(store.export_snapshot(
                    session_id, include_history=True, include_dependencies=True), wire)
                yield {
                    "session_id": session_id,
                    "revision": session.revision,
                    "metadata": session.metadata,
                    "snapshot": MessageToDict(wire),
                }
        finally:
            store.close()


def write_export(data_dir: str | Path, out: Any) -> int:
    """Write ``export_server`` as JSON Lines to the text stream ``out``; returns how many
    sessions it wrote.

    Example: ``write_export("dspex-rx-data", sys.stdout)``.
    """
    count = 0
    for document in export_server(data_dir):
        out.write(json.dumps(document, sort_keys=True) + "\n")
        count += 1
    return count
