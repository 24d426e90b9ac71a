"""ReactiveX on trio: the scheduler, trio-aware observables and our operators.

Import from here: ``scheduler`` (TrioScheduler), ``observable`` (TrioObservable),
``operators/`` (one operator per module).
"""

from dspex_rx.rx.observable import TrioObservable
from dspex_rx.rx.operators.throttle_latest import throttle_latest
from dspex_rx.rx.operators.with_trio_scheduler import with_trio_scheduler
from dspex_rx.rx.scheduler import TrioScheduler, open_trio_scheduler

__all__ = [
    "TrioObservable",
    "TrioScheduler",
    "open_trio_scheduler",
    "throttle_latest",
    "with_trio_scheduler",
]
