"""The public trio API: ``connect()`` and ``SessionContext``, method for method after the
"Python Variables API (Revised)". Thin by design: it encodes arguments, makes one call
through the transport, and decodes the answer; the server validates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from . import codec
from .convert import (
    ERROR_DETAIL_PREFIX,
    ERROR_KIND_KEY,
    KIND_BY_STATUS,
    seconds,
    type_from_pb,
    type_to_pb,
)
from .errors import DspexError, InvalidValueError, SessionNotFoundError, error_from_kind
from .logs import get_logger
from .server import GRPC_OPTIONS, SERVICE_NAME, EmbeddedServer
from .v1 import variables_pb2 as pb

log = get_logger("dspex_rx.client")

M = TypeVar("M", bound=Message)
_MISSING: Any = object()


def _raise_mapped(error: grpc.aio.AioRpcError) -> None:
    """Re-raise a status the server sent on purpose as the matching dspex-rx exception.

    Transport failures (UNAVAILABLE, DEADLINE_EXCEEDED, ...) stay raw ``grpc.RpcError``.
    """
    trailing = error.trailing_metadata() or ()
    metadata = {key: value for key, value in trailing if isinstance(value, str)}
    kind = metadata.get(ERROR_KIND_KEY) or KIND_BY_STATUS.get(error.code())
    if kind is None:
        return
    details = {
        key[len(ERROR_DETAIL_PREFIX) :].replace("-", "_"): value
        for key, value in metadata.items()
        if key.startswith(ERROR_DETAIL_PREFIX) and key != ERROR_KIND_KEY
    }
    raise error_from_kind(kind, error.details() or error.code().name, **details) from None


def _info(variable: pb.Variable, revision: int | None = None) -> dict[str, Any]:
    """The metadata dict of the spec's ``include_metadata`` form (user keys included)."""
    user = codec.decode_map(variable.metadata)
    info = {
        **user,
        "id": variable.id,
        "name": variable.name,
        "type": type_from_pb(variable.type),
        "constraints": codec.decode_map(variable.constraints),
        "version": variable.version,
        "revision": variable.mod_revision,
        "created_at": seconds(variable.created_at),
        "updated_at": seconds(variable.updated_at),
        "updated_by": variable.updated_by,
        "description": variable.description,
    }
    if revision is not None:
        info["session_revision"] = revision
    return info


def _prefixed(name: str, exc: DspexError) -> DspexError:
    return type(exc)(f"variable {name!r}: {exc.message}", **exc.details)


def _encode_value(name: str, value: Any) -> codec.Value:
    try:
        return codec.encode(value)
    except DspexError as exc:
        raise _prefixed(name, exc) from None


def _encode_metadata(name: str, metadata: Mapping[str, Any] | None) -> Any:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _prefixed(name, InvalidValueError("metadata must be a dict"))
    try:
        return codec.encode_map(metadata)
    except DspexError as exc:
        raise _prefixed(name, exc) from None


