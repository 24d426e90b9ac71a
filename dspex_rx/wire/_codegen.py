"""Generates dspex_rx/v1 (protobuf + gRPC Python code) from proto/; never edit the output by hand.

Run through ``make proto``; tests/test_proto_fresh.py regenerates into a temporary folder and
fails when the committed output differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"


def proto_files() -> list[Path]:
    """The .proto sources, sorted.

    >>> [p.name for p in proto_files()]
    ['calls.proto', 'session.proto', 'value.proto', 'variables.proto']
    """
    return sorted((PROTO_DIR / "dspex_rx" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` (the package lands at ``out_dir/dspex_rx/v1``).

    Example: ``generate(Path("/tmp/out"))`` writes ``/tmp/out/dspex_rx/v1/*_pb2*.py*``.
    """
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted((out_dir / "dspex_rx" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    """``python -m dspex_rx.wire._codegen [OUT]``: regenerate into OUT (default: the repo root).

    Example: ``python -m dspex_rx.wire._codegen`` (what ``make proto`` runs).
    """

    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path.relative_to(out))


if __name__ == "__main__":
    main()
