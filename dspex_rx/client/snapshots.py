"""Export and import calls: the server's snapshot to and from a file (the formats live in
``exchange``), and the import report."""

from __future__ import annotations

from typing import Any

import trio

from dspex_rx.client import exchange
from dspex_rx.client.core import SessionCore
from dspex_rx.core.patterns import name_pattern
from dspex_rx.errors import InvalidValueError, VariableTypeError
from dspex_rx.v1 import variables_pb2 as pb

MERGE_STRATEGIES: dict[str, int] = {
    "replace": pb.MERGE_STRATEGY_REPLACE,
    "keep": pb.MERGE_STRATEGY_KEEP,
    "merge": pb.MERGE_STRATEGY_MERGE,
}


def import_result(response: pb.ImportVariablesResponse) -> dict[str, Any]:
    """The spec's import answer: counts, error messages and one detail per variable.

    >>> import_result(pb.ImportVariablesResponse(applied=True))["imported"]
    0
    """
    details = []
    for outcome in response.outcomes:
        detail: dict[str, Any] = {
            "name": outcome.name,
            "action": outcome.action,
            "version": outcome.version,
            "message": outcome.message,
        }
        if outcome.error_kind:
            detail["error_kind"] = outcome.error_kind
        details.append(detail)
    errors = [o.message for o in response.outcomes if o.action == "error"]
    return {
        "imported": 0 if errors else sum(
            1 for o in response.outcomes if o.action in ("create", "replace", "merge")
        ),
        "skipped": sum(1 for o in response.outcomes if o.action == "skip"),
        "errors": len(errors),
        "error_details": errors,
        "details": details,
        "applied": response.applied,
        "dry_run": response.dry_run,
        "revision": response.revision,
        "dependencies_added": 0 if errors else response.dependencies_added,
    }


class Snapshots:
    """The session's export and import calls (``SessionContext`` delegates to them).

    Example: ``await snapshots.export_variables("json")`` returns the file's bytes.
    """

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    async def export_variables(
        self,
        format: str = "json",
        include_history: bool = False,
        include_dependencies: bool = True,
        filter_pattern: str | None = None,
        *,
        glob: bool = False,
    ) -> bytes:
        """This session's variables as a file in ``format``: ``json``, ``yaml``,
        ``parquet`` (needs the ``parquet`` extra: ``pip install -e '.[parquet]'`` in the
        checkout) or ``pickle``. Each variable keeps its type, value (arrays bit for bit:
        dtype, shape and bytes), constraints, metadata, description, version and access rules; with
        ``include_history`` its retained versions, with ``include_dependencies`` (the
        default) what it depends on. ``filter_pattern`` is a regular expression (RE2)
        searched in each name, as ``re.search`` would (``r'.*model.*'`` or ``'model'``: names
        containing "model"; ``'^model.*$'``: names starting with it); ``glob=True`` takes an
        fnmatch glob on the whole name instead (``'model.*'``). A pattern RE2 refuses raises
        ``ValueError`` naming it and why. The file carries ``format_version`` 1 (see
        ``dspex_rx.exchange``).

        Example: ``await session.export_variables("yaml", include_history=True)`` returns the
        file's bytes.
        """
        format = exchange.check_format(format)
        wire_pattern = name_pattern("filter_pattern", filter_pattern, glob)
        response = await self.core.call(
            "ExportVariables",
            pb.ExportVariablesRequest(
                session_id=self.core.session_id,
                include_history=bool(include_history),
                include_dependencies=bool(include_dependencies),
                filter_pattern=wire_pattern,
            ),
            pb.ExportVariablesResponse,
        )

        def write() -> bytes:
            return exchange.write_document(
                exchange.snapshot_to_document(response.snapshot), format
            )

        # Serializing a large export takes a while: off the trio thread, watches flow on.
        return await trio.to_thread.run_sync(write)

    async def import_variables(
        self,
        data: bytes | str,
        format: str = "json",
        merge_strategy: str = "replace",
        dry_run: bool = False,
        *,
        trusted: bool = False,
    ) -> dict[str, Any]:
        """Import a file made by ``export_variables``: everything is validated first (types,
        constraints, names, history, dependencies: none missing, no cycle), then applied
        in one commit on the server, or not at all. Returns ``imported``, ``skipped``,
        ``errors`` (how many variables are in error, an int as in the spec; nothing was
        applied if it is not 0), ``error_details`` (their messages, each naming the
        variable), ``details`` (per variable: ``name``, ``action`` — ``create``, ``replace``,
        ``merge``, ``skip`` or ``error`` —, ``version`` after the import, ``message``),
        plus ``applied``, ``dry_run``, ``revision`` and ``dependencies_added``.

        - New variables are created, with the file's access rules; with exported
          history they keep their version and their older versions (restored as they
          were). Without it they start at 1.
        - ``merge_strategy`` says what happens to variables the session already has:
          ``replace`` writes the imported value, metadata and description as a new
          version; ``keep`` leaves them as they are; ``merge`` merges dict values and
          metadata key-wise (imported keys win), replaces other values, keeps the
          session's description unless the import has one, and skips a variable nothing
          would change. History is only appended to; types and constraints never change.
        - Dependencies are added between the imported variables (and to variables the
          session has); a dependency on a variable in neither is an error.
        - Imported writes carry ``imported_from``, ``export_revision``,
          ``format_version`` and ``merge_strategy`` as their metadata.

        ``dry_run=True`` validates and reports what would happen, changing nothing. Data
        that is not a readable export (garbage, truncated, another format, a field of the
        wrong kind, a newer ``format_version``) raises ``ValueError`` naming the problem.
        **Pickle runs code from the file while loading**, so ``format='pickle'`` is
        refused with ``ValueError`` unless ``trusted=True``: pass it only for files you
        made yourself.

        Example: ``await session.import_variables(data, "yaml", merge_strategy="keep",
        dry_run=True)`` returns the report without changing anything.
        """
        format = exchange.check_format(format)
        strategy = MERGE_STRATEGIES.get(merge_strategy)
        if strategy is None:
            raise InvalidValueError(
                f"merge_strategy must be one of {', '.join(MERGE_STRATEGIES)}, got "
                f"{merge_strategy!r}"
            )
        if isinstance(data, str):
            if format not in ("json", "yaml"):
                raise VariableTypeError(f"{format} data must be bytes, not str")
            data = data.encode("utf-8")
        raw = data
        snapshot = await trio.to_thread.run_sync(
            lambda: exchange.read_snapshot(raw, format, trusted=trusted)
        )
        response = await self.core.call(
            "ImportVariables",
            pb.ImportVariablesRequest(
                session_id=self.core.session_id,
                snapshot=snapshot,
                merge_strategy=strategy,  # type: ignore[arg-type]
                dry_run=bool(dry_run),
            ),
            pb.ImportVariablesResponse,
        )
        for outcome in response.outcomes:
            if outcome.HasField("variable"):
                self.core.remember(outcome.variable)
        return import_result(response)
