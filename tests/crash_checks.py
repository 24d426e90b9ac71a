"""The crash run's ledger and checks: every write a client sent and what it was told, every
update a watcher got, and the checks of all that against the history after the last restart.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from dspex_rx.client.actors import VariableUpdate

INITIAL_VALUE = 0
# Update types a watcher of these variables may see (no deletes, no dependencies).
WATCH_TYPES = ("initial", "value_change", "resync")

# ----------------------------------------------------------------------------- what happened


@dataclass
class Write:
    """One set_variable a writer made, and what it was told. ``outcome``: ``pending``,
    ``acked`` (the server answered with ``version``), ``refused`` (validation said no, so
    it must never appear), ``maybe`` (a transport error: it may or may not have committed)
    or ``error`` (an answer nothing expected; also of unknown outcome)."""

    writer: str
    name: str
    value: int
    meant_to_refuse: bool
    sent: int
    epoch: int
    outcome: str = "pending"
    version: int | None = None
    done: int | None = None
    error: str = ""


@dataclass(frozen=True)
class Delivery:
    """One update a watcher's observer got."""

    watcher: str
    name: str
    version: int
    revision: int
    value: Any
    update_type: str
    conflated: bool
    tick: int


@dataclass(frozen=True)
class Entry:
    """One version of a variable as its history tells it after the last restart."""

    version: int
    value: Any
    revision: int


class Ledger:
    """Everything the clients did and were told, in one order (``tick``): writes sent and
    answered, watcher deliveries, client failures. ``on_event`` is called after each send
    and each acknowledgement: the kill switch lives there.

    >>> ledger = Ledger()
    >>> w = ledger.send("w0", "x", 1_000_001, False)
    >>> ledger.ack(w, 2)
    >>> (w.outcome, w.version, ledger.acks)
    ('acked', 2, 1)
    """

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.deliveries: list[Delivery] = []
        self.watch_errors: list[str] = []
        self.client_problems: list[str] = []
        self.tick = 0
        self.sends = 0
        self.acks = 0
        self.epoch = 0
        self.on_event: Callable[[str], None] | None = None
        # Set when going on is pointless (a durable server lost the session): the phases
        # waiting for progress give up at once instead of at their hang guard.
        self.fatal = trio.Event()

    def _next(self) -> int:
        self.tick += 1
        return self.tick

    def send(self, writer: str, name: str, value: int, meant_to_refuse: bool) -> Write:
        """Record a write about to be sent."""
        write = Write(writer, name, value, meant_to_refuse, self._next(), self.epoch)
        self.writes.append(write)
        self.sends += 1
        if self.on_event is not None:
            self.on_event("send")
        return write

    def ack(self, write: Write, version: int) -> None:
        """The server acknowledged ``write`` at ``version``."""
        write.outcome, write.version, write.done = "acked", version, self._next()
        self.acks += 1
        if self.on_event is not None:
            self.on_event("ack")

    def finish(self, write: Write, outcome: str, error: BaseException | str) -> None:
        """``write`` ended without an acknowledgement: ``refused``, ``maybe`` or ``error``."""
        write.outcome, write.done = outcome, self._next()
        write.error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"

    def deliver(self, watcher: str, update: VariableUpdate) -> None:
        """A watcher's observer got ``update``."""
        self.deliveries.append(Delivery(
            watcher, update.name, update.version, update.revision, update.value,
            update.update_type, update.conflated, self._next(),
        ))

    def count(self, outcome: str) -> int:
        """How many writes ended with ``outcome``."""
        return sum(1 for w in self.writes if w.outcome == outcome)


# ----------------------------------------------------------------------------- the checks


