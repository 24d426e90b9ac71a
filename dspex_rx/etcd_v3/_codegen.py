"""Generates dspex_rx/etcd_v3 (protobuf + gRPC Python code) from the trimmed etcd protos
beside it; ``--trim-from`` makes those protos from etcd's own. Never edit the output by hand.

Run through ``make proto``; tests/test_etcd_proto_fresh.py regenerates into a temporary
folder and fails when the committed output differs.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parents[1]
# Where each trimmed proto comes from in etcd's source tree (v3.4; in 3.5+ the same files
# live under api/), so `--trim-from` can redo the trim on an upgrade.
UPSTREAM = {
    "rpc.proto": "etcdserver/etcdserverpb/rpc.proto",
    "kv.proto": "mvcc/mvccpb/kv.proto",
    "auth.proto": "auth/authpb/auth.proto",
}
LICENCE = """\
// Copyright The etcd Authors. Licensed under the Apache License, Version 2.0
// (https://www.apache.org/licenses/LICENSE-2.0). From etcd v{version}, {upstream}.
// Trimmed for dspex_rx.etcd_v3 by `python -m dspex_rx.etcd_v3._codegen --trim-from`:
// gogoproto and google.api (grpc-gateway) annotations removed, imports renamed to this
// package. Messages, fields, numbers and services are etcd's, unchanged.

"""
_IMPORTS = {
    '"etcd/mvcc/mvccpb/kv.proto"': '"dspex_rx/etcd_v3/kv.proto"',
    '"etcd/auth/authpb/auth.proto"': '"dspex_rx/etcd_v3/auth.proto"',
}
_DROPPED_IMPORT = re.compile(r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n',
                             re.MULTILINE)
_GATEWAY_COMMENT = re.compile(r"^// for grpc-gateway\n", re.MULTILINE)
_FILE_OPTION = re.compile(r"^option \(gogoproto\.[a-z_]+\) = \w+;\n", re.MULTILINE)
_HTTP_OPTION = re.compile(r"[ \t]*option \(google\.api\.http\) = \{")
_FIELD_OPTION = re.compile(r"\s*\[\(gogoproto\.[^\]]*\]")


def trim(text: str) -> str:
    """etcd's proto text without gogoproto/google.api annotations, imports renamed.

    >>> print(trim('import "gogoproto/gogo.proto";\\n'
    ...            'option (gogoproto.marshaler_all) = true;\\n'
    ...            'rpc Put(PutRequest) returns (PutResponse) {\\n'
    ...            '    option (google.api.http) = {\\n post: "/v3/kv/put"\\n body: "*"\\n };\\n'
    ...            '}\\n'))
    rpc Put(PutRequest) returns (PutResponse) {
    }
    <BLANKLINE>
    """
    for old, new in _IMPORTS.items():
        text = text.replace(old, new)
    text = _DROPPED_IMPORT.sub("", text)
    text = _FILE_OPTION.sub("", text)
    text = _GATEWAY_COMMENT.sub("", text)
    text = _drop_http_options(text)
    text = _FIELD_OPTION.sub("", text)
    leftover = [w for w in ("gogoproto", "google.api") if w in text]
    if leftover:
        raise ValueError(f"annotations left after the trim: {leftover}")
    return re.sub(r"\n{3,}", "\n\n", text)


def _drop_http_options(text: str) -> str:
    # The option's value nests braces (additional_bindings { ... }): match them by count.
    while match := _HTTP_OPTION.search(text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        end = text.index("\n", i) + 1  # the closing "};" and its line end
        text = text[:match.start()] + text[end:]
    return text


def trim_from(source: Path, version: str) -> list[Path]:
    """Write the trimmed protos into this package from etcd's source tree at ``source``.

    Example: ``trim_from(Path("/usr/share/gocode/src/go.etcd.io/etcd"), "3.4.23")`` (the
    tree Debian's golang-etcd-server-dev installs).
    """
    written = []
    for name, upstream in UPSTREAM.items():
        text = trim((source / upstream).read_text())
        target = PACKAGE_DIR / name
        target.write_text(LICENCE.format(version=version, upstream=upstream) + text)
        written.append(target)
    return written


def proto_files() -> list[Path]:
    """The trimmed .proto sources, sorted.

    >>> [p.name for p in proto_files()]
    ['auth.proto', 'kv.proto', 'rpc.proto']
    """
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` (the package lands at ``out_dir/dspex_rx/etcd_v3``).

    Example: ``generate(Path("/tmp/out"))`` writes ``/tmp/out/dspex_rx/etcd_v3/*_pb2*.py*``.
    """
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted((out_dir / "dspex_rx" / "etcd_v3").glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> None:
    """``python -m dspex_rx.etcd_v3._codegen [OUT]``: regenerate into OUT (default: the repo
    root); ``--trim-from DIR --version V`` first remakes the protos from etcd's source.

    Example: ``python -m dspex_rx.etcd_v3._codegen`` (what ``make proto`` runs).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT)
    parser.add_argument("--trim-from", type=Path, metavar="DIR",
                        help="etcd's source tree (with etcdserver/etcdserverpb/rpc.proto)")
    parser.add_argument("--version", default="3.4.23", help="etcd version of that tree")
    args = parser.parse_args(argv)
    if args.trim_from:
        for path in trim_from(args.trim_from, args.version):
            print(path.relative_to(ROOT))
    out = args.out.resolve()
    for path in generate(out):
        print(path.relative_to(out))


if __name__ == "__main__":
    main()
