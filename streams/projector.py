"""The projector: ``apex.events`` into the PostgreSQL read models, exactly once in effect.

For each poll — the records it brought, of one or more partitions — it runs
ONE PostgreSQL transaction:

1. ``SELECT next_offset ... FOR UPDATE`` of each partition's row in
   ``projection_checkpoints`` (in partition order) — the only truth of how far
   the read models got;
2. records below a checkpoint were applied already and are skipped; if a
   checkpoint is not where this process left it (a rebuild swapped the schema
   in, another projector moved it), that partition's records are dropped and
   the consumer seeks to it;
3. the rest is folded — ``evolve`` over each run's view, one draft per run for
   the batch (:class:`~apex.projections.rows.ViewFold`) — and the changed rows
   are written by one statement (a multi-row upsert per table);
4. each checkpoint moves past its partition's records, in the same
   transaction; COMMIT.

One transaction per poll rather than per partition: the fixed cost of a
transaction (a few round trips) is paid once for all partitions, which is what
keeps the projection lag low when many partitions each bring a few events.

**The next poll is folded while PostgreSQL works on this one** (:meth:`Projector.prepare`,
then :meth:`Projector.commit`; transactions apply one at a time, in poll order). Step 3
runs ahead, from the checkpoint the partition will be at once the transaction in
flight commits and over that transaction's views, yielding to the event loop
every :data:`TURN_EVERY` events so the transaction's round trips go on. The
transaction then uses the fold only if it locks the checkpoint the fold started
from and the fold it went on from is the one committed; otherwise it folds
again (as it does for a run whose earlier events must be read, step 3's
``_load``: the index holds only committed events). A partition's records read
before its position moved — a resync, a failed transaction of the batch before
(each bumps the partition's *epoch*), a revocation (the partition is gone or
another object) — are dropped, never committed: the seek that moved it brings
them again. A revocation waits for the transaction applying (it holds the
lock), so a partition's checkpoint is only moved while this process owns it;
a zombie that still did would be caught by the checkpoint row lock (step 2).

**The next transaction begins behind the one in flight**: once folded, a
batch's transaction sends BEGIN and, as soon as the one before holds its
checkpoint locks, its own lock (step 1), which PostgreSQL answers when the one
before commits. Steps 2-4 wait until the one before settled. Two of the four
round trips are then off the path from one COMMIT to the next: under CPU
contention each costs a wait for a core on both sides (bench_projection_lag on
a shared 2-core machine: BEGIN and the lock took 6-17 ms together at p50).

A crash anywhere before COMMIT leaves rows and checkpoint as they were, and the
next owner starts from the checkpoint: nothing is applied twice (the
``event_index`` primary key would refuse it anyway) and nothing is missed. The
consumer group's committed offset is only a hint for tools (lag); on
assignment the projector seeks to the checkpoint.

It keeps the view of each *running* run in memory (a finished run is dropped
once written). A run it has no view of — after a restart, a rebalance or a
rebuild — is folded from its earlier events, read from Kafka at the offsets the
event index names (:meth:`EventLogReader.read_offsets`), in the batch's
transaction. A cache is only trusted at the checkpoint it was built at.

Why aiokafka and not a faust app, like ``streams/orchestrator.py``: faust's
``exactly_once`` is Kafka-transactional, which says nothing about PostgreSQL;
the guarantee here is the checkpoint row in the database transaction, and
faust's agents (auto-commit, concurrency, logged rather than raised commit
failures, duplicates on rebalance #323/#517) would only stand between the
records and that transaction.

An event that cannot be decoded or folded goes to ``apex.dlq`` (invariant 6) and
the batch goes on; ``apex audit verify`` then reports the run's rows as
different from the log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex import codec
from apex.config import Settings
from apex.domain.events import Event
from apex.domain.state import FoldError
from apex.kafka.clients import make_consumer, make_producer
from apex.kafka.dlq import dead_letter
from apex.kafka.event_log import EventLogReader, MissingOffsets
from apex.kafka.topology import ensure_topics
from apex.projections import rows as r
from apex.projections.migrate import current_revision, head_revision
from apex.projections.store import (
    ProjectionStore,
    ProjectionUnit,
    StatementProjectionStore,
    read_checkpoints,
)
from apex.telemetry import flags, metrics, tracing

log = logging.getLogger("apex.projector")


BeforeCommit = Callable[[TopicPartition, Sequence[Any]], Awaitable[None]]
"""A hook called with the applied records just before COMMIT (tests inject crashes)."""

_MAX_DB_RETRIES = 5

FETCH: dict[str, Any] = {
    "fetch_min_bytes": 1024 * 1024,
    "fetch_max_wait_ms": 50,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
}
"""The projector's fetches: the broker holds a fetch until a megabyte or 50 ms.

