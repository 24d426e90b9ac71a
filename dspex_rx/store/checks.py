"""The shapes and bounds the engine checks (names, ids, TTLs, batch framing), and how an error
quotes what a caller sent.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from dspex_rx.core.types import INT64_MAX
from dspex_rx.errors import InvalidValueError

MAX_TTL = 7 * 24 * 3600.0

MAX_ITERATIONS = 10_000_000

# Ended leases kept per variable, for status by optimization id and for resync.
RECENT_LEASES = 16

MAX_VERSION = INT64_MAX

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]{0,255}")

# Room a batch's answer needs beyond the stored values: per entry (id, name, type,
# timestamps, versions) and for the whole message.
BATCH_ENTRY_FRAMING = 512

BATCH_FRAMING = 64 * 1024

# The shape of the ids the store makes (``var_<name>_<n>``). Ids are addressed across
# sessions, so no session may name a variable like one (whether or not that id exists,
# which a check would disclose).
ID_SHAPE_RE = re.compile(r"var_.+_[0-9]+")


def _check_not_id_shaped(name: str) -> None:
    if ID_SHAPE_RE.fullmatch(name):
        raise InvalidValueError(
            f"variable name {name!r} is shaped like a variable id (var_<name>_<n>), which "
            "names a variable in any session; choose another name"
        )


def _random_id() -> int:
    # A claim or incarnation number: random (unguessable, unlikely to meet another
    # server's), positive, and within int64 (export files' integers).
    return secrets.randbits(62) + 1


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidValueError(
            f"variable name {_show(name)} is not valid (letters, digits, _ . - /; up to "
            "256 characters, not starting with a digit)"
        )


def _show(text: Any, limit: int = 80) -> str:
    # A user-supplied string as error messages quote it: repr, cut to ``limit`` characters
    # (a megabyte ref must not come back as a megabyte message).
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 4]}...{shown[0]}"


def _plain_dict(value: Any) -> Any:
    # Mappings become dicts for check_metadata; anything else goes on to be refused there.
    return dict(value) if isinstance(value, Mapping) else value
