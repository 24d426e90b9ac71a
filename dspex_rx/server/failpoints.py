"""Faults a server can be started with, so the fault checker (tests/chaos) can prove it
catches a real server bug: ``DSPEX_RX_FAILPOINTS=skip_frame=20``. None is armed unless set.
"""

from __future__ import annotations

import os

ENV = "DSPEX_RX_FAILPOINTS"
# skip_frame=N: the N-th frame the server would queue for any watch stream is dropped, as a
# server that lost one commit on its way to a watcher would.
NAMES = ("skip_frame",)


class Failpoints:
    """Countdowns by name, each firing once: ``fire(name)`` is True on the N-th call.

    >>> points = Failpoints("skip_frame=2")
    >>> [points.fire("skip_frame") for _ in range(4)]
    [False, True, False, False]
    >>> Failpoints("").armed
    False
    """

    __slots__ = ("_left", "armed")

    def __init__(self, spec: str) -> None:
        self._left: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, count = part.partition("=")
            if name not in NAMES:
                raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: "
                                 f"{', '.join(NAMES)})")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"{ENV}: {name} needs a count of 1 or more, got {count!r}")
            self._left[name] = int(count)
        self.armed = bool(self._left)

    def fire(self, name: str) -> bool:
        """Count one call of ``name``; True only on the call its count names.

        Example: ``FAILPOINTS.fire("skip_frame")`` is False unless the env var armed it.
        """
        left = self._left.get(name)
        if left is None:
            return False
        if left == 1:
            del self._left[name]
            self.armed = bool(self._left)
            return True
        self._left[name] = left - 1
        return False


FAILPOINTS = Failpoints(os.environ.get(ENV, ""))
