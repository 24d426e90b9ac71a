"""Crash durability (#14): a server in a child process killed with SIGKILL at seeded points
while writers and watchers run, restarted on the same port and data dir; nothing
acknowledged is lost, nothing refused appears, versions and revisions never go back and
watchers resume without a gap. Also: the harness's checks catch each such failure.

The suite runs seed 14 unless ``DSPEX_CRASH_SEED=<n>`` gives another; a failing run prints
its seed and the server's last log lines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from crash_checks import Delivery, Entry, Ledger, check
from crash_harness import VALUE_BASE, CrashConfig, CrashReport, run_crash, seed_from_env

from dspex_rx.client.actors import VariableUpdate

# At least 20 kills in CI on the durable backend (the bar); the memory server's
# run only proves the harness itself (its kills lose the session by design).
DURABLE_KILLS = 20
MEMORY_KILLS = 8
ETCD_KILLS = 10
# The suite replays one seed (repeatable); benchmarks/crash.py draws fresh ones.
DEFAULT_SEED = 14

V1, V2, V3 = VALUE_BASE + 1, VALUE_BASE + 2, VALUE_BASE + 3


def failure(report: CrashReport) -> str:
    problems = "\n  ".join(report.problems[:30])
    return (f"crash run failed: replay with DSPEX_CRASH_SEED={report.seed} "
            f"(storage {report.storage}); {len(report.problems)} problem(s):\n  {problems}\n"
            f"summary: {report.summary()}\nserver log tail:\n{report.server_log}")


# ----------------------------------------------------------------------------- real servers


async def test_sqlite_server_killed_20_times_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    config = CrashConfig(seed=seed_from_env(DEFAULT_SEED), kills=DURABLE_KILLS, storage="sqlite")
    report = await run_crash(config, tmp_path)
    assert not report.problems, failure(report)
    assert report.kills == DURABLE_KILLS, failure(report)
    # The run really wrote through the kills: acknowledged, refused and unknown writes.
    assert report.acked >= DURABLE_KILLS + config.final_acks, failure(report)
    assert report.refused > 0, failure(report)
    assert report.maybe > 0, failure(report)
    assert report.deliveries > 0, failure(report)


async def test_memory_server_killed_and_restarted_passes_every_check_but_durability(
    tmp_path: Path,
) -> None:
    config = CrashConfig(seed=seed_from_env(DEFAULT_SEED), kills=MEMORY_KILLS, storage="memory")
    report = await run_crash(config, tmp_path)
    assert not report.problems, failure(report)
    assert report.kills == MEMORY_KILLS, failure(report)
    assert report.acked >= config.final_acks, failure(report)
    assert report.refused > 0, failure(report)
    assert report.deliveries > 0, failure(report)


async def test_etcd_replica_killed_10_times_loses_no_acknowledged_write(
    tmp_path: Path, etcd_endpoint: str,
) -> None:
    # The server is the replica killed; etcd, which holds the rows, stays up (#15).
    config = CrashConfig(seed=seed_from_env(DEFAULT_SEED), kills=ETCD_KILLS, storage="etcd",
                         etcd_endpoint=etcd_endpoint)
    report = await run_crash(config, tmp_path)
    assert not report.problems, failure(report)
    assert report.kills == ETCD_KILLS, failure(report)
    assert report.acked >= ETCD_KILLS + config.final_acks, failure(report)
    assert report.refused > 0 and report.deliveries > 0, failure(report)


def test_config_names_a_storage_it_does_not_know() -> None:
    with pytest.raises(ValueError, match=r"storage must be one of .*'etcd'"):
        CrashConfig(seed=1, storage="tape")
    with pytest.raises(ValueError, match="storage 'etcd' needs etcd_endpoint"):
        CrashConfig(seed=1, storage="etcd")
    with pytest.raises(ValueError, match="writers must be at least 1, got 0"):
        CrashConfig(seed=1, writers=0)


def test_seed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_CRASH_SEED", "1234")
    assert seed_from_env(7) == 1234
    monkeypatch.setenv("DSPEX_CRASH_SEED", "abc")
    with pytest.raises(ValueError, match="DSPEX_CRASH_SEED must be an integer, got 'abc'"):
        seed_from_env()
    monkeypatch.delenv("DSPEX_CRASH_SEED")
    assert seed_from_env(7) == 7


# ----------------------------------------------------------------------------- the checks
# Each case below is a failure a broken durable backend could produce; the checks must name
# it. The ledgers are built by hand in the order the clients would have recorded them.


def history(*values: int, first_revision: int = 10) -> list[Entry]:
    """Versions 1.. of one variable: the initial 0, then ``values``, revisions rising."""
    return [Entry(v + 1, value, first_revision + v)
            for v, value in enumerate((0, *values))]


def acked(ledger: Ledger, name: str, value: int, version: int, writer: str = "w0.0") -> None:
    ledger.ack(ledger.send(writer, name, value, value < 0), version)


def test_a_clean_run_has_no_problems() -> None:
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    acked(ledger, "x", V2, 3)
    maybe = ledger.send("w0.0", "x", V3, False)
    ledger.finish(maybe, "maybe", "UNAVAILABLE: the server went away")
    ledger.finish(ledger.send("w0.0", "x", -V3 - 1, True), "refused", "below min 0")
    assert check(ledger, {"x": history(V1, V2, V3)}, {"x": V3}) == []
    # An unknown outcome may equally well never have committed.
    assert check(ledger, {"x": history(V1, V2)}, {"x": V2}) == []


def test_an_acknowledged_write_missing_after_the_restart_is_reported_lost() -> None:
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    acked(ledger, "x", V2, 3)
    assert check(ledger, {"x": history(V1)}, {"x": V1}) == [
        f"lost: x acknowledged at version 3 with {V2}, history ends at version 2"
    ]


def test_a_version_reused_for_another_value_is_reported() -> None:
    # v3 was acknowledged with V2; after the restart the store handed v3 to V3 instead.
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    acked(ledger, "x", V2, 3)
    maybe = ledger.send("w0.1", "x", V3, False)
    ledger.finish(maybe, "maybe", "UNAVAILABLE")
    assert check(ledger, {"x": history(V1, V3)}, {"x": V3}) == [
        f"lost: x acknowledged at version 3 with {V2}, history has {V3} there"
    ]


def test_a_refused_value_that_appears_is_reported() -> None:
    ledger = Ledger()
    ledger.finish(ledger.send("w0.0", "x", -V1, True), "refused", "below min 0")
    problems = check(ledger, {"x": history(-V1)}, {"x": -V1})
    assert problems == [f"refused value {-V1} stored: x v2 (the writer was told refused)"]
    ledger.deliver("watch0", update("x", 2, 11, -V1))
    assert f"watch0 watching x: saw refused value {-V1} at v2" in check(
        ledger, {"x": history(-V1)}, {"x": -V1})


def test_a_value_no_writer_sent_or_stored_twice_is_reported() -> None:
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    assert check(ledger, {"x": history(V1, 77)}, {"x": 77}) == [
        "history of x v3 holds 77, which no writer sent"
    ]
    assert check(ledger, {"x": history(V1, V1)}, {"x": V1}) == [
        f"value {V1} stored twice: x v3 and x v2"
    ]


def test_a_revision_that_goes_back_across_a_restart_is_reported() -> None:
    # y's write was sent after x's was acknowledged, yet got an older revision: the
    # restarted server reused revisions.
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    ledger.epoch = 1
    acked(ledger, "y", V2, 2)
    x = [Entry(1, 0, 1), Entry(2, V1, 20)]
    y = [Entry(1, 0, 2), Entry(2, V2, 15)]
    assert check(ledger, {"x": x, "y": y}, {"x": V1, "y": V2}) == [
        "revision went back: y v2 (sent after x v2 was acknowledged at revision 20) has "
        "revision 15"
    ]


def test_history_versions_and_revisions_must_rise_one_by_one() -> None:
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    acked(ledger, "x", V2, 4)
    gappy = [Entry(1, 0, 10), Entry(2, V1, 12), Entry(4, V2, 11)]
    assert check(ledger, {"x": gappy}, {"x": V2}) == [
        "history of x: version 4 follows 2",
        "history of x: version 4 has revision 11, not above 12 of version 2",
        "revision went back: x v4 (sent after x v2 was acknowledged at revision 12) has "
        "revision 11",
    ]


def update(name: str, version: int, revision: int, value: int, kind: str = "value_change",
           conflated: bool = False) -> VariableUpdate:
    """The update a watcher's observer would get (the client builds these from the wire)."""
    return VariableUpdate("var_1", name, value, None, version, revision, kind, {},
                          datetime.now(UTC), "s", conflated)


