"""The chaos run's record and its checker: every write a client made (sets, compare-and-sets,
atomic batches) with what it was told, every delivery a watcher got, and the verdict against
the history read at the end, as violations by kind.

The record builds on the crash harness's ``Ledger`` (tests/crash_checks.py): one tick order
for sends, answers and deliveries, and unique values, so a value names the write that sent it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crash_checks import INITIAL_VALUE, Delivery, Entry, Ledger, Write

# Every kind of broken promise the checker names, in the order the summary prints them.
KINDS = (
    "order",            # a watcher saw a version below one it had seen
    "duplicate",        # a watcher saw one version twice
    "phantom",          # a value no writer sent (in a delivery or in the history)
    "gap",              # a watcher skipped versions with no RESYNC (or conflation) said
    "mismatch",         # a delivery's value or revision differs from the history's
    "final",            # a watcher's last value is not the variable's last
    "lost",             # an acknowledged write is not in the history
    "refused_visible",  # a refused write (invalid, CAS conflict, failed batch) is visible
    "torn_batch",       # an atomic batch not applied whole, under one revision
    "watch_error",      # a watch ended with an error
    "stale_read",       # a writer's read right after its acknowledged write showed less
)
REFUSED = ("refused", "conflict")


@dataclass(frozen=True)
class Violation:
    """One broken promise: its ``kind`` (one of ``KINDS``) and what exactly happened.

    >>> Violation("lost", "x v3").kind
    'lost'
    """

    kind: str
    text: str


@dataclass
class Batch:
    """One ``update_variables(atomic=True)``: its writes, and what the writer was told."""

    writer: str
    writes: list[Write]
    outcome: str = "pending"


class ChaosLedger(Ledger):
    """A crash ``Ledger`` that also records atomic batches and CAS conflicts.

    >>> ledger = ChaosLedger()
    >>> batch = ledger.send_batch("w0", {"x": 1_000_001, "y": 1_000_002}, refuse=False)
    >>> ledger.finish_batch(batch, "acked")
    >>> [w.outcome for w in batch.writes], ledger.acks
    (['acked', 'acked'], 1)
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Batch] = []
        # Reads a writer made right after a write was acknowledged to it, that showed an
        # older version (what it read, for the verdict).
        self.stale_reads: list[str] = []

    def send_batch(self, writer: str, values: Mapping[str, int], refuse: bool) -> Batch:
        """Record an atomic batch about to be sent (``refuse``: one value breaks min 0)."""
        writes = []
        for name, value in values.items():
            writes.append(self.send(writer, name, value, refuse and value < 0))
        batch = Batch(writer, writes)
        self.batches.append(batch)
        return batch

    def finish_batch(self, batch: Batch, outcome: str, error: str = "") -> None:
        """The batch ended: ``acked`` (applied, versions unknown), ``refused``, ``maybe``."""
        batch.outcome = outcome
        tick = self._next()
        for write in batch.writes:
            write.outcome, write.done, write.error = outcome, tick, error
        if outcome == "acked":
            self.acks += 1
            if self.on_event is not None:
                self.on_event("ack")


@dataclass
class Verdict:
    """The checker's answer: violations, and what it looked at.

    >>> Verdict().by_kind()["lost"]
    0
    """

    violations: list[Violation] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        """Record one violation of ``kind``."""
        assert kind in KINDS, kind
        self.violations.append(Violation(kind, text))

    def by_kind(self) -> Counter[str]:
        """How many violations of each kind (every kind present, zeros included)."""
        counts: Counter[str] = Counter({kind: 0 for kind in KINDS})
        counts.update(v.kind for v in self.violations)
        return counts

    def kinds(self) -> set[str]:
        """The kinds found."""
        return {v.kind for v in self.violations}


def check_run(ledger: ChaosLedger, history: Mapping[str, Sequence[Entry]],
              reads: Mapping[str, Mapping[str, Any]] | None = None) -> Verdict:
    """Every promise the store broke to this run's clients, by kind.

    ``history``: each variable's whole history (oldest first) read after the run;
    ``reads``: what each reader's ``get_variable`` said after the run (reader -> name ->
    value), which must be the variable's last value.

    >>> ledger = ChaosLedger()
    >>> ledger.ack(ledger.send("w0", "x", 1_000_001, False), 2)
    >>> check_run(ledger, {"x": [Entry(1, 0, 5), Entry(2, 1_000_001, 9)]}).violations
    []
    >>> [v.kind for v in check_run(ledger, {"x": [Entry(1, 0, 5)]}).violations]
    ['lost']
    """
    verdict = Verdict()
    written = {w.value: w for w in ledger.writes}
    for error in ledger.watch_errors:
        verdict.add("watch_error", error)
    for read in ledger.stale_reads:
        verdict.add("stale_read", read)
    by_version = {name: {e.version: e for e in entries} for name, entries in history.items()}
    for name, entries in history.items():
        for entry in entries:
            if entry.version == 1 and entry.value == INITIAL_VALUE:
                continue
            _check_value(verdict, written, entry.value, f"history of {name} v{entry.version}")
    _check_acks(verdict, ledger, history, by_version)
    _check_batches(verdict, ledger.batches, history)
    _check_watchers(verdict, ledger.deliveries, history, by_version, written)
    for reader, values in sorted((reads or {}).items()):
        for name, value in sorted(values.items()):
            last = history.get(name, ())
            if last and value != last[-1].value:
                verdict.add("final", f"{reader}: get_variable({name!r}) says {value!r}, the "
                            f"variable ends at v{last[-1].version}={last[-1].value!r}")
    return verdict


