"""Which variables hold a DSPy module's predictor settings: ``LM_SETTINGS``, the naming rule
(``short_name``, ``default_prefix``, ``parameter_variables``) and a predictor's current setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dspy

from dspex_rx.errors import InvalidValueError

__all__ = [
    "LM_SETTINGS",
    "LMSetting",
    "default_prefix",
    "parameter_variables",
    "short_name",
]


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

    >>> LM_SETTINGS["temperature"]
    LMSetting(type='float', constraints={'min': 0.0, 'max': 2.0}, default=0.7)
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
