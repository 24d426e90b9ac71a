"""What installing the package tells the user: its licence in the build metadata, the
LICENSE file it ships, and no warnings from the build backend."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BUILD_METADATA = """
import sys
import setuptools.build_meta as backend
name = backend.prepare_metadata_for_build_wheel(sys.argv[1])
print(name)
"""


def _metadata(tmp_path: Path) -> tuple[str, Path, str]:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", BUILD_METADATA, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    dist_info = tmp_path / done.stdout.strip().splitlines()[-1]
    return (dist_info / "METADATA").read_text(), dist_info, done.stderr


# Guards: `license = { text = ... }` printed setuptools' deprecation warning at every
# install (4 copies under pip), and no LICENSE file was shipped.
def test_the_build_metadata_names_the_licence_and_ships_the_file(tmp_path: Path) -> None:
    metadata, dist_info, stderr = _metadata(tmp_path)
    headers = [line for line in metadata.splitlines() if line.startswith("License")]
    assert headers == ["License-Expression: Apache-2.0", "License-File: LICENSE"]
    shipped = (dist_info / "licenses" / "LICENSE").read_text()
    assert shipped == (ROOT / "LICENSE").read_text()
    assert "Apache License" in shipped and "Version 2.0, January 2004" in shipped
    assert "END OF TERMS AND CONDITIONS" in shipped
    assert "Deprecat" not in stderr and "license" not in stderr.lower(), stderr


def test_the_build_requires_a_setuptools_that_reads_the_spdx_licence() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