def _check_value(verdict: Verdict, written: Mapping[Any, Write], value: Any, where: str) -> bool:
    """A value anyone can see must be one a writer sent and was not refused."""
    write = written.get(value) if isinstance(value, int) else None
    if write is None:
        verdict.add("phantom", f"{where} holds {value!r}, which no writer sent")
        return False
    if write.meant_to_refuse or write.outcome in REFUSED:
        verdict.add("refused_visible", f"{where} holds {value!r}, which {write.writer} was "
                    f"told was {write.outcome} ({write.error or 'breaks min 0'})")
        return False
    return True


def _check_acks(verdict: Verdict, ledger: ChaosLedger, history: Mapping[str, Sequence[Entry]],
                by_version: Mapping[str, Mapping[int, Entry]]) -> None:
    for write in ledger.writes:
        if write.outcome != "acked":
            continue
        if write.meant_to_refuse:
            verdict.add("refused_visible", f"{write.writer}: {write.name}={write.value} breaks "
                        "min 0 and was acknowledged")
            continue
        entries = history.get(write.name, ())
        if write.version is None:  # a batch member: found by its unique value
            if not any(e.value == write.value for e in entries):
                verdict.add("lost", f"{write.writer}: batch write {write.name}={write.value} "
                            "acknowledged, not in the history")
            continue
        entry = by_version.get(write.name, {}).get(write.version)
        if entry is None or entry.value != write.value:
            held = "nothing" if entry is None else repr(entry.value)
            verdict.add("lost", f"{write.writer}: {write.name}={write.value} acknowledged at "
                        f"v{write.version}; the history has {held} there")


def _check_batches(verdict: Verdict, batches: Sequence[Batch],
                   history: Mapping[str, Sequence[Entry]]) -> None:
    where = {(name, e.value): e for name, entries in history.items() for e in entries}
    for batch in batches:
        found = [where.get((w.name, w.value)) for w in batch.writes]
        present = [e for e in found if e is not None]
        label = ", ".join(f"{w.name}={w.value}" for w in batch.writes)
        if present and len(present) != len(found):
            verdict.add("torn_batch", f"{batch.writer}: batch {label} ({batch.outcome}) is "
                        f"visible in part: {len(present)} of {len(found)}")
        elif len({e.revision for e in present}) > 1:
            verdict.add("torn_batch", f"{batch.writer}: batch {label} applied under revisions "
                        f"{sorted({e.revision for e in present})}")


def _check_watchers(verdict: Verdict, deliveries: Sequence[Delivery],
                    history: Mapping[str, Sequence[Entry]],
                    by_version: Mapping[str, Mapping[int, Entry]],
                    written: Mapping[Any, Write]) -> None:
    streams: dict[tuple[str, str], list[Delivery]] = {}
    for d in deliveries:
        streams.setdefault((d.watcher, d.name), []).append(d)
    for (watcher, name), seen in sorted(streams.items()):
        where = f"{watcher} watching {name}"
        entries = by_version.get(name, {})
        previous: Delivery | None = None
        for d in seen:
            initial = d.version == 1 and d.value == INITIAL_VALUE
            if initial or _check_value(verdict, written, d.value, f"{where}: v{d.version}"):
                entry = entries.get(d.version)
                if entry is None or entry.value != d.value or entry.revision != d.revision:
                    held = "nothing" if entry is None else f"{entry.value!r}@{entry.revision}"
                    verdict.add("mismatch", f"{where}: saw v{d.version}={d.value!r}@"
                                f"{d.revision}; the history has {held}")
            if previous is not None:
                if d.version == previous.version:
                    verdict.add("duplicate", f"{where}: v{d.version} twice")
                elif d.version < previous.version:
                    verdict.add("order", f"{where}: v{d.version} after v{previous.version}")
                elif (d.version != previous.version + 1 and not d.conflated
                      and d.update_type not in ("resync", "initial")):
                    verdict.add("gap", f"{where}: v{previous.version} to v{d.version} "
                                f"({d.update_type}, no resync)")
            previous = d
        last = history.get(name, ())
        if previous is not None and last and (previous.version, previous.value) != (
            last[-1].version, last[-1].value
        ):
            verdict.add("final", f"{where}: last saw v{previous.version}={previous.value!r}, "
                        f"the variable ends at v{last[-1].version}={last[-1].value!r}")
