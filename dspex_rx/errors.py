"""The exceptions dspex-rx raises, and their stable wire names ("kinds").

Each class subclasses the builtin a caller already catches (``KeyError``, ``ValueError``,
``TypeError``, ``PermissionError``), so ``except KeyError`` works as the spec says. The
server sends an error's kind beside its gRPC status; the client rebuilds the same class.
"""

from __future__ import annotations

from typing import Any


class DspexError(Exception):
    """Base of every dspex-rx error.

    >>> error = VariableNotFoundError("no variable 'nope'")
    >>> isinstance(error, DspexError), error.kind, str(error)
    (True, 'not_found', "no variable 'nope'")
    """

    kind = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        # KeyError's own __str__ would wrap the message in quotes.
        return self.message

    def prefixed(self, prefix: str) -> DspexError:
        """The same error (class and details) with ``prefix: `` before its message, to say
        where it happened.

        >>> InvalidValueError("not a number").prefixed("variable 't'").message
        "variable 't': not a number"
        """
        return type(self)(f"{prefix}: {self.message}", **self.details)


class VariableNotFoundError(DspexError, KeyError):
    """No variable with that name or id in the session.

    Example: ``await session.get_variable("x")`` raises it (a ``KeyError``) when there is no x.
    """

    kind = "not_found"


class SessionNotFoundError(DspexError, KeyError):
    """The session id is unknown to the server (never created, closed, or expired).

    Example: ``await session.initialize()`` opens the session again after this error.
    """

    kind = "session_not_found"


class InvalidValueError(DspexError, ValueError):
    """A value, constraint or argument breaks a rule; the message names the variable and rule.

    Example: ``await session.set_variable("temperature", 5.0)`` raises it (a ``ValueError``,
    "above max") when the constraint is ``max=2.0``.
    """

    kind = "invalid_value"


class VariableTypeError(DspexError, TypeError):
    """A value is of the wrong Python/wire type for the variable's type.

    Example: ``await session.set_variable("max_tokens", "many")`` raises it (a ``TypeError``,
    "expected integer") for an integer variable.
    """

    kind = "type_error"


class AlreadyExistsError(DspexError, ValueError):
    """Registering a name that the session already has.

    Example: a second ``await session.register_variable("temperature", "float", 0.5)``
    raises it (a ``ValueError``, "already exists").
    """

    kind = "already_exists"


class ConflictError(DspexError, ValueError):
    """A write's precondition failed (expected version, optimization lock).

    ``current_version`` holds the version the server has, when known.

    >>> ConflictError("version 2 expected", current_version=3).current_version
    3
    """

    kind = "conflict"

    @property
    def current_version(self) -> int | None:
        """The version the variable is at, when the server said (0: it does not exist).

        >>> ConflictError("stale").current_version is None
        True
        """
        value = self.details.get("current_version")
        return int(value) if value is not None else None


class OptimizationLockedError(ConflictError):
    """The variable is under another optimization's lease, or this write's fencing token
    belongs to a lease that has ended (stopped or expired). ``optimization_id`` names the
    lease that refused it.

    >>> error = OptimizationLockedError("locked", optimization_id="opt_1")
    >>> isinstance(error, ConflictError), error.optimization_id
    (True, 'opt_1')
    """

    kind = "locked"

    @property
    def optimization_id(self) -> str:
        """The optimization holding (or that held) the lease.

        Example: ``await session.stop_optimization("temperature")`` ends that lease, from
        any connection of the session.
        """
        return str(self.details.get("optimization_id", ""))


class DerivationFencedError(ConflictError):
    """A write to a derived variable under a fencing token its derivation no longer
    honours: the lease lapsed, was released or was taken over, or the token was never
    the derivation's. The message names the variable and why.

    >>> error = DerivationFencedError("variable 'd': derivation fencing token 7 is stale")
    >>> isinstance(error, ConflictError), error.kind
    (True, 'fenced')
    """

    kind = "fenced"


class AccessDeniedError(DspexError, PermissionError):
    """The session may not do this to the variable.

    Example: another session's ``await session.set_variable("secret", 1)`` raises it (a
    ``PermissionError``) unless an access rule grants ``write``.
    """

    kind = "permission_denied"


