"""What the next flush will carry, as far as a storage with limits on one write needs to
know (etcd: request bytes, txn operations), so writes wait for room instead of making a
flush the storage refuses.
"""

from __future__ import annotations

# What a flush writes beside its commits' own rows (the head, counters, session headers),
# kept free under a storage's limits; and a write's rows beyond 3 copies of its values.
FLUSH_SPARE_BYTES, FLUSH_SPARE_OPS = 64 * 1024, 8
COMMIT_BYTES = 4096


class FlushBudget:
    """The bytes and row operations of the commits since the last flush began, against
    the storage's limits (None: no limit); and the operations one commit takes (the
    largest lately, shrinking by one per commit), kept free for the next one.

    >>> budget = FlushBudget(max_bytes=300_000, max_ops=64)
    >>> budget.charge(values=30_000, ops=5)
    >>> budget.fits(30_000), budget.fits(50_000)
    (True, False)
    """

    def __init__(self, max_bytes: int | None = None, max_ops: int | None = None) -> None:
        self.max_bytes, self.max_ops = max_bytes, max_ops
        self.bytes = self.ops = 0
        self._reserve = FLUSH_SPARE_OPS

    @property
    def limited(self) -> bool:
        """Whether the storage takes writes of a bounded size.

        >>> FlushBudget().limited, FlushBudget(max_ops=128).limited
        (False, True)
        """
        return self.max_bytes is not None or self.max_ops is not None

    @property
    def empty(self) -> bool:
        """Whether nothing is charged since the last ``clear``.

        >>> FlushBudget().empty
        True
        """
        return not (self.bytes or self.ops)

    def charge(self, values: int, ops: int) -> None:
        """Count one commit: ``values`` bytes of values (written three times: record,
        history, log) and ``ops`` row operations.

        Example: ``budget.charge(values=8, ops=4)`` after a set of a float.
        """
        self.bytes += 3 * values + COMMIT_BYTES
        self.ops += ops
        self._reserve = max(ops, self._reserve - 1, FLUSH_SPARE_OPS)

    def fits(self, nbytes: int) -> bool:
        """Whether a write of a request of ``nbytes`` fits beside what is charged.

        >>> FlushBudget(max_bytes=100_000).fits(10_000)
        True
        """
        if self.max_bytes is not None and (
            self.bytes + 3 * nbytes + COMMIT_BYTES > self.max_bytes - FLUSH_SPARE_BYTES
        ):
            return False
        return self.max_ops is None or (
            self.ops + self._reserve <= self.max_ops - FLUSH_SPARE_OPS
        )

    def clear(self) -> None:
        """Forget what was charged (a flush took it, or it was undone).

        Example: ``budget.clear()`` as a flush collects its batch.
        """
        self.bytes = self.ops = 0
