"""The chaos checker on recorded histories: each kind of violation planted by hand is found
(and named by its kind), and what the guarantees allow (a gap after a RESYNC or in a
conflated frame, a batch whose outcome was unknown and did not apply) is not flagged."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from checks import KINDS, ChaosLedger, check_run
from crash_checks import Delivery, Entry

A, B, C = 1_000_010, 1_000_020, 1_000_030  # writer values (unique)


def ledger_with_three_sets() -> tuple[ChaosLedger, dict[str, list[Entry]]]:
    """x written A, B, C (versions 2-4), all acknowledged, and the history that says so."""
    ledger = ChaosLedger()
    for version, value in ((2, A), (3, B), (4, C)):
        ledger.ack(ledger.send("w0", "x", value, False), version)
    history = {"x": [Entry(1, 0, 10), Entry(2, A, 11), Entry(3, B, 12), Entry(4, C, 13)]}
    return ledger, history


def deliver(ledger: ChaosLedger, seen: Sequence[tuple[int, int, int]], kind: str = "value_change",
            conflated: bool = False, watcher: str = "watch0") -> None:
    """Record deliveries (version, value, revision) to ``watcher``, the first as initial."""
    for i, (version, value, revision) in enumerate(seen):
        ledger.deliveries.append(Delivery(
            watcher, "x", version, revision, value, "initial" if i == 0 else kind,
            conflated, ledger._next(),
        ))


FULL = [(1, 0, 10), (2, A, 11), (3, B, 12), (4, C, 13)]


def kinds(ledger: ChaosLedger, history: dict[str, list[Entry]]) -> list[str]:
    return sorted(v.kind for v in check_run(ledger, history).violations)


def test_a_clean_history_has_no_violation() -> None:
    ledger, history = ledger_with_three_sets()
    deliver(ledger, FULL)
    assert kinds(ledger, history) == []


@pytest.mark.parametrize(("seen", "expected"), [
    ([*FULL[:2], FULL[1], *FULL[2:]], ["duplicate"]),
    # v1, v3 (gap), v2 (back), v4 (a gap from v2)
    ([FULL[0], FULL[2], FULL[1], FULL[3]], ["gap", "gap", "order"]),
    ([FULL[0], FULL[1], FULL[3]], ["gap"]),
    (FULL[:3], ["final"]),
    ([*FULL[:3], (4, 999, 13)], ["final", "phantom"]),
    ([*FULL[:3], (4, C, 99)], ["mismatch"]),
])
def test_each_watcher_violation_is_found_by_its_kind(
    seen: list[tuple[int, int, int]], expected: list[str]
) -> None:
    ledger, history = ledger_with_three_sets()
    deliver(ledger, seen)
    assert kinds(ledger, history) == expected


@pytest.mark.parametrize("allowed", ["resync", "conflated"])
def test_a_gap_the_stream_announced_is_allowed(allowed: str) -> None:
    ledger, history = ledger_with_three_sets()
    deliver(ledger, [FULL[0], FULL[3]], kind="resync" if allowed == "resync" else
            "value_change", conflated=allowed == "conflated")
    assert kinds(ledger, history) == []


def test_an_acknowledged_write_missing_from_the_history_is_lost() -> None:
    ledger, history = ledger_with_three_sets()
    history["x"].pop()  # the store forgot v4 = C, which w0 was told was written
    deliver(ledger, FULL[:3])
    assert kinds(ledger, history) == ["lost"]


def test_a_write_acknowledged_at_another_version_is_lost() -> None:
    ledger, history = ledger_with_three_sets()
    history["x"][3] = Entry(4, B + 1, 13)  # v4 holds something else, sent by nobody
    ledger.send("w1", "x", B + 1, False)  # ...by w1, outcome unknown
    deliver(ledger, [*FULL[:3], (4, B + 1, 13)])
    assert kinds(ledger, history) == ["lost"]


@pytest.mark.parametrize("outcome", ["refused", "conflict"])
def test_a_refused_write_that_became_visible_is_found(outcome: str) -> None:
    ledger, history = ledger_with_three_sets()
    refused = ledger.send("w1", "x", 2_000_010, False)
    ledger.finish(refused, outcome, "told no")
    history["x"].append(Entry(5, 2_000_010, 14))
    deliver(ledger, [*FULL, (5, 2_000_010, 14)])
    # Once in the history, once in the watcher's deliveries.
    assert kinds(ledger, history) == ["refused_visible", "refused_visible"]


def test_a_write_meant_to_break_the_constraint_and_acknowledged_is_found() -> None:
    ledger, history = ledger_with_three_sets()
    ledger.ack(ledger.send("w1", "x", -2_000_010, True), 5)
    history["x"].append(Entry(5, -2_000_010, 14))
    deliver(ledger, FULL)
    assert "refused_visible" in kinds(ledger, history)


def batch_history(x_rev: int, y_value: int | None) -> tuple[ChaosLedger, dict[str, list[Entry]]]:
    ledger = ChaosLedger()
    batch = ledger.send_batch("w0", {"x": A, "y": B}, refuse=False)
    ledger.finish_batch(batch, "maybe", "UNAVAILABLE")
    history = {"x": [Entry(1, 0, 1), Entry(2, A, x_rev)], "y": [Entry(1, 0, 2)]}
    if y_value is not None:
        history["y"].append(Entry(2, y_value, 10))
    return ledger, history


def test_an_atomic_batch_applied_under_two_revisions_is_torn() -> None:
    assert kinds(*batch_history(x_rev=9, y_value=B)) == ["torn_batch"]


def test_an_atomic_batch_visible_in_part_is_torn() -> None:
    assert kinds(*batch_history(x_rev=10, y_value=None)) == ["torn_batch"]


def test_an_atomic_batch_of_unknown_outcome_applied_whole_is_fine() -> None:
    assert kinds(*batch_history(x_rev=10, y_value=B)) == []


def test_an_acknowledged_batch_missing_from_the_history_is_lost() -> None:
    ledger = ChaosLedger()
    ledger.finish_batch(ledger.send_batch("w0", {"x": A}, refuse=False), "acked")
    assert kinds(ledger, {"x": [Entry(1, 0, 1)]}) == ["lost"]


def test_a_watch_that_ended_with_an_error_is_a_violation() -> None:
    ledger, history = ledger_with_three_sets()
    deliver(ledger, FULL)
    ledger.watch_errors.append("watch0 watching x: AuthenticationError: token refused")
    verdict = check_run(ledger, history)
    assert [v.kind for v in verdict.violations] == ["watch_error"]
    assert verdict.by_kind()["watch_error"] == 1
    assert set(verdict.by_kind()) == set(KINDS)


def test_a_read_after_the_run_that_is_not_the_last_value_is_found() -> None:
    ledger, history = ledger_with_three_sets()
    deliver(ledger, FULL)
    reads = {"watch0": {"x": C}, "watch1": {"x": B}}  # watch1's cache kept an old value
    verdict = check_run(ledger, history, reads)
    assert [(v.kind, v.text.split(":")[0]) for v in verdict.violations] == [("final", "watch1")]


def test_a_writers_read_showing_less_than_its_acknowledged_write_is_a_stale_read() -> None:
    ledger, history = ledger_with_three_sets()
    deliver(ledger, FULL)
    ledger.stale_reads.append("w0 read x at v2 right after its write was acknowledged at v3")
    verdict = check_run(ledger, history)
    assert [(v.kind, v.text) for v in verdict.violations] == [
        ("stale_read", "w0 read x at v2 right after its write was acknowledged at v3")]
