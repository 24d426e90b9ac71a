"""Our ReactiveX operators, one per module (``throttle_latest``, ``with_trio_scheduler``).

Import them from ``dspex_rx.rx``; this package imports nothing, so an operator module may
build on ``dspex_rx.rx.observable`` without a cycle.
"""
