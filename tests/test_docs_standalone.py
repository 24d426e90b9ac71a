"""The repository stands alone: no tracked file sends readers to a design file or a
shared folder outside it (what users need from the design is in ARCHITECTURE.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Spelled in pieces so this file does not name them itself.
SHARED = "sha" + "red"
OUTSIDE = re.compile("DESIGN" + r"\.md|\.\./" + SHARED + r"|(?<![\w-])" + SHARED + "/")


def _tracked() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            timeout=60, check=True).stdout.decode().split("\0")
    return [ROOT / name for name in listed if name and (ROOT / name).is_file()]


def test_the_pattern_catches_each_way_of_pointing_outside() -> None:
    for text in ("see " + "DESIGN" + ".md", "../" + SHARED + "/x", "the " + SHARED + "/spec"):
        assert OUTSIDE.search(text), text
    for text in ("a " + SHARED + " session", "one-" + SHARED + "/x", "design.py"):
        assert not OUTSIDE.search(text), text


# Guards: docs and code referred to a DESIGN file outside the repository users cannot read.
def test_no_tracked_file_points_at_a_design_file_outside_the_repo() -> None:
    files = _tracked()
    assert ROOT / "README.md" in files and ROOT / "ARCHITECTURE.md" in files
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        found += [f"{path.relative_to(ROOT)}:{n}" for n, line in
                  enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert found == []


def test_architecture_states_the_guarantees_users_rely_on() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    guarantees = text.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    for promise in ("Revisions only grow", "Watches are ordered, unique and complete",
                    "No stale read after a watch starts", "The last value always arrives",
                    "Atomic batches are all or nothing", "Errors are precise"):
        assert f"**{promise}" in guarantees, promise
