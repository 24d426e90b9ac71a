"""etcd's v3 API as generated gRPC code: the KV, Watch, Lease, Cluster, Maintenance and
Auth services of etcd 3.4 (``rpc_pb2``/``rpc_pb2_grpc``, ``kv_pb2``, ``auth_pb2``).

The protos beside this file are etcd's, trimmed of Go-only annotations; ``make proto``
regenerates the ``*_pb2`` files (never edit them by hand). Used through ``grpc.aio``
directly, because no Python client keeps what the etcd backend needs (a txn's header
revision, ranges at a revision, watch progress notifications).
"""