class SessionContext:
    """A client session: the typed variable API over one gRPC connection.

    ``target=None`` starts an embedded server on 127.0.0.1 and stops it on close.

    Example::

        session = SessionContext("session_123", "127.0.0.1:50051")
        await session.initialize()
        await session.register_variable("temperature", "float", 0.7,
                                        constraints={"min": 0.0, "max": 2.0})
        print(await session.get_variable("temperature"))
        await session.close()
    """

    def __init__(
        self,
        session_id: str | None = None,
        target: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: float = 60.0,
        client_name: str = "",
        timeout: float | None = 30.0,
    ) -> None:
        self._requested_session_id = session_id
        self._target = target
        self._metadata = dict(metadata or {})
        self.ttl_seconds = ttl_seconds
        self.client_name = client_name
        self.timeout = timeout
        self._embedded: EmbeddedServer | None = None
        self._transport: Any = None
        self._session_id: str | None = None
        self._client_id = ""
        self._heartbeat_scope: trio.CancelScope | None = None
        self.revision = 0
        self.created = False
        self.heartbeats = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def session_id(self) -> str:
        """The server's id for this session (set by ``initialize``).

        Example::

            print(session.session_id)
        """
        if self._session_id is None:
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        return self._session_id

    @property
    def target(self) -> str | None:
        """The server address this session talks to.

        Example::

            print(session.target)   # "127.0.0.1:50051"
        """
        return self._target

    async def initialize(self) -> SessionContext:
        """Connect (starting an embedded server if there is no target) and open the session.

        Example::

            session = await SessionContext().initialize()
        """
        from .transport import Transport

        if self._session_id is not None:
            return self
        try:
            if self._target is None:
                self._embedded = EmbeddedServer()
                self._target = await trio.to_thread.run_sync(self._embedded.start)
            self._transport = Transport(self._target, GRPC_OPTIONS, timeout=self.timeout)
            await self._transport.open()
            response = await self._call(
                "InitializeSession",
                pb.InitializeSessionRequest(
                    session_id=self._requested_session_id or "",
                    metadata=_encode_metadata("session", self._metadata),
                    ttl_seconds=self.ttl_seconds,
                    client_name=self.client_name,
                ),
                pb.InitializeSessionResponse,
            )
        except BaseException:
            await self._teardown()
            raise
        self._session_id = response.session_id
        self._client_id = response.client_id
        self.revision = response.revision
        self.created = response.created
        self._start_heartbeat(response.ttl_seconds)
        log.debug("session_initialized", session_id=self._session_id, target=self._target)
        return self

    def _start_heartbeat(self, ttl: float) -> None:
        # A system task, so the spec's initialize()/close() form needs no nursery; close()
        # cancels it, so it never outlives the session.
        scope = trio.CancelScope()
        self._heartbeat_scope = scope
        interval = max(ttl / 3.0, 0.05)

        async def beat() -> None:
            with scope:
                while True:
                    await trio.sleep(interval)
                    try:
                        await self._call(
                            "Heartbeat",
                            pb.HeartbeatRequest(
                                session_id=self.session_id, client_id=self._client_id
                            ),
                            pb.HeartbeatResponse,
                        )
                        self.heartbeats += 1
                    except (DspexError, grpc.RpcError, RuntimeError) as exc:
                        log.warning("heartbeat_failed", session_id=self._session_id,
                                    error=str(exc))

        trio.lowlevel.spawn_system_task(beat, name="dspex-rx-heartbeat")

    async def close(self) -> None:
        """Detach from the session, close the connection, stop an embedded server.

        Safe to call twice. The session and its variables are removed when the last
        client attached to it closes.

        Example::

            await session.close()
        """
        with trio.CancelScope(shield=True):
            if self._heartbeat_scope is not None:
                self._heartbeat_scope.cancel()
                self._heartbeat_scope = None
            if self._session_id is not None and self._transport is not None:
                try:
                    await self._call(
                        "CloseSession",
                        pb.CloseSessionRequest(
                            session_id=self._session_id, client_id=self._client_id
                        ),
                        pb.CloseSessionResponse,
                        timeout=5.0,
                    )
                except (DspexError, grpc.RpcError) as exc:
                    log.warning("close_failed", session_id=self._session_id, error=str(exc))
            self._session_id = None
            await self._teardown()

    async def _teardown(self) -> None:
        with trio.CancelScope(shield=True):
            if self._transport is not None:
                transport, self._transport = self._transport, None
                await transport.close()
            if self._embedded is not None:
                embedded, self._embedded = self._embedded, None
                await trio.to_thread.run_sync(embedded.stop)

    async def __aenter__(self) -> SessionContext:
        return await self.initialize()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------- calls

    async def _call(
        self, method: str, request: Message, response_type: type[M], timeout: float | None = None
    ) -> M:
        if self._transport is None:
            raise RuntimeError("the session is closed")
        try:
            response: M = await self._transport.unary(
                f"/{SERVICE_NAME}/{method}", request, response_type, timeout
            )
        except grpc.aio.AioRpcError as exc:
            _raise_mapped(exc)
            raise
        revision = getattr(response, "revision", 0)
        if isinstance(revision, int) and revision > self.revision:
            self.revision = revision
        return response

    async def ping(self, payload: bytes = b"") -> bytes:
        """One round trip to the server that touches no state (the transport baseline).

        Example::

            assert await session.ping(b"x") == b"x"
        """
        response = await self._call("Echo", pb.EchoRequest(payload=payload), pb.EchoResponse)
        return response.payload

    # --------------------------------------------------------------- variables

    async def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        description: str = "",
        dependencies: Sequence[str] | None = None,
        access_rules: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Register a typed variable; returns its id. An existing name raises ``ValueError``.

        Example::

            var_id = await session.register_variable(
                "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0})
        """
        spec = self._spec(
            name, type, initial_value, constraints, metadata, description, dependencies,
            access_rules,
        )
        response = await self._call(
            "RegisterVariable",
            pb.RegisterVariableRequest(session_id=self.session_id, spec=spec),
            pb.RegisterVariableResponse,
        )
        return response.variable.id

    def _spec(
        self,
        name: str,
        type_name: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        description: str,
        dependencies: Sequence[str] | None,
        access_rules: Sequence[Mapping[str, Any]] | None,
    ) -> pb.VariableSpec:
        if dependencies:
            raise NotImplementedError(
                "dependencies are not supported by this version yet (tracked in issue #4)"
            )
        if access_rules:
            raise NotImplementedError(
                "access_rules are not supported by this version yet (tracked in issue #6)"
            )
        if not isinstance(name, str):
            raise InvalidValueError(f"variable name must be a string, got {name!r}")
        try:
            wire_type = type_to_pb(type_name)
        except DspexError as exc:
            raise _prefixed(name, exc) from None
        return pb.VariableSpec(
            name=name,
            type=wire_type,  # type: ignore[arg-type]
            initial_value=_encode_value(name, initial_value),
            constraints=_encode_metadata(name, constraints),
            metadata=_encode_metadata(name, metadata),
            description=description,
        )

    async def register_variables(self, variables: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Register several variables in one atomic call; returns name -> id.

        Each entry takes the keys of ``register_variable`` (``initial_value`` or ``value``).
        If any entry is invalid, none is registered.

        Example::

            ids = await session.register_variables([
                {"name": "a", "type": "integer", "initial_value": 1},
                {"name": "b", "type": "string", "initial_value": "x"},
            ])
        """
        specs = []
        for index, entry in enumerate(variables):
            if not isinstance(entry, Mapping) or "name" not in entry or "type" not in entry:
                raise InvalidValueError(
                    f"register_variables entry {index} needs at least 'name' and 'type'"
                )
            unknown = set(entry) - {
                "name", "type", "initial_value", "value", "constraints", "metadata",
                "description", "dependencies", "access_rules",
            }
            if unknown:
                raise InvalidValueError(
                    f"register_variables entry {index} ({entry['name']!r}) has unknown keys "
                    f"{sorted(unknown)}"
                )
            specs.append(
                self._spec(
                    entry["name"],
                    entry["type"],
                    entry.get("initial_value", entry.get("value")),
                    entry.get("constraints"),
                    entry.get("metadata"),
                    entry.get("description", ""),
                    entry.get("dependencies"),
                    entry.get("access_rules"),
                )
            )
        response = await self._call(
            "RegisterVariables",
            pb.RegisterVariablesRequest(session_id=self.session_id, specs=specs),
            pb.RegisterVariablesResponse,
        )
        return {v.name: v.id for v in response.variables}

    async def get_variable(
        self, name: str, default: Any = _MISSING, bypass_cache: bool = False
    ) -> Any:
        """The variable's current value, by name or id.

        An unknown variable raises ``KeyError`` unless a ``default`` is given (``None``
        counts as given). Every read goes to the server in this version, so
        ``bypass_cache`` changes nothing yet; the actor cache arrives with issue #3.

        Example::

            temperature = await session.get_variable("temperature")
            retries = await session.get_variable("retries", default=3)
        """
        try:
            response = await self._call(
                "GetVariable",
                pb.GetVariableRequest(session_id=self.session_id, ref=name),
                pb.GetVariableResponse,
            )
        except SessionNotFoundError:
            raise
        except KeyError:
            if default is _MISSING:
                raise
            return default
        return codec.decode(response.variable.value)

    async def get_variables(
        self,
        names: Sequence[str],
        defaults: Mapping[str, Any] | None = None,
        include_metadata: bool = False,
        include_stats: bool = False,
    ) -> dict[str, Any]:
        """Several values in one call, keyed by the names asked for.

        A missing name takes ``defaults[name]``; with no default it raises ``KeyError``
        naming every missing variable. ``include_metadata`` makes each entry
        ``{'value': ..., 'metadata': {...}}``; ``include_stats`` adds ``'stats'`` (version
        and revision counters, timestamps).

        Example::

            values = await session.get_variables(["temperature", "max_tokens"])
            rich = await session.get_variables(["temperature"], include_metadata=True)
        """
        if isinstance(names, str):
            raise InvalidValueError("get_variables takes a list of names, not one string")
        response = await self._call(
            "GetVariables",
            pb.GetVariablesRequest(session_id=self.session_id, refs=list(names)),
            pb.GetVariablesResponse,
        )
        defaults = defaults or {}
        unresolved = [ref for ref in response.missing if ref not in defaults]
        if unresolved:
            raise error_from_kind(
                "not_found",
                f"no variable(s) {', '.join(map(repr, unresolved))} in session "
                f"{self.session_id!r}",
            )
        found = dict(zip([r for r in names if r not in set(response.missing)],
                         response.variables, strict=True))
        result: dict[str, Any] = {}
        for ref in names:
            variable = found.get(ref)
            if variable is None:
                result[ref] = defaults[ref]
                continue
            value = codec.decode(variable.value)
            if not (include_metadata or include_stats):
                result[ref] = value
                continue
            entry: dict[str, Any] = {"value": value}
            if include_metadata:
                entry["metadata"] = _info(variable, response.revision)
            if include_stats:
                entry["stats"] = {
                    "version": variable.version,
                    "mod_revision": variable.mod_revision,
                    "create_revision": variable.create_revision,
                    "created_at": seconds(variable.created_at),
                    "updated_at": seconds(variable.updated_at),
                }
            result[ref] = entry
        return result

    async def set_variable(
        self,
        name: str,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        create_if_missing: bool = False,
        type_hint: str | None = None,
    ) -> int:
        """Validate on the server and write one value; returns the variable's new version.

        With ``create_if_missing`` an unknown name is registered, its type taken from
        ``type_hint`` or inferred from the value (ambiguous values raise ``TypeError``).

        Example::

            await session.set_variable("temperature", 0.9, metadata={"reason": "sweep"})
        """
        request = pb.SetVariableRequest(
            session_id=self.session_id,
            ref=name,
            value=_encode_value(name, value),
            metadata=_encode_metadata(name, metadata),
            create_if_missing=create_if_missing,
        )
        if type_hint is not None:
            try:
                request.type_hint = type_to_pb(type_hint)  # type: ignore[assignment]
            except DspexError as exc:
                raise _prefixed(name, exc) from None
        response = await self._call("SetVariable", request, pb.SetVariableResponse)
        return response.variable.version

    async def update_variables(
        self,
        updates: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        atomic: bool = True,
    ) -> dict[str, bool | str]:
        """Write several variables in one call; returns name -> ``True`` or an error message.

        ``atomic=True``: all are validated first and applied under one revision, or none
        is (the bad entries carry their error, the rest say they were not applied). No
        exception is raised for bad entries. ``atomic=False`` applies what is valid.

        Example::

            results = await session.update_variables({"temperature": 0.5, "max_tokens": 512})
            assert all(r is True for r in results.values())
        """
        request = pb.UpdateVariablesRequest(
            session_id=self.session_id,
            metadata=_encode_metadata("update", metadata),
            atomic=atomic,
        )
        local_errors: dict[str, str] = {}
        for name, value in updates.items():
            try:
                wire_value = _encode_value(name, value)
            except DspexError as exc:
                local_errors[name] = str(exc)
                continue
            request.updates.add(ref=name, value=wire_value)
        if local_errors and atomic:
            first = next(iter(local_errors))
            return {
                name: local_errors.get(
                    name, f"not applied: the atomic batch failed on {first!r}"
                )
                for name in updates
            }
        results: dict[str, bool | str] = dict(local_errors)
        if request.updates:
            response = await self._call("UpdateVariables", request, pb.UpdateVariablesResponse)
            for result in response.results:
                results[result.ref] = True if result.ok else result.error
        return {name: results[name] for name in updates}

    async def list_variables(self, pattern: str | None = None) -> list[dict[str, Any]]:
        """Variables whose names match a glob (``*``, ``?``, ``[..]``), sorted by name.

        Each entry is the ``include_metadata`` dict plus ``'value'``.

        Example::

            for info in await session.list_variables("model.*"):
                print(info["name"], info["value"])
        """
        response = await self._call(
            "ListVariables",
            pb.ListVariablesRequest(session_id=self.session_id, pattern=pattern or ""),
            pb.ListVariablesResponse,
        )
        return [
            {**_info(variable), "value": codec.decode(variable.value)}
            for variable in response.variables
        ]

    async def delete_variable(self, name: str) -> bool:
        """Delete a variable by name or id; unknown names raise ``KeyError``.

        Example::

            await session.delete_variable("scratch")
        """
        await self._call(
            "DeleteVariable",
            pb.DeleteVariableRequest(session_id=self.session_id, ref=name),
            pb.DeleteVariableResponse,
        )
        return True


@asynccontextmanager
async def connect(
    target: str | None = None, session_id: str | None = None, **options: Any
) -> AsyncIterator[SessionContext]:
    """Open a session; with no target an embedded server runs for the block's duration.

    Example::

        async with dspex_rx.connect() as session:
            await session.register_variable("temperature", "float", 0.7)
    """
    session = SessionContext(session_id, target, **options)
    await session.initialize()
    try:
        yield session
    finally:
        await session.close()
