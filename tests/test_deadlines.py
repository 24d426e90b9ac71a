"""The wall-clock deadlines of pipelined calls (client/deadlines.py) on a fake clock: fired
earliest first, never once forgotten, fired into the trio run, and compacted."""

from __future__ import annotations

import trio

from dspex_rx.client import deadlines as dl


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_due_deadlines_come_earliest_first_and_later_ones_stay() -> None:
    clock = Clock()
    d = dl.Deadlines(token=None, clock=clock)
    fired: list[str] = []
    for name, timeout in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("late", 30.0)):
        d.add(timeout, lambda name=name: fired.append(name))
    assert d.due(clock.now + 0.5) == []
    for entry in d.due(clock.now + 2.5):
        entry.fire()
    assert fired == ["a", "b"]
    assert len(d) == 2


def test_a_forgotten_deadline_never_fires() -> None:
    clock = Clock()
    d = dl.Deadlines(token=None, clock=clock)
    keep = d.add(1.0, lambda: None)
    gone = d.add(1.0, lambda: None)
    d.forget(gone)
    assert d.due(clock.now + 5) == [keep]
    assert len(d) == 0


def test_forgotten_deadlines_are_dropped_once_they_are_the_majority(monkeypatch) -> None:
    monkeypatch.setattr(dl, "COMPACT_AT", 10)
    clock = Clock()
    d = dl.Deadlines(token=None, clock=clock)
    entries = [d.add(30.0, lambda: None) for _ in range(25)]
    for entry in entries[:20]:
        d.forget(entry)
    d.add(30.0, lambda: None)  # the add that finds 20 of 25 forgotten compacts first
    assert len(d) == 6


async def test_the_thread_fires_into_the_trio_run_on_the_wall_clock() -> None:
    d = dl.Deadlines(trio.lowlevel.current_trio_token())
    fired = trio.Event()
    forgotten: list[int] = []
    try:
        d.forget(d.add(0.0, lambda: forgotten.append(1)))
        d.add(0.001, fired.set)
        with trio.fail_after(30):  # a hang guard, no duration asserted
            await fired.wait()
        assert forgotten == []
    finally:
        d.close()
