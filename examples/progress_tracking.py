"""The spec's "Batch Processing with Progress Tracking": one connection works through
batches and sets `progress`; a second connection watches it, throttled, and prints every
value it gets. Throttling skips intermediate values, never the last one: it ends at 100.0.
"""

from __future__ import annotations

import trio

import dspex_rx

BATCHES = 40


async def worker(session: dspex_rx.SessionContext) -> None:
    """Process batches, reporting progress after each (one write per batch)."""
    for done in range(1, BATCHES + 1):
        await trio.sleep(0.02)  # stands in for real work on a batch
        await session.set_variable(
            "progress", 100.0 * done / BATCHES, metadata={"batch": done}
        )


async def monitor(target: str, session_id: str, token: str, lines: list[str]) -> None:
    """A second program: watch progress at most every 200 ms until it reaches 100.

    Joining another connection's session takes its id and its secret token."""
    async with (
        dspex_rx.connect(target, session_id=session_id, token=token) as session,
        session.watch_variable("progress", throttle_ms=200) as watch,
    ):
        async for update in watch:
            line = f"progress {update.value:5.1f}%  (version {update.version})"
            lines.append(line)
            print(line)
            if update.value >= 100.0:
                break


async def main() -> list[str]:
    """Run worker and monitor on an embedded server; returns the monitor's lines."""
    lines: list[str] = []
    async with dspex_rx.connect() as session:
        await session.register_variable(
            "progress", "float", 0.0, constraints={"min": 0.0, "max": 100.0}
        )
        assert session.target is not None and session.token is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor, session.target, session.session_id, session.token,
                               lines)
            await session.sync()
            await trio.sleep(0.1)  # let the monitor connect before the work starts
            nursery.start_soon(worker, session)
    print(f"{BATCHES} writes, {len(lines)} updates shown, last: {lines[-1]}")
    return lines


if __name__ == "__main__":
    trio.run(main)
