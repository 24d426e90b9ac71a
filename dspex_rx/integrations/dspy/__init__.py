"""DSPy integration: variable-aware optimizers and live parameter binding (extra ``dspy``).

Public as ``dspex_rx.dspy``; importing it without DSPy installed raises a clear ImportError.
"""

from dspex_rx.integrations.dspy.bridge import (
    LM_SETTINGS,
    CompileRun,
    DSPyOptimizationBridge,
    LMSetting,
    ModuleVariableResolver,
    VariableAwareOptimizer,
    VariableModule,
    default_prefix,
    parameter_variables,
    plain,
    run_in_thread,
    short_name,
)

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