def watched(*deliveries: tuple[int, int, int, str]) -> Ledger:
    """A ledger whose writes made x = history(V1, V2, V3) and whose watcher saw
    ``deliveries`` as (version, revision, value, update type)."""
    ledger = Ledger()
    for version, value in ((2, V1), (3, V2), (4, V3)):
        acked(ledger, "x", value, version)
    for version, revision, value, kind in deliveries:
        ledger.deliver("watch0", update("x", version, revision, value, kind))
    return ledger


def test_a_watcher_that_resumes_without_a_gap_passes() -> None:
    ledger = watched((1, 10, 0, "initial"), (2, 11, V1, "value_change"),
                     (3, 12, V2, "value_change"), (4, 13, V3, "value_change"))
    assert check(ledger, {"x": history(V1, V2, V3)}, {"x": V3}) == []


def test_a_watcher_gap_is_reported_unless_the_server_said_resync() -> None:
    gap = watched((1, 10, 0, "initial"), (3, 12, V2, "value_change"),
                  (4, 13, V3, "value_change"))
    assert check(gap, {"x": history(V1, V2, V3)}, {"x": V3}) == [
        "watch0 watching x: gap from v1 to v3 (value_change, no resync)"
    ]
    told = watched((1, 10, 0, "initial"), (3, 12, V2, "resync"), (4, 13, V3, "value_change"))
    assert check(told, {"x": history(V1, V2, V3)}, {"x": V3}) == []