With the shared default (1 byte, 20 ms) every fetch came back with the few
events one partition had just received: hundreds of fetch round trips a second,
and their sends and response parsing were a tenth of the projector's CPU under
load (py-spy). Waiting up to 50 ms collects every partition's events into one
response and one transaction; the lag it adds is far inside its 250 ms target,
and a backlog still comes back at once (a megabyte is there)."""

TURN_EVERY = 100
"""Events decoded or folded ahead between two turns of the event loop. A transaction
in flight needs a turn for each of its round trips (BEGIN, lock, rows, COMMIT);
100 events are a few milliseconds of fold, a turn about 20 µs."""

HINT_S = 1.0
"""Most often the group offsets are committed (a hint for lag tools, never read back)."""

RECHECK_S = 1.0
"""How often every owned partition's checkpoint is looked at even without records: a
rebuild swapped in behind a caught-up projector is found without waiting for traffic."""


class SchemaNotMigrated(RuntimeError):
    """The read-model schema is missing or behind the code's migrations."""


Work = Sequence[tuple[TopicPartition, Sequence[Any], int | None]]
"""Partitions to apply: each with its records in offset order and the consumer's
position after them (``None`` when unknown)."""


@dataclass
class BatchOutcome:
    applied: int = 0
    skipped: int = 0
    """Records below the checkpoint: applied before."""
    resynced: bool = False
    """The checkpoint was not where this process left it: batch dropped, consumer moved."""
    dropped: bool = False
    """Read before the partition's position was moved (a resync or a failed transaction
    of the batch before) or before it was revoked: not applied; the consumer is already
    at the checkpoint, where these records come again (or another projector's)."""
    dead_letters: int = 0
    next_offset: int | None = None


@dataclass
class ProjectorStats:
    events: int = 0
    batches: int = 0
    skipped: int = 0
    resyncs: int = 0
    dead_letters: int = 0
    loaded_runs: int = 0
    """Runs folded from the log because no view of them was in memory."""
    db_retries: int = 0
    folded_ahead: int = 0
    """Partitions' records folded before their transaction (while the one before was in flight)."""
    dropped: int = 0
    """Partitions' records dropped because their position moved after they were read."""


@dataclass
class _Folded:
    """One partition's records folded from a checkpoint: what its transaction writes."""

    base: int
    """The checkpoint the fold started from; its transaction must lock the same."""
    next_offset: int
    fresh: list[Any]
    skipped: int
    after: dict[str, r.RunView]
    changes: r.Changes
    dead: list[tuple[Any, BaseException]]


@dataclass
class _Share:
    """One partition's part of a prepared batch."""

    tp: TopicPartition
    part: _Partition
    epoch: int
    """``part.epoch`` when the records were read: another one means they are stale."""
    records: Sequence[Any]
    position: int | None
    folded: _Folded | None = None
    """Folded ahead of the transaction; ``None``: folded in it, from the locked checkpoint."""
    on: _Folded | None = None
    """The fold whose views ``folded`` went on from: valid only once that one committed."""


@dataclass
class _Done:
    """What a transaction did, for memory to follow once it committed."""

    outcomes: dict[TopicPartition, BatchOutcome] = field(default_factory=dict)
    moves: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    moved: list[tuple[_Partition, int]] = field(default_factory=list)
    applied: list[tuple[_Share, _Folded]] = field(default_factory=list)
    settled: list[tuple[_Share, _Folded]] = field(default_factory=list)
    dead: list[tuple[Any, BaseException]] = field(default_factory=list)


