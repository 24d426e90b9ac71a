"""ReactiveX on trio: the scheduler, trio-aware observables and our operators.

Import from here; one module per part.
"""

from dspex_rx.rx.observable import (
    TrioObservable,
    TrioScheduler,
    open_trio_scheduler,
    throttle_latest,
    with_trio_scheduler,
)

__all__ = [
    "TrioObservable",
    "TrioScheduler",
    "open_trio_scheduler",
    "throttle_latest",
    "with_trio_scheduler",
]
