"""Which offset of a partition a worker may commit: at-least-once bookkeeping.

Tasks of one partition finish out of order (they run concurrently), but a
Kafka offset commit says "everything below this is done". So a partition
commits only up to its lowest offset that is still pending — received, but
its report (or dead letter) not yet acknowledged by Kafka. A worker that stops
or crashes leaves the pending ones uncommitted, and whoever owns the
partition next receives them again.
"""

from __future__ import annotations


class PartitionOffsets:
    """Offsets of one assigned partition, from assignment until revocation."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._next: int | None = None
        self._committed: int | None = None

    def received(self, offset: int) -> None:
        """A record at ``offset`` was fetched and is now being processed."""
        self._pending.add(offset)
        if self._next is None or offset >= self._next:
            self._next = offset + 1

    def done(self, offset: int) -> None:
        """The record at ``offset`` is finished: its outcome is durably in Kafka."""
        self._pending.discard(offset)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def committable(self) -> int | None:
        """The offset to commit (the next record to read), or None if nothing moved.

        Below the lowest pending offset every fetched record is done. With
        nothing pending, everything fetched so far is done (the offsets in
        between may be transaction markers, never delivered).
        """
        if self._next is None:
            return None
        target = min(self._pending) if self._pending else self._next
        if self._committed is not None and target <= self._committed:
            return None
        return target

    def committed(self, offset: int) -> None:
        """Kafka accepted the commit of ``offset``."""
        if self._committed is None or offset > self._committed:
            self._committed = offset
