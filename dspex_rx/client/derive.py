"""Computed variables: ``session.derive(name, inputs, fn)`` keeps ``name`` equal to
``fn(*inputs)`` by recomputing on the client from the latest input values, glitch-free."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio
from reactivex import abc as rx_abc

from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.aio import portal_aware
from dspex_rx.client.core import SessionCore
from dspex_rx.core.types import infer_type, same_value
from dspex_rx.errors import InvalidValueError
from dspex_rx.logs import get_logger

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

log = get_logger("dspex_rx.derive")


@portal_aware
class Derived:
    """The handle of a computed variable this session keeps up to date.

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
    ) -> None:
        self.session = session
        self.name = name
        self.var_id = var_id or name
        self.ended = False
        self._derived_inputs = set(derived_inputs)
        # Derived inputs that announced a recomputation: index -> the causing revision.
        self._awaiting: dict[int, int] = {}
        self.inputs = list(inputs)
        self.fn = fn
        self.recomputations = 0
        self.writes = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self._last_written = last_written
        # The inputs the registered value was computed from: their initial events do not
        # call fn again (it may be expensive: an LLM call, say).
        self._computed_from: list[Any] | None = list(initial_inputs) or None
        self._latest: dict[int, Any] = {}
        self._revision = 0
        self._wake = trio.Event()
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

    async def run(self) -> None:
        """Subscribe to the inputs and recompute until cancelled (the session runs this).

        Example: ``nursery.start_soon(derived.run)`` keeps it current.
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
                while True:
                    if not self._wake.is_set():  # input that came meanwhile is not settled
                        self._idle.set()
                    await self._wake.wait()
                    self._wake = trio.Event()
                    if len(self._latest) < len(self.inputs) or self._awaiting:
                        continue  # an input has not reported yet, or a new value is coming
                    await self._recompute()
            finally:
                self.ended = True
                self._idle.set()
                for subscription in self._subscriptions:
                    subscription.dispose()

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
            if same_value(result, self._last_written):
                return
            await self.session.set_variable(
                self.var_id, result, metadata={"derived_from_revision": revision},
                source="derived",
            )
            self._last_written = result
            self.writes += 1
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
        """Stop recomputing (the variable stays, with its last value).

        Example: ``derived.cancel()`` stops recomputing.
        """
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
) -> Derived:
    """Register ``name`` as a computed variable: ``fn(*input_values)`` (sync or async),
    with ``inputs`` as its dependencies, recomputed by this session from the latest
    inputs and written back with ``source='derived'``. Glitch-free: an atomic batch
    that changes several inputs causes one recomputation from all of its new values.
    ``type`` defaults to the type of the first result. Returns a ``Derived`` handle
    (``cancel()`` stops recomputing; closing the session does too).

    Example: ``await session.derive("effective_temperature", ["base_temperature",
    "style_modifier"], lambda base, style: base * style)`` returns the ``Derived``.
    """
    if isinstance(inputs, str) or not inputs:
        raise InvalidValueError(f"variable {name!r}: derive needs a list of input variables")
    nursery = core.nursery()  # RuntimeError: the session is not initialized
    current = await session.get_variables(list(inputs), include_metadata=True)
    input_values = [current[ref]["value"] for ref in inputs]
    result = fn(*input_values)
    if inspect.isawaitable(result):
        result = await result
    type_name = type or infer_type(name, result)
    var_id = await session.register_variable(
        name, type_name, result, constraints=constraints,
        metadata={**(metadata or {}), "derived_from": list(inputs)},
        description=description, dependencies=list(inputs),
    )
    derived_inputs = [
        i for i, ref in enumerate(inputs) if "derived_from" in current[ref]["metadata"]
    ]
    derived = Derived(session, name, inputs, fn, result, input_values, var_id, derived_inputs)
    nursery.start_soon(derived.run, name=f"dspex-rx-derive[{name}]")
    return derived
