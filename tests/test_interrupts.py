"""Ctrl-C that lands in a session's background task (its services run in a trio system
task, whose children trio does not protect) reaches the program's main task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# An observer behind debounce runs in the session's timer task; raising KeyboardInterrupt
# there is what a Ctrl-C arriving while it runs does.
_PROGRAM = """
import trio, dspex_rx
from reactivex import operators as ops
async def main():
    async with dspex_rx.connect() as session:
        await session.register_variable("x", "integer", 0)
        def observer(update):
            if update.value == 1:
                raise KeyboardInterrupt
        session.observe("x").pipe(ops.debounce(0.01)).subscribe(observer)
        await session.sync()
        await session.set_variable("x", 1)
        await trio.sleep_forever()  # the interrupt ends it (the run's timeout guards a hang)
try:
    trio.run(main)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
except BaseException as exc:
    print(type(exc).__name__)
"""


# Guards: a KeyboardInterrupt out of a session's background task escaped its system task
# and ended the run with TrioInternalError.
def test_ctrl_c_in_a_sessions_background_task_reaches_the_main_task() -> None:
    done = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["KeyboardInterrupt"], done.stderr[-2000:]
