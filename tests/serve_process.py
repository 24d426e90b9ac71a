"""``dspex-rx serve`` as a child process for the metrics, logs and port tests: its stderr
read on a thread (as JSON lines with ``--log-format json``), its ports, its metrics page."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SCRIPT = Path(sys.executable).parent / "dspex-rx"
GUARD = 30.0  # a hang guard for a child process, not a timing assertion


class Served:
    """A running ``dspex-rx serve``; ``lines`` is its stderr so far (a thread drains it,
    so the pipe never fills)."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen([str(SCRIPT), "serve", *flags],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def records(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed as JSON (fails on a line that is not)."""
        return [json.loads(line) for line in list(self.lines) if line.strip()]

    def wait_for(self, event: str) -> dict[str, Any]:
        """The first JSON record of ``event``, once logged (the process must be serving)."""
        deadline = time.monotonic() + GUARD
        while True:
            for line in list(self.lines):
                if f'"{event}"' in line:
                    record: dict[str, Any] = json.loads(line)
                    if record.get("event") == event:
                        return record
            assert self.proc.poll() is None, f"dspex-rx serve exited: {self.lines}"
            assert time.monotonic() < deadline, f"never logged {event}: {self.lines}"
            time.sleep(0.01)  # polls another process; no timing is asserted

    def exit(self) -> int:
        """Wait for the process to end by itself; its exit code (the reader has read all)."""
        code = self.proc.wait(timeout=GUARD)
        self._reader.join(GUARD)
        return code

    def stop(self) -> int:
        """SIGTERM, then wait for it to end; its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.exit()

    def kill(self) -> None:
        """End it now whatever its state (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=GUARD)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics page at ``port`` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=GUARD) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """One sample's value (0.0 when absent: a counter never incremented is not shown)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
