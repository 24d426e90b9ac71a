"""The quickstart behind `make demo` runs to the end and shows what it promises."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


async def test_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(QUICKSTART))
    await module["main"]()
    out = capsys.readouterr().out
    assert "registered 10 variables in one atomic call" in out
    assert "variable 'temperature': 5.0 is above max 2.0" in out
    assert "VariableTypeError: variable 'max_tokens': expected integer" in out
    assert "context_embedding  embedding v2  ndarray float32[768] |v|=1.000" in out
    assert "session revision 2;" in out