@dataclass
class PreparedBatch:
    """A poll's records, each partition's folded ahead where it could be
    (:meth:`Projector.prepare`)."""

    work: Work
    shares: list[_Share]
    received_ns: int
    """Wall time the batch was handed to :meth:`Projector.prepare`."""
    locked: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once its transaction holds its checkpoints (or gave up): the next one locks then."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once its transaction committed and memory followed, or it failed and its
    partitions were rewound: the next one applies then."""


@dataclass
class InFlight:
    """A batch whose transaction has begun (:meth:`Projector.commit`), and its task."""

    batch: PreparedBatch
    task: asyncio.Task[None]

    async def until(self, event: asyncio.Event) -> None:
        """Until ``event`` of this batch is set, or its task ended without setting it."""
        if event.is_set() or self.task.done():
            return
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([waiter, self.task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()


_EPOCHS = itertools.count()
"""Epochs unique across partitions' lives: a partition revoked and assigned again
between a poll and its batch is never taken for the one the poll read."""


@dataclass
class _Partition:
    checkpoint: int | None = None
    """Where this process last saw the checkpoint (committed); ``views`` are valid there only."""
    views: dict[str, r.RunView] = field(default_factory=dict)
    epoch: int = field(default_factory=lambda: next(_EPOCHS))
    """Moves with every seek of the partition (resync, failed transaction): records read
    before it are not the continuation of the log from the checkpoint."""
    ahead: _Share | None = None
    """The latest share prepared and not yet committed: the next one folds on from it."""
    last: _Folded | None = None
    """The fold this process committed last: ``views`` are the views after it."""

    def reset(self, checkpoint: int) -> None:
        self.checkpoint = checkpoint
        self.views.clear()
        self.moved()

    def moved(self) -> None:
        """The position moved (a seek), the views are cleared: nothing read or folded
        before goes on."""
        self.epoch = next(_EPOCHS)
        self.ahead = None
        self.last = None


class Projector:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine | None = None,
        *,
        store: ProjectionStore | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        self.settings = settings
        self.group = f"{settings.topic_prefix}projector"
        self.instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.topic = settings.topic("events")
        self.stats = ProjectorStats()
        self._own_engine = engine is None
        self.engine = engine or create_async_engine(settings.sqlalchemy_url)
        self.store: ProjectionStore = store or StatementProjectionStore(
            self.engine, settings.read_model_schema
        )
        self._before_commit = before_commit
        self._parts: dict[int, _Partition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: EventLogReader | None = None
        self._dlq: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        """Held by a transaction from its step 2 to its COMMIT; a revocation waits for it."""
        self._failures = 0
        self._checked_at = 0.0
        self._hinted_at = 0.0
        self._hints: dict[TopicPartition, int] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Project until :meth:`stop`; raises on a database that keeps failing."""
        await ensure_topics(self.settings)
        await self.check_schema()
        consumer = make_consumer(
            self.settings,
            group_id=self.group,
            client_id=f"{self.group}-{self.instance}",
            **FETCH,
        )
        self._consumer = consumer
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        await consumer.start()
        metrics.watch_consumer(consumer, self.group)
        log.info(
            "projector %s started (group %s, schema %s)",
            self.instance,
            self.group,
            self.store.schema,
        )
        started: list[InFlight] = []
        """Transactions begun and not yet awaited by this loop: at most two."""
        try:
            while not self._stopping.is_set():
                polled = await consumer.getmany(
                    timeout_ms=200, max_records=self.settings.projector_batch
                )
                # Now, before any await: the records are the continuation of
                # the positions these epochs stand for.
                epochs = {p: part.epoch for p, part in self._parts.items()}
                work = await self._work(consumer, polled)
                if not work:
                    continue
                # The fold of this poll runs while PostgreSQL works on the one before.
                batch = await self.prepare(work, epochs)
                # Its transaction begins and locks its checkpoints now, behind the
                # one before; it applies once that one is done.
                before = started[-1] if started else None
                task = asyncio.create_task(self._commit_retrying(batch, before))
                started.append(InFlight(batch, task))
                if before is not None:
                    await before.task
                    started.remove(before)
            for in_flight in list(started):
                await in_flight.task
                started.remove(in_flight)
        finally:
            for in_flight in reversed(started):  # failing or cancelled: they roll back
                in_flight.task.cancel()
            await asyncio.gather(*(f.task for f in started), return_exceptions=True)
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def check_schema(self) -> None:
        revision = await current_revision(self.engine, self.store.schema)
        head = head_revision()
        if revision != head:
            raise SchemaNotMigrated(
                f"read-model schema {self.store.schema!r} is at revision {revision or 'none'}, "
                f"the code needs {head}: run `apex projections migrate` first"
            )

    async def _work(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]
    ) -> list[tuple[TopicPartition, list[Any], int]]:
        """Each owned partition with records, or whose position moved past its checkpoint
        without any (transaction markers at the log end: the checkpoint moves there
        too, so a caught-up projection sits at the log end); with that position.

        Every :data:`RECHECK_S`, every owned partition: its checkpoint is locked
        and compared even when no record came, so a checkpoint moved under this
        process (a rebuild swapped in) is found on a quiet partition too.
        """
        now = time.monotonic()
        recheck = now - self._checked_at >= RECHECK_S
        if recheck:
            self._checked_at = now
        work = []
        for tp in consumer.assignment():
            part = self._parts.get(tp.partition)
            if part is None:
                continue
            records = batch.get(tp, [])
            position = await consumer.position(tp)
            expected = part.ahead.folded.next_offset if part.ahead and part.ahead.folded else None
            reached = expected if expected is not None else part.checkpoint
            if records or recheck or (reached is not None and position > reached):
                work.append((tp, records, position))
        return work

    async def _commit_retrying(self, batch: PreparedBatch, before: InFlight | None = None) -> None:
        """:meth:`commit`; a failed transaction is retried (read again), a few times."""
        try:
            outcomes = await self.commit(batch, before)
        except BaseException as exc:
            # However it failed, what was folded on it must not commit: the next
            # transaction has begun, and goes on once this one settled.
            for share in batch.shares:
                self._rewind(share)
            batch.settled.set()
            if not isinstance(exc, DBAPIError | asyncpg.PostgresError | OSError):
                raise
            self._failures += 1
            self.stats.db_retries += 1
            if self._failures > _MAX_DB_RETRIES:
                raise
            log.warning("transaction failed (%s), reading its records again", exc)
            await asyncio.sleep(min(0.1 * 2**self._failures, 2.0))
            return
        batch.settled.set()
        self._failures = 0
        await self._hint({tp: o.next_offset for tp, o in outcomes.items() if o.next_offset})

    def _rewind(self, share: _Share) -> None:
        """After a failed transaction: forget the views, read again from the last checkpoint.

        If the COMMIT went through and only its answer was lost, the next batch
        finds the checkpoint ahead of this one and resyncs there. A batch
        already read after this one is dropped (the epoch moved): the seek
        brings its records again.
        """
        part = self._parts.get(share.tp.partition)
        if part is None or part is not share.part or part.epoch != share.epoch:
            return  # revoked, or already moved: the seek that moved it stands
        part.views.clear()
        part.moved()
        if part.checkpoint is not None:
            self._seek(share.tp, part.checkpoint)
        elif share.records:
            self._seek(share.tp, share.records[0].offset)
        elif share.position is not None:
            self._seek(share.tp, share.position)

    async def _shutdown(self) -> None:
        if self._consumer is not None and self._hints:
            self._hinted_at = 0.0
            await self._hint({})
        if self._consumer is not None:
            metrics.unwatch_consumer(self._consumer)
            await self._consumer.stop()
            self._consumer = None
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        if self._dlq is not None:
            await self._dlq.stop()
            self._dlq = None
        self._parts.clear()
        if self._own_engine:
            await self.engine.dispose()

    # -- one poll: folded ahead, then one transaction ------------------------------------------

    async def apply(
        self, tp: TopicPartition, records: Sequence[Any], position: int | None = None
    ) -> BatchOutcome:
        """Apply one partition's records (in offset order) in one transaction."""
        return (await self.apply_many([(tp, records, position)]))[tp]

    async def apply_many(self, work: Work) -> dict[TopicPartition, BatchOutcome]:
        """Apply several partitions' records in ONE transaction: :meth:`prepare`, then
        :meth:`commit`.

        Each item is a partition, its records in offset order, and the
        consumer's position after them (``None`` when unknown): it can be past
        the last record — a transaction's commit marker takes an offset — and
        the checkpoint moves there, so a caught-up projection sits at the log end.
        """
        return await self.commit(await self.prepare(work))

    async def prepare(self, work: Work, epochs: dict[int, int] | None = None) -> PreparedBatch:
        """Fold each partition's records ahead of their transaction, where that is sure to
        be what the transaction would fold: from the checkpoint the partition will be at
        once the batch before commits (its position after the batch in flight), with
        every run's view in memory (the batch in flight's views first).

        A partition is folded in the transaction instead when a run's earlier
        events must be read (:meth:`_load`: the index holds only committed
        ones), when the batch before it for this partition was folded so, or
        when its checkpoint is not known yet. ``epochs``: each partition's
        epoch when the records were read (default: now).
        """
        received_ns = time.time_ns()
        shares = []
        for tp, records, position in work:
            part = self._parts.setdefault(tp.partition, _Partition())
            epoch = part.epoch if epochs is None else epochs.get(tp.partition, -1)
            share = _Share(tp, part, epoch, records, position)
            shares.append(share)
            if epoch != part.epoch:
                continue  # moved since it was read: dropped at commit
            ahead = part.ahead
            if ahead is None:
                base, overlay, on = part.checkpoint, None, part.last
            elif ahead.folded is not None:
                base, overlay, on = ahead.folded.next_offset, ahead.folded.after, ahead.folded
            else:
                base, overlay, on = None, None, None  # the one before folds in its transaction
            if base is not None:
                # The fold gives the transaction in flight turns of the event
                # loop (its round trips go on meanwhile); if that transaction
                # moved the partition, this fold is of no use.
                folded = await self._fold(None, part, records, position, base, overlay)
                if part.epoch != epoch:
                    continue
                share.folded, share.on = folded, on
                if folded is not None and folded.fresh:
                    self.stats.folded_ahead += 1
            part.ahead = share
        return PreparedBatch(work, shares, received_ns)

    async def commit(
        self, batch: PreparedBatch, before: InFlight | None = None
    ) -> dict[TopicPartition, BatchOutcome]:
        """Apply a prepared batch in ONE transaction: lock the checkpoints, check each
        partition's against where this process left it, fold what was not folded
        ahead, write the rows and move the checkpoints, COMMIT.

        ``before``: the batch before, its transaction begun. This one's BEGIN goes
        at once and its lock as soon as ``before`` holds its own (PostgreSQL then
        answers it at ``before``'s COMMIT): two of the four round trips are
        behind it, not after it. The rest waits until ``before`` settled; only a
        lock is taken meanwhile, in the one order every transaction locks in.

        A partition's records read before its position moved, or whose partition
        this process no longer owns, are dropped; a fold ahead is used only if
        its transaction locked the checkpoint it folded from.
        """
        held = False
        try:
            async with self.store.transaction() as unit:
                try:
                    if before is not None:
                        await before.until(before.batch.locked)
                    locked_at = await self._lock_checkpoints(unit, batch)
                finally:
                    batch.locked.set()
                if before is not None:
                    await before.until(before.batch.settled)
                await self._lock.acquire()  # until memory follows the COMMIT
                held = True
                done = await self._apply(unit, batch, locked_at)
            self._committed(batch, done)
            return done.outcomes
        finally:
            if held:
                self._lock.release()

    async def _lock_checkpoints(
        self, unit: ProjectionUnit, batch: PreparedBatch
    ) -> dict[tuple[str, int], int]:
        """Lock the checkpoints of the batch's partitions not dropped yet."""
        live = [s.tp for s in batch.shares if self._current(s)]
        locked_at: dict[tuple[str, int], int] = {}
        for topic in sorted({tp.topic for tp in live}):
            partitions = [tp.partition for tp in live if tp.topic == topic]
            for partition, offset in (await unit.lock_checkpoints(topic, partitions)).items():
                locked_at[(topic, partition)] = offset
        return locked_at

    def _current(self, share: _Share) -> bool:
        """Still owned, and not moved since its records were read."""
        part = self._parts.get(share.tp.partition)
        return part is share.part and part.epoch == share.epoch

    async def _apply(
        self, unit: ProjectionUnit, batch: PreparedBatch, locked_at: dict[tuple[str, int], int]
    ) -> _Done:
        """The transaction's work once its checkpoints are locked, up to its COMMIT."""
        done = _Done()
        outcomes, moves, dead = done.outcomes, done.moves, done.dead
        changes = r.Changes()
        for share in batch.shares:
            tp, part, records = share.tp, share.part, share.records
            if not self._current(share) or (tp.topic, tp.partition) not in locked_at:
                self.stats.dropped += 1
                outcomes[tp] = BatchOutcome(dropped=True)
                continue
            locked = locked_at[(tp.topic, tp.partition)]
            first = records[0].offset if records else share.position
            if part.checkpoint != locked and (
                part.checkpoint is not None or (first is not None and first > locked)
            ):
                # Not where we left it: a rebuild was swapped in, or another
                # projector applied these. Our views are stale; the log from
                # the checkpoint on is what is missing.
                log.info(
                    "%s[%d]: checkpoint is %d, this projector had %s: resync",
                    tp.topic,
                    tp.partition,
                    locked,
                    part.checkpoint,
                )
                part.reset(locked)
                self._seek(tp, locked)
                self.stats.resyncs += 1
                outcomes[tp] = BatchOutcome(resynced=True, next_offset=locked)
                continue
            part.checkpoint = locked
            folded = share.folded
            if folded is None or folded.base != locked or share.on is not part.last:
                # Not folded ahead, or ahead of a fold that is not the one
                # committed (never, but for a caller that went on after a
                # failed commit): fold here, from what the database holds.
                folded = await self._fold(unit, part, records, share.position, locked, None)
                assert folded is not None  # with a unit, every run can be loaded
            done.settled.append((share, folded))
            self.stats.skipped += folded.skipped
            outcomes[tp] = BatchOutcome(skipped=folded.skipped, next_offset=folded.next_offset)
            if folded.next_offset == locked:
                continue
            moves[tp] = (locked, folded.next_offset)
            done.moved.append((part, folded.next_offset))
            if folded.fresh:
                changes.extend(folded.changes)
                done.applied.append((share, folded))
                dead.extend(folded.dead)
                outcomes[tp].applied = len(folded.fresh) - len(folded.dead)
                outcomes[tp].dead_letters = len(folded.dead)
        topics = sorted({tp.topic for tp in moves})
        if len(topics) == 1:  # always, but for tests: rows and checkpoints in one trip
            await unit.write_and_advance(
                changes, topics[0], {tp.partition: m for tp, m in moves.items()}
            )
        else:
            await unit.write(changes)
            for topic in topics:
                await unit.advance_many(
                    topic, {tp.partition: m for tp, m in moves.items() if tp.topic == topic}
                )
        if dead:
            await self._dead_letters(dead)
        if self._before_commit is not None:
            for share, folded in done.applied:
                await self._before_commit(share.tp, folded.fresh)
        return done

    def _committed(self, batch: PreparedBatch, done: _Done) -> None:
        """Committed: only now does memory follow the database."""
        for part, next_offset in done.moved:
            part.checkpoint = next_offset
        for share, folded in done.applied:
            views = share.part.views
            for run_id, view in folded.after.items():
                if view.state.status.finished:
                    views.pop(run_id, None)
                else:
                    views[run_id] = view
        for share, folded in done.settled:
            share.part.last = folded
            if share.part.ahead is share:
                share.part.ahead = None
        applied = done.applied
        if applied:
            self.stats.batches += 1
            self.stats.events += sum(len(folded.fresh) for _, folded in applied)
            self.stats.dead_letters += len(done.dead)
        if applied and (flags.METRICS or flags.TRACING):
            self._observe(
                [(share.tp, folded.fresh) for share, folded in applied],
                done.moves,
                batch.received_ns,
            )

    def _observe(
        self,
        applied: Sequence[tuple[TopicPartition, list[Any]]],
        moves: dict[TopicPartition, tuple[int, int]],
        started_ns: int,
    ) -> None:
        """Projection lag (time and events) and the projection spans of a committed batch."""
        committed_ns = time.time_ns()
        records = [rec for _, fresh in applied for rec in fresh]
        if flags.METRICS:
            metrics.record_projection_batch(
                "read_models", (rec.timestamp for rec in records), committed_ns // 1_000_000
            )
            if self._consumer is not None:
                for tp, (_, next_offset) in moves.items():
                    end = metrics.log_end(self._consumer, tp)
                    if end is not None:
                        metrics.set_projection_backlog(
                            "read_models", tp.topic, tp.partition, max(0, end - next_offset)
                        )
        if flags.TRACING:
            tracing.record_spans(
                records,
                group=self.group,
                start_time_ns=started_ns,
                end_time_ns=committed_ns,
                attributes={"apex.projection": "read_models"},
            )

    async def _fold(
        self,
        unit: ProjectionUnit | None,
        part: _Partition,
        records: Sequence[Any],
        position: int | None,
        base: int,
        overlay: dict[str, r.RunView] | None,
    ) -> _Folded | None:
        """The partition's records from checkpoint ``base`` on, folded over the views in
        memory (``overlay``, then ``part.views``); ``None`` if a run's earlier events
        would have to be read and there is no ``unit`` to read the index in."""
        fresh = [rec for rec in records if rec.offset >= base]
        next_offset = max(base, fresh[-1].offset + 1 if fresh else 0, position or 0)
        folded = _Folded(base, next_offset, fresh, len(records) - len(fresh), {}, r.Changes(), [])
        if not fresh or next_offset == base:
            return folded
        # Ahead of its transaction (no unit), the fold lets the event loop turn
        # every TURN_EVERY events: the transaction in flight goes on meanwhile.
        turn = TURN_EVERY if unit is None else len(fresh) + 1
        decoded: list[tuple[Any, Event]] = []
        dead = folded.dead
        for i, rec in enumerate(fresh, 1):
            try:
                decoded.append((rec, codec.decode_event(rec.value)))
            except codec.CodecError as exc:
                dead.append((rec, exc))
            if i % turn == 0:
                await asyncio.sleep(0)
        views = part.views
        before: dict[str, r.RunView | None] = {}
        unknown: dict[str, int] = {}
        for _, event in decoded:
            run_id = event.run_id
            if event.seq == 0 or run_id in before or run_id in unknown:
                continue
            view = overlay.get(run_id) if overlay else None
            if view is None:
                view = views.get(run_id)
            if view is not None and view.state.seq == event.seq - 1:
                before[run_id] = view
            elif event.seq == 1:
                before[run_id] = None
            else:
                unknown[run_id] = event.seq
        if unknown:
            if unit is None:
                return None
            before.update(await self._load(unit, unknown))
        # One draft per run for the whole batch (ViewFold): the views in between
        # are never written, only each run's view after its last event.
        fold = r.ViewFold(before)
        apply, index_row = fold.apply, r.index_row_at
        index: list[r.EventIndexRow] = []
        for i, (rec, event) in enumerate(decoded, 1):
            if i % turn == 0:
                await asyncio.sleep(0)
            if event.seq == 0:
                continue  # belongs to no run's history (see apex.projections.rows)
            try:
                applied = apply(event)
            except FoldError as exc:
                dead.append((rec, exc))
                continue
            if applied:
                index.append(index_row(event, rec.topic, rec.partition, rec.offset))
        folded.after = fold.freeze()
        folded.changes = r.changes_between(before, folded.after, index)
        return folded

    async def _load(
        self, unit: ProjectionUnit, first_seq: dict[str, int]
    ) -> dict[str, r.RunView | None]:
        """Views of runs this process has not folded: their earlier events, by the index."""
        places: dict[tuple[str, int], list[int]] = {}
        for _run_id, _seq, topic, partition, offset in await unit.indexed(list(first_seq)):
            places.setdefault((topic, partition), []).append(offset)
        reader = await self._log_reader()
        events: list[Event] = []
        for (topic, partition), offsets in places.items():
            try:
                found = await reader.read_offsets(topic, partition, offsets)
            except MissingOffsets as exc:
                log.error("cannot load runs from the index: %s", exc)
                continue
            for rec in found:
                try:
                    events.append(codec.decode_event(rec.value))
                except codec.CodecError:
                    continue  # it went to the DLQ when first met; the run cannot fold
        by_run: dict[str, list[Event]] = {}
        for event in sorted(events, key=lambda e: (e.run_id, e.seq)):
            by_run.setdefault(event.run_id, []).append(event)
        views: dict[str, r.RunView | None] = dict.fromkeys(first_seq)
        for run_id in first_seq:
            try:
                view = r.fold_views(by_run.get(run_id, ())).get(run_id)
            except FoldError as exc:  # its next events go to the DLQ, saying why
                log.error("run %s cannot be folded from the index: %s", run_id, exc)
                continue
            if view is not None and view.state.seq == first_seq[run_id] - 1:
                views[run_id] = view
        self.stats.loaded_runs += len(first_seq)
        return views

    # -- Kafka side --------------------------------------------------------------------------

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        if self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)

    async def _hint(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the group offsets for lag tools, at most every :data:`HINT_S`; never
        relied on (a Kafka round trip per poll cost more than the hint is worth)."""
        self._hints.update(offsets)
        now = time.monotonic()
        if self._consumer is None or now - self._hinted_at < HINT_S:
            return
        self._hinted_at = now
        owned = {tp: o for tp, o in self._hints.items() if tp in self._consumer.assignment()}
        self._hints.clear()
        if not owned:
            return
        try:
            await self._consumer.commit(owned)
        except Exception as exc:  # a rebalance in progress: the checkpoint is the truth
            log.debug("offset hints not committed: %r", exc)

    async def _log_reader(self) -> EventLogReader:
        if self._reader is None:
            self._reader = EventLogReader(self.settings)
            await self._reader.start()
        return self._reader

    async def _dead_letters(self, dead: Sequence[tuple[Any, BaseException]]) -> None:
        if flags.METRICS:
            metrics.get().dlq.add(len(dead), {"stage": "projector"})
        if self._dlq is None:
            self._dlq = make_producer(self.settings)
            await self._dlq.start()
        for rec, exc in dead:
            log.error(
                "event at %s[%d]@%d to the DLQ: %s", rec.topic, rec.partition, rec.offset, exc
            )
            letter = dead_letter(self.settings, rec, "projector", exc)
            await self._dlq.send_and_wait(
                letter.topic, letter.value, key=letter.key, headers=letter.headers
            )

    # -- partition ownership ---------------------------------------------------------------------

    async def _acquire(self, tps: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        async with self.engine.connect() as connection:
            checkpoints = await read_checkpoints(
                connection, self.store.schema, self.store.projection
            )
        for tp in tps:
            if tp.topic != self.topic:
                continue
            offset = checkpoints.get((tp.topic, tp.partition), 0)
            self._parts[tp.partition] = _Partition(checkpoint=offset)
            self._consumer.seek(tp, offset)
            log.info("partition %d acquired: projecting from checkpoint %d", tp.partition, offset)

    async def _release(self, tps: Sequence[TopicPartition]) -> None:
        async with self._lock:  # a transaction applying commits (or rolls back) first
            for tp in tps:
                self._parts.pop(tp.partition, None)
                metrics.clear_projection_backlog("read_models", tp.topic, tp.partition)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._projector._release(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._projector._acquire(list(assigned))