def check(
    ledger: Ledger,
    history: Mapping[str, Sequence[Entry]],
    current: Mapping[str, Any],
    *,
    expired: Iterable[str] = (),
) -> list[str]:
    """Every way the store broke a promise to its clients, one line each; empty is a pass.

    ``history`` is each variable's whole history read after the last restart (oldest
    first), ``current`` each variable's value from ``get_variable``; ``expired`` names the
    variables whose history page ended in an expired marker.

    >>> ledger = Ledger()
    >>> ledger.ack(ledger.send("w0", "x", 1_000_001, False), 2)
    >>> history = {"x": [Entry(1, 0, 5), Entry(2, 1_000_001, 9)]}
    >>> check(ledger, history, {"x": 1_000_001})
    []
    >>> check(ledger, {"x": [Entry(1, 0, 5)]}, {"x": 0})
    ['lost: x acknowledged at version 2 with 1000001, history ends at version 1']
    """
    problems: list[str] = [f"history of {name} reached expired versions" for name in expired]
    problems += list(ledger.client_problems)
    problems += [f"watch ended: {error}" for error in ledger.watch_errors]
    truth: dict[str, dict[int, Entry]] = {}
    written: dict[int, Write] = {}
    for write in ledger.writes:
        written[write.value] = write
    seen_values: dict[Any, tuple[str, int]] = {}
    seen_revisions: dict[int, tuple[str, int]] = {}
    for name, entries in history.items():
        by_version: dict[int, Entry] = {}
        previous: Entry | None = None
        for entry in entries:
            if previous is not None:
                if entry.version != previous.version + 1:
                    problems.append(f"history of {name}: version {entry.version} follows "
                                    f"{previous.version}")
                if entry.revision <= previous.revision:
                    problems.append(f"history of {name}: version {entry.version} has revision "
                                    f"{entry.revision}, not above {previous.revision} of "
                                    f"version {previous.version}")
            previous = entry
            by_version[entry.version] = entry
            if entry.revision in seen_revisions:
                other = seen_revisions[entry.revision]
                problems.append(f"revision {entry.revision} used twice: {name} v{entry.version}"
                                f" and {other[0]} v{other[1]}")
            seen_revisions[entry.revision] = (name, entry.version)
            if entry.version == 1 and entry.value == INITIAL_VALUE:
                continue
            if entry.value in seen_values:
                other = seen_values[entry.value]
                problems.append(f"value {entry.value} stored twice: {name} v{entry.version} "
                                f"and {other[0]} v{other[1]}")
            seen_values[entry.value] = (name, entry.version)
            found = written.get(entry.value) if isinstance(entry.value, int) else None
            if found is None:
                problems.append(f"history of {name} v{entry.version} holds {entry.value!r}, "
                                "which no writer sent")
            elif found.meant_to_refuse:
                problems.append(f"refused value {entry.value} stored: {name} v{entry.version} "
                                f"(the writer was told {found.outcome})")
            elif found.name != name:
                problems.append(f"value {entry.value} sent to {found.name} is stored in {name}")
        truth[name] = by_version
        if entries and name in current and current[name] != entries[-1].value:
            problems.append(f"{name}: get_variable says {current[name]!r}, history's newest "
                            f"(v{entries[-1].version}) is {entries[-1].value!r}")
    problems += _check_writes(ledger.writes, truth)
    problems += _check_order(ledger.writes, truth)
    problems += _check_watchers(ledger.deliveries, truth, written)
    return problems


def _check_writes(writes: Sequence[Write], truth: Mapping[str, Mapping[int, Entry]]) -> list[str]:
    problems = []
    for write in writes:
        if write.meant_to_refuse and write.outcome == "acked":
            problems.append(f"{write.writer}: {write.name}={write.value} breaks min 0 and was "
                            f"acknowledged at version {write.version}")
        elif not write.meant_to_refuse and write.outcome == "refused":
            problems.append(f"{write.writer}: {write.name}={write.value} was refused: "
                            f"{write.error}")
        if write.outcome == "error":
            problems.append(f"{write.writer}: {write.name}={write.value} failed: {write.error}")
        if write.outcome != "acked" or write.meant_to_refuse:
            continue
        assert write.version is not None
        entries = truth.get(write.name, {})
        entry = entries.get(write.version)
        if entry is None:
            newest = max(entries, default=0)
            problems.append(f"lost: {write.name} acknowledged at version {write.version} with "
                            f"{write.value}, history ends at version {newest}")
        elif entry.value != write.value:
            problems.append(f"lost: {write.name} acknowledged at version {write.version} with "
                            f"{write.value}, history has {entry.value!r} there")
    return problems


