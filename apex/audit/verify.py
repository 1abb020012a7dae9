"""Proof that the log is intact and the read models agree with it.

:func:`verify` reads ``apex.events`` (or a copy of it) and checks two things:

* **the hash chains** — each record's ``apex.chain`` header must equal
  ``sha256(previous chain of its run || its value)`` from 32 zero bytes
  (:mod:`apex.chain`). An event altered, dropped, inserted or reordered breaks
  its run's chain there; after a break the check goes on from the header's
  value, so each tampered place is reported once;
* **the read models** — every row of ``runs``, ``steps``, ``approvals``,
  ``event_index`` and ``definition_counts`` must equal what folding the log
  gives (:mod:`apex.projections.rows`, the projector's own fold). The database
  is read in one REPEATABLE READ snapshot, and the log is folded up to that
  snapshot's checkpoints, so a projector still running does not count as a
  difference. Rows missing, rows extra and rows different are each reported,
  column by column.

With ``run_id`` only that run is checked, and only its indexed events are read
(by offset, like ``audit history``). With a ``topic`` other than the one the
read models were built from (a copy of the log), the whole topic is folded and
the index is compared without its (topic, partition, offset) columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from apex import codec
from apex.chain import GENESIS, chain_of, link
from apex.config import Settings
from apex.domain.state import FoldError
from apex.kafka.event_log import EventLogReader
from apex.projections import rows as r
from apex.projections.schema import TABLES
from apex.projections.store import read_checkpoints, read_table

__all__ = ["Difference", "VerifyReport", "verify"]

_SHOWN = 160


@dataclass(frozen=True)
class Difference:
    kind: str
    """``chain``, ``undecodable``, ``fold``, ``row``, ``missing`` or ``extra``."""
    run_id: str | None
    where: str
    detail: str

    def __str__(self) -> str:
        run = f"run {self.run_id}: " if self.run_id else ""
        return f"[{self.kind}] {run}{self.where}: {self.detail}"


@dataclass
class VerifyReport:
    topic: str
    schema: str
    run_id: str | None = None
    events: int = 0
    runs: int = 0
    rows: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


async def verify(
    settings: Settings,
    engine: AsyncEngine,
    *,
    run_id: str | None = None,
    topic: str | None = None,
    schema: str | None = None,
    check_rows: bool = True,
) -> VerifyReport:
    schema = schema or settings.read_model_schema
    projected = settings.topic("events")
    topic = topic or projected
    same_log = topic == projected
    report = VerifyReport(topic=topic, schema=schema, run_id=run_id)

    actual, checkpoints = (
        await _snapshot(engine, schema, run_id, projected) if check_rows else ({}, {})
    )
    fold = _Fold(report, same_log, checkpoints)
    async with EventLogReader(settings, max_partition_fetch_bytes=4 * 1024 * 1024) as log:
        if run_id is not None and same_log and check_rows:
            places: dict[tuple[str, int], list[int]] = {}
            for row in actual["event_index"]:
                places.setdefault((row[4], row[5]), []).append(row[6])
            for (t, partition), offsets in sorted(places.items()):
                fold.records(await log.read_offsets(t, partition, offsets))
        else:
            wanted = None if run_id is None else run_id.encode()
            ends = await log.end_offsets(topic)
            for partition in sorted(ends):
                async for batch in log.scan(topic, partition, None, ends[partition]):
                    fold.records(
                        batch if wanted is None else [rec for rec in batch if rec.key == wanted]
                    )
    report.runs = len(fold.views)
    if check_rows:
        expected = fold.expected_tables(with_counts=run_id is None)
        for table in expected:
            report.rows += len(actual[table])
            _compare(report, table, expected[table], actual[table], same_log)
    return report


# -- the log side ----------------------------------------------------------------------------


class _Fold:
    """Chains over every record read; the fold over those the read models should hold."""

    def __init__(
        self, report: VerifyReport, same_log: bool, checkpoints: dict[tuple[str, int], int]
    ) -> None:
        self.report = report
        self.same_log = same_log
        self.checkpoints = checkpoints
        self.chains: dict[str, bytes] = {}
        self.views: dict[str, r.RunView] = {}
        self.broken: set[str] = set()
        self.index: list[r.EventIndexRow] = []

    def records(self, records: Iterable[Any]) -> None:
        for rec in records:
            self._record(rec)

    def _record(self, rec: Any) -> None:
        report = self.report
        report.events += 1
        where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
        key = rec.key.decode(errors="replace") if rec.key is not None else None
        try:
            event = codec.decode_event(rec.value)
        except codec.CodecError as exc:
            report.differences.append(Difference("undecodable", key, where, str(exc)))
            if key is not None:
                self.broken.add(key)
            return
        run_id = event.run_id
        previous = GENESIS if event.seq == 0 else self.chains.get(run_id, GENESIS)
        recomputed = link(previous, bytes(rec.value))
        header = chain_of(rec.headers)
        if header != recomputed:
            shown = "none" if header is None else header.hex()
            report.differences.append(
                Difference(
                    "chain",
                    run_id,
                    f"seq {event.seq} ({type(event).__name__}) at {where}",
                    f"chain broken: the record's apex.chain is {shown}, the log gives "
                    f"{recomputed.hex()} — this event or one before it was altered, "
                    "dropped or reordered",
                )
            )
        if event.seq != 0:
            self.chains[run_id] = header if header is not None else recomputed
        if event.seq == 0 or run_id in self.broken or not self._projected(rec):
            return
        try:
            view = r.project(self.views.get(run_id), event)
        except FoldError as exc:
            self.broken.add(run_id)
            report.differences.append(
                Difference("fold", run_id, f"seq {event.seq} at {where}", str(exc))
            )
            return
        if view is not None:
            self.views[run_id] = view
            position = r.LogPosition(rec.topic, rec.partition, rec.offset)
            self.index.append(r.event_index_row(event, position))

    def _projected(self, rec: Any) -> bool:
        """Whether the read models should hold this record (it is below their checkpoint)."""
        if not self.same_log:
            return True
        return bool(rec.offset < self.checkpoints.get((rec.topic, rec.partition), 0))

    def expected_tables(
        self, *, with_counts: bool
    ) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
        views = self.views.values()
        tables: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {
            "runs": {(v.state.run_id,): tuple(r.run_row(v)) for v in views},
            "steps": {
                (row.run_id, row.step_id): tuple(row) for v in views for row in r.step_rows(v)
            },
            "approvals": {
                (row.run_id, row.step_id): tuple(row) for v in views for row in r.approval_rows(v)
            },
            "event_index": {(row.run_id, row.seq): tuple(row) for row in self.index},
        }
        if with_counts:
            tables["definition_counts"] = {
                (row.name, row.version): tuple(row) for row in r.count_rows(views)
            }
        return tables


# -- the database side -----------------------------------------------------------------------


async def _snapshot(
    engine: AsyncEngine, schema: str, run_id: str | None, projected: str
) -> tuple[dict[str, list[tuple[Any, ...]]], dict[tuple[str, int], int]]:
    """Every table (or the run's rows) and the checkpoints, from one consistent snapshot."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with connection.begin():
            checkpoints = {
                k: v
                for k, v in (await read_checkpoints(connection, schema)).items()
                if k[0] == projected
            }
            tables: dict[str, list[tuple[Any, ...]]] = {}
            for table in TABLES:
                if table.name == "projection_checkpoints":
                    continue
                where = None
                if run_id is not None:
                    if "run_id" not in table.c:
                        continue
                    where = _run_filter(run_id)
                tables[table.name] = await read_table(connection, schema, table.name, where)
    return tables, checkpoints


def _run_filter(run_id: str) -> Any:
    return lambda t: t.c.run_id == run_id


def _compare(
    report: VerifyReport,
    table: str,
    expected: dict[tuple[Any, ...], tuple[Any, ...]],
    actual_rows: list[tuple[Any, ...]],
    same_log: bool,
) -> None:
    columns = next(t for t in TABLES if t.name == table).columns.keys()
    key_len = _key_length(table)
    actual = {row[:key_len]: row for row in actual_rows}
    # Against a copy of the log the positions differ by construction.
    compared = columns if same_log or table != "event_index" else columns[:4]
    for key in sorted(expected.keys() | actual.keys(), key=repr):
        run_id = str(key[0]) if table != "definition_counts" else None
        where = f"{table} {_key_text(key)}"
        if key not in actual:
            report.differences.append(
                Difference(
                    "missing", run_id, where, "the log gives this row; the read model has none"
                )
            )
            continue
        if key not in expected:
            report.differences.append(
                Difference(
                    "extra", run_id, where, "the read model has this row; the log gives none"
                )
            )
            continue
        diffs = [
            f"{name}: read model {_short(actual[key][i])} != log {_short(expected[key][i])}"
            for i, name in enumerate(columns)
            if name in compared and actual[key][i] != expected[key][i]
        ]
        if diffs:
            report.differences.append(Difference("row", run_id, where, "; ".join(diffs)))


def _key_length(table: str) -> int:
    return len(next(t for t in TABLES if t.name == table).primary_key.columns)


def _key_text(key: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(k) for k in key) + ")"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
