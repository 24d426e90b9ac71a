"""Live binding of predictor settings to variables: the spec a setting variable is registered
with, and ``_Binding``/``_Target``, which apply a commit's changes to a predictor in one swap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from dspex_rx.errors import InvalidValueError
from dspex_rx.integrations.dspy.helpers import _ABSENT, _check_type
from dspex_rx.integrations.dspy.parameters import (
    LM_SETTINGS,
    _current_setting,
    _Parameter,
    _shape,
)
from dspex_rx.logs import get_logger

if TYPE_CHECKING:
    from reactivex import abc as rx_abc

    from dspex_rx.client.actors import VariableUpdate

log = get_logger("dspex_rx.dspy")


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
