"""DSPy integration: variable-aware optimizers and live parameter binding (extra ``dspy``).

Public as ``dspex_rx.dspy``; importing it without DSPy installed raises a clear ImportError.
Modules: ``bridge`` (DSPyOptimizationBridge), ``optimizer`` (VariableAwareOptimizer),
``binding`` (live settings), ``parameters`` (naming), ``resolver`` (module variables),
``helpers``. Imported only when DSPy is installed; ``import dspex_rx`` never imports it.
"""

from dspex_rx.errors import install_hint

# Checked here, before any module of the package imports DSPy, so the error says what to do.
try:
    import dspy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        f"dspex_rx.dspy needs DSPy (dspy>=3.4,<3.5): {install_hint('dspy')}"
    ) from exc

from dspex_rx.integrations.dspy.bridge import DSPyOptimizationBridge
from dspex_rx.integrations.dspy.helpers import plain, run_in_thread
from dspex_rx.integrations.dspy.optimizer import CompileRun, VariableAwareOptimizer
from dspex_rx.integrations.dspy.parameters import (
    LM_SETTINGS,
    LMSetting,
    default_prefix,
    parameter_variables,
    short_name,
)
from dspex_rx.integrations.dspy.resolver import (
    BUILTIN_MODULES,
    ModuleVariableResolver,
    VariableModule,
)

__all__ = [
    "BUILTIN_MODULES",
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
