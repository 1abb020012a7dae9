"""Kafka's transaction protocol v2 (KIP-890 part 2) for aiokafka's transactional producer.

aiokafka 0.14 speaks the first protocol: before the first record of a
transaction goes to a partition, the producer asks the transaction coordinator
to add that partition (AddPartitionsToTxn), and waits for the answer. That is
one of the three round trips of every orchestrator transaction (about 1 ms of
a ~8 ms step-to-step hop at one run in flight; ``benchmarks/hop_timeline.py``).
In the second protocol, which a Kafka 4 broker finalises by default
(``transaction.version=2``), the producer sends its records at once, with
Produce v12: the partition's leader adds the partition to the transaction
itself, with the same coordinator check the first protocol's verification makes
(so hanging transactions stay impossible). In exchange the coordinator bumps
the producer's epoch at the end of every transaction and says so in EndTxn v5's
answer: the next transaction writes under the new epoch, each partition's
sequence numbers from 0. A zombie is fenced as before, and sooner: any request
under an old epoch is refused.

What changes in aiokafka, and only for a producer that turns it on (see
:func:`use_transaction_v2`), and only when the broker has finalised
``transaction.version`` >= 2 (asked with ApiVersions v3):

- the transaction manager counts a partition as added as soon as a batch for it
  is queued, so no AddPartitionsToTxn is sent and no batch waits for one;
- Produce goes as v12; CONCURRENT_TRANSACTIONS on it (the last transaction's
  markers still being written) is retried after ``BACKOFF_OVERRIDE``, as the
  first protocol retries it on AddPartitionsToTxn;
- EndTxn goes as v5, and its answer's producer id and epoch replace the
  producer's, with fresh sequence numbers;
- offsets go with TxnOffsetCommit v5, which adds the group's offsets partition
  itself (no AddOffsetsToTxn);
- a fenced producer hears PRODUCER_FENCED (90) at these versions, which aiokafka
  does not know: it raises ``ProducerFenced`` as with v1; TRANSACTION_ABORTABLE
  (120) is :class:`TransactionAbortable`, not an anonymous unknown error;
- a transaction that sent anything ends with an EndTxn, also when aiokafka forgot
  its partitions on an abortable error (it would end it locally, leaving it open
  on the broker for the next commit to commit).

A producer that cannot ask the broker (a lost connection at start) speaks v1.

aiokafka's own flexible-version encoding (compact strings, arrays and tagged
fields) encodes the requests.
"""

from __future__ import annotations

import collections
import logging
from io import BytesIO
from typing import Any

import aiokafka.errors as errors
import aiokafka.producer.sender as _sender
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.producer.sender import (
    EndTxnHandler,
    Sender,
    SendProduceReqHandler,
    TxnOffsetCommitHandler,
)
from aiokafka.producer.transaction_manager import (
    PidAndEpoch,
    TransactionManager,
    TransactionState,
)
from aiokafka.protocol.api import Request, RequestStruct, Response, ResponseHeader_v0
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactBytes,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

log = logging.getLogger(__name__)

FEATURE = "transaction.version"
"""The broker feature that turns the second protocol on, when finalised at 2 or more."""

_NO_TAGS: dict[int, bytes] = {}
_UTF8 = "utf-8"
_CONCURRENT_TRANSACTIONS = errors.ConcurrentTransactions.errno
_INVALID_PRODUCER_EPOCH = errors.InvalidProducerEpoch.errno
_PRODUCER_FENCED = 90
"""PRODUCER_FENCED: what the coordinator answers a fenced producer at v2's request versions
(aiokafka knows no code above 79); read as INVALID_PRODUCER_EPOCH, which it raises as
``ProducerFenced``."""


class TransactionAbortable(errors.BrokerResponseError):  # type: ignore[misc]
    """TRANSACTION_ABORTABLE (KIP-890): the transaction cannot commit; abort it and go on."""

    errno = 120
    message = "TRANSACTION_ABORTABLE"
    description = "The server encountered an error with the transaction: abort it and retry."


errors.kafka_errors.setdefault(TransactionAbortable.errno, TransactionAbortable)


def _as_v1(code: int) -> int:
    """An error code as aiokafka's handlers read it: fenced is fenced, whatever the version."""
    return _INVALID_PRODUCER_EPOCH if code == _PRODUCER_FENCED else code


# -- the requests ----------------------------------------------------------------------------


class ApiVersionsResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 18
    API_VERSION = 3
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "api_keys",
            CompactArray(
                ("api_key", Int16),
                ("min_version", Int16),
                ("max_version", Int16),
                ("tags", TaggedFields),
            ),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )


class ApiVersionsRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 18
    API_VERSION = 3
    RESPONSE_TYPE = ApiVersionsResponse_v3
    SCHEMA = Schema(
        ("client_software_name", CompactString(_UTF8)),
        ("client_software_version", CompactString(_UTF8)),
        ("tags", TaggedFields),
    )

    def parse_response_header(self, read_buffer: BytesIO | bytes) -> Any:
        # ApiVersions answers with header v0 at every version: a client that asked
        # with a version the broker lacks must still read the answer.
        return ResponseHeader_v0.decode(read_buffer)


class ApiVersionsV3Request(Request[ApiVersionsRequest_v3]):  # type: ignore[misc]
    API_KEY = 18

    def build(self, request_struct_class: type[ApiVersionsRequest_v3]) -> ApiVersionsRequest_v3:
        return request_struct_class("apex", "1", _NO_TAGS)


_FINALIZED_FEATURES_EPOCH_TAG = 1
_FINALIZED_FEATURES_TAG = 2
_FINALIZED_FEATURE = CompactArray(
    ("name", CompactString(_UTF8)),
    ("max_version_level", Int16),
    ("min_version_level", Int16),
    ("tags", TaggedFields),
)


def finalized_features(response: ApiVersionsResponse_v3) -> dict[str, int]:
    """The broker's finalised features and their levels, from an ApiVersions v3 answer."""
    raw = response.tags.get(_FINALIZED_FEATURES_TAG)
    epoch = response.tags.get(_FINALIZED_FEATURES_EPOCH_TAG)
    if raw is None or epoch is None or Int64.decode(BytesIO(epoch)) < 0:
        return {}  # the list counts only with a features epoch (KIP-584)
    return {name: level for name, level, _min, _tags in _FINALIZED_FEATURE.decode(BytesIO(raw))}


class ProduceResponse_v12(Response):  # type: ignore[misc]
    API_KEY = 0
    API_VERSION = 12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic", CompactString(_UTF8)),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("error_code", Int16),
                        ("offset", Int64),
                        ("timestamp", Int64),
                        ("log_start_offset", Int64),
                        (
                            "record_errors",
                            CompactArray(
                                ("batch_index", Int32),
                                ("batch_index_error_message", CompactString(_UTF8)),
                                ("tags", TaggedFields),
                            ),
                        ),
                        ("error_message", CompactString(_UTF8)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("throttle_time_ms", Int32),
        ("tags", TaggedFields),
    )


