"""What the session's components share: one way to call, the session's ids and nursery,
and handing server answers to the variable actors (whose counters make the stats)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

import trio

from dspex_rx.client.actors import VariableActor, WatchHub
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.connection import CallFn, Connection
from dspex_rx.client.encoding import MISSING
from dspex_rx.errors import InvalidValueError, error_from_kind
from dspex_rx.rx import TrioScheduler
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec

NOT_INITIALIZED = "the session is not initialized; call await session.initialize()"


class SessionCore:
    """The narrow interface the components (variables, watching, optimization runs...)
    get instead of the facade: ``call``, ``remember``, the hub, nursery and scheduler.

    Example: ``await core.call("Echo", pb.EchoRequest(), pb.EchoResponse)`` makes one call.
    """

    def __init__(self, conn: Connection, call: CallFn) -> None:
        self.conn = conn
        self.call = call

    @property
    def cache(self) -> VariableCache:
        """The session's client cache.

        Example: ``core.cache.info()["size"]`` is how many entries it holds.
        """
        return self.conn.cache

    @property
    def session_id(self) -> str:
        """The server's id for the session (``RuntimeError`` when not open).

        Example: ``pb.GetVariableRequest(session_id=core.session_id, ref="t")``.
        """
        return self.conn.require_session_id()

    @property
    def client_id(self) -> str:
        """This connection's client id in the session (its lease holder name).

        Example: ``pb.StartOptimizationRequest(client_id=core.client_id)``.
        """
        return self.conn.client_id

    @property
    def trio_token(self) -> trio.lowlevel.TrioToken | None:
        """The trio run the session lives in.

        Example: ``core.trio_token`` is None before the session opens.
        """
        return self.conn.trio_token

    @property
    def open(self) -> bool:
        """Whether the connection is up (its transport exists).

        Example: ``if not core.open: raise RuntimeError("the session is closed")``.
        """
        return self.conn.transport is not None

    def hub(self) -> WatchHub:
        """The watch hub (``RuntimeError`` when not open, the lost error when lost).

        Example: ``core.hub().known("t")`` is the actor of a variable this client knows.
        """
        return self.conn.require_hub()

    def nursery(self) -> trio.Nursery:
        """The session's background nursery (``RuntimeError`` when not open).

        Example: ``core.nursery().start_soon(run.run)``.
        """
        if self.conn.nursery is None:
            raise RuntimeError(NOT_INITIALIZED)
        return self.conn.nursery

    def scheduler(self) -> TrioScheduler:
        """The session's trio scheduler for reactivex (``RuntimeError`` when not open).

        Example: ``with_trio_scheduler(observable, core.scheduler())``.
        """
        if self.conn.scheduler is None:
            raise RuntimeError(NOT_INITIALIZED)
        return self.conn.scheduler

    def remember(self, variable: pb.Variable, value: Any = MISSING) -> VariableActor:
        """Hand a server answer to the variable's actor (the entry's only writer).

        Example: ``core.remember(response.variable).stats.write_count += 1``.
        """
        # Names are per session: another session's variable is known here by its id only.
        foreign = variable.owner_session not in ("", self.session_id)
        actor = self.hub().learn(variable.id, variable.id if foreign else variable.name)
        if foreign and value is MISSING and not variable.HasField("value"):
            return actor  # the server sent no value: this session may not read it
        actor.store(
            codec.decode(variable.value) if value is MISSING else value,
            variable.version,
            variable.mod_revision,
        )
        return actor

    def read_cached(
        self, ref: str, bypass_cache: bool
    ) -> tuple[bool, Any, bool, VariableActor | None]:
        """A local read: (found, value, whether a miss was already counted, the actor).

        The actor comes back so a hit's caller need not look it up again (the cache hit
        is the hot path, hundreds of thousands a second).

        Example: ``found, value, counted, actor = core.read_cached("t", bypass_cache=False)``.
        """
        actor = self.hub().known(ref)
        if actor is None:
            self.cache.lookup(ref)  # nothing is cached under an unknown ref: a miss
            return False, None, False, None
        if bypass_cache:
            actor.stats.cache_misses += 1
            return False, None, True, actor
        found, value = actor.read()
        return found, value, True, actor

    async def get_many(self, refs: list[str]) -> tuple[dict[str, pb.Variable], set[str], int]:
        """One GetVariables call: (ref -> variable for those found, missing refs, revision).

        Example: ``found, missing, revision = await core.get_many(["a", "b"])``.
        """
        response = await self.call(
            "GetVariables",
            pb.GetVariablesRequest(session_id=self.session_id, refs=refs),
            pb.GetVariablesResponse,
        )
        missing = set(response.missing)
        found = dict(
            zip([r for r in refs if r not in missing], response.variables, strict=True)
        )
        return found, missing, response.revision

    def add_optimization_time(self, variable: str, seconds: float) -> None:
        """Add to how long this client spent optimizing the variable (its actor keeps it).

        Example: ``core.add_optimization_time("t", 1.5)``.
        """
        actor = self.conn.hub.known(variable) if self.conn.hub is not None else None
        if actor is not None:
            actor.stats.optimization_time += seconds

    def configure_cache(
        self, ttl: float | None = MISSING, max_size: int | None = MISSING,
        eviction_policy: str | None = MISSING,
    ) -> None:
        """Change the cache settings given (None is a setting: no expiry, unbounded).

        Example: ``core.configure_cache(ttl=5.0)`` leaves the size and policy as they are.
        """
        options: dict[str, Any] = {}
        if ttl is not MISSING:
            options["ttl"] = ttl
        if max_size is not MISSING:
            options["max_size"] = max_size
        if eviction_policy is not MISSING:
            if eviction_policy is None:
                raise InvalidValueError(
                    "eviction_policy must be one of 'lru', 'lfu', 'fifo', not None"
                )
            options["eviction_policy"] = eviction_policy
        self.cache.configure(**options)

    def stats(self, variable: str | None = None) -> dict[str, Any]:
        """Client-side counters for one variable, or summed over all when ``variable`` is None:
        ``read_count`` (= ``cache_hits`` + ``cache_misses``), ``write_count``,
        ``cache_hits``, ``cache_misses``, ``cache_hit_rate``, ``avg_read_latency_ms``,
        ``avg_write_latency_ms``, ``total_optimization_time_s``. It makes no call: the
        counters are this client's; a variable this session has not used raises ``KeyError``.

        Example: ``(await session.get_variable_stats("temperature"))["cache_hit_rate"]``.
        """
        hub = self.hub()
        if variable is not None:
            actor = hub.known(variable)
            if actor is None:
                raise error_from_kind(
                    "not_found", f"no statistics for {variable!r}: this session has not used it"
                )
            actors = [actor]
        else:
            actors = list({id(a): a for a in [*hub.by_id.values(), *hub.by_name.values()]}
                          .values())
        hits = sum(a.stats.cache_hits for a in actors)
        misses = sum(a.stats.cache_misses for a in actors)
        writes = sum(a.stats.write_count for a in actors)
        reads = hits + misses
        read_time = sum(a.stats.read_latency_total for a in actors)
        write_time = sum(a.stats.write_latency_total for a in actors)
        return {
            "read_count": reads,
            "write_count": writes,
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_hit_rate": hits / reads if reads else 0.0,
            "avg_read_latency_ms": 1000.0 * read_time / reads if reads else 0.0,
            "avg_write_latency_ms": 1000.0 * write_time / writes if writes else 0.0,
            "total_optimization_time_s": sum(a.stats.optimization_time for a in actors),
        }


T = TypeVar("T")


class Forwarded(Generic[T]):
    """An attribute of the facade that lives on one of its components (reads and writes
    go there, so ``session.timeout = 5`` before ``initialize`` still counts).

    >>> class Box:
    ...     size: Forwarded[int] = Forwarded("_inner", "size")
    ...     def __init__(self) -> None: self._inner = type("Inner", (), {"size": 3})()
    >>> Box().size
    3
    """

    def __init__(self, component: str, name: str) -> None:
        self.component, self.name = component, name

    def __get__(self, obj: object, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]  # the class attribute: for help()
        return cast(T, getattr(getattr(obj, self.component), self.name))

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.component), self.name, value)