class AuthenticationError(DspexError, PermissionError):
    """The call did not prove it may act for the session: no session token was sent, or
    the token sent is not that session's. The message says which, never the token.

    Example: ``dspex_rx.connect(target, session_id=someone_elses_id)`` raises it (a
    ``PermissionError`` naming the session token) without that session's token.
    """

    kind = "unauthenticated"


class ResourceExhaustedError(DspexError):
    """A server limit was reached (too many variables, a value too large).

    >>> kind_of(ResourceExhaustedError("too many variables"))
    'resource_exhausted'
    """

    kind = "resource_exhausted"


class StorageError(DspexError, OSError):
    """The server's storage refused a write (a full disk, a read-only or missing data
    directory): nothing of the refused call was kept. Reads go on; retry writes later.

    An ``OSError``, so code that retries connection failures retries it too.

    >>> error = StorageError("the data dir is read-only")
    >>> isinstance(error, OSError), kind_of(error)
    (True, 'storage_unavailable')
    """

    kind = "storage_unavailable"

    def __init__(self, message: str, **details: Any) -> None:
        # OSError's own constructor would read (errno, strerror) out of the arguments.
        DspexError.__init__(self, message, **details)


class ServerUnavailableError(DspexError, ConnectionError):
    """``connect()`` could not reach a server: nothing listens at the target, the host
    does not resolve, TLS on one side only, a certificate not trusted, a URL given as the
    target. The message says which and what to change; the gRPC error is its
    ``__cause__``. A ``ConnectionError`` (an ``OSError``), so code that retries connection
    failures retries it too. Only the first attach raises it: a session already open
    reconnects by itself.

    >>> error = ServerUnavailableError("cannot connect to 'localhost:1': nothing listens")
    >>> isinstance(error, ConnectionError), kind_of(error)
    (True, 'unavailable')
    """

    kind = "unavailable"

    def __init__(self, message: str, **details: Any) -> None:
        # OSError's own constructor would read (errno, strerror) out of the arguments.
        DspexError.__init__(self, message, **details)


class InternalError(DspexError):
    """The server failed in a way that is not the caller's fault.

    >>> type(error_from_kind("no_such_kind", "boom")).__name__
    'InternalError'
    """


    kind = "internal"


def install_hint(extra: str) -> str:
    """The command that installs an optional part of dspex-rx. The package is not on an
    index, so ``pip install 'dspex-rx[x]'`` would fail; from a checkout this works.

    >>> install_hint("parquet")
    "from the dspex-rx checkout (the folder with pyproject.toml): pip install -e '.[parquet]'"
    """
    return (
        "from the dspex-rx checkout (the folder with pyproject.toml): "
        f"pip install -e '.[{extra}]'"
    )


_BY_KIND: dict[str, type[DspexError]] = {
    cls.kind: cls
    for cls in (
        VariableNotFoundError,
        SessionNotFoundError,
        InvalidValueError,
        VariableTypeError,
        AlreadyExistsError,
        ConflictError,
        OptimizationLockedError,
        DerivationFencedError,
        AccessDeniedError,
        AuthenticationError,
        ResourceExhaustedError,
        StorageError,
        ServerUnavailableError,
        InternalError,
    )
}


def error_from_kind(kind: str, message: str, **details: Any) -> DspexError:
    """Rebuild the exception a server reported by its kind (unknown kinds become InternalError).

    >>> isinstance(error_from_kind("not_found", "no variable 'x'"), KeyError)
    True
    """
    return _BY_KIND.get(kind, InternalError)(message, **details)


def kind_of(exc: BaseException) -> str:
    """The wire kind of an exception; plain builtins map to their nearest kind.

    >>> kind_of(ValueError("bad"))
    'invalid_value'
    """
    if isinstance(exc, DspexError):
        return exc.kind
    if isinstance(exc, KeyError):
        return VariableNotFoundError.kind
    if isinstance(exc, TypeError):
        return VariableTypeError.kind
    if isinstance(exc, ValueError):
        return InvalidValueError.kind
    if isinstance(exc, PermissionError):
        return AccessDeniedError.kind
    return InternalError.kind