class ProduceRequest_v12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 0
    API_VERSION = 12
    RESPONSE_TYPE = ProduceResponse_v12
    SCHEMA = Schema(
        ("transactional_id", CompactString(_UTF8)),
        ("required_acks", Int16),
        ("timeout", Int32),
        (
            "topics",
            CompactArray(
                ("topic", CompactString(_UTF8)),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("records", CompactBytes),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class ProduceV12Request(Request[ProduceRequest_v12]):  # type: ignore[misc]
    API_KEY = 0

    def __init__(
        self,
        transactional_id: str,
        required_acks: int,
        timeout: int,
        topics: dict[str, list[tuple[int, Any]]],
    ) -> None:
        self.transactional_id = transactional_id
        self.required_acks = required_acks
        self.timeout = timeout
        self.topics = topics

    def build(self, request_struct_class: type[ProduceRequest_v12]) -> ProduceRequest_v12:
        topics = [
            (topic, [(partition, data, _NO_TAGS) for partition, data in parts], _NO_TAGS)
            for topic, parts in self.topics.items()
        ]
        return request_struct_class(
            self.transactional_id, self.required_acks, self.timeout, topics, _NO_TAGS
        )


class EndTxnResponse_v5(Response):  # type: ignore[misc]
    API_KEY = 26
    API_VERSION = 5
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class EndTxnRequest_v5(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 26
    API_VERSION = 5
    RESPONSE_TYPE = EndTxnResponse_v5
    SCHEMA = Schema(
        ("transactional_id", CompactString(_UTF8)),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("transaction_result", Boolean),
        ("tags", TaggedFields),
    )


class EndTxnV5Request(Request[EndTxnRequest_v5]):  # type: ignore[misc]
    API_KEY = 26

    def __init__(self, transactional_id: str, producer_id: int, epoch: int, commit: bool) -> None:
        self._fields = (transactional_id, producer_id, epoch, commit, _NO_TAGS)

    def build(self, request_struct_class: type[EndTxnRequest_v5]) -> EndTxnRequest_v5:
        return request_struct_class(*self._fields)


class TxnOffsetCommitResponse_v5(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 5
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "errors",
            CompactArray(
                ("topic", CompactString(_UTF8)),
                (
                    "partition_errors",
                    CompactArray(
                        ("partition", Int32), ("error_code", Int16), ("tags", TaggedFields)
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v5(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 5
    RESPONSE_TYPE = TxnOffsetCommitResponse_v5
    SCHEMA = Schema(
        ("transactional_id", CompactString(_UTF8)),
        ("group_id", CompactString(_UTF8)),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString(_UTF8)),
        ("group_instance_id", CompactString(_UTF8)),
        (
            "topics",
            CompactArray(
                ("topic", CompactString(_UTF8)),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("offset", Int64),
                        ("leader_epoch", Int32),
                        ("metadata", CompactString(_UTF8)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitV5Request(Request[TxnOffsetCommitRequest_v5]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(
        self,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        epoch: int,
        topics: list[tuple[str, list[tuple[int, int, str]]]],
    ) -> None:
        self._head = (transactional_id, group_id, producer_id, epoch)
        self._topics = topics

    def build(
        self, request_struct_class: type[TxnOffsetCommitRequest_v5]
    ) -> TxnOffsetCommitRequest_v5:
        topics = [
            (topic, [(p, offset, -1, meta, _NO_TAGS) for p, offset, meta in parts], _NO_TAGS)
            for topic, parts in self._topics
        ]
        # No generation (-1), member or instance: the group coordinator checks no membership,
        # as for aiokafka's v0; the producer's epoch is checked by the transaction
        # coordinator when the group's offsets partition is added (Apex fences zombies by
        # transactional id).
        return request_struct_class(*self._head, -1, "", None, topics, _NO_TAGS)


# -- the producer's parts --------------------------------------------------------------------


class _TransactionManagerV2(TransactionManager):  # type: ignore[misc]
    """A partition is in the transaction once a batch for it is queued: its leader adds it.

    ``begun``: a batch or offsets went towards the broker in this transaction, so it
    may be open there and must end with an EndTxn. aiokafka forgets the partitions on
    an abortable error and would end such a transaction locally, leaving it open on the
    broker, where the next transaction's commit would commit it too.
    """

    begun = False

    def maybe_add_partition_to_txn(self, tp: TopicPartition) -> None:
        if self.transactional_id is None:
            return
        assert self.is_in_transaction()
        self._txn_partitions.add(tp)
        self.begun = True

    def add_offsets_to_txn(self, offsets: Any, group_id: str) -> Any:
        self.begun = True
        return super().add_offsets_to_txn(offsets, group_id)

    def is_empty_transaction(self) -> bool:
        return not self.begun

    def complete_transaction(self) -> None:
        super().complete_transaction()
        self.begun = False

    def consumer_group_to_add(self) -> None:
        return None  # TxnOffsetCommit v5 adds the group's offsets partition itself

    def offsets_to_commit(self) -> tuple[Any, str] | None:
        for group_id, offsets, _ in self._pending_txn_offsets:
            return offsets, group_id
        return None

    def next_epoch(self, producer_id: int, epoch: int) -> None:
        """The coordinator ended the transaction and bumped the epoch (or the id, on overflow)."""
        if producer_id >= 0 and epoch >= 0:
            self._pid_and_epoch = PidAndEpoch(producer_id, epoch)
            self._sequence_numbers.clear()


class _ProduceHandlerV2(SendProduceReqHandler):  # type: ignore[misc]
    def create_request(self) -> ProduceV12Request:
        topics: dict[str, list[tuple[int, Any]]] = collections.defaultdict(list)
        for tp, batch in self._batches.items():
            topics[tp.topic].append((tp.partition, batch.get_data_buffer()))
        return ProduceV12Request(
            self._sender._txn_manager.transactional_id,
            self._sender._acks,
            self._sender._request_timeout_ms,
            topics,
        )

    def handle_response(self, response: ProduceResponse_v12) -> None:
        topics: list[tuple[str, list[tuple[Any, ...]]]] = []
        concurrent: list[Any] = []
        for topic, parts, _tags in response.topics:
            answered = []
            for part in parts:
                batch = self._batches.get(TopicPartition(topic, part[0]))
                if part[1] == _CONCURRENT_TRANSACTIONS and batch is not None:
                    # The leader could not add the partition yet: the coordinator still
                    # writes the last transaction's markers. Sent again soon, as the first
                    # protocol retries AddPartitionsToTxn for it (KAFKA-5477).
                    concurrent.append(batch)
                elif part[1] == TransactionAbortable.errno and batch is not None:
                    batch.failure(exception=TransactionAbortable(f"{topic}[{part[0]}]: {part[6]}"))
                else:  # v8's shape: the tagged fields dropped
                    answered.append((part[0], _as_v1(part[1]), *part[2:7]))
            topics.append((topic, answered))
        super().handle_response(_ProduceAnswer(topics))
        if concurrent:
            if not self._to_reenqueue:  # others waiting for a retry keep the usual backoff
                self._default_backoff = _sender.BACKOFF_OVERRIDE
            self._to_reenqueue += concurrent
            log.debug("CONCURRENT_TRANSACTIONS on %d partition(s): again", len(concurrent))


class _ProduceAnswer:
    """Produce v12's answer, its tagged fields dropped: the shape aiokafka reads for v8."""

    API_VERSION = 8

    def __init__(self, topics: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        self.topics = topics


class _EndTxnHandlerV2(EndTxnHandler):  # type: ignore[misc]
    def create_request(self) -> EndTxnV5Request:
        txn = self._sender._txn_manager
        return EndTxnV5Request(
            txn.transactional_id, txn.producer_id, txn.producer_epoch, bool(self._commit_result)
        )

    def handle_response(self, resp: EndTxnResponse_v5) -> float | None:
        if errors.for_code(resp.error_code) is errors.NoError:
            self._sender._txn_manager.next_epoch(resp.producer_id, resp.producer_epoch)
        resp.error_code = _as_v1(resp.error_code)
        result: float | None = super().handle_response(resp)
        return result


class _TxnOffsetCommitHandlerV2(TxnOffsetCommitHandler):  # type: ignore[misc]
    def create_request(self) -> TxnOffsetCommitV5Request:
        txn = self._sender._txn_manager
        topics: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
        for tp, meta in self._offsets.items():
            topics[tp.topic].append((tp.partition, meta.offset, meta.metadata))
        return TxnOffsetCommitV5Request(
            txn.transactional_id,
            self._group_id,
            txn.producer_id,
            txn.producer_epoch,
            list(topics.items()),
        )

    def handle_response(self, resp: TxnOffsetCommitResponse_v5) -> float | None:
        if any(p[1] == _CONCURRENT_TRANSACTIONS for _, parts, _tags in resp.errors for p in parts):
            # The group's offsets partition could not be added yet (the last transaction's
            # markers): the whole request again soon, as for a Produce.
            return float(_sender.BACKOFF_OVERRIDE)
        as_v0 = _OffsetAnswer(
            [(topic, [(p[0], _as_v1(p[1])) for p in parts]) for topic, parts, _tags in resp.errors]
        )
        result: float | None = super().handle_response(as_v0)
        return result


class _OffsetAnswer:
    """TxnOffsetCommit v5's answer in the shape aiokafka reads for v0."""

    def __init__(self, topics: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        self.errors = topics


class _SenderV2(Sender):  # type: ignore[misc]
    async def _send_produce_req(self, node_id: int, batches: Any) -> None:
        await _ProduceHandlerV2(self, batches).do(node_id)
        self._in_flight.remove(node_id)
        for tp in batches:
            self._muted_partitions.remove(tp)

    async def _do_txn_offset_commit(self, offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except errors.GroupAuthorizationFailedError as exc:
            self._txn_manager.error_transaction(exc)
            return
        await _TxnOffsetCommitHandlerV2(self, offsets, group_id).do(node_id)

    async def _do_txn_commit(self, commit_result: Any) -> None:
        await self._message_accumulator.flush_for_commit()
        txn_manager = self._txn_manager
        if txn_manager.is_empty_transaction():
            txn_manager.complete_transaction()
            return
        node_id = await self._find_coordinator(
            CoordinationType.TRANSACTION, txn_manager.transactional_id
        )
        await _EndTxnHandlerV2(self, commit_result).do(node_id)


# -- turning it on ---------------------------------------------------------------------------


async def broker_transaction_version(producer: AIOKafkaProducer) -> int:
    """The ``transaction.version`` the cluster finalised (0: none; ask the coordinator)."""
    txn_id = producer._txn_manager.transactional_id
    node_id = await producer._sender._find_coordinator(CoordinationType.TRANSACTION, txn_id)
    try:
        response = await producer.client.send(node_id, ApiVersionsV3Request())
    except NotImplementedError:  # a broker older than ApiVersions v3 (Kafka 2.4)
        return 0
    if errors.for_code(response.error_code) is not errors.NoError:
        return 0
    return finalized_features(response).get(FEATURE, 0)


async def use_transaction_v2(producer: AIOKafkaProducer) -> bool:
    """Switch a started transactional producer to protocol v2 if the broker has it.

    Call after ``start()`` and before the first transaction. Returns whether it
    switched; on a broker without ``transaction.version`` >= 2 the producer keeps
    the first protocol.
    """
    txn = producer._txn_manager
    if txn is None or txn.transactional_id is None:
        raise ValueError("transaction protocol v2 is for a transactional producer")
    level = await broker_transaction_version(producer)
    if txn.state is not TransactionState.READY:
        raise RuntimeError("switch the transaction protocol before the first transaction")
    if level < 2:
        log.info("broker's %s is %d: transactions use protocol v1", FEATURE, level)
        return False
    # The same objects the accumulator and the running sender task hold, with v2's methods.
    txn.__class__ = _TransactionManagerV2
    producer._sender.__class__ = _SenderV2
    return True
