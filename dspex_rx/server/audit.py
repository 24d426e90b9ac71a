"""Info log lines an operator audits: each write the server refused, with the variables
it named, why (validation, permission, conflict, fencing...), the error kind and code.

Never a token; values appear only as far as the refusal's own message quotes them.
"""

from __future__ import annotations

from typing import Any

from dspex_rx.errors import DspexError
from dspex_rx.logs import get_logger
from dspex_rx.wire.convert import STATUS_BY_KIND

log = get_logger("dspex_rx.server")

# Why a write was refused, by error kind: the words an operator greps for.
REASONS = {
    "invalid_value": "validation",
    "type_error": "validation",
    "resource_exhausted": "limit",
    "permission_denied": "permission",
    "unauthenticated": "permission",
    "conflict": "conflict",
    "already_exists": "conflict",
    "locked": "fencing",
    "fenced": "fencing",
    "not_found": "not_found",
    "session_not_found": "not_found",
    "storage_unavailable": "storage",
    "internal": "internal",
}
MAX_LOGGED_REFS = 20
MAX_LOGGED_ERROR = 300


def written_refs(request: Any) -> list[str]:
    """The variables a write request names (as the caller named them), at most 20.

    Example:

    >>> from dspex_rx.v1 import variables_pb2 as pb
    >>> written_refs(pb.SetVariableRequest(session_id="s", ref="temperature"))
    ['temperature']
    """
    refs: list[str] = []
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:  # bytes that did not parse (rpc.Malformed) name nothing
        return refs
    for field in ("ref", "from_ref", "to_ref"):
        value = getattr(request, field, "")
        if value:
            refs.append(value)
    if descriptor.fields_by_name.get("spec") is not None and request.HasField("spec"):
        refs.append(request.spec.name)
    refs.extend(spec.name for spec in getattr(request, "specs", ()))
    refs.extend(update.ref for update in getattr(request, "updates", ()))
    return refs[:MAX_LOGGED_REFS]


def refused_write(method: str, request: Any, error: DspexError) -> None:
    """Log a refused write at info: ``write_refused`` with its session, variables, reason,
    error kind and gRPC code.

    Example: ``refused_write("SetVariable", request, exc)`` logs one line.
    """
    _log(method, getattr(request, "session_id", ""), written_refs(request), error.kind,
         str(error))


def refused_results(method: str, request: Any, response: Any) -> None:
    """Log the items a non-atomic batch refused (each answered ``ok=False`` in a call
    that itself succeeded), one ``write_refused`` line each.

    Example: ``refused_results("UpdateVariables", request, response)``.
    """
    for result in getattr(response, "results", ()):
        if not result.ok:
            _log(method, request.session_id, [result.ref], result.error_kind or "internal",
                 result.error)


def _log(method: str, session_id: str, refs: list[str], kind: str, message: str) -> None:
    status = STATUS_BY_KIND.get(kind)
    log.info(
        "write_refused", method=method, session_id=session_id,
        variable=refs[0] if len(refs) == 1 else None, variables=refs,
        reason=REASONS.get(kind, kind), kind=kind,
        code=status.name if status is not None else "UNKNOWN",
        error=message[:MAX_LOGGED_ERROR],
    )
