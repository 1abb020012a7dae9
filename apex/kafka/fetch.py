"""Plain Fetch requests for readers that know which offsets they want: the audit's
exact offsets (:mod:`apex.audit.offsets`) and the rebuild's scan of a partition
(:mod:`apex.projections.log_scan`).

aiokafka's consumer turns every record into a ``ConsumerRecord`` and prefetches
on its own; these readers walk the record batches of a response themselves, with
the committed (``read_committed``) consumer's semantics as aiokafka's fetcher
implements them: :class:`Committed` says which batches that consumer skips. The
consumer passed in lends its client (bootstrap, metadata, one connection per
broker); its fetcher is not used.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord

__all__ = ["Aborted", "Committed", "fetch"]

Aborted = list[tuple[int, int]] | None
"""A response's aborted transactions: ``(producer id, first offset)`` each."""

_READ_COMMITTED = 1
_RETRIES = 5
_RETRY_AFTER_S = 0.2
_LEADER_MOVED = (LeaderNotAvailableError, NotLeaderForPartitionError, UnknownTopicOrPartitionError)
_NO_ERROR = for_code(0)


async def fetch(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    offset: int,
    max_bytes: int,
    *,
    max_wait_ms: int,
) -> tuple[bytes, Aborted]:
    """One committed Fetch of ``tp`` from ``offset``: the records' bytes and the aborted
    transactions among them. A leader that moved is looked up again and the request
    repeated, a few times; any other error is raised."""
    client = consumer._client
    for attempt in range(_RETRIES + 1):
        node_id = client.cluster.leader_for_partition(tp)
        if node_id is None or node_id == -1:
            await client.force_metadata_update()
            node_id = client.cluster.leader_for_partition(tp)
        if node_id is None or node_id == -1:
            error: type[KafkaError] = LeaderNotAvailableError
        else:
            request = FetchRequest(
                max_wait_ms,
                1,
                max_bytes,
                _READ_COMMITTED,
                [(tp.topic, [(tp.partition, offset, max_bytes)])],
            )
            response = await client.send(node_id, request)
            data, aborted, error = _partition_data(response, tp)
            if error is _NO_ERROR:
                return data, aborted
        if not issubclass(error, _LEADER_MOVED) or attempt == _RETRIES:
            break
        await asyncio.sleep(_RETRY_AFTER_S)
        await client.force_metadata_update()
    raise error(f"fetching {tp.topic}[{tp.partition}] at {offset}")


class Committed:
    """Which record batches of one Fetch response a ``read_committed`` consumer skips:
    control batches, and the batches of the transactions the response lists aborted
    (from their first offset until their producer's abort marker)."""

    def __init__(self, aborted: Aborted) -> None:
        self._pending = sorted(aborted or (), key=lambda a: a[1])
        self._aborting: set[int] = set()

    def skips(self, batch: Any) -> bool:
        """Call for each batch the reader looks at (those not wholly before its position),
        in the response's order."""
        if batch.producer_id is not None:
            while self._pending and self._pending[0][1] <= batch.base_offset:
                self._aborting.add(self._pending.pop(0)[0])
            if batch.is_control_batch and _is_abort_marker(batch):
                self._aborting.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in self._aborting:
                return True
        return bool(batch.is_control_batch)


def _is_abort_marker(batch: Any) -> bool:
    for record in batch:
        return bool(ControlRecord.parse(record.key) == ABORT_MARKER)
    return False


def _partition_data(response: Any, tp: TopicPartition) -> tuple[bytes, Aborted, type[KafkaError]]:
    for _topic, partitions in response.topics:
        for partition, error_code, _highwater, *part_data in partitions:
            if partition != tp.partition:
                continue
            # part_data: v11+ [lso, log start, aborted, preferred replica, records];
            # v5..v10 [lso, log start, aborted, records]; v4 [lso, aborted, records].
            if response.API_VERSION >= 11:
                aborted = part_data[2]
            elif response.API_VERSION >= 4:
                aborted = part_data[-2]
            else:
                aborted = None
            return bytes(part_data[-1] or b""), aborted, for_code(error_code)
    return b"", None, LeaderNotAvailableError
