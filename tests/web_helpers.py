"""Helpers of the web view's tests: run the real ``dspex-rx ui`` on a free port against a
session, and read the address it says it serves on."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from helpers import SCRIPT

import dspex_rx


@dataclass
class UI:
    """A running ``dspex-rx ui``: its process and the page's URL."""

    proc: subprocess.Popen[str]
    url: str

    def stop(self) -> tuple[int, str, str]:
        """SIGINT (Ctrl-C), then its exit code and the rest of its output."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@asynccontextmanager
async def running_ui(session: dspex_rx.SessionContext, *flags: str) -> AsyncIterator[UI]:
    """``dspex-rx ui --port 0 <flags>`` joined to ``session`` through the environment, as a
    user would run it; yields once it printed the address it serves on."""
    env = dict(os.environ, DSPEX_RX_TARGET=str(session.target),
               DSPEX_RX_SESSION=session.session_id, DSPEX_RX_TOKEN=str(session.token))
    proc = subprocess.Popen([str(SCRIPT), "ui", "--port", "0", *flags], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):  # a hang guard on a real process, not a timing assertion
            line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert " at http://" in line, (line, proc.stderr.read() if proc.stderr else "")
        url = line.split(" at ")[1].split()[0]
        yield UI(proc, url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
