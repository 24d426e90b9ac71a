"""What a durable backend tells the writers of a flush its storage did not take: refused
(nothing of it was kept), or unanswered (a timeout after it was sent: kept or not).
"""

from __future__ import annotations

from dspex_rx.errors import StorageError


class OutcomeUnknown(StorageError):
    """The storage did not say whether it took a write it was sent (its answer timed out
    or the connection dropped): the write may be stored or not.

    >>> isinstance(OutcomeUnknown("etcd did not answer in time"), StorageError)
    True
    """


def refusal(exc: BaseException, where: str, hint: str) -> str:
    """The message every writer of a flush that failed with ``exc`` gets; the live state
    has been (or will be, before anything more is shown) read back from ``where``.

    >>> refusal(OSError("disk full"), "the data file f", "")[:52]
    "the server's storage refused the write (disk full); "
    >>> "kept or not" in refusal(OutcomeUnknown("timeout"), "etcd at e", "")
    True
    """
    if isinstance(exc, OutcomeUnknown):
        # Not "nothing was kept": it may have been, and the read-back shows it if so.
        return (
            f"the server's storage did not say whether it took the write ({exc}): it may "
            f"have been kept or not; the state is read back from {where}, so reads show "
            f"whichever happened. Writes fail until {where} answers again{hint}"
        )
    return (
        f"the server's storage refused the write ({exc}); nothing of it was kept. "
        f"Reads go on; writes fail until {where} accepts them again{hint}"
    )
