"""``dspex_rx.dspy``: the public name of the DSPy integration (``integrations/dspy``).

Example: ``from dspex_rx.dspy import VariableAwareOptimizer``.
"""

from dspex_rx.integrations.dspy import *  # noqa: F403
from dspex_rx.integrations.dspy import __all__  # noqa: F401
