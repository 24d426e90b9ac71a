"""`session.observe(...).pipe(ops.debounce(...))` on trio time: a burst of edits to
`temperature` reaches the subscriber once, when the edits settle."""

from __future__ import annotations

import trio
from reactivex import operators as ops

import dspex_rx


async def main() -> list[tuple[float, float]]:
    """Edit temperature in bursts; print what the debounced observer sees, and when."""
    settled: list[tuple[float, float]] = []
    async with dspex_rx.connect() as session:
        await session.register_variable(
            "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0}
        )
        start = trio.current_time()

        def show(value: float) -> None:
            settled.append((trio.current_time() - start, value))
            print(f"t={trio.current_time() - start:4.2f}s  settled at {value}")

        subscription = session.observe("temperature", include_initial=False).pipe(
            ops.debounce(0.5), ops.map(lambda update: update.value)
        ).subscribe(show)
        await session.sync()  # the watch is registered before the edits
        for burst in ([0.8, 0.9, 1.0], [0.5, 0.4]):
            for value in burst:
                print(f"t={trio.current_time() - start:4.2f}s  set {value}")
                await session.set_variable("temperature", value)
                await trio.sleep(0.1)
            await session.sync()  # every edit so far has reached the observer
            await trio.sleep(1.0)  # quiet: the debounce fires 0.5 s after the last edit
        subscription.dispose()
    return settled


if __name__ == "__main__":
    trio.run(main)