def _check_order(writes: Sequence[Write], truth: Mapping[str, Mapping[int, Entry]]) -> list[str]:
    """A write acknowledged before another was sent has the lower revision (store-wide)
    and, on the same variable, the lower version: neither ever goes back, restarts
    included."""
    acked = [w for w in writes if w.outcome == "acked" and not w.meant_to_refuse
             and w.version is not None and w.version in truth.get(w.name, {})]
    problems = []
    by_done = sorted(acked, key=lambda w: w.done or 0)
    done_ticks = [w.done or 0 for w in by_done]
    # Prefix maxima over acknowledgement order: the newest revision (and per variable the
    # newest version) acknowledged before each tick.
    best_rev: list[tuple[int, Write]] = []
    best_version: dict[str, list[tuple[int, int, Write]]] = {}
    top: tuple[int, Write] | None = None
    for w in by_done:
        revision = truth[w.name][w.version].revision  # type: ignore[index]
        if top is None or revision > top[0]:
            top = (revision, w)
        best_rev.append(top)
        per = best_version.setdefault(w.name, [])
        version = w.version or 0
        if not per or version > per[-1][1]:
            per.append((w.done or 0, version, w))
    for w in acked:
        index = bisect.bisect_left(done_ticks, w.sent) - 1
        revision = truth[w.name][w.version].revision  # type: ignore[index]
        if index >= 0 and best_rev[index][0] >= revision:
            before = best_rev[index][1]
            problems.append(f"revision went back: {w.name} v{w.version} (sent after "
                            f"{before.name} v{before.version} was acknowledged at revision "
                            f"{best_rev[index][0]}) has revision {revision}")
        per = best_version.get(w.name, [])
        ticks = [p[0] for p in per]
        at = bisect.bisect_left(ticks, w.sent) - 1
        if at >= 0 and per[at][1] >= (w.version or 0):
            problems.append(f"version went back: {w.name} got v{w.version} for a write sent "
                            f"after v{per[at][1]} was acknowledged")
    return problems


def _check_watchers(
    deliveries: Sequence[Delivery],
    truth: Mapping[str, Mapping[int, Entry]],
    written: Mapping[int, Write],
) -> list[str]:
    problems = []
    streams: dict[tuple[str, str], list[Delivery]] = {}
    for d in deliveries:
        streams.setdefault((d.watcher, d.name), []).append(d)
    for (watcher, name), seen in sorted(streams.items()):
        entries = truth.get(name, {})
        where = f"{watcher} watching {name}"
        previous: Delivery | None = None
        for d in seen:
            if d.update_type not in WATCH_TYPES:
                problems.append(f"{where}: unexpected {d.update_type} at v{d.version}")
            write = written.get(d.value) if isinstance(d.value, int) else None
            if write is not None and write.meant_to_refuse:
                problems.append(f"{where}: saw refused value {d.value} at v{d.version}")
            entry = entries.get(d.version)
            if entry is None:
                problems.append(f"{where}: saw v{d.version}={d.value!r}, which history "
                                "does not hold")
            elif entry.value != d.value or entry.revision != d.revision:
                problems.append(f"{where}: saw v{d.version}={d.value!r} at revision "
                                f"{d.revision}; history has {entry.value!r} at revision "
                                f"{entry.revision}")
            if previous is not None:
                if d.version <= previous.version:
                    problems.append(f"{where}: v{d.version} after v{previous.version}")
                elif (d.version != previous.version + 1 and not d.conflated
                      and d.update_type not in ("resync", "initial")):
                    problems.append(f"{where}: gap from v{previous.version} to v{d.version} "
                                    f"({d.update_type}, no resync)")
            previous = d
        newest = max(entries, default=0)
        if previous is not None and previous.version != newest:
            problems.append(f"{where}: last saw v{previous.version}, history ends at v{newest}")
    return problems


# ----------------------------------------------------------------------------- the clients
