"""The etcd backend (``EtcdBackend``): the store's state in an etcd cluster, shared by
several server replicas. Needs the ``etcd`` extra's nothing: it speaks etcd's v3 gRPC API
through the stubs in ``dspex_rx.etcd_v3``.
"""

from __future__ import annotations

from dspex_rx.etcd.backend import EtcdBackend

__all__ = ["EtcdBackend"]
