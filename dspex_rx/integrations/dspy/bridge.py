"""The bridge: ``DSPyOptimizationBridge`` connects DSPy programs to a session (variable-aware
optimizers, live binding of predictor settings). The package re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dspex_rx.client.aio import portal_aware
from dspex_rx.errors import AlreadyExistsError, InvalidValueError
from dspex_rx.integrations.dspy.binding import (
    _Binding,
    _check_synced,
    _clash,
    _setting_spec,
    _Target,
)
from dspex_rx.integrations.dspy.helpers import _existing
from dspex_rx.integrations.dspy.optimizer import VariableAwareOptimizer
from dspex_rx.integrations.dspy.parameters import (
    _Parameter,
    _parameters,
    _shape,
)
from dspex_rx.logs import get_logger

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

log = get_logger("dspex_rx.dspy")

__all__ = ["DSPyOptimizationBridge"]


@portal_aware
class DSPyOptimizationBridge:
    """Connects DSPy programs to a session's variables: optimizers that read their
    settings from variables and write their results back, and predictor settings bound
    live to variables.

    Example: ``await DSPyOptimizationBridge(session).sync_dspy_parameters(cot)`` binds a
    ChainOfThought's settings to ``cot_temperature``, ``cot_max_tokens``, ``cot_instructions``.
    """

    def __init__(self, session: SessionContext) -> None:
        self.session = session
        self._bindings: list[_Binding] = []

    @property
    def session_context(self) -> SessionContext:
        """The session this bridge works in (the spec's name; the same object as
        ``session``).

        Example: ``DSPyOptimizationBridge(session).session_context is session`` holds.
        """
        return self.session

    @session_context.setter
    def session_context(self, session: SessionContext) -> None:
        # A subclass written against the spec assigns it in __init__: one attribute.
        self.session = session

    async def create_variable_aware_optimizer(
        self,
        optimizer_class: type[Any],
        variable_mappings: Mapping[str, str],
        *,
        result_prefix: str = "dspy.",
        lease_ttl: float | None = None,
        **kwargs: Any,
    ) -> VariableAwareOptimizer:
        """A ``VariableAwareOptimizer`` around a DSPy optimizer class
        (``BootstrapFewShot``, ``BootstrapFewShotWithRandomSearch``, ...).

        ``variable_mappings`` maps an optimizer argument (``max_bootstrapped_demos``) or a
        teacher LM setting (``teacher_temperature``, ``teacher_max_tokens``) to the name of
        the variable holding it; ``kwargs`` are fixed arguments (``metric=...``). Results go
        to variables named ``<result_prefix>demos.<predictor>``, ``<result_prefix>score``
        and ``<result_prefix>settings``. Bad mappings raise ``ValueError`` here, before
        anything runs; the mapped variables are read by ``compile``, so they may be
        registered after this.

        Example: ``await bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot,
        {"max_bootstrapped_demos": "max_demos"}, metric=exact)`` reads ``max_demos`` per compile.
        """
        return VariableAwareOptimizer(
            self.session, optimizer_class, variable_mappings, kwargs, result_prefix, lease_ttl
        )

    async def sync_dspy_parameters(
        self, dspy_module: Any, variable_prefix: str = ""
    ) -> dict[str, str]:
        """Register a variable for each predictor's ``temperature``, ``max_tokens`` and
        ``instructions`` and bind the predictor to it live; returns {variable name: id}.

        Names: ``<prefix><setting>`` for a module with one predictor
        (``variable_prefix="cot_"`` gives ``cot_temperature``, ``cot_max_tokens``,
        ``cot_instructions``), ``<prefix><predictor>_<setting>`` for one with several
        (``react_temperature``, ``extract.predict_temperature`` after the prefix; a list
        of predictors ``hops[0]`` gives ``hops.0_temperature``). The default empty
        prefix stands for the module's short name and ``_`` (one predictor: ``cot_``,
        ``predict_``) or ``.`` (several: ``react.``, ``multi_hop.``); see
        ``parameter_variables``.

        A new variable starts at what the predictor's next request would use (its config,
        else its LM's kwargs). A setting the predictor leaves unset (``dspy.LM`` sends no
        temperature or max_tokens unless given one) starts at ``LM_SETTINGS``' stand-in
        (0.7, 1024), marked ``stand_in`` in its metadata and not applied: syncing alone
        never changes a request. An existing variable keeps its value, which the
        predictor then takes (a stand-in only once written), so copies of one program
        syncing the same names share their settings. A predictor of another shape (other
        fields) cannot take names another one was synced under: that raises
        ``ValueError`` naming the owner; choose another ``variable_prefix``.

        From then on every change of a variable, from any connection, reaches the
        predictor as soon as this connection's watch stream delivers it (``await
        session.sync()`` waits for that) and applies from the next call. The changes of
        one commit (an atomic ``update_variables``) reach a predictor together, in one
        replacement of its ``config`` dict; the dict (or ``signature``) is replaced,
        never mutated: DSPy reads it once when a step starts, so a call in flight keeps
        the values it started with (a multi-step module such as ReAct may use the new
        value for its later steps). The binding is a watch: it ends when the session
        closes, the variable is deleted, or ``unbind_dspy_parameters`` is called.
        Syncing a module again (another prefix) replaces its bindings once the new ones
        are in place; if that fails, the old ones stay.

        Example: after ``await bridge.sync_dspy_parameters(cot, variable_prefix="cot_")``,
        ``await session.set_variable("cot_temperature", 0.2)`` then ``await session.sync()``:
        cot's next request carries temperature 0.2.
        """
        session = self.session
        parameters = _parameters(dspy_module, variable_prefix)
        module_name = type(dspy_module).__name__
        self._check_bound_here(parameters)
        by_name = {p.variable: p for p in parameters}
        looked_up = await _existing(session, list(by_name))
        found = {name: info for name, info in looked_up.items() if info is not None}
        for name, info in found.items():
            _check_synced(by_name[name], info)
        specs = [_setting_spec(p, module_name) for p in parameters if p.variable not in found]
        ids = {name: str(info["id"]) for name, info in found.items()}
        stand_ins: dict[str, int] = {}
        while specs:
            try:
                ids.update(await session.register_variables(specs))
            except AlreadyExistsError:
                # Another connection registered some of them since they were looked up
                # (the same program syncing elsewhere): take those as existing ones.
                again = await _existing(session, [spec["name"] for spec in specs])
                raced = [spec for spec in specs if again[spec["name"]] is not None]
                if not raced:
                    raise
                for spec in raced:
                    raced_info = again[spec["name"]]
                    assert raced_info is not None
                    _check_synced(by_name[spec["name"]], raced_info)
                    found[spec["name"]] = raced_info
                    ids[spec["name"]] = str(raced_info["id"])
                specs = [spec for spec in specs if again[spec["name"]] is None]
                continue
            for spec in specs:
                if spec["metadata"].get("stand_in"):
                    stand_ins[spec["name"]] = 1  # a new variable is at version 1
            break
        for name, info in found.items():
            # A stand-in never written since (still at version 1) is still a stand-in.
            if info["metadata"].get("stand_in") and info["version"] == 1:
                stand_ins[name] = 1

        targets: dict[int, _Target] = {}
        bindings = []
        for p in parameters:
            target = targets.setdefault(id(p.predictor), _Target(p.predictor))
            bindings.append(_Binding(p, target, stand_ins.get(p.variable, 0)))
        try:
            for binding in bindings:
                binding.disposable = session.observe(binding.parameter.variable).subscribe(
                    on_next=binding.apply, on_error=binding.fail, on_completed=binding.end
                )
            # Every binding has its initial value (applied) before this returns.
            await session.sync()
        except BaseException:
            for binding in bindings:
                binding.dispose()
            raise
        # One binding per predictor setting: the new ones replace any earlier ones.
        self.unbind_dspy_parameters(dspy_module)
        self._bindings.extend(bindings)
        log.info("dspy_parameters_bound", module=module_name, variables=sorted(ids))
        return {p.variable: ids[p.variable] for p in parameters}

    def _check_bound_here(self, parameters: Sequence[_Parameter]) -> None:
        # A variable this bridge binds to a predictor of another shape (also one that was
        # registered by hand, without the metadata _check_synced reads).
        for p in parameters:
            for binding in self._bindings:
                other = binding.parameter
                if (binding.active and other.variable == p.variable
                        and other.predictor is not p.predictor
                        and _shape(other.predictor) != _shape(p.predictor)):
                    raise InvalidValueError(_clash(p, other.predictor_name,
                                                   _shape(other.predictor)))

    def unbind_dspy_parameters(self, dspy_module: Any | None = None) -> int:
        """End the live bindings of ``dspy_module``'s predictors (of every module when
        None); the predictors keep their last values. Returns how many ended.

        Example: ``bridge.unbind_dspy_parameters(cot)`` is 3 for a bound ChainOfThought.
        """
        predictors = (
            None if dspy_module is None
            else {id(predictor) for _, predictor in dspy_module.named_predictors()}
        )
        keep, ended = [], 0
        for binding in self._bindings:
            if predictors is None or id(binding.parameter.predictor) in predictors:
                binding.dispose()
                ended += 1
            else:
                keep.append(binding)
        self._bindings = keep
        return ended

    def bound_variables(self) -> list[str]:
        """The variables whose bindings are still live.

        Example: ``bridge.bound_variables()`` lists ``"cot_temperature"`` once a
        ChainOfThought is synced with ``variable_prefix="cot_"``.
        """

        return [b.parameter.variable for b in self._bindings if b.active]
