"""DSPy integration: a DSPy program's settings, an optimizer's inputs and results, and the
choice of module class live in variables. Owns ``DSPyOptimizationBridge`` (variable-aware
optimizers, live binding of predictor settings) and ``ModuleVariableResolver``.

Imported only when DSPy is installed (``pip install 'dspex-rx[dspy]'``); ``import dspex_rx``
never imports it. DSPy's calls are synchronous: everything here runs them in a worker thread
(``run_in_thread``), where ``dspy.context`` settings of the calling trio task still apply.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import trio

try:
    import dspy
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "dspex_rx.dspy needs DSPy: pip install 'dspex-rx[dspy]' (dspy>=3.4,<3.5)"
    ) from exc

from dspex_rx.client.aio import portal_aware
from dspex_rx.core.types import INT64_MAX, INT64_MIN
from dspex_rx.errors import (
    AlreadyExistsError,
    InvalidValueError,
    OptimizationLockedError,
    VariableNotFoundError,
    VariableTypeError,
)
from dspex_rx.logs import get_logger

if TYPE_CHECKING:
    from reactivex import abc as rx_abc

    from dspex_rx.client import SessionContext
    from dspex_rx.client.actors import VariableUpdate
    from dspex_rx.client.optimization.run import HeldLease

log = get_logger("dspex_rx.dspy")

T = TypeVar("T")

__all__ = [
    "LM_SETTINGS",
    "CompileRun",
    "DSPyOptimizationBridge",
    "LMSetting",
    "ModuleVariableResolver",
    "VariableAwareOptimizer",
    "VariableModule",
    "default_prefix",
    "parameter_variables",
    "plain",
    "run_in_thread",
    "short_name",
]


# ---------------------------------------------------------------------------- helpers


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a synchronous DSPy call (a module, ``optimizer.compile``, ``dspy.Evaluate``) in
    a trio worker thread and return its result.

    The thread runs in a copy of the calling task's context, so ``dspy.context(lm=...)``
    entered in trio applies. With no adapter configured, DSPy's ``ChatAdapter`` is used
    explicitly (DSPy 3.5 changes the default). DSPy calls cannot be interrupted: a
    cancellation waits until the call returns, then raises ``Cancelled`` (the result is
    dropped, so nothing after the ``await`` runs for a cancelled caller).

    Example::

        with dspy.context(lm=dspy.utils.DummyLM([{"answer": "4"}])):
            prediction = await run_in_thread(dspy.Predict("question -> answer"),
                                             question="2 + 2?")
    """

    def call() -> T:
        if dspy.settings.adapter is None:
            with dspy.context(adapter=dspy.ChatAdapter()):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    result = await trio.to_thread.run_sync(call)
    # to_thread.run_sync(abandon_on_cancel=False) ignores a cancel that comes while the
    # thread runs and returns normally; the cancel is still pending, and lands here.
    await trio.lowlevel.checkpoint()
    return result


_SHORT_NAMES = {
    "Predict": "predict",
    "ChainOfThought": "cot",
    "ReAct": "react",
    "ProgramOfThought": "pot",
    "MultiChainComparison": "mcc",
    "BestOfN": "best_of_n",
    "Refine": "refine",
}


def short_name(module: Any) -> str:
    """The name a module's variables start with: ``cot`` for ChainOfThought, ``predict``,
    ``react``, ``pot``; other classes in snake case.

    >>> short_name(dspy.ChainOfThought("question -> answer"))
    'cot'
    >>> class MultiHopRAG(dspy.Module): pass
    >>> short_name(MultiHopRAG())
    'multi_hop_rag'
    """
    name = type(module).__name__
    if name in _SHORT_NAMES:
        return _SHORT_NAMES[name]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@dataclass(frozen=True)
class LMSetting:
    """One predictor setting kept in a variable: its type, constraints, and the stand-in
    a new variable starts at when the predictor does not set it (neither its config nor
    its LM does: the provider decides). A stand-in is never applied to the predictor; the
    variable takes effect once it is written.

    Example::

        LM_SETTINGS["temperature"].constraints   # {'min': 0.0, 'max': 2.0}
    """

    type: str
    constraints: Mapping[str, Any]
    default: Any


# What ``sync_dspy_parameters`` binds per predictor. ``instructions`` lives in the
# predictor's signature; the others in its ``config``, which DSPy lets win over the LM's
# own kwargs, so a bound value is what the request carries.
LM_SETTINGS: dict[str, LMSetting] = {
    "temperature": LMSetting("float", {"min": 0.0, "max": 2.0}, 0.7),
    "max_tokens": LMSetting("integer", {"min": 1, "max": 1_000_000}, 1024),
    "instructions": LMSetting("string", {}, ""),
}


@dataclass
class _Parameter:
    variable: str
    predictor_name: str
    predictor: Any
    setting: str


def _name_part(predictor_name: str) -> str:
    # DSPy names predictors held in lists and dicts 'hops[0]' and "tools['search']"; a
    # variable name allows letters, digits and _ . - / only: 'hops.0', 'tools.search'.
    part = re.sub(r"\[\s*['\"]?(.*?)['\"]?\s*\]", r".\1", predictor_name)
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", part)


def _predictor_parts(module: Any) -> list[tuple[str, str, Any]]:
    """(DSPy's predictor name, its part of a variable name, predictor) for each predictor;
    refuses two predictors whose names would give one variable name."""
    seen: dict[str, str] = {}
    out = []
    for predictor_name, predictor in module.named_predictors():
        part = _name_part(predictor_name)
        if part in seen:
            raise InvalidValueError(
                f"{type(module).__name__}: predictors {seen[part]!r} and {predictor_name!r} "
                f"would share the variable names '...{part}_...'; rename one attribute"
            )
        seen[part] = predictor_name
        out.append((predictor_name, part, predictor))
    return out


