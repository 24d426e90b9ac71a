"""The committed dspex_rx/etcd_v3 code is exactly what `make proto` generates from the
trimmed etcd protos beside it, and those protos carry their licence and no Go annotations."""

from __future__ import annotations

from pathlib import Path

from dspex_rx.etcd_v3 import _codegen

PACKAGE = Path(_codegen.__file__).resolve().parent


def test_generated_etcd_code_matches_the_protos(tmp_path: Path) -> None:
    generated = _codegen.generate(tmp_path)
    assert generated, "protoc produced nothing"
    fresh = {p.name: p.read_bytes() for p in generated}
    committed = {p.name: p.read_bytes() for p in PACKAGE.glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(committed), "run `make proto`: generated files differ"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto`: {stale} are out of date with dspex_rx/etcd_v3/*.proto"


def test_the_trimmed_protos_keep_the_licence_and_no_annotations() -> None:
    protos = _codegen.proto_files()
    assert [p.name for p in protos] == ["auth.proto", "kv.proto", "rpc.proto"]
    for proto in protos:
        header, body = proto.read_text().split("\n\n", 1)
        assert header.startswith("// Copyright The etcd Authors. Licensed under the Apache"), proto
        assert "gogoproto" not in body and "google.api" not in body, proto
        assert body.startswith('syntax = "proto3";'), proto


def test_the_services_keep_etcds_method_paths() -> None:
    # etcd routes by full method name: the package must stay etcdserverpb.
    from dspex_rx.etcd_v3 import rpc_pb2

    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert sorted(services) == ["Auth", "Cluster", "KV", "Lease", "Maintenance", "Watch"]
    assert services["KV"].full_name == "etcdserverpb.KV"
    assert [m.name for m in services["KV"].methods] == [
        "Range", "Put", "DeleteRange", "Txn", "Compact"]
