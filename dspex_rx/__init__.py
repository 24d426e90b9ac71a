"""dspex-rx: a typed, versioned, watchable variables store for ML/LLM programs.

Start with ``async with dspex_rx.connect() as session:`` (no target: an embedded server).
"""

import os
from typing import Any

from dspex_rx.client import SessionContext, connect
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.embedded import EmbeddedHandle, register_embedded_factory
from dspex_rx.client.optimization.optimizers import BaseOptimizer, SearchSpace
from dspex_rx.client.optimization.run import Proposal
from dspex_rx.client.watch import Watch
from dspex_rx.core.limits import Limits
from dspex_rx.core.types import TYPES
from dspex_rx.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    DerivationFencedError,
    DspexError,
    InvalidValueError,
    OptimizationLockedError,
    ResourceExhaustedError,
    ServerUnavailableError,
    SessionNotFoundError,
    StorageError,
    VariableNotFoundError,
    VariableTypeError,
)

__all__ = [
    "TYPES",
    "AccessDeniedError",
    "AlreadyExistsError",
    "AuthenticationError",
    "BaseOptimizer",
    "ConflictError",
    "DerivationFencedError",
    "DspexError",
    "EmbeddedServer",
    "InvalidValueError",
    "Limits",
    "OptimizationLockedError",
    "Proposal",
    "ResourceExhaustedError",
    "SearchSpace",
    "Server",
    "ServerUnavailableError",
    "SessionContext",
    "SessionNotFoundError",
    "StorageError",
    "VariableCache",
    "VariableNotFoundError",
    "VariableTypeError",
    "VariableUpdate",
    "Watch",
    "connect",
]
__version__ = "0.1.0"


def _embedded_server(limits: Limits | None, data_dir: str | os.PathLike[str] | None
                     ) -> EmbeddedHandle:
    # Imported here, not above: a client program that connects to a remote server never
    # loads the server or the store.
    from dspex_rx.server import EmbeddedServer

    return EmbeddedServer(limits=limits, data_dir=data_dir)


register_embedded_factory(_embedded_server)


def __getattr__(name: str) -> Any:
    # ``dspex_rx.Server`` and ``dspex_rx.EmbeddedServer`` load the server on first use.
    if name in ("Server", "EmbeddedServer"):
        from dspex_rx import server

        return getattr(server, name)
    raise AttributeError(f"module 'dspex_rx' has no attribute {name!r}")
