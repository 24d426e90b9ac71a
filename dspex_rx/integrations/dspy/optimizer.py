"""The variable-aware optimizer: a DSPy optimizer whose settings come from variables and whose
results (demos, score, settings) go back to variables under optimization leases.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy

from dspex_rx.client.aio import portal_aware
from dspex_rx.errors import (
    AlreadyExistsError,
    InvalidValueError,
    OptimizationLockedError,
)
from dspex_rx.integrations.dspy.helpers import _check_type, _existing, plain, run_in_thread
from dspex_rx.integrations.dspy.parameters import _predictor_parts
from dspex_rx.logs import get_logger

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext
    from dspex_rx.client.optimization.run import HeldLease

log = get_logger("dspex_rx.dspy")

__all__ = [
    "CompileRun",
    "VariableAwareOptimizer",
]


@dataclass
class CompileRun:
    """What one variable-aware compile did: ``run_id``, the optimizer, the ``settings`` it
    ran with, the ``optimization_ids`` of the leases it held (variable -> id), the demos it
    wrote (predictor -> list of dicts), the ``score`` (0-100, None without metric and
    devset), the result ``variables`` it wrote (``demos.<predictor>``, ``score`` (NaN for
    an unscored run that found one), ``settings`` -> variable name) and the wall time.

    Example: after ``await optimizer.compile(program, trainset=trainset)``,
    ``optimizer.last_run.score`` is None (no metric and devset) and ``run_id`` names the run.
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

    Example: ``await optimizer.compile(dspy.ChainOfThought("question -> answer"),
    trainset=trainset, devset=devset)`` returns the compiled program.
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

        Example: for a ChainOfThought, ``optimizer.result_variables(cot)`` is
        ``{'demos.predict': 'dspy.demos.predict', 'score': 'dspy.score', 'settings':
        'dspy.settings'}``; a list of predictors gives ``'demos.hops[0]': 'dspy.demos.hops.0'``.
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

        Example: after ``await optimizer.compile(program, trainset=trainset)``,
        ``await session.get_variable("dspy.demos.predict")`` returns the demos, as dicts.
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
