"""dspex-rx: a typed, versioned, watchable variables store for ML/LLM programs.

Start with ``async with dspex_rx.connect() as session:`` (no target: an embedded server).
"""

from .actors import VariableUpdate
from .cache import VariableCache
from .client import SessionContext, connect
from .errors import (
    AccessDeniedError,
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    DspexError,
    InvalidValueError,
    OptimizationLockedError,
    ResourceExhaustedError,
    SessionNotFoundError,
    VariableNotFoundError,
    VariableTypeError,
)
from .limits import Limits
from .optimize import Proposal
from .optimizers import BaseOptimizer, SearchSpace
from .server import EmbeddedServer, Server
from .types import TYPES
from .watch import Watch

__all__ = [
    "TYPES",
    "AccessDeniedError",
    "AlreadyExistsError",
    "AuthenticationError",
    "BaseOptimizer",
    "ConflictError",
    "DspexError",
    "EmbeddedServer",
    "InvalidValueError",
    "Limits",
    "OptimizationLockedError",
    "Proposal",
    "ResourceExhaustedError",
    "SearchSpace",
    "Server",
    "SessionContext",
    "SessionNotFoundError",
    "VariableCache",
    "VariableNotFoundError",
    "VariableTypeError",
    "VariableUpdate",
    "Watch",
    "connect",
]
__version__ = "0.1.0"
