"""How the shell prints: values made JSON-safe (arrays as nested lists, non-finite floats
as strings, times as ISO 8601), one-line value summaries, and plain-text tables.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

SUMMARY_WIDTH = 60


def plain(value: Any) -> Any:
    """``value`` as JSON can carry it: arrays (anything with ``tolist``) as nested lists,
    NaN and infinities as the strings ``"nan"``, ``"inf"``, ``"-inf"``, datetimes as ISO
    8601 (UTC), tuples and sets as lists, bytes as text when UTF-8, else their length.

    >>> plain({"t": float("inf"), "at": datetime(2026, 1, 2, tzinfo=UTC), "xs": (1, 2)})
    {'t': 'inf', 'at': '2026-01-02T00:00:00+00:00', 'xs': [1, 2]}
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(value)} bytes>"
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy arrays and scalars
        return plain(tolist())
    if isinstance(value, Sequence | set | frozenset):
        return [plain(item) for item in value]
    return str(value)


def dumps(value: Any) -> str:
    """One line of JSON for ``value`` (made ``plain`` first).

    >>> dumps({"b": [1.5, float("nan")]})
    '{"b": [1.5, "nan"]}'
    """
    return json.dumps(plain(value), ensure_ascii=False)


def text(value: Any) -> str:
    """A value as a human reads it: a string as it is, anything else as JSON.

    >>> text("hello"), text(0.7), text([1, 2])
    ('hello', '0.7', '[1, 2]')
    """
    return value if isinstance(value, str) else dumps(value)


def summary(value: Any, width: int = SUMMARY_WIDTH) -> str:
    """A one-line summary of a value: arrays as ``array(shape=..., dtype=...)``, others as
    ``text`` cut to ``width`` characters.

    >>> summary("x" * 80, 10)
    'xxxxxxx...'
    """
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and not isinstance(value, str):
        return f"array(shape={tuple(shape)}, dtype={dtype})"
    shown = text(value).replace("\n", " ")
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def when(value: Any) -> str:
    """A time (datetime or POSIX seconds) as ``YYYY-MM-DD HH:MM:SS`` UTC; "-" for None.

    >>> when(0.0), when(None)
    ('1970-01-01 00:00:00', '-')
    """
    if value is None:
        return "-"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None
          ) -> None:
    """Print rows under headers, columns padded to their widest cell.

    >>> table(["NAME", "V"], [["t", 2]])
    NAME  V
    t     2
    """
    out = out or sys.stdout
    cells = [[str(cell) for cell in row] for row in [list(headers), *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip(), file=out)
