"""The etcd backend (``EtcdBackend``): the store's state in an etcd cluster, shared by
several server replicas, and their write-leader election (``WriteLeader``). Needs the
``etcd`` extra's nothing: it speaks etcd's v3 gRPC API through the stubs in
``dspex_rx.etcd_v3``.
"""

from __future__ import annotations

from dspex_rx.etcd.backend import EtcdBackend
from dspex_rx.etcd.election import WriteLeader, leader_key

__all__ = ["EtcdBackend", "WriteLeader", "leader_key"]
