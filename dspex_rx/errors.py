"""The exceptions dspex-rx raises, and their stable wire names ("kinds").

Each class subclasses the builtin a caller already catches (``KeyError``, ``ValueError``,
``TypeError``, ``PermissionError``), so ``except KeyError`` works as the spec says. The
server sends an error's kind beside its gRPC status; the client rebuilds the same class.
"""

from __future__ import annotations

from typing import Any


class DspexError(Exception):
    """Base of every dspex-rx error.

    Example::

        try:
            await session.get_variable("nope")
        except DspexError as exc:
            print(exc.kind, exc)
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

    Example::

        with pytest.raises(KeyError, match="no variable 'x'"):
            await session.get_variable("x")
    """

    kind = "not_found"


class SessionNotFoundError(DspexError, KeyError):
    """The session id is unknown to the server (never created, closed, or expired).

    Example::

        except SessionNotFoundError: await session.initialize()
    """

    kind = "session_not_found"


class InvalidValueError(DspexError, ValueError):
    """A value, constraint or argument breaks a rule; the message names the variable and rule.

    Example::

        with pytest.raises(ValueError, match="above max"):
            await session.set_variable("temperature", 5.0)
    """

    kind = "invalid_value"


class VariableTypeError(DspexError, TypeError):
    """A value is of the wrong Python/wire type for the variable's type.

    Example::

        with pytest.raises(TypeError, match="expected integer"):
            await session.set_variable("max_tokens", "many")
    """

    kind = "type_error"


class AlreadyExistsError(DspexError, ValueError):
    """Registering a name that the session already has.

    Example::

        with pytest.raises(ValueError, match="already exists"):
            await session.register_variable("temperature", "float", 0.5)
    """

    kind = "already_exists"


class ConflictError(DspexError, ValueError):
    """A write's precondition failed (expected version, optimization lock).

    ``current_version`` holds the version the server has, when known.

    Example::

        except ConflictError as exc: retry_from(exc.current_version)
    """

    kind = "conflict"

    @property
    def current_version(self) -> int | None:
        """The version the variable is at, when the server said (0: it does not exist).

        Example::

            except ConflictError as exc: retry_from(exc.current_version)
        """
        value = self.details.get("current_version")
        return int(value) if value is not None else None


class OptimizationLockedError(ConflictError):
    """The variable is under another optimization's lease, or this write's fencing token
    belongs to a lease that has ended (stopped or expired). ``optimization_id`` names the
    lease that refused it.

    Example::

        except OptimizationLockedError as exc: print("locked by", exc.optimization_id)
    """

    kind = "locked"

    @property
    def optimization_id(self) -> str:
        """The optimization holding (or that held) the lease.

        Example::

            except OptimizationLockedError as exc: await s.stop_optimization(exc.variable)
        """
        return str(self.details.get("optimization_id", ""))


class AccessDeniedError(DspexError, PermissionError):
    """The session may not do this to the variable.

    Example::

        with pytest.raises(PermissionError): await other.set_variable("secret", 1)
    """

    kind = "permission_denied"


class AuthenticationError(DspexError, PermissionError):
    """The call did not prove it may act for the session: no session token was sent, or
    the token sent is not that session's. The message says which, never the token.

    Example::

        with pytest.raises(PermissionError, match="session token"):
            async with dspex_rx.connect(target, session_id=someone_elses_id):
                ...
    """

    kind = "unauthenticated"


class ResourceExhaustedError(DspexError):
    """A server limit was reached (too many variables, a value too large).

    Example::

        except ResourceExhaustedError as exc: print(exc)
    """

    kind = "resource_exhausted"


class InternalError(DspexError):
    """The server failed in a way that is not the caller's fault.

    Example::

        except InternalError: report_bug()
    """

    kind = "internal"


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
        AccessDeniedError,
        AuthenticationError,
        ResourceExhaustedError,
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
