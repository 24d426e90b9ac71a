"""Client-side encoding of call arguments (values, metadata, access rules, optional
integers) with errors that name the variable, and the variable description dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspex_rx.errors import DspexError, InvalidValueError
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import type_from_pb, utc_datetime

# The default of an argument that may also be given as None.
MISSING: Any = object()


def info(variable: pb.Variable, revision: int | None = None) -> dict[str, Any]:
    """A variable's description, the shape ``include_metadata`` and ``list_variables``
    return: system fields as their own keys, the user's metadata under ``'metadata'``
    exactly as given (a user key ``type`` or ``description`` never meets a system field).
    ``keys_converted`` and ``tensor_origin`` say how the current value was sent.

    >>> info(pb.Variable(name="t", type=pb.VARIABLE_TYPE_FLOAT), revision=5)["type"]
    'float'
    """
    info: dict[str, Any] = {
        "id": variable.id,
        "name": variable.name,
        "type": type_from_pb(variable.type),
        "constraints": codec.decode_map(variable.constraints),
        "metadata": codec.decode_map(variable.metadata),
        "description": variable.description,
        "version": variable.version,
        "revision": variable.mod_revision,
        "created_at": utc_datetime(variable.created_at),
        "updated_at": utc_datetime(variable.updated_at),
        "updated_by": variable.updated_by,
        **codec.value_flags(variable.value),
    }
    if revision is not None:
        info["session_revision"] = revision
    return info


def check_positive(name: str, field: str, value: int | None) -> int:
    """An optional wire integer that must be >= 1 when given (0 on the wire: not given).

    >>> check_positive("t", "expected_version", None), check_positive("t", "x", 3)
    (0, 3)
    """
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValueError(
            f"variable {name!r}: {field} must be an integer >= 1, got {value!r}"
        )
    return value


def prefixed(name: str, exc: DspexError) -> DspexError:
    """The error with the variable named in front.

    >>> str(prefixed("t", InvalidValueError("bad")))
    "variable 't': bad"
    """
    return exc.prefixed(f"variable {name!r}")


def encode_value(name: str, value: Any) -> codec.Value:
    """A value on the wire; an error names the variable.

    >>> encode_value("t", 1.5) == codec.encode(1.5)
    True
    """
    try:
        return codec.encode(value)
    except DspexError as exc:
        raise prefixed(name, exc) from None


def encode_rules(name: str, rules: Sequence[Mapping[str, Any]] | None) -> list[pb.AccessRule]:
    """Access rules on the wire; their shape is checked by the server (the authority),
    here only what must be known to encode them.

    >>> [r.session_pattern for r in encode_rules("t", [
    ...     {"session_pattern": "any", "permissions": ["read"]}])]
    ['any']
    """
    if rules is None:
        return []
    if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, list | tuple):
        raise InvalidValueError(f"variable {name!r}: access_rules must be a list of rules")
    out = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            raise InvalidValueError(
                f"variable {name!r}: access rule {index} must be a mapping, got "
                f"{type(rule).__name__}"
            )
        unknown = sorted(map(str, set(rule) - {"session_pattern", "permissions",
                                               "conditions"}))
        if unknown:
            raise InvalidValueError(
                f"variable {name!r}: access rule {index} has unknown key(s) "
                f"{', '.join(map(repr, unknown))}"
            )
        pattern = rule.get("session_pattern")
        permissions = rule.get("permissions")
        if not isinstance(pattern, str):
            raise InvalidValueError(
                f"variable {name!r}: access rule {index}: session_pattern must be a string, "
                f"got {pattern!r}"
            )
        if isinstance(permissions, str) or not isinstance(permissions, list | tuple) or not all(
            isinstance(p, str) for p in permissions
        ):
            raise InvalidValueError(
                f"variable {name!r}: access rule {index}: permissions must be a list of "
                f"strings, got {permissions!r}"
            )
        out.append(pb.AccessRule(
            session_pattern=pattern, permissions=list(permissions),
            conditions=encode_metadata(name, rule.get("conditions")),
        ))
    return out


def encode_metadata(name: str, metadata: Mapping[str, Any] | None) -> Any:
    """A metadata dict on the wire (None: empty); an error names the variable.

    >>> codec.decode_map(encode_metadata("t", {"reason": "sweep"}))
    {'reason': 'sweep'}
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise prefixed(name, InvalidValueError("metadata must be a dict"))
    try:
        return codec.encode_map(metadata)
    except DspexError as exc:
        raise prefixed(name, exc) from None