def default_prefix(module: Any) -> str:
    """The prefix ``sync_dspy_parameters`` uses when given none (``variable_prefix=""``):
    the module's short name, then ``_`` for a module with one predictor (``cot_``), ``.``
    for one with several (``react.``).

    >>> default_prefix(dspy.ChainOfThought("question -> answer"))
    'cot_'
    >>> default_prefix(dspy.ReAct("question -> answer", tools=[len]))
    'react.'
    """
    several = len(list(module.named_predictors())) > 1
    return short_name(module) + ("." if several else "_")


def _parameters(module: Any, variable_prefix: str) -> list[_Parameter]:
    predictors = _predictor_parts(module)
    if not predictors:
        raise InvalidValueError(
            f"{type(module).__name__} has no Predict steps (named_predictors() is empty): "
            "nothing to bind"
        )
    # The prefix is the whole start of every name: the spec's variable_prefix="cot_"
    # gives cot_temperature. Only an empty prefix is derived from the module's class.
    prefix = variable_prefix or default_prefix(module)
    out = []
    for predictor_name, part, predictor in predictors:
        # Several predictors: each one's name part follows the prefix
        # (react.extract.predict_temperature, multi_hop.hops.0_temperature), so their
        # settings are apart and the name says which step they drive.
        owner = prefix if len(predictors) == 1 else f"{prefix}{part}_"
        for setting in LM_SETTINGS:
            out.append(_Parameter(f"{owner}{setting}", predictor_name, predictor, setting))
    return out


def parameter_variables(module: Any, variable_prefix: str = "") -> dict[str, tuple[str, str]]:
    """The variables ``sync_dspy_parameters`` uses for a module: variable name ->
    (predictor name, setting).

    The rule: ``<prefix><setting>`` for a module with one predictor;
    ``<prefix><predictor>_<setting>`` for one with several (DSPy's predictor name, with
    ``hops[0]`` written ``hops.0``). An empty prefix (the default) means
    ``default_prefix(module)``: ``cot_`` for a ChainOfThought, ``react.`` for a ReAct.

    >>> sorted(parameter_variables(dspy.ChainOfThought("question -> answer")))
    ['cot_instructions', 'cot_max_tokens', 'cot_temperature']
    >>> sorted(parameter_variables(dspy.ChainOfThought("question -> answer"), "qa."))
    ['qa.instructions', 'qa.max_tokens', 'qa.temperature']
    >>> react = dspy.ReAct("question -> answer", tools=[len])
    >>> parameter_variables(react)["react.extract.predict_temperature"]
    ('extract.predict', 'temperature')
    >>> parameter_variables(react, "agent.")["agent.react_temperature"]
    ('react', 'temperature')
    >>> class Hops(dspy.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.hops = [dspy.Predict("question -> answer") for _ in range(2)]
    >>> parameter_variables(Hops())["hops.hops.1_temperature"]
    ('hops[1]', 'temperature')
    """
    return {
        p.variable: (p.predictor_name, p.setting) for p in _parameters(module, variable_prefix)
    }


def _current_setting(predictor: Any, setting: str) -> tuple[Any, bool]:
    # (value, True) for what the predictor's next request would use: its config, else
    # its LM's (or the configured LM's) kwargs; (the stand-in, False) when neither sets
    # it and the request leaves it to the provider.
    if setting == "instructions":
        return str(predictor.signature.instructions or ""), True
    if setting in predictor.config:
        return predictor.config[setting], True
    lm = predictor.lm or dspy.settings.lm
    kwargs = getattr(lm, "kwargs", None) or {}
    if kwargs.get(setting) is not None:
        return kwargs[setting], True
    return LM_SETTINGS[setting].default, False


def _shape(predictor: Any) -> str:
    # What makes two predictors the same step: their fields ('question -> reasoning,
    # answer'), not their instructions, which the binding itself changes.
    signature = predictor.signature
    return str(getattr(signature, "signature", signature))


