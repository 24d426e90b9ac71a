"""The ``with_trio_scheduler`` operator: bind any observable to a ``TrioScheduler``."""

from __future__ import annotations

from typing import TypeVar

from reactivex import abc

from dspex_rx.rx.observable import TrioObservable
from dspex_rx.rx.scheduler import TrioScheduler

__all__ = ["with_trio_scheduler"]

_T = TypeVar("_T")


def with_trio_scheduler(
    source: abc.ObservableBase[_T], scheduler: TrioScheduler
) -> TrioObservable[_T]:
    """``source`` as a ``TrioObservable`` on ``scheduler`` (itself if already bound to it).

    >>> import trio
    >>> from reactivex.subject import Subject
    >>> from dspex_rx.rx.scheduler import open_trio_scheduler
    >>> async def main():
    ...     async with open_trio_scheduler() as scheduler:
    ...         subject = Subject()
    ...         bound = with_trio_scheduler(subject, scheduler)
    ...         print(bound.source is subject, with_trio_scheduler(bound, scheduler) is bound)
    >>> trio.run(main)
    True True
    """

    if isinstance(source, TrioObservable) and source.scheduler is scheduler:
        return source
    return TrioObservable(source, scheduler)