def test_a_watcher_seeing_a_version_twice_or_a_lost_value_is_reported() -> None:
    twice = watched((1, 10, 0, "initial"), (2, 11, V1, "value_change"),
                    (2, 11, V1, "value_change"), (3, 12, V2, "value_change"),
                    (4, 13, V3, "value_change"))
    assert check(twice, {"x": history(V1, V2, V3)}, {"x": V3}) == [
        "watch0 watching x: v2 after v2"
    ]
    # The watcher was told v4 = 5 before the kill; the store lost it and gave v4 to V3.
    ghost = watched((1, 10, 0, "initial"), (2, 11, V1, "value_change"),
                    (3, 12, V2, "value_change"), (4, 13, 5, "value_change"))
    assert check(ghost, {"x": history(V1, V2, V3)}, {"x": V3}) == [
        "watch0 watching x: saw v4=5 at revision 13; history has "
        f"{V3} at revision 13"
    ]


def test_a_watcher_left_behind_the_newest_version_is_reported() -> None:
    behind = watched((1, 10, 0, "initial"), (2, 11, V1, "value_change"))
    assert check(behind, {"x": history(V1, V2, V3)}, {"x": V3}) == [
        "watch0 watching x: last saw v2, history ends at v4"
    ]


def test_current_value_must_be_the_newest_in_history() -> None:
    ledger = Ledger()
    acked(ledger, "x", V1, 2)
    assert check(ledger, {"x": history(V1)}, {"x": 0}) == [
        f"x: get_variable says 0, history's newest (v2) is {V1}"
    ]


def test_a_delivery_record_keeps_what_the_watcher_saw() -> None:
    ledger = Ledger()
    ledger.deliver("watch0", update("x", 3, 12, V2, "resync", conflated=True))
    assert ledger.deliveries == [Delivery("watch0", "x", 3, 12, V2, "resync", True, 1)]