def plain(value: Any) -> Any:
    """A DSPy value (an ``Example``, a ``Prediction``, a pydantic model, numpy scalars)
    as the JSON-like value a ``list`` or ``dict`` variable stores; anything else becomes
    its ``str``.

    >>> plain(dspy.Example(question="2 + 2?", answer="4", augmented=True))
    {'question': '2 + 2?', 'answer': '4', 'augmented': True}
    >>> plain({"n": np.int64(3), "x": float("nan"), "t": (1, 2)})
    {'n': 3, 'x': 'nan', 't': [1, 2]}
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "toDict"):
        return plain(value.toDict())
    if hasattr(value, "model_dump"):
        return plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


_ABSENT: Any = object()


async def _existing(
    session: SessionContext, names: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """name -> description of the variables that exist (read from the server: system
    fields such as ``type`` and ``constraints``, the user's under ``'metadata'``), None for
    the others."""
    found = await session.get_variables(
        list(names), defaults=dict.fromkeys(names, _ABSENT), include_metadata=True
    )
    return {
        name: None if entry is _ABSENT else entry for name, entry in found.items()
    }


def _check_type(name: str, metadata: Mapping[str, Any], expected: str, why: str) -> None:
    if metadata["type"] != expected:
        raise VariableTypeError(
            f"variable {name!r} exists with type {metadata['type']}, but {why} needs a "
            f"{expected} variable"
        )


# ---------------------------------------------------------------------- live binding


def _clash(parameter: _Parameter, owner: str, shape: str, module: str = "") -> str:
    of = f" of a {module}" if module else ""
    return (
        f"variable {parameter.variable!r} is the {parameter.setting} of predictor {owner!r}"
        f"{of} ({shape}); predictor {parameter.predictor_name!r} here is "
        f"{_shape(parameter.predictor)}, so it cannot share it: sync it with another "
        "variable_prefix (variable_prefix='<name>.')"
    )


def _setting_spec(parameter: _Parameter, module_name: str) -> dict[str, Any]:
    """The registration of a new setting variable, at what the predictor's next request
    would use, or at the setting's stand-in (marked ``stand_in``)."""
    setting = LM_SETTINGS[parameter.setting]
    value, own = _current_setting(parameter.predictor, parameter.setting)
    metadata: dict[str, Any] = {
        "source": "dspex_rx.dspy", "module": module_name,
        "predictor": parameter.predictor_name, "setting": parameter.setting,
        "signature": _shape(parameter.predictor),
    }
    description = (f"{parameter.setting} of predictor {parameter.predictor_name!r} of a "
                   f"{module_name}, bound live")
    if not own:
        metadata["stand_in"] = True
        description += (f"; {value!r} is a stand-in (the predictor did not set it), "
                        "applied once the variable is written")
    return {"name": parameter.variable, "type": setting.type, "initial_value": value,
            "constraints": dict(setting.constraints), "metadata": metadata,
            "description": description}


def _check_synced(parameter: _Parameter, metadata: Mapping[str, Any]) -> None:
    """An existing variable may bind ``parameter``: its type fits and, if a sync
    registered it, for a predictor of the same shape (copies of one program share)."""
    setting = parameter.setting
    _check_type(parameter.variable, metadata, LM_SETTINGS[setting].type,
                f"the DSPy setting {setting!r}")
    user = metadata["metadata"]
    shape = user.get("signature")
    if (user.get("source") == "dspex_rx.dspy" and isinstance(shape, str)
            and shape != _shape(parameter.predictor)):
        raise InvalidValueError(_clash(parameter, str(user.get("predictor")), shape,
                                       str(user.get("module") or "")))


class _AfterStep(trio.abc.Instrument):
    """Runs callbacks once one trio task's current step ends, before any other task runs.

    The watch stream's dispatcher delivers the events of one commit one by one, each in
    its own observer call; deferring to the end of its step lets a predictor take all of
    them in one swap, still before any task they wake (one awaiting ``session.sync()``)
    runs."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.callbacks: dict[int, Callable[[], None]] = {}

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.task:
            return
        trio.lowlevel.remove_instrument(self)
        _AFTER_STEP.pop(task, None)
        for callback in self.callbacks.values():
            try:
                callback()
            except Exception:
                log.exception("dspy_binding_apply_failed")


_AFTER_STEP: dict[trio.lowlevel.Task, _AfterStep] = {}


def _after_this_step(key: int, callback: Callable[[], None]) -> None:
    """Call ``callback`` when the current trio task's step ends (once per ``key``); at
    once outside trio."""
    try:
        task = trio.lowlevel.current_task()
    except RuntimeError:
        callback()
        return
    pending = _AFTER_STEP.get(task)
    if pending is None:
        pending = _AFTER_STEP[task] = _AfterStep(task)
        trio.lowlevel.add_instrument(pending)
    pending.callbacks[key] = callback


class _Target:
    """One predictor's bound settings. Its bindings stage the changes they receive; they
    reach the predictor together when the trio step that delivered them ends, so the
    settings of one commit (one atomic ``update_variables``) never reach a call half
    applied. ``config`` is replaced by a new dict (one assignment), never mutated: DSPy
    reads it once when a step starts. ``instructions`` lives in the signature, a second
    attribute, replaced just before."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.staged: dict[str, Any] = {}

    def stage(self, setting: str, value: Any) -> None:
        self.staged[setting] = value
        _after_this_step(id(self), self.apply)

    def apply(self) -> None:
        staged, self.staged = self.staged, {}
        predictor = self.predictor
        instructions = staged.pop("instructions", _ABSENT)
        if instructions is not _ABSENT and predictor.signature.instructions != instructions:
            predictor.signature = predictor.signature.with_instructions(instructions)
        changed = {key: value for key, value in staged.items()
                   if predictor.config.get(key, _ABSENT) != value}
        if changed:
            predictor.config = {**predictor.config, **changed}


class _Binding:
    """One predictor setting following one variable; the predictor's ``_Target`` applies
    what it receives. Versions up to ``stand_in`` hold a stand-in value (the variable was
    registered for a predictor that did not set the setting): never applied."""

    def __init__(self, parameter: _Parameter, target: _Target, stand_in: int = 0) -> None:
        self.parameter = parameter
        self.target = target
        self.stand_in = stand_in
        self.active = True
        self.disposable: rx_abc.DisposableBase | None = None

    def apply(self, update: VariableUpdate) -> None:
        if not self.active:
            return
        if update.update_type == "deleted":
            self.end("deleted")
            return
        if update.version <= self.stand_in:
            return
        self.target.stage(self.parameter.setting, update.value)

    def end(self, reason: str = "ended") -> None:
        if self.active:
            self.active = False
            log.debug("dspy_binding_ended", variable=self.parameter.variable, reason=reason)

    def fail(self, error: Exception) -> None:
        self.active = False
        log.warning("dspy_binding_failed", variable=self.parameter.variable, error=str(error))

    def dispose(self) -> None:
        self.end("disposed")
        if self.disposable is not None:
            self.disposable.dispose()


# ----------------------------------------------------------------- optimization bridge


@dataclass
class CompileRun:
    """What one variable-aware compile did: ``run_id``, the optimizer, the ``settings`` it
    ran with, the ``optimization_ids`` of the leases it held (variable -> id), the demos it
    wrote (predictor -> list of dicts), the ``score`` (0-100, None without metric and
    devset), the result ``variables`` it wrote (``demos.<predictor>``, ``score`` (NaN for
    an unscored run that found one), ``settings`` -> variable name) and the wall time.

    Example::

        compiled = await optimizer.compile(program, trainset=trainset)
        print(optimizer.last_run.run_id, optimizer.last_run.score)
    """

    run_id: str
    optimizer: str
    settings: dict[str, Any]
    optimization_ids: dict[str, str]
    demos: dict[str, list[Any]]
    score: float | None
    variables: dict[str, str]
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


@portal_aware
class VariableAwareOptimizer:
    """A DSPy optimizer whose settings come from variables and whose results go back to
    variables. Made by ``DSPyOptimizationBridge.create_variable_aware_optimizer``.

    ``await compile(student, trainset=..., devset=None, metric=None, teacher=None, **kw)``:

    1. registers the result variables that do not exist yet (``<prefix>demos.<predictor>``
       lists, ``hops[0]`` named ``demos.hops.0``; ``<prefix>score`` float 0-100 (NaN
       until scored); ``<prefix>settings`` dict);
    2. takes an optimization lease on every mapped variable and on ``<prefix>settings``
       (nobody else can write them until the run ends), then reads the mapped values;
    3. builds the DSPy optimizer from ``kwargs`` plus the mapped arguments; a mapped
       ``teacher_<setting>`` becomes ``teacher_settings['lm'] = lm.copy(<setting>=value)``
       (``lm``: ``teacher_settings['lm']``, else the current LM, else the teacher's own),
       is dropped from the teacher's per-predictor ``config`` (which would win over the
       LM), and a teacher predictor with its own LM (``set_lm``, a compiled teacher) gets
       ``predictor.lm.copy(<setting>=value)``, so every teacher request carries it;
    4. compiles in a worker thread, then, with ``metric`` and ``devset``, scores the
       result with ``dspy.Evaluate`` (0-100);
    5. renews every lease (a lease stopped or expired meanwhile raises
       ``OptimizationLockedError`` and nothing is written), then writes the demos per
       predictor and the score in one atomic batch whose metadata names the run
       (``dspy_run``, ``optimizer``, ``optimization_ids``); an unscored run writes NaN
       to an existing ``<prefix>score``, so no earlier run's score stays beside its demos;
    6. on each leased variable records iteration 1 (value: the setting used, or the
       settings dict; metrics: ``score`` or, unscored, ``demos`` as the target, plus
       ``demos``, ``seconds``, ``run_id`` and, for random search, ``candidates`` and
       ``best_candidate_score``) and finishes the lease writing that value as final, the
       commit's metadata naming the run too. So
       ``get_optimization_history('<prefix>settings')`` lists every compile run, and
       the history of a mapped variable lists the runs that used it.

    A failing or cancelled compile releases the leases as ``failed`` and writes no
    results.

    Example::

        optimizer = await bridge.create_variable_aware_optimizer(
            dspy.BootstrapFewShot, variable_mappings={"teacher_temperature": "temperature",
                                                      "max_bootstrapped_demos": "max_demos"},
            metric=exact)
        compiled = await optimizer.compile(dspy.ChainOfThought("question -> answer"),
                                           trainset=trainset, devset=devset)
    """

    def __init__(
        self,
        session: SessionContext,
        optimizer_class: type[Any],
        variable_mappings: Mapping[str, str],
        kwargs: Mapping[str, Any],
        result_prefix: str,
        lease_ttl: float | None,
    ) -> None:
        self.session = session
        self.optimizer_class = optimizer_class
        self.variable_mappings = dict(variable_mappings)
        self.kwargs = dict(kwargs)
        self.result_prefix = result_prefix
        self.lease_ttl = lease_ttl
        self.last_run: CompileRun | None = None
        self._arguments, self._teacher_settings = _split_mappings(
            optimizer_class, self.variable_mappings, self.kwargs
        )

    def result_variables(self, student: Any, scoring: bool = True) -> dict[str, str]:
        """The result variables a compile of ``student`` writes: ``demos.<predictor>``,
        ``score`` (when ``scoring``) and ``settings`` -> variable name.

        Example::

            optimizer.result_variables(dspy.ChainOfThought("question -> answer"))
            # {'demos.predict': 'dspy.demos.predict', 'score': 'dspy.score',
            #  'settings': 'dspy.settings'}
            # A list of predictors: {'demos.hops[0]': 'dspy.demos.hops.0', ...}
        """
        names = {
            f"demos.{name}": f"{self.result_prefix}demos.{part}"
            for name, part, _ in _predictor_parts(student)
        }
        if scoring:
            names["score"] = f"{self.result_prefix}score"
        names["settings"] = f"{self.result_prefix}settings"
        return names

    async def compile(
        self,
        student: Any,
        *,
        trainset: Sequence[Any],
        devset: Sequence[Any] | None = None,
        metric: Callable[..., Any] | None = None,
        teacher: Any = None,
        **compile_kwargs: Any,
    ) -> Any:
        """Compile ``student`` with settings read from the mapped variables; returns the
        compiled program and sets ``last_run`` (see the class docstring for each step).

        ``metric`` defaults to the optimizer's ``metric`` argument; with ``devset`` the
        result is scored. Other keyword arguments go to the DSPy optimizer's ``compile``
        (``valset=`` for random search).

        Example::

            compiled = await optimizer.compile(program, trainset=trainset, devset=devset)
            await session.get_variable("dspy.demos.predict")   # the demos, as dicts
        """
        session = self.session
        metric = metric if metric is not None else self.kwargs.get("metric")
        scoring = metric is not None and devset is not None
        optimizer_name = self.optimizer_class.__name__
        run_id = "dspy_" + secrets.token_hex(6)
        names = self.result_variables(student, scoring)
        clash = sorted(set(names.values()) & set(self.variable_mappings.values()))
        if clash:
            raise InvalidValueError(
                f"variable(s) {', '.join(map(repr, clash))} hold this run's results; they "
                "cannot also be mapped inputs (choose another result_prefix)"
            )
        await self._ensure_results(names)
        # An unscored run writes NaN over the last run's score: a number left there would
        # describe demos that are gone.
        stale_score = None if scoring else await self._stale_score()

        started = time.perf_counter()
        config = {"metric": "score" if scoring else "demos", "mode": "max",
                  "run_id": run_id, "optimizer": optimizer_name}
        inputs = list(dict.fromkeys(self.variable_mappings.values()))
        leased = [*inputs, names["settings"]]
        async with contextlib.AsyncExitStack() as stack:
            leases = {}
            for variable in leased:
                leases[variable] = await stack.enter_async_context(
                    session.optimization_lease(
                        variable, f"dspy.{optimizer_name}", config, max_iterations=1,
                        lease_ttl=self.lease_ttl,
                    )
                )
            # Read under the leases, so the settings used are the settings recorded (nobody
            # can change them until the run ends), and from the server, not the cache: an
            # unwatched entry may predate another connection's write just before the lease.
            read = await session.get_variables(inputs, include_metadata=True) if inputs else {}
            current = {name: entry["value"] for name, entry in read.items()}
            values = {key: current[var] for key, var in self.variable_mappings.items()}
            optimizer, teacher_program = self._build(values, student, teacher)
            settings = {"optimizer": optimizer_name, "run_id": run_id,
                        **{k: plain(v) for k, v in self.kwargs.items() if _is_setting(v)},
                        **{k: plain(v) for k, v in values.items()}}
            log.info("dspy_compile_started", run_id=run_id, optimizer=optimizer_name,
                     settings=settings)

            compiled, score = await run_in_thread(
                _compile_and_score, optimizer, student, teacher_program, trainset,
                devset if scoring else None, metric, compile_kwargs,
            )
            demos = {name: [plain(d) for d in predictor.demos]
                     for name, predictor in compiled.named_predictors()}
            candidates = getattr(compiled, "candidate_programs", None) or []
            if candidates:
                best = candidates[0]
                settings["chosen_candidate"] = {"seed": plain(best.get("seed")),
                                                "score": plain(best.get("score"))}
            seconds = time.perf_counter() - started

            optimization_ids = {v: lease.optimization_id for v, lease in leases.items()}
            updates: dict[str, Any] = {names[f"demos.{p}"]: d for p, d in demos.items()
                                       if f"demos.{p}" in names}
            if score is not None:
                updates[names["score"]] = score
            elif stale_score is not None:
                names["score"] = stale_score
                updates[stale_score] = math.nan
            run_metadata = {"dspy_run": run_id, "optimizer": optimizer_name,
                            "optimization_ids": optimization_ids, "source": "dspex_rx.dspy"}
            # A lease stopped (or expired) while DSPy ran ended the run: its results must
            # not be published. The batch is guarded by every lease of the run, checked by
            # the server in the same step as the write.
            await _still_held(leases.values(), run_id)
            results = await session.update_variables(
                updates, metadata=run_metadata, require_leases=list(leases.values())
            )
            refused = {name: error for name, error in results.items() if error is not True}
            if refused:
                raise InvalidValueError(f"dspy run {run_id}: results refused: {refused}")

            metrics: dict[str, Any] = {"demos": sum(len(d) for d in demos.values()),
                                       "seconds": round(seconds, 6), "run_id": run_id}
            if score is not None:
                metrics["score"] = score
            if candidates:
                metrics["candidates"] = len(candidates)
                metrics["best_candidate_score"] = float(candidates[0]["score"])
            reason = f"dspy run {run_id}: {optimizer_name} compiled in {seconds:.2f}s"
            for variable, lease in leases.items():
                used = settings if variable == names["settings"] else current[variable]
                await lease.record(1, used, metrics)
                await lease.finish(used, write_final=True, reason=reason, metadata=run_metadata)
        self.last_run = CompileRun(
            run_id=run_id, optimizer=optimizer_name, settings=settings,
            optimization_ids=optimization_ids, demos=demos,
            score=score,
            variables=names, seconds=seconds, metrics=metrics,
        )
        log.info("dspy_compile_finished", run_id=run_id, optimizer=optimizer_name,
                 score=self.last_run.score, demos=metrics["demos"])
        return compiled

    async def _ensure_results(self, names: Mapping[str, str]) -> None:
        kinds = {"score": "float", "settings": "dict"}
        expected = {variable: kinds.get(role, "list") for role, variable in names.items()}
        existing = await _existing(self.session, list(expected))
        specs = []
        for role, variable in names.items():
            metadata = existing[variable]
            if metadata is not None:
                _check_type(variable, metadata, expected[variable], f"the DSPy result {role!r}")
                continue
            spec: dict[str, Any] = {"name": variable, "type": expected[variable],
                                    "metadata": {"source": "dspex_rx.dspy", "role": role}}
            if role == "score":
                # NaN until a run is scored: an honest "not measured", not a 0.
                spec.update(initial_value=math.nan, description="dspy.Evaluate score (0-100) "
                            "of the last variable-aware compile",
                            constraints={"min": 0.0, "max": 100.0, "allow_nan": True})
            elif role == "settings":
                spec.update(initial_value={}, description="the settings of the last "
                            "variable-aware compile; its optimization history lists every run")
            else:
                spec.update(initial_value=[], description=f"few-shot demos of predictor "
                            f"{role.split('.', 1)[1]!r}, written by the last compile")
            specs.append(spec)
        if specs:
            try:
                await self.session.register_variables(specs)
            except AlreadyExistsError:
                # Another client registered them meanwhile: fine if the types agree.
                again = await _existing(self.session, [s["name"] for s in specs])
                for spec in specs:
                    found = again[spec["name"]]
                    if found is None:
                        raise
                    _check_type(spec["name"], found, spec["type"], "a DSPy result")

    async def _stale_score(self) -> str | None:
        """``<prefix>score`` when it exists (an earlier run's score), else None; refuses
        one that cannot hold NaN, the "not scored" mark."""
        name = f"{self.result_prefix}score"
        metadata = (await _existing(self.session, [name]))[name]
        if metadata is None:
            return None
        _check_type(name, metadata, "float", "the DSPy result 'score'")
        if not (metadata.get("constraints") or {}).get("allow_nan", False):
            raise InvalidValueError(
                f"variable {name!r} holds an earlier run's score, and this run is not "
                "scored (no metric or no devset); it must allow NaN (constraint allow_nan) "
                "to say so: pass a devset, or choose another result_prefix"
            )
        return name

    def _build(self, values: Mapping[str, Any], student: Any, teacher: Any) -> tuple[Any, Any]:
        kwargs = dict(self.kwargs)
        kwargs.update({key: values[key] for key in self._arguments})
        teacher_lm = {self._teacher_settings[key]: values[key] for key in self._teacher_settings}
        teacher_program = teacher
        if teacher_lm:
            teacher_program = (teacher if teacher is not None else student).deepcopy()
            predictors = [predictor for _, predictor in teacher_program.named_predictors()]
            own = [predictor.lm for predictor in predictors if predictor.lm is not None]
            teacher_settings = dict(kwargs.get("teacher_settings") or {})
            base = teacher_settings.get("lm") or dspy.settings.lm
            if base is None and own and len(own) == len(predictors):
                base = own[0]  # every predictor has its own LM (program.set_lm(lm))
            if base is None:
                raise InvalidValueError(
                    f"{', '.join(sorted(self._teacher_settings))}: there is no LM to set it "
                    "on; enter dspy.context(lm=...) around compile, or pass "
                    "teacher_settings={'lm': ...}"
                )
            teacher_settings["lm"] = base.copy(**teacher_lm)
            kwargs["teacher_settings"] = teacher_settings
            for predictor in predictors:
                # A predictor's config wins over its LM's kwargs: drop the mapped settings
                # from the teacher's copy, or the student's own values would mask them.
                predictor.config = {k: v for k, v in predictor.config.items()
                                    if k not in teacher_lm}
                # And a predictor's own LM (set_lm, a compiled teacher) wins over
                # teacher_settings['lm']: give it the mapped settings too.
                if predictor.lm is not None:
                    predictor.lm = predictor.lm.copy(**teacher_lm)
        return self.optimizer_class(**kwargs), teacher_program


async def _still_held(leases: Iterable[HeldLease], run_id: str) -> None:
    """Renew every lease (one fenced step each); raises ``OptimizationLockedError`` when
    one was stopped or expired."""
    for lease in leases:
        if lease.revoked is None:
            try:
                await lease.step(None, None, 0)
            except Exception:
                if lease.revoked is None:
                    raise
        if lease.revoked is not None:
            raise OptimizationLockedError(
                f"dspy run {run_id}: the lease on {lease.variable!r} ended while DSPy ran "
                f"({lease.revoked}); no result was written",
                optimization_id=lease.optimization_id,
            )


def _is_setting(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _split_mappings(
    optimizer_class: type[Any], mappings: Mapping[str, str], kwargs: Mapping[str, Any]
) -> tuple[list[str], dict[str, str]]:
    """(optimizer arguments, {mapping key: teacher LM setting}) of the mappings; refuses
    keys that are neither, and clashes with fixed keyword arguments."""
    if not callable(getattr(optimizer_class, "compile", None)):
        raise InvalidValueError(f"{optimizer_class!r} is not a DSPy optimizer (no compile)")
    init = inspect.signature(optimizer_class.__init__)
    parameters = dict(list(init.parameters.items())[1:])  # without self
    try:
        init.bind_partial(None, **kwargs)
    except TypeError as exc:
        raise InvalidValueError(f"{optimizer_class.__name__}: {exc}") from None
    arguments, teacher = [], {}
    for key, variable in mappings.items():
        if not isinstance(variable, str) or not variable:
            raise InvalidValueError(f"mapping {key!r}: the variable must be a name, "
                                    f"got {variable!r}")
        if key in kwargs:
            raise InvalidValueError(f"{key!r} is both mapped to variable {variable!r} and "
                                    "passed as a fixed argument; pick one")
        if key in parameters and parameters[key].kind is not inspect.Parameter.VAR_KEYWORD:
            arguments.append(key)
        elif key.startswith("teacher_") and key != "teacher_settings":
            if "teacher_settings" not in parameters:
                raise InvalidValueError(f"{optimizer_class.__name__} takes no teacher_settings, "
                                        f"so {key!r} cannot be mapped")
            teacher[key] = key[len("teacher_"):]
        else:
            known = ", ".join(p for p in parameters if p not in ("self", "metric"))
            raise InvalidValueError(
                f"mapping {key!r}: not an argument of {optimizer_class.__name__} ({known}) "
                "nor a teacher LM setting (teacher_temperature, teacher_max_tokens, ...)"
            )
    return arguments, teacher


def _compile_and_score(
    optimizer: Any, student: Any, teacher: Any, trainset: Sequence[Any],
    devset: Sequence[Any] | None, metric: Callable[..., Any] | None,
    compile_kwargs: Mapping[str, Any],
) -> tuple[Any, float | None]:
    # Runs in a worker thread: DSPy's compile and Evaluate are synchronous.
    kwargs = dict(compile_kwargs)
    if teacher is not None:
        kwargs["teacher"] = teacher
    compiled = optimizer.compile(student, trainset=list(trainset), **kwargs)
    if devset is None:
        return compiled, None
    result = dspy.Evaluate(devset=list(devset), metric=metric, display_progress=False)(compiled)
    return compiled, float(result.score)


@portal_aware
class DSPyOptimizationBridge:
    """Connects DSPy programs to a session's variables: optimizers that read their
    settings from variables and write their results back, and predictor settings bound
    live to variables.

    Example::

        bridge = DSPyOptimizationBridge(session)
        ids = await bridge.sync_dspy_parameters(dspy.ChainOfThought("question -> answer"))
        optimizer = await bridge.create_variable_aware_optimizer(
            dspy.BootstrapFewShot, variable_mappings={"teacher_temperature": "temperature"},
            metric=exact)
    """

    def __init__(self, session: SessionContext) -> None:
        self.session = session
        self._bindings: list[_Binding] = []

    @property
    def session_context(self) -> SessionContext:
        """The session this bridge works in (the spec's name; the same object as
        ``session``).

        Example::

            assert DSPyOptimizationBridge(session).session_context is session
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

        Example::

            optimizer = await bridge.create_variable_aware_optimizer(
                dspy.BootstrapFewShot,
                variable_mappings={"teacher_temperature": "temperature",
                                   "max_bootstrapped_demos": "max_demos"},
                metric=lambda example, prediction, trace=None: example.answer == prediction.answer)
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

        Example::

            cot = dspy.ChainOfThought("question -> answer")
            ids = await bridge.sync_dspy_parameters(cot, variable_prefix="cot_")
            # {'cot_temperature': 'var_...', 'cot_max_tokens': ..., 'cot_instructions': ...}
            await other_connection.set_variable("cot_temperature", 0.2)
            await session.sync()
            cot(question="...")      # the request carries temperature 0.2
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

        Example::

            bridge.unbind_dspy_parameters(cot)
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

        Example::

            assert "cot_temperature" in bridge.bound_variables()
        """
        return [b.parameter.variable for b in self._bindings if b.active]


# -------------------------------------------------------------------- module resolver


BUILTIN_MODULES = ("Predict", "ChainOfThought", "ReAct", "ProgramOfThought")


@portal_aware
class VariableModule:
    """A DSPy module whose class is the current value of a ``module`` variable. Made by
    ``ModuleVariableResolver.create_module``.

    ``await forward(**inputs)`` reads the variable (a local read: it is watched, so the
    pushed value, and this connection's own writes at once), builds the class's instance
    the first time (one instance per class, kept, so demos and bound settings stay with
    it, until ``register_module`` replaces that class) and runs it in a worker thread.
    ``last_class`` names the class of the last call.

    Example::

        qa = await resolver.create_module("reasoning_strategy", "question -> answer")
        prediction = await qa.forward(question="Why is the sky blue?")
        print(qa.last_class, prediction.answer)
    """

    def __init__(
        self,
        resolver: ModuleVariableResolver,
        variable: str,
        signature: Any,
        kwargs: Mapping[str, Any],
        config: Mapping[str, Any],
    ) -> None:
        self.resolver = resolver
        self.variable = variable
        self.signature = signature
        self.kwargs = dict(kwargs)
        self.config = dict(config)
        self.instances: dict[str, Any] = {}
        self.last_class: str | None = None
        self.closed: str | None = None  # why the watch ended, once it has
        self.disposable: rx_abc.DisposableBase | None = None

    async def current_class(self) -> str:
        """The class name the variable holds now.

        Example::

            assert await qa.current_class() == "ChainOfThought"
        """
        if self.closed is not None:
            raise RuntimeError(f"module variable {self.variable!r}: {self.closed}")
        return str(await self.resolver.session.get_variable(self.variable))

    async def module(self) -> Any:
        """The DSPy module instance for the variable's current class.

        Example::

            cot = await qa.module()
            await bridge.sync_dspy_parameters(cot)
        """
        return self.instance(await self.current_class())

    def instance(self, class_name: str) -> Any:
        """The (kept) instance of ``class_name``, built on first use. Building checks
        what the class needs first: its required arguments (ReAct's ``tools``) and, for a
        class that runs generated code (ProgramOfThought), an interpreter; without them
        it raises ``ValueError`` naming the variable, the class and what is missing.

        Example::

            predict = qa.instance("Predict")
        """
        name = _canonical(class_name)
        if name not in self.instances:
            cls = self.resolver.resolve(name)
            _check_arguments(self.variable, name, cls, self.kwargs)
            _check_interpreter(self.variable, name, cls, self.kwargs)
            module = cls(self.signature, **_accepted(cls, self.kwargs))
            if self.config:
                for _, predictor in module.named_predictors():
                    predictor.update_config(**self.config)
            self.instances[name] = module
            log.debug("dspy_module_built", variable=self.variable, module=name)
        return self.instances[name]

    async def forward(self, **inputs: Any) -> Any:
        """Run the current class's module on ``inputs`` (in a worker thread); returns its
        ``dspy.Prediction``.

        Example::

            prediction = await qa.forward(question="What is 2 + 2?")
        """
        name = _canonical(await self.current_class())
        module = self.instance(name)
        self.last_class = name
        return await run_in_thread(module, **inputs)

    __call__ = forward

    def _end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason

    def _on_update(self, update: VariableUpdate) -> None:
        if update.update_type == "deleted":
            self._end("the variable was deleted")

    def close(self) -> None:
        """Stop watching the variable; ``forward`` then raises ``RuntimeError``.

        Example::

            qa.close()
        """
        self._end("closed")
        if self.disposable is not None:
            self.disposable.dispose()


def _canonical(name: str) -> str:
    return name[len("dspy."):] if name.startswith("dspy.") else name


def _init_parameters(cls: type[Any]) -> dict[str, inspect.Parameter]:
    # The constructor's own keywords after (self, signature). inspect.signature(cls) would
    # show DSPy's metaclass (*args, **kwargs) instead.
    return {
        name: p for name, p in list(inspect.signature(cls.__init__).parameters.items())[2:]
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


def _check_arguments(variable: str, name: str, cls: type[Any], kwargs: Mapping[str, Any]) -> None:
    missing = [p for p, spec in _init_parameters(cls).items()
               if spec.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        needs = ", ".join(f"{p}=" for p in missing)
        raise InvalidValueError(
            f"module variable {variable!r} chose {name}, and {name} cannot be created "
            f"without {needs}: pass {needs}... to create_module({variable!r}, ...)"
        )


def _deno_found() -> bool:
    # Where DSPy's PythonInterpreter looks: the `deno` package's binary, else the PATH.
    try:
        find_deno_bin = importlib.import_module("deno").find_deno_bin
        return bool(find_deno_bin())
    except (ImportError, AttributeError, FileNotFoundError):
        return shutil.which("deno") is not None


def _check_interpreter(
    variable: str, name: str, cls: type[Any], kwargs: Mapping[str, Any]
) -> None:
    """A class that runs generated code (ProgramOfThought takes ``interpreter_factory``)
    gets an interpreter it can start: one passed to create_module, one configured in
    DSPy (``dspy.configure`` / ``dspy.context(interpreter_factory=...)``), or DSPy's
    default, which needs Deno. Without any, DSPy would fail only inside the first call,
    after a request to the LM."""
    if "interpreter_factory" not in _init_parameters(cls):
        return
    given = kwargs.get("interpreter_factory")
    if given is not None and given is not dspy.PythonInterpreter:
        return
    if dspy.settings.get("interpreter_factory") is not None or _deno_found():
        return
    raise InvalidValueError(
        f"module variable {variable!r} chose {name}, which runs the code it generates in "
        "DSPy's PythonInterpreter, and that needs Deno, which is not installed "
        "(pip install 'dspy[deno]'); or pass interpreter_factory=dspy.LocalInterpreter to "
        f"create_module({variable!r}, ...) (a local subprocess with your rights, not a "
        "sandbox)"
    )


def _accepted(cls: type[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    # Predict and ChainOfThought take **config as LM settings: a ReAct-only keyword such as
    # tools= must not reach them, or it would be sent with every request.
    names = _init_parameters(cls)
    return {key: value for key, value in kwargs.items() if key in names}


@portal_aware
class ModuleVariableResolver:
    """Makes DSPy modules whose class is chosen by a ``module`` variable: ``Predict``,
    ``ChainOfThought``, ``ReAct`` (needs ``tools=``), ``ProgramOfThought`` (deprecated in
    DSPy 3.4; needs Deno, or ``interpreter_factory=dspy.LocalInterpreter``, which runs the
    generated code in a local subprocess with your user's rights: not a sandbox), and
    classes added with ``register_module``. What a class needs is asked for only when it
    is created: a variable may offer ReAct to a program that never passes ``tools=``.

    Example::

        resolver = ModuleVariableResolver(session)
        await session.register_variable("strategy", "module", "Predict", constraints={
            "choices": ["Predict", "ChainOfThought", "ReAct", "ProgramOfThought"]})
        qa = await resolver.create_module("strategy", "question -> answer")
        await qa.forward(question="What is 2 + 2?")      # a Predict answers
    """

    def __init__(self, session: SessionContext) -> None:
        self.session = session
        self.modules: dict[str, type[Any]] = {
            name: getattr(dspy, name) for name in BUILTIN_MODULES
        }
        self.created: list[VariableModule] = []

    def register_module(self, name: str, module_class: type[Any]) -> None:
        """Make a ``dspy.Module`` subclass choosable by ``name``; its constructor takes the
        signature first. Registering a name again replaces its class: modules made here
        drop their instance of the old class and build the new one on their next call.

        Example::

            resolver.register_module("MajorityVote", MajorityVote)
        """
        if not (isinstance(module_class, type) and issubclass(module_class, dspy.Module)):
            raise InvalidValueError(f"module {name!r}: {module_class!r} is not a dspy.Module "
                                    "subclass")
        if name in BUILTIN_MODULES:
            raise InvalidValueError(f"module {name!r} is built in and cannot be replaced")
        replaced = self.modules.get(name)
        self.modules[name] = module_class
        if replaced is not None and replaced is not module_class:
            for module in self.created:
                module.instances.pop(name, None)

    def resolve(self, name: str) -> type[Any]:
        """The class for a module name (``'ChainOfThought'`` or ``'dspy.ChainOfThought'``).

        Example::

            assert resolver.resolve("ChainOfThought") is dspy.ChainOfThought
        """
        found = self.modules.get(_canonical(name))
        if found is None:
            raise InvalidValueError(
                f"module {name!r} is not known here (known: {', '.join(sorted(self.modules))});"
                " register it with ModuleVariableResolver.register_module"
            )
        return found

    async def create_module(
        self,
        variable: str,
        signature: Any,
        *,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> VariableModule:
        """A ``VariableModule`` following ``variable`` (a ``module`` variable that exists).

        ``kwargs`` go to each class whose constructor names them (``tools=`` and
        ``max_iters=`` to ReAct, ``interpreter_factory=`` to ProgramOfThought); ``config``
        (LM settings such as ``temperature``) goes to every predictor of every class.
        Checked here, before any call: the variable exists (else
        ``VariableNotFoundError``) and has type ``module``; every listed choice (or,
        without ``choices``, the class it holds now) is a known class; every keyword
        goes to some possible class; the class the variable holds now gets its required
        arguments. Another class is checked when it is first created, which is when the
        variable first chooses it: a variable may offer ``ReAct`` while
        ``create_module`` gets no ``tools=``, and only a call made while it holds
        ``ReAct`` fails (``ValueError`` naming the variable, ReAct and ``tools=``).

        Example::

            qa = await resolver.create_module("strategy", "question -> answer",
                                              tools=[search], config={"temperature": 0.3})
        """
        found = await self.session.get_variables(
            [variable], defaults={variable: _ABSENT}, include_metadata=True
        )
        if found[variable] is _ABSENT:
            raise VariableNotFoundError(f"no module variable {variable!r}: register it first "
                                        "(type 'module', choices=[...])")
        metadata = found[variable]  # system fields: type, constraints
        _check_type(variable, metadata, "module", "ModuleVariableResolver")
        choices = (metadata.get("constraints") or {}).get("choices")
        current = _canonical(str(found[variable]["value"]))
        # Listed choices must all be known classes now (a typo is found before any call).
        # Only the current class is built next, so only its arguments must be here now:
        # the spec offers ReAct beside Predict to a program that has no tools for it.
        listed = list(choices) if choices else [current]
        classes = {_canonical(name): self.resolve(name) for name in listed}
        _check_arguments(variable, current, self.resolve(current), kwargs)
        possible = classes if choices else {**self.modules, **classes}
        accepted = {p for cls in possible.values() for p in _init_parameters(cls)}
        unused = sorted(set(kwargs) - accepted)
        if unused:
            raise InvalidValueError(
                f"module variable {variable!r}: no choice ({', '.join(possible)}) takes "
                f"{', '.join(unused)}; LM settings go in config={{...}}"
            )
        module = VariableModule(self, variable, signature, kwargs, config or {})
        # The watch keeps the variable's cache entry pushed (forward reads it locally) and
        # tells the module when the session closes or the variable goes.
        module.disposable = self.session.observe(variable).subscribe(
            on_next=module._on_update,
            on_error=lambda exc: module._end(f"its watch failed: {exc}"),
            on_completed=lambda: module._end("the session is closed"),
        )
        await self.session.sync()
        self.created.append(module)
        return module

