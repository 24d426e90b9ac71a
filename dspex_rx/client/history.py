"""A variable's past versions from the client: the history page and rollback."""

from __future__ import annotations

import time
from typing import Any

from dspex_rx.client.core import SessionCore
from dspex_rx.errors import InvalidValueError
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import utc_datetime


class History:
    """The session's history calls (``SessionContext`` delegates to them).

    Example: ``await history.get_variable_history("t", 10)`` returns the newest ten.
    """

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    async def get_variable_history(
        self,
        variable: str,
        limit: int = 100,
        offset: int = 0,
        include_metadata: bool = True,
    ) -> list[dict[str, Any]]:
        """Past values, newest first: ``version``, ``value``, ``updated_at`` (an aware UTC
        ``datetime``), and with ``include_metadata`` also ``updated_by``, ``metadata`` (that
        write's metadata as its writer gave it; for a rollback its ``rollback_to`` and
        ``reason``), ``revision``, and ``keys_converted`` / ``tensor_origin`` where they apply
        to that version's value. Retention is bounded on the server
        (1,000 versions by default); if the page reaches versions that fell out, it ends
        with one entry ``{'expired': True, 'versions': [first, last], 'count': n}`` saying
        so, never a silently shorter page.

        Example: ``await session.get_variable_history("temperature", limit=10)`` returns the
        ten newest entries.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit < 2**31:
            raise InvalidValueError(f"limit must be an integer from 1 to 2**31-1, got {limit!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**31:
            raise InvalidValueError(
                f"offset must be an integer from 0 to 2**31-1, got {offset!r}"
            )
        response = await self.core.call(
            "GetHistory",
            pb.GetHistoryRequest(
                session_id=self.core.session_id, ref=variable, limit=limit, offset=offset,
                include_metadata=include_metadata,
            ),
            pb.GetHistoryResponse,
        )
        entries: list[dict[str, Any]] = []
        for entry in response.entries:
            item: dict[str, Any] = {
                "version": entry.version,
                "value": codec.present(codec.decode(entry.value), None),
                "updated_at": utc_datetime(entry.updated_at),
            }
            if include_metadata:
                item["updated_by"] = entry.updated_by
                item["metadata"] = codec.decode_map(entry.metadata)
                item["revision"] = entry.revision
                item.update(codec.value_flags(entry.value))  # keys_converted, tensor_origin
            entries.append(item)
        if response.expired_to_version:
            first, last = response.expired_from_version, response.expired_to_version
            entries.append(
                {
                    "expired": True,
                    "versions": [first, last],
                    "count": last - first + 1,
                    "reason": f"beyond retention ({response.retention} versions; the "
                    f"oldest kept is {response.oldest_retained_version})",
                }
            )
        return entries

    async def rollback_variable(
        self, variable: str, version: int, reason: str | None = None
    ) -> int:
        """Write a new version whose value equals that of ``version`` (history is
        appended, never rewritten); returns the new version. Watchers see an ordinary
        change. An unknown or expired version raises ``ValueError``.

        Example: ``await session.rollback_variable("temperature", 3, reason="sweep diverged")``
        returns the new version.
        """
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidValueError(f"version must be an integer, got {version!r}")
        started = time.perf_counter()
        response = await self.core.call(
            "Rollback",
            pb.RollbackRequest(
                session_id=self.core.session_id, ref=variable, version=version, reason=reason or ""
            ),
            pb.RollbackResponse,
        )
        actor = self.core.remember(response.variable)
        actor.stats.write_count += 1
        actor.stats.write_latency_total += time.perf_counter() - started
        return response.variable.version
