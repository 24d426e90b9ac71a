"""The committed dspex_rx/v1 code is exactly what `make proto` generates from proto/."""

from __future__ import annotations

from pathlib import Path

from dspex_rx.wire import _codegen

PACKAGE = Path(__file__).resolve().parent.parent / "dspex_rx" / "v1"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    generated = _codegen.generate(tmp_path)
    assert generated, "protoc produced nothing"
    fresh = {p.name: p.read_bytes() for p in generated}
    committed = {p.name: p.read_bytes() for p in PACKAGE.glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(committed), "run `make proto`: generated files differ"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto`: {stale} are out of date with proto/"


def test_every_proto_has_generated_code() -> None:
    stems = {p.stem for p in _codegen.proto_files()}
    assert stems == {"calls", "session", "value", "variables"}
    for stem in stems:
        assert (PACKAGE / f"{stem}_pb2.py").exists()
