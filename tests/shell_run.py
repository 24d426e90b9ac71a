"""Running the real ``dspex-rx`` executable for the shell tests: a ``serve`` child on a free
port, and a ``Shell`` that runs client commands against it with the session in its env."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import SCRIPT, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD = 60.0  # seconds: a bound on a child that hangs, never a timing assertion


@contextmanager
def served(tmp: Path, *flags: str) -> Iterator[str]:
    """``dspex-rx serve --storage memory --port 0`` with ``flags``; yields its target."""
    port_file = tmp / "port"
    proc = subprocess.Popen(
        [str(SCRIPT), "serve", "--storage", "memory", "--port", "0", "--port-file",
         str(port_file), "--log-level", "warning", *flags],
        env=environment(), stderr=subprocess.DEVNULL,
    )
    try:
        yield f"127.0.0.1:{wait_for_port(proc, port_file, HANG_GUARD)}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without any DSPEX_RX_* setting, with this tree first on
    PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_RX_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Shell:
    """``dspex-rx`` client commands against one server, as one session (once ``new``)."""

    target: str
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, check: bool = True, **extra: str
                 ) -> subprocess.CompletedProcess[str]:
        """Run ``dspex-rx ARGS``; with ``check``, assert exit 0 (showing stderr if not)."""
        done = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=HANG_GUARD,
            env=environment(**{"DSPEX_RX_TARGET": self.target, **self.env, **extra}),
        )
        if check:
            assert done.returncode == 0, f"dspex-rx {' '.join(args)}: {done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        """Run ``dspex-rx ARGS -o json`` and parse its one JSON document."""
        return json.loads(self(*args, "-o", "json").stdout)

    def new(self, *args: str) -> dict[str, Any]:
        """``dspex-rx session new -o json``: this shell now uses that session."""
        made: dict[str, Any] = self.json("session", "new", *args)
        self.env = {"DSPEX_RX_SESSION": made["session_id"], "DSPEX_RX_TOKEN": made["token"]}
        return made

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start ``dspex-rx ARGS`` as a child whose stdout the test reads line by line."""
        return subprocess.Popen(
            [str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=environment(DSPEX_RX_TARGET=self.target, **self.env),
        )


def read_line(proc: subprocess.Popen[str]) -> str:
    """The child's next stdout line; fails (after the hang guard) if none comes."""
    stdout = proc.stdout
    assert stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(HANG_GUARD)
    assert got and got[0], f"no line from the child (stderr: {_stderr(proc)})"
    return got[0].rstrip("\n")


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return "(still running)"
    return proc.stderr.read()
