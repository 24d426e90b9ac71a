"""The public trio API: ``connect()`` and ``SessionContext``, one method per spec call, each
delegating to the component that owns it (connection, variables, watching, optimization...).

Every call after ``InitializeSession`` carries the session's token; ``session.token`` is what
another connection passes to join: ``connect(target, session_id=session.session_id,
token=session.token)``. From asyncio the same API works unchanged (``aio.portal_aware``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import reactivex
import trio
from google.protobuf.message import Message

from dspex_rx.client.actors import VariableUpdate, WatchHub
from dspex_rx.client.aio import portal_aware, portal_context
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.connection import Connection, M
from dspex_rx.client.core import Forwarded, SessionCore
from dspex_rx.client.dependencies import Dependencies
from dspex_rx.client.derive import Derived, derivation_status, derive
from dspex_rx.client.encoding import MISSING
from dspex_rx.client.history import History
from dspex_rx.client.optimization.control import Optimizations
from dspex_rx.client.optimization.lease import HeldLease
from dspex_rx.client.optimization.progress import Progress
from dspex_rx.client.optimization.run import OptimizationRun
from dspex_rx.client.permissions import Permissions
from dspex_rx.client.probe import session_info
from dspex_rx.client.session_optimization import OptimizationCalls
from dspex_rx.client.snapshots import Snapshots
from dspex_rx.client.variables import Variables
from dspex_rx.client.watch import Watch
from dspex_rx.client.watching import Watching
from dspex_rx.core.limits import Limits
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import DEFAULT_KEEPALIVE_TIME, DEFAULT_KEEPALIVE_TIMEOUT
from dspex_rx.wire.security import Pem, principal_metadata, token_metadata


@portal_aware(local=("cancel_watch",))
class SessionContext(OptimizationCalls):
    """A client session: the typed variable API over one gRPC connection.

    ``target=None`` starts an embedded server on 127.0.0.1 and stops it on close.
    ``token`` is the secret of an existing session this one joins (``session.token`` of a
    connection that has it); a new session gets its own. ``tls=True`` makes the channel
    TLS, trusting the system's roots, or ``ca_cert`` (PEM path or bytes; it implies TLS);
    ``tls_server_name`` overrides the name checked against the certificate (tests).
    ``principal_key`` is the key of the server namespace (``--principals``) the session id
    lies in, needed to create such a session. ``create=False`` only joins: it needs
    ``session_id``, and an id with no live session is ``SessionNotFoundError`` rather
    than a new empty session. ``limits`` configures the embedded server
    (no target), and ``data_dir`` makes it durable there (a SQLite file: a later program
    with the same ``data_dir``, session id and token finds the session again);
    ``max_message_bytes`` is the largest message the client sends or takes (default:
    ``limits.max_message_bytes`` if given, else the server default, 64 MiB).
    ``keepalive_time`` and ``keepalive_timeout`` (seconds, default 3 and 2) bound how long
    a silently dead connection goes unnoticed: a ping every ``keepalive_time``, and one
    unanswered for ``keepalive_timeout`` breaks the connection, so watches reconnect and
    watched values stop being served from the cache (``keepalive_time`` >= 1 s).
    ``pipelined`` (default True) sends the calls as requests on one long-lived stream,
    answered by id, so calls from many tasks share messages; False makes each call its own
    unary RPC (what other gRPC clients see). A server without that stream is used unary.
    ``direct_writes=True`` (pipelined, over replicas): writes go to the write leader the
    session's replica names, on a stream of their own, instead of through that replica.
    Each method's full contract is documented on the component method it calls
    (``Variables.get_variables``, ``Optimizations.start_optimization``...).

    Example: ``session = await SessionContext("session_123", "127.0.0.1:50051").initialize()``
    then ``await session.get_variable("temperature")`` reads one value.
    """

    def __init__(
        self, session_id: str | None = None, target: str | Sequence[str] | None = None, *,
        metadata: Mapping[str, Any] | None = None, ttl_seconds: float = 60.0,
        client_name: str = "", timeout: float | None = 30.0, cache_ttl: float | None = 60.0,
        cache_max_size: int | None = 10_000, cache_eviction_policy: str = "lru",
        token: str | None = None, tls: bool = False, ca_cert: Pem | None = None,
        tls_server_name: str | None = None, principal_key: str | None = None,
        limits: Limits | None = None, max_message_bytes: int | None = None,
        create: bool = True, data_dir: str | os.PathLike[str] | None = None,
        keepalive_time: float = DEFAULT_KEEPALIVE_TIME,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT, pipelined: bool = True,
        direct_writes: bool = False,
    ) -> None:
        self._conn = Connection(
            session_id, target, metadata=metadata, ttl_seconds=ttl_seconds,
            client_name=client_name, timeout=timeout, token=token, tls=tls, ca_cert=ca_cert,
            tls_server_name=tls_server_name, principal_key=principal_key, limits=limits,
            max_message_bytes=max_message_bytes, cache_ttl=cache_ttl,
            cache_max_size=cache_max_size, cache_eviction_policy=cache_eviction_policy,
            create=create, data_dir=data_dir, keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout, pipelined=pipelined,
            direct_writes=direct_writes,
        )
        self._cache = self._conn.cache
        # Every call of every component goes through ``_call``, so one wrapper there (tests
        # inject faults that way) sees all of them, the connection's own included.
        self._conn.send = self._send
        self._core = SessionCore(self._conn, self._send)
        self._variables = Variables(self._core)
        self._permissions = Permissions(self._core)
        self._dependencies = Dependencies(self._core)
        self._history = History(self._core)
        self._snapshots = Snapshots(self._core)
        self._watching = Watching(self._core)
        self._optimizations = Optimizations(self._core, self)
        self._progress = Progress(self._core, self._watching, self)

    async def _send(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call(*args, **kwargs)

    async def _call(
        self, method: str, request: Message, response_type: type[M],
        timeout: float | None = None, metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> M:
        return await self._conn.call(method, request, response_type, timeout, metadata)

    # The connection's state, read where it lives (tests and tools read the private ones).
    max_message_bytes: Forwarded[int] = Forwarded("_conn", "max_message_bytes")
    tls: Forwarded[bool] = Forwarded("_conn", "tls")
    ttl_seconds: Forwarded[float] = Forwarded("_conn", "ttl_seconds")
    client_name: Forwarded[str] = Forwarded("_conn", "client_name")
    timeout: Forwarded[float | None] = Forwarded("_conn", "timeout")
    revision: Forwarded[int] = Forwarded("_conn", "revision")  # the newest seen
    created: Forwarded[bool] = Forwarded("_conn", "created")  # by this initialize
    heartbeats: Forwarded[int] = Forwarded("_conn", "heartbeats")
    reattached: Forwarded[int] = Forwarded("_conn", "reattached")  # after its lease expired
    lost: Forwarded[bool] = Forwarded("_conn", "lost")  # the session is gone for good
    _client_id: Forwarded[str] = Forwarded("_conn", "client_id")
    _transport: Forwarded[Any] = Forwarded("_conn", "transport")
    _hub: Forwarded[WatchHub | None] = Forwarded("_conn", "hub")
    _nursery: Forwarded[trio.Nursery | None] = Forwarded("_conn", "nursery")
    _stray: Forwarded[tuple[str, str | None] | None] = Forwarded("_conn", "stray")
    _services_done: Forwarded[trio.Event] = Forwarded("_conn", "services_done")
    _trio_token: Forwarded[trio.lowlevel.TrioToken | None] = Forwarded("_conn", "trio_token")
    _watches: Forwarded[dict[str, Watch]] = Forwarded("_watching", "watches")
    _runs: Forwarded[dict[str, OptimizationRun]] = Forwarded("_optimizations", "runs")

    async def _reattach(self) -> None:
        await self._conn.reattach()

    @property
    def session_id(self) -> str:
        """The server's id for this session (set by ``initialize``).

        Example: ``session.session_id`` is the id another connection joins with.
        """
        return self._conn.require_session_id()

    @property
    def token(self) -> str | None:
        """The session's secret token: pass it to ``connect(..., token=...)`` to join this
        session from another connection. Keep it as private as the session's data.

        Example: ``connect(target, session_id=a.session_id, token=a.token)`` joins a's session.
        """
        return self._conn.token

    @property
    def target(self) -> str | None:
        """The server address this session talks to.

        Example: ``session.target`` is ``"127.0.0.1:50051"`` for a local server.
        """
        return self._conn.target

    async def initialize(self) -> SessionContext:
        """Connect (starting an embedded server if there is no target) and open the session.

        Example: ``session = await SessionContext().initialize()``.
        """
        await self._conn.open()
        return self

    async def close(self) -> None:
        """Detach from the session, close the connection, stop an embedded server.

        Example: ``await session.close()``.
        """
        await self._conn.close(before=self._watching.cancel_all)

    async def __aenter__(self) -> SessionContext:
        return await self.initialize()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self, payload: bytes = b"") -> bytes:
        """One round trip to the server that touches no state (the transport baseline).

        Example: ``await session.ping(b"x")`` returns ``b"x"``.
        """
        return await self._variables.ping(payload)

    async def list_sessions(self, principal_key: str | None = None) -> list[dict[str, Any]]:
        """The sessions this caller may see (``probe.list_sessions``): this one, plus those
        in the principal namespace ``principal_key`` opens (all, on an ``--auth none`` server).

        Example: ``[s["session_id"] for s in await session.list_sessions()]`` names this one.
        """
        response = await self._call(
            "ListSessions", pb.ListSessionsRequest(session_id=self.session_id),
            pb.ListSessionsResponse,
            # (Without a key, the session's own metadata: its calls' stream can take it.)
            metadata=token_metadata(self.token) + principal_metadata(principal_key)
            if principal_key else None)
        return [session_info(info) for info in response.sessions]

    async def register_variable(
        self, name: str, type: str, initial_value: Any,
        constraints: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
        dependencies: Sequence[str] | None = None,
        access_rules: Sequence[Mapping[str, Any]] | None = None, *, description: str = "",
    ) -> str:
        """Register a typed variable; returns its id. An existing name raises ``ValueError``.

        Example: ``await session.register_variable("temperature", "float", 0.7,
        constraints={"min": 0.0, "max": 2.0})`` returns the new variable's id.
        """
        return await self._variables.register_variable(
            name, type, initial_value, constraints, metadata, dependencies, access_rules,
            description=description,
        )

    async def set_variable_permissions(
        self, variable: str, rules: Sequence[Mapping[str, Any]]
    ) -> int:
        """Replace a variable's access rules (its owner session only); returns the revision.

        Example: ``await session.set_variable_permissions("temperature", [{"session_pattern":
        "admin_*", "permissions": ["read", "write"]}])`` returns the revision.
        """
        return await self._permissions.set_variable_permissions(variable, rules)

    async def check_variable_access(self, variable: str, permission: str) -> bool:
        """Whether this session may use ``permission`` (``read``, ``write``, ``observe``,
        ``optimize``) on a variable; ``False`` also for one it cannot see.

        Example: ``await session.check_variable_access("var_temperature_3", "write")`` is a
        bool.
        """
        return await self._permissions.check_variable_access(variable, permission)

    async def get_variable_permissions(self, variable: str) -> list[dict[str, Any]]:
        """A variable's access rules as the spec's dicts (its owner session only sees them).

        Example: ``await session.get_variable_permissions("temperature")`` returns the rules.
        """
        return await self._permissions.get_variable_permissions(variable)

    async def register_variables(self, variables: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Register several variables in one atomic call; returns name -> id.

        Example: ``await session.register_variables([{"name": "a", "type": "integer",
        "initial_value": 1}])`` returns ``{"a": <its id>}``.
        """
        return await self._variables.register_variables(variables)

    async def get_variable(
        self, name: str, default: Any = None, bypass_cache: bool = False, *,
        as_tensor: str | None = None,
    ) -> Any:
        """The variable's current value, by name or id.

        Example: ``await session.get_variable("retries", default=3)`` returns 3 if there is
        no ``retries``.
        """
        return await self._variables.get_variable(name, default, bypass_cache, as_tensor=as_tensor)

    async def get_variables(
        self, names: Sequence[str], defaults: Mapping[str, Any] | None = None,
        include_metadata: bool = False, include_stats: bool = False, *,
        as_tensor: str | None = None,
    ) -> dict[str, Any]:
        """Several values in one call, keyed by the names asked for.

        Example: ``await session.get_variables(["temperature"], include_metadata=True)``
        returns ``{"temperature": {"value": ..., "metadata": ..., ...}}``.
        """
        return await self._variables.get_variables(
            names, defaults, include_metadata, include_stats, as_tensor=as_tensor
        )

    async def set_variable(
        self, name: str, value: Any, metadata: Mapping[str, Any] | None = None,
        create_if_missing: bool = False, type_hint: str | None = None, *,
        expected_version: int | None = None, source: str | None = None,
        fencing_token: int | None = None,
    ) -> int:
        """Validate on the server and write one value; returns the variable's new version.

        Example: ``await session.set_variable("counter", 8, expected_version=7)`` returns 8.
        """
        return await self._variables.set_variable(
            name, value, metadata, create_if_missing, type_hint,
            expected_version=expected_version, source=source, fencing_token=fencing_token,
        )

    async def update_variables(
        self, updates: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
        atomic: bool = True, *, expected_versions: Mapping[str, int] | None = None,
        require_leases: Sequence[HeldLease] = (),
    ) -> dict[str, bool | str]:
        """Write several variables in one call; returns name -> ``True`` or an error message.

        Example: ``await session.update_variables({"temperature": 0.5, "max_tokens": 512})``
        returns ``{"temperature": True, "max_tokens": True}``.
        """
        return await self._variables.update_variables(
            updates, metadata, atomic, expected_versions=expected_versions,
            require_leases=require_leases,
        )

    async def list_variables(
        self, pattern: str | None = None, *, glob: bool = False
    ) -> list[dict[str, Any]]:
        """Variables whose names match ``pattern`` (RE2, searched; ``glob=True``: an fnmatch
        glob), sorted by name: each the ``include_metadata`` dict plus ``'value'``.

        Example: ``await session.list_variables(r"^model\\.")`` lists the ``model.`` variables.
        """
        return await self._variables.list_variables(pattern, glob=glob)

    async def delete_variable(self, name: str, cascade: bool = False) -> bool:
        """Delete a variable by name or id; ``cascade=True`` deletes its dependents too.

        Example: ``await session.delete_variable("base_temperature", cascade=True)`` returns
        True.
        """
        return await self._variables.delete_variable(name, cascade)

    async def add_dependency(
        self, from_variable: str, to_variable: str, dependency_type: str = "data",
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that ``from_variable`` depends on ``to_variable`` (``data``, ``constraint``
        or ``optimization``); a cycle raises ``ValueError``.

        Example: ``await session.add_dependency("effective_temperature",
        "base_temperature")`` returns True.
        """
        return await self._dependencies.add_dependency(
            from_variable, to_variable, dependency_type, metadata
        )

    async def remove_dependency(self, from_variable: str, to_variable: str) -> bool:
        """Forget that ``from_variable`` depends on ``to_variable``; returns whether it did.

        Example: ``await session.remove_dependency("effective_temperature",
        "base_temperature")`` returns True.
        """
        return await self._dependencies.remove_dependency(from_variable, to_variable)

    async def get_dependencies(
        self, variable: str, include_transitive: bool = False
    ) -> list[dict[str, Any]]:
        """What ``variable`` depends on, nearest first (``variable_id``, ``name``, ``type``,
        ``variable_type``, ``metadata``, ``depth``).

        Example: ``await session.get_dependencies("effective_temperature")`` returns
        ``[{"name": "base_temperature", "type": "data", "depth": 1, ...}]``.
        """
        return await self._dependencies.walk(variable, False, include_transitive)

    async def get_dependents(
        self, variable: str, include_transitive: bool = False
    ) -> list[dict[str, Any]]:
        """What depends on ``variable``, nearest first (entries as in ``get_dependencies``).

        Example: ``await session.get_dependents("base_temperature", include_transitive=True)``.
        """
        return await self._dependencies.walk(variable, True, include_transitive)

    async def get_variable_history(
        self, variable: str, limit: int = 100, offset: int = 0, include_metadata: bool = True,
    ) -> list[dict[str, Any]]:
        """Past values, newest first (``version``, ``value``, ``updated_at``, and more with
        ``include_metadata``); versions past retention end the page with an ``expired`` entry.

        Example: ``await session.get_variable_history("temperature", limit=10)`` returns the
        ten newest entries.
        """
        return await self._history.get_variable_history(variable, limit, offset, include_metadata)

    async def rollback_variable(
        self, variable: str, version: int, reason: str | None = None
    ) -> int:
        """Write a new version equal to ``version``'s value; returns the new version.

        Example: ``await session.rollback_variable("temperature", 3, reason="sweep diverged")``
        returns the new version.
        """
        return await self._history.rollback_variable(variable, version, reason)

    async def export_variables(
        self, format: str = "json", include_history: bool = False,
        include_dependencies: bool = True, filter_pattern: str | None = None, *, glob: bool = False,
    ) -> bytes:
        """This session's variables as a file: ``json``, ``yaml``, ``parquet`` or ``pickle``,
        optionally with history and dependencies, filtered by ``filter_pattern``.

        Example: ``await session.export_variables("yaml", include_history=True)`` returns the
        file's bytes.
        """
        return await self._snapshots.export_variables(
            format, include_history, include_dependencies, filter_pattern, glob=glob
        )

    async def import_variables(
        self, data: bytes | str, format: str = "json", merge_strategy: str = "replace",
        dry_run: bool = False, *, trusted: bool = False,
    ) -> dict[str, Any]:
        """Import a file made by ``export_variables``, validated first and applied in one
        commit or not at all; returns the report (``imported``, ``errors``, ``details``...).

        Example: ``await session.import_variables(data, "yaml", merge_strategy="keep",
        dry_run=True)`` returns the report without changing anything.
        """
        return await self._snapshots.import_variables(
            data, format, merge_strategy, dry_run, trusted=trusted
        )

    async def fetch_missing(self, var_ids: Sequence[str]) -> dict[str, Any]:
        """One ``GetVariables`` call for the given ids or names: ``{ref: value}`` of those
        that exist. The default loader for ``VariableCache.get_batch``.

        Example: ``await cache.get_batch(["a", "b"], session.fetch_missing)``.
        """
        return await self._variables.fetch_missing(var_ids)

    def set_cache_config(
        self, ttl: float | None = MISSING, max_size: int | None = MISSING,
        eviction_policy: str | None = MISSING,
    ) -> None:
        """Change the client cache's ``ttl``, ``max_size`` or ``eviction_policy``; omitted
        arguments stay as they are.

        Example: ``session.set_cache_config(ttl=5.0, max_size=1000, eviction_policy="lfu")``.
        """
        self._core.configure_cache(ttl, max_size, eviction_policy)

    def get_cache_info(self) -> dict[str, Any]:
        """``size``, ``ttl``, ``max_size``, ``eviction_policy``, ``hit_rate``,
        ``eviction_count`` and the raw counters of the client cache.

        Example: ``session.get_cache_info()["hit_rate"]``.
        """
        return self._cache.info()

    @property
    def cache(self) -> VariableCache:
        """The session's ``VariableCache`` (entries are written by variable actors only).

        Example: ``await session.cache.invalidate_pattern(r"^model\\.", "config reloaded")``.
        """
        return self._cache

    async def get_variable_stats(self, variable: str | None = None) -> dict[str, Any]:
        """This client's counters for one variable, or summed over all (``read_count``,
        ``cache_hit_rate``, latencies, ``total_optimization_time_s``...).

        Example: ``(await session.get_variable_stats("temperature"))["cache_hit_rate"]``.
        """
        return self._core.stats(variable)

    def observe(
        self, name: str, include_initial: bool = True
    ) -> reactivex.Observable[VariableUpdate]:
        """A reactivex ``Observable`` of one variable's ``VariableUpdate``s, on trio time.

        Example: ``session.observe("temperature").pipe(ops.debounce(0.5)).subscribe(print)``.
        """
        return self._watching.observe(name, include_initial)

    def watch_variable(
        self, name: str, include_initial: bool = True,
        filter_fn: Callable[[Any, Any], bool] | None = None, throttle_ms: float = 0,
    ) -> Watch:
        """Watch one variable: an async iterator of ``VariableUpdate`` (built on ``observe``).

        Example: ``session.watch_variable("progress", throttle_ms=500)`` is a watch to use in
        ``async with`` and iterate with ``async for``.
        """
        return self._watching.watch_variable(name, include_initial, filter_fn, throttle_ms)

    def watch_variables(
        self, names: Sequence[str], include_initial: bool = True,
        filter_fn: Callable[[str, Any, Any], bool] | None = None, throttle_ms: float = 0,
        debounce_ms: float = 0,
    ) -> Watch:
        """Watch several variables through one async iterator.

        Example: ``session.watch_variables(["a", "b"], debounce_ms=200)`` yields both variables'
        updates.
        """
        return self._watching.watch_variables(
            names, include_initial, filter_fn, throttle_ms, debounce_ms
        )

    def cancel_watch(self, watch: Watch | str | asyncio.Future[Any] | trio.CancelScope) -> bool:
        """End a watch: by the ``Watch``, its id, the asyncio task that runs it, or the trio
        cancel scope its consumer runs in; returns whether it ended something running.

        Example: ``session.cancel_watch(asyncio.create_task(session.watch_variable("t")))``
        (also ``session.cancel_watch(watch)``).
        """
        return self._watching.cancel_watch(watch)

    async def derive(
        self, name: str, inputs: Sequence[str], fn: Callable[..., Any], type: str | None = None,
        constraints: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
        description: str = "", *, ttl: float = 0.0,
    ) -> Derived:
        """Register ``name`` as a computed variable ``fn(*input_values)``, recomputed,
        glitch-free, when its inputs change, by the owner of its derivation lease (``ttl``
        seconds, renewed; 0: the server's default); a client deriving it from the same
        inputs later stands by and takes over if the owner dies. Returns a ``Derived``.

        Example: ``await session.derive("effective_temperature", ["base_temperature",
        "style_modifier"], lambda base, style: base * style)`` returns the ``Derived``.
        """
        return await derive(
            self, self._core, name, inputs, fn, type, constraints, metadata, description, ttl
        )

    async def derivation_status(self, name: str) -> dict[str, Any]:
        """Who keeps a derived variable: ``owner`` (client id; None when none),
        ``standbys``, ``last_computed_revision``, ``stale``, ``ttl``, ``expires_at``,
        ``inputs`` and this client's ``role`` (see ``dspex_rx.client.derive``).

        Example: ``(await session.derivation_status("effective_temperature"))["owner"]``.
        """
        return await derivation_status(self._core, name)

    async def sync(self) -> int:
        """Wait until every change committed before this call has reached this client's
        watchers and cache; returns the revision reached.

        Example: ``await other.set_variable("x", 1)`` then ``await session.sync()``.
        """
        return await self._watching.sync()


@portal_context
@asynccontextmanager
async def connect(
    target: str | Sequence[str] | None = None,
    session_id: str | None = None,
    *,
    token: str | None = None,
    tls: bool = False,
    ca_cert: Pem | None = None,
    tls_server_name: str | None = None,
    principal_key: str | None = None,
    create: bool = True,
    **options: Any,
) -> AsyncIterator[SessionContext]:
    """Open a session; with no target an embedded server runs for the block's duration.

    Joining an existing session needs its ``token`` (``AuthenticationError``, a
    ``PermissionError``, without it or with a wrong one). ``tls=True`` or ``ca_cert``
    (PEM path or bytes) for a TLS server. ``principal_key`` creates a session whose id lies
    in a namespace the server reserves (``--principals``). ``create=False`` joins only:
    an id with no live session raises ``SessionNotFoundError`` (a server with a session
    TTL keeps a session after its last client leaves, so a later program can join it).
    ``target`` may name several replicas of one store (``["a:50051", "b:50051"]`` or
    ``"a:50051,b:50051"``, or one DNS name with several addresses:
    ``"dns://dns-server/replicas.example:50051"`` asks that DNS server): the session uses
    the first that answers and moves to another when it goes, its watches resuming from
    their last revision. Other ``options`` go to
    ``SessionContext`` (``data_dir=`` keeps an embedded server's data in that directory
    instead of in memory).

    Example: ``dspex_rx.connect()`` used in ``async with`` runs an embedded server for the
    block (``dspex_rx.connect(data_dir="dspex-rx-data")`` a durable one);
    ``dspex_rx.connect("db.example:50051", session_id=a.session_id, token=a.token,
    ca_cert="ca.pem")`` joins ``a``'s session over TLS; ``dspex_rx.connect(target,
    session_id="run_1", token=saved_token, create=False)`` joins the session an earlier
    program left, or fails.
    """
    session = SessionContext(
        session_id, target, token=token, tls=tls, ca_cert=ca_cert,
        tls_server_name=tls_server_name, principal_key=principal_key, create=create,
        **options,
    )
    await session.initialize()
    try:
        yield session
    finally:
        await session.close()
