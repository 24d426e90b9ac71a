"""One change of a variable as a watcher sees it (``VariableUpdate``), decoded from the
wire event that carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import utc_datetime

_UPDATE_NAMES = {
    spb.UPDATE_TYPE_INITIAL: "initial",
    spb.UPDATE_TYPE_VALUE_CHANGE: "value_change",
    spb.UPDATE_TYPE_DELETED: "deleted",
    spb.UPDATE_TYPE_DEPENDENCY_CHANGED: "dependency_changed",
    spb.UPDATE_TYPE_RESYNC: "resync",
    spb.UPDATE_TYPE_OPTIMIZATION: "optimization",
    spb.UPDATE_TYPE_REVOKED: "revoked",
}

# Decoded values that ``codec.present`` returns unchanged (only arrays and key-converted
# dicts change).
_AS_DECODED = frozenset({float, int, str, bool, type(None), list, dict})


@dataclass(frozen=True, slots=True)
class VariableUpdate:
    """One change of a variable as a watcher sees it.

    ``update_type`` is ``initial``, ``value_change``, ``deleted``, ``resync`` (the current
    value after a gap the server could not replay), ``dependency_changed`` (a variable
    this one depends on changed; ``metadata`` names it and the revision) or, for
    optimization observers only, ``optimization`` (``metadata`` is the status).
    ``metadata`` is the writer's metadata for that change, as given (system notes of a
    rollback, an import or an optimization step for those). ``timestamp`` is a
    timezone-aware UTC ``datetime``. Values are presented as ``get_variable`` returns them
    (a tensor written from torch comes back as a ``torch.Tensor`` where torch is installed).

    Example: ``async for update in session.watch_variable("temperature")`` yields each change.
    """

    variable_id: str
    name: str
    value: Any
    old_value: Any
    version: int
    revision: int
    update_type: str
    metadata: dict[str, Any]
    timestamp: datetime
    source: str
    conflated: bool = False


def _value(field: Any) -> Any:
    # ``codec.present`` only for what it changes: the call costs more than the check.
    value = codec.decode(field)
    return value if value.__class__ in _AS_DECODED else codec.present(value, None)


def update_from_pb(event: spb.VariableEvent, conflated: bool = False) -> VariableUpdate:
    """Decode a wire event.

    >>> from dspex_rx.wire import codec
    >>> event = spb.VariableEvent(variable_id="var_1", name="temperature", version=2,
    ...                           update_type=spb.UPDATE_TYPE_VALUE_CHANGE)
    >>> codec.fill(event.value, 0.7)
    >>> update = update_from_pb(event)
    >>> update.name, update.value, update.version, update.update_type
    ('temperature', 0.7, 2, 'value_change')
    """
    # The wrapper objects protobuf makes for a fresh message's fields are most of the
    # cost here: touch each field once, and not at all the (usually empty) metadata.
    return VariableUpdate(
        variable_id=event.variable_id,
        name=event.name,
        value=_value(event.value),
        old_value=_value(event.old_value) if event.HasField("old_value") else None,
        version=event.version,
        revision=event.revision,
        update_type=_UPDATE_NAMES.get(event.update_type, "value_change"),
        metadata=codec.decode_map(event.metadata) if event.HasField("metadata") else {},
        timestamp=utc_datetime(event.timestamp),
        source=event.source,
        conflated=conflated,
    )
