"""Computed variables: ``session.derive(name, inputs, fn)`` keeps ``name`` equal to
``fn(*inputs)`` by recomputing on the client from the latest input values, glitch-free,
under a derivation lease: one owner writes, other clients stand by to take over."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio
from reactivex import abc as rx_abc

from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.aio import portal_aware
from dspex_rx.client.core import SessionCore
from dspex_rx.core.types import infer_type, same_value
from dspex_rx.errors import (
    AlreadyExistsError,
    DerivationFencedError,
    InvalidValueError,
    VariableNotFoundError,
)
from dspex_rx.logs import get_logger
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.convert import utc_datetime

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

log = get_logger("dspex_rx.derive")


# A lease answer as the client keeps it: (role, fencing token, ttl seconds).
_Lease = tuple[str, int, float]
# Each connection's Derived handles by variable id: a second derive() of a variable this
# client already keeps would run two tasks under one lease.
_KEPT: weakref.WeakKeyDictionary[SessionCore, dict[str, Derived]] = (
    weakref.WeakKeyDictionary()
)


async def lease_call(
    core: SessionCore, ref: str, action: str, inputs: Sequence[str] = (), ttl: float = 0.0,
) -> pb.DeriveLeaseResponse:
    """One ``DeriveLease`` call for this client: ``claim``, ``renew``, ``release`` or
    ``status``.

    Example: ``(await lease_call(core, "d", "renew")).role`` is "owner" for the owner.
    """
    return await core.call(
        "DeriveLease",
        pb.DeriveLeaseRequest(
            session_id=core.session_id, ref=ref, client_id=core.client_id, action=action,
            inputs=list(inputs), ttl_seconds=ttl,
        ),
        pb.DeriveLeaseResponse,
    )


def status_dict(response: pb.DeriveLeaseResponse) -> dict[str, Any]:
    """A ``DeriveLease`` answer as the status dict ``derivation_status`` returns.

    >>> answer = pb.DeriveLeaseResponse(role="standby")
    >>> answer.status.name, answer.status.derived, answer.status.owner_client = "d", True, "c1"
    >>> status = status_dict(answer)
    >>> status["owner"], status["role"], status["stale"]
    ('c1', 'standby', False)
    """
    st = response.status
    return {
        "variable": st.name,
        "derived": st.derived,
        "inputs": list(st.inputs),
        "owner": st.owner_client or None,
        "owner_session": st.owner_session or None,
        "standbys": list(st.standby_clients),
        "standby_sessions": list(st.standby_sessions),
        "last_computed_revision": st.last_computed_revision,
        "stale": st.stale,
        "stale_reason": st.stale_reason,
        "ttl": st.ttl_seconds,
        "expires_at": utc_datetime(st.expires_at) if st.HasField("expires_at") else None,
        "role": response.role,
    }


@portal_aware
class Derived:
    """The handle of a computed variable this client takes part in.

    One client, the owner of the variable's derivation lease, recomputes and writes it
    (under the lease's fencing token); the others stand by, following the inputs without
    calling ``fn``. Every part renews its lease every third of the TTL. When the owner's
    lease lapses, a standby takes over: it recomputes from the current inputs and writes
    under its new token. ``role`` says which this client is now.

    Glitch-free: input updates are collected while the watch stream's dispatcher applies
    a message (an atomic batch is one frame, so all of it), and one recomputation runs
    after it, from the inputs' latest values. A recomputation never sees one new and one
    old input of the same batch, and an unchanged result is not written again. An input
    that is itself derived announces, by its ``dependency_changed``, that a new value is
    coming; recomputation waits for it, so a chain never computes from a stale link.
    The task ends when the variable or one of its inputs is deleted.

    Example: ``await session.derive("effective_temperature", ["base_temperature",
    "style_modifier"], lambda base, style: base * style)`` returns one.
    """

    def __init__(
        self,
        session: SessionContext,
        name: str,
        inputs: Sequence[str],
        fn: Callable[..., Any],
        last_written: Any,
        initial_inputs: Sequence[Any] = (),
        var_id: str = "",
        derived_inputs: Sequence[int] = (),
        lease: _Lease = ("owner", 0, 0.0),
        core: SessionCore | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self.var_id = var_id or name
        self.ended = False
        self._core = core
        self._derived_inputs = set(derived_inputs)
        # Derived inputs that announced a recomputation: index -> the causing revision.
        self._awaiting: dict[int, int] = {}
        self.inputs = list(inputs)
        self.fn = fn
        self.recomputations = 0
        self.writes = 0
        self.errors = 0
        self.takeovers = 0
        self.renewals = 0
        self.last_error: BaseException | None = None
        self.role, self._token, self.ttl = lease
        self._last_written = last_written
        # The inputs the registered value was computed from: their initial events do not
        # call fn again (it may be expensive: an LLM call, say).
        self._computed_from: list[Any] | None = list(initial_inputs) or None
        self._latest: dict[int, Any] = {}
        self._revision = 0
        # A standby that took over writes its first result even when unchanged, so the
        # takeover is a write under its token (and ``last_computed_revision`` follows).
        self._force = False
        self._wake = trio.Event()
        self._check = trio.Event()  # ask the keeper to renew now (a write was fenced)
        self._release = False
        self._scope = trio.CancelScope()
        self._subscriptions: list[rx_abc.DisposableBase] = []
        self._idle = trio.Event()

    def _on_input(self, index: int, update: VariableUpdate) -> None:
        kind = update.update_type
        if kind == "deleted":
            self._end()
            return
        if kind == "dependency_changed":
            source = update.metadata.get("source_revision")
            if index in self._derived_inputs and isinstance(source, int):
                self._awaiting[index] = max(self._awaiting.get(index, 0), source)
                self._idle = trio.Event()
            return
        self._latest[index] = update.value
        self._revision = max(self._revision, update.revision)
        if update.revision > self._awaiting.get(index, update.revision):
            del self._awaiting[index]  # its recomputed value is in
        self._idle = trio.Event()
        if not self._awaiting:
            self._wake.set()

    def _on_self(self, update: VariableUpdate) -> None:
        if update.update_type == "deleted":
            self._end()

    def _end(self) -> None:
        self.ended = True
        self._scope.cancel()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to the inputs, keep the lease and recompute (as owner) until
        cancelled (the session runs this); started once it has subscribed.

        Example: ``await nursery.start(derived.run)`` keeps it current.
        """
        with self._scope:
            try:
                self._subscriptions.append(
                    self.session.observe(self.var_id, include_initial=False).subscribe(
                        self._on_self
                    )
                )
                for index, ref in enumerate(self.inputs):
                    on_input = functools.partial(self._on_input, index)
                    self._subscriptions.append(self.session.observe(ref).subscribe(on_input))
                task_status.started()
                async with trio.open_nursery() as nursery:
                    if self._core is not None and self.ttl > 0:
                        nursery.start_soon(self._keep, self._core)
                    await self._follow()
            finally:
                for subscription in self._subscriptions:
                    subscription.dispose()
                if self._release and self._core is not None:
                    await self._give_back(self._core)
                self.ended = True
                self._idle.set()

    async def _follow(self) -> None:
        while True:
            if not self._wake.is_set():  # input that came meanwhile is not settled
                self._idle.set()
            await self._wake.wait()
            self._wake = trio.Event()
            if len(self._latest) < len(self.inputs) or self._awaiting:
                continue  # an input has not reported yet, or a new value is coming
            if self.role == "owner":
                await self._recompute()

    async def _keep(self, core: SessionCore) -> None:
        # Renew this client's part every third of the TTL (at once when a write was
        # fenced); a part that lapsed claims again (as standby, or owner if none is left).
        while True:
            with trio.move_on_after(self.ttl / 3):
                await self._check.wait()
            self._check = trio.Event()
            try:
                answer = await lease_call(core, self.var_id, "renew")
                if answer.role == "none":
                    answer = await lease_call(core, self.var_id, "claim", self.inputs,
                                              self.ttl)
            except VariableNotFoundError:
                self._end()
                return
            except RuntimeError:  # the session closed under it: nothing left to renew
                return
            except Exception as exc:  # a blip (transport, storage): the next renewal retries
                log.warning("derive_renew_failed", variable=self.name, error=repr(exc))
                continue
            self.renewals += 1
            self._adopt(answer)

    def _adopt(self, answer: pb.DeriveLeaseResponse) -> None:
        was, self.role = self.role, answer.role
        if answer.status.ttl_seconds:
            self.ttl = answer.status.ttl_seconds
        if self.role == "owner" and (was != "owner" or answer.fencing_token != self._token):
            # Taken over: recompute from the current inputs and write under the new token.
            self._token = answer.fencing_token
            self.takeovers += 1
            self._force, self._computed_from = True, None
            log.info("derive_took_over", variable=self.name)
            self._idle = trio.Event()
            self._wake.set()

    async def _give_back(self, core: SessionCore) -> None:
        # cancel(): hand the lease to a standby now rather than after the TTL.
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await lease_call(core, self.var_id, "release")
            except Exception as exc:  # best effort: else the lease lapses after its TTL
                log.warning("derive_release_failed", variable=self.name, error=repr(exc))

    async def _recompute(self) -> None:
        values = [self._latest[i] for i in range(len(self.inputs))]
        computed_from, self._computed_from = self._computed_from, None
        if computed_from is not None and all(
            same_value(a, b) for a, b in zip(values, computed_from, strict=True)
        ):
            return
        revision = self._revision
        self.recomputations += 1
        try:
            result = self.fn(*values)
            if inspect.isawaitable(result):
                result = await result
            if same_value(result, self._last_written) and not self._force:
                return
            await self.session.set_variable(
                self.var_id, result, metadata={"derived_from_revision": revision},
                source="derived", fencing_token=self._token or None,
            )
            self._last_written = result
            self._force = False
            self.writes += 1
        except DerivationFencedError as exc:  # no longer the owner: find out what we are
            self.errors += 1
            self.last_error = exc
            self.role = "none"
            self._check.set()
            log.warning("derive_fenced", variable=self.name, error=str(exc))
        except Exception as exc:  # the computation or its write failed: keep serving
            self.errors += 1
            self.last_error = exc
            log.warning("derive_failed", variable=self.name, error=repr(exc))

    async def settled(self) -> None:
        """Wait until every input update seen so far has been recomputed and written
        (returns at once once the task has ended).

        Example: ``await derived.settled()`` after ``await session.sync()``.
        """
        if not self.ended:
            await self._idle.wait()

    def cancel(self) -> None:
        """Stop recomputing (the variable stays, with its last value) and give up this
        client's part in the lease: a standby takes over, or the variable goes stale.

        Example: ``derived.cancel()`` stops recomputing.
        """
        self._release = True
        self._scope.cancel()


async def derive(
    session: SessionContext,
    core: SessionCore,
    name: str,
    inputs: Sequence[str],
    fn: Callable[..., Any],
    type: str | None = None,
    constraints: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    description: str = "",
    ttl: float = 0.0,
) -> Derived:
    """Register ``name`` as a computed variable: ``fn(*input_values)`` (sync or async),
    with ``inputs`` as its dependencies, recomputed from the latest inputs and written
    back with ``source='derived'``, and take its derivation lease (``ttl`` seconds, 0 for
    the server's default). Glitch-free: an atomic batch that changes several inputs
    causes one recomputation from all of its new values. ``type`` defaults to the type
    of the first result. When ``name`` is already derived from the same inputs (by another
    client) this client stands by, and takes over if its owner dies; if it was stale
    this client becomes its owner and recomputes it. Returns a ``Derived`` handle
    (``cancel()`` stops recomputing; closing the session does too).

    Example: ``await session.derive("effective_temperature", ["base_temperature",
    "style_modifier"], lambda base, style: base * style)`` returns the ``Derived``.
    """
    if isinstance(inputs, str) or not inputs:
        raise InvalidValueError(f"variable {name!r}: derive needs a list of input variables")
    nursery = core.nursery()  # RuntimeError: the session is not initialized
    current = await session.get_variables(list(inputs), include_metadata=True)
    input_values = [current[ref]["value"] for ref in inputs]
    kept = _KEPT.setdefault(core, {})
    if any(not d.ended and name in (d.name, d.var_id) for d in kept.values()):
        raise AlreadyExistsError(
            f"variable {name!r} is already derived by this client: cancel() its Derived "
            "before deriving it again"
        )
    registered = False
    try:
        answer = await lease_call(core, name, "claim", inputs, ttl)
    except VariableNotFoundError as exc:
        if not str(exc).startswith("no variable "):
            raise  # an input went meanwhile ("variable 'd': no input variable ...")
        result = fn(*input_values)
        if inspect.isawaitable(result):
            result = await result
        type_name = type or infer_type(name, result)
        try:
            await session.register_variable(
                name, type_name, result, constraints=constraints,
                metadata={**(metadata or {}), "derived_from": list(inputs)},
                description=description, dependencies=list(inputs),
            )
            registered = True
        except AlreadyExistsError:
            pass  # another client registered it meanwhile: claim as it stands
        answer = await lease_call(core, name, "claim", inputs, ttl)
    var_id = answer.status.variable_id
    if registered:
        last, initial = result, input_values
    else:
        # Not computed here: the first round computes, and writes only a change.
        last, initial = await session.get_variable(var_id, bypass_cache=True), []
    derived_inputs = [
        i for i, ref in enumerate(inputs) if "derived_from" in current[ref]["metadata"]
    ]
    lease = (answer.role, answer.fencing_token, answer.status.ttl_seconds)
    derived = Derived(session, name, inputs, fn, last, initial, var_id, derived_inputs,
                      lease, core)
    kept[var_id] = derived
    # Subscribed before it returns: a ``sync()`` after it covers its inputs' first values.
    await nursery.start(derived.run, name=f"dspex-rx-derive[{name}]")
    return derived


async def derivation_status(core: SessionCore, name: str) -> dict[str, Any]:
    """The derivation lease of ``name``: ``owner`` (client id, None when none), ``owner_session``,
    ``standbys`` (client ids, in takeover order), ``last_computed_revision``, ``stale``
    (and ``stale_reason``), ``ttl``, ``expires_at``, ``inputs``, ``derived`` (False: no
    lease) and this client's ``role`` (owner, standby or none).

    Example: ``(await session.derivation_status("effective_temperature"))["stale"]``.
    """
    return status_dict(await lease_call(core, name, "status"))
