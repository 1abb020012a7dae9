"""Questions asked of the PostgreSQL read models: a run, a page of runs, the approvals inbox.

    models = ReadModels(engine, settings.read_model_schema)
    run = await models.get_run(run_id)                     # RunInfo with steps, or None
    page = await models.list_runs(status="failed", limit=20)
    more = await models.list_runs(status="failed", limit=20, cursor=page.next_cursor)
    inbox = await models.pending_approvals()

The tables belong to the projector (:mod:`apex.projections.schema`); this
module only reads them, through the same schema-less metadata and a
``schema_translate_map``, so a rebuild that swaps a fresh schema in under the
same name is picked up by the next query. What it returns is a snapshot of the
projection, which trails the log by the projection lag (``apex projections
status``): a run started a moment ago may not be here yet.

Pages of runs are newest first, ``(started_at, run_id)`` descending, and a
cursor is the position of the last row returned (keyset paging): rows started
meanwhile never shift a page, and a page costs the same however deep it is.
``run_id_prefix`` keeps the runs whose id starts with it; the HTTP gateway
uses it for tenants (see :mod:`apex.gateway.tenancy`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from apex.projections.schema import approvals, in_schema, runs, steps

__all__ = [
    "MAX_PAGE",
    "RUN_STATUSES",
    "ApprovalInfo",
    "BadCursor",
    "PendingApproval",
    "ReadModels",
    "RunInfo",
    "RunPage",
    "StepInfo",
]

MAX_PAGE = 500
"""Most runs one page holds."""

RUN_STATUSES = ("running", "completed", "failed", "cancelled")


class BadCursor(ValueError):
    """A paging cursor that this module did not write (or that was cut short)."""


@dataclass(frozen=True, slots=True)
class StepInfo:
    step_id: str
    status: str
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    output: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class ApprovalInfo:
    step_id: str
    when: str
    """``before`` dispatch or ``after`` success."""
    status: str
    """pending, granted, rejected, or cancelled (the run ended while it was pending)."""
    requested_at: datetime
    deadline_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    note: str | None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as the read models hold it; ``steps`` and ``approvals`` only from ``get_run``."""

    run_id: str
    definition_name: str
    definition_version: int
    status: str
    input: Any
    outputs: Any
    error: str | None
    correlation_id: str
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    last_seq: int
    steps: tuple[StepInfo, ...] = ()
    approvals: tuple[ApprovalInfo, ...] = ()

    @property
    def definition(self) -> str:
        """``name@version``, as results and definition keys write it."""
        return f"{self.definition_name}@{self.definition_version}"

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 text."""
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[RunInfo]
    next_cursor: str | None
    """Pass it back as ``cursor`` for the next page; ``None`` on the last page."""

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [r.to_dict() for r in self.runs], "next_cursor": self.next_cursor}


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """One entry of the inbox: a step waiting for a human."""

    run_id: str
    step_id: str
    definition_name: str
    definition_version: int
    when: str
    requested_at: datetime
    deadline_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


class ReadModels:
    """Read-only queries over one read-model schema."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        in_schema(schema)  # refuses a name that is not a plain identifier, now
        self.engine = engine
        self.schema = schema

    async def get_run(self, run_id: str, *, run_id_prefix: str | None = None) -> RunInfo | None:
        """The run with its steps and approvals; ``None`` when the read models do not have it."""
        if not _storable(run_id) or (
            run_id_prefix is not None and not run_id.startswith(run_id_prefix)
        ):
            return None
        async with self._connect() as connection:
            row = (await connection.execute(select(runs).where(runs.c.run_id == run_id))).first()
            if row is None:
                return None
            step_rows = await connection.execute(select(steps).where(steps.c.run_id == run_id))
            approval_rows = await connection.execute(
                select(approvals).where(approvals.c.run_id == run_id)
            )
            return _run(
                row,
                steps=sorted((_step(s) for s in step_rows), key=_step_order),
                approvals=sorted((_approval(a) for a in approval_rows), key=lambda a: a.step_id),
            )

    async def list_runs(
        self,
        *,
        definition: str | None = None,
        version: int | None = None,
        status: str | Iterable[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        run_id_prefix: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of runs, newest first, that pass every filter given.

        ``definition`` is a name, or ``name@version``; ``status`` one status or
        several; ``since``/``until`` bound ``started_at`` (inclusive,
        exclusive). Raises :class:`BadCursor` for a cursor it did not write.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        _check_text(definition=definition, run_id_prefix=run_id_prefix)
        query = select(runs)
        if definition is not None:
            name, at_version = _split_definition(definition)
            query = query.where(runs.c.definition_name == name)
            version = at_version if at_version is not None else version
        if version is not None:
            query = query.where(runs.c.definition_version == version)
        statuses = _statuses(status)
        if statuses:
            query = query.where(runs.c.status.in_(statuses))
        if since is not None:
            query = query.where(runs.c.started_at >= since)
        if until is not None:
            query = query.where(runs.c.started_at < until)
        query = _with_prefix(query, run_id_prefix)
        if cursor is not None:
            started_at, run_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    runs.c.started_at < started_at,
                    and_(runs.c.started_at == started_at, runs.c.run_id < run_id),
                )
            )
        query = query.where(runs.c.started_at.is_not(None))
        query = query.order_by(runs.c.started_at.desc(), runs.c.run_id.desc()).limit(limit + 1)
        async with self._connect() as connection:
            rows = (await connection.execute(query)).all()
        found = [_run(row) for row in rows[:limit]]
        more = len(rows) > limit
        return RunPage(found, _encode_cursor(found[-1]) if more and found else None)

    async def pending_approvals(
        self,
        *,
        definition: str | None = None,
        run_id_prefix: str | None = None,
        limit: int = 100,
    ) -> list[PendingApproval]:
        """Steps waiting for a decision: the soonest deadline first, then the oldest request."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        _check_text(definition=definition, run_id_prefix=run_id_prefix)
        query: Select[Any] = (
            select(
                approvals.c.run_id,
                approvals.c.step_id,
                runs.c.definition_name,
                runs.c.definition_version,
                approvals.c.when,
                approvals.c.requested_at,
                approvals.c.deadline_at,
            )
            .join(runs, runs.c.run_id == approvals.c.run_id)
            .where(approvals.c.status == "pending")
        )
        if definition is not None:
            name, version = _split_definition(definition)
            query = query.where(runs.c.definition_name == name)
            if version is not None:
                query = query.where(runs.c.definition_version == version)
        query = _with_prefix(query, run_id_prefix, column=approvals.c.run_id)
        query = query.order_by(
            approvals.c.deadline_at.asc().nulls_last(),
            approvals.c.requested_at.asc(),
            approvals.c.run_id,
            approvals.c.step_id,
        ).limit(limit)
        async with self._connect() as connection:
            rows = (await connection.execute(query)).all()
        return [PendingApproval(*row) for row in rows]

    async def approval(self, run_id: str, step_id: str) -> ApprovalInfo | None:
        """The approval asked for one step, whatever its status; ``None`` when never asked."""
        if not (_storable(run_id) and _storable(step_id)):
            return None
        async with self._connect() as connection:
            row = (
                await connection.execute(
                    select(approvals).where(
                        approvals.c.run_id == run_id, approvals.c.step_id == step_id
                    )
                )
            ).first()
        return None if row is None else _approval(row)

    def _connect(self) -> _SchemaConnection:
        return _SchemaConnection(self.engine, self.schema)


class _SchemaConnection:
    """``async with``: a connection whose statements address the read-model schema."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self._engine = engine
        self._schema = schema
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        self._connection = await self._engine.connect()
        return await self._connection.execution_options(**in_schema(self._schema))

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()


# -- rows to values --------------------------------------------------------------------------


def _run(
    row: Any, *, steps: Sequence[StepInfo] = (), approvals: Sequence[ApprovalInfo] = ()
) -> RunInfo:
    m = row._mapping
    return RunInfo(
        run_id=m["run_id"],
        definition_name=m["definition_name"],
        definition_version=m["definition_version"],
        status=m["status"],
        input=m["input"],
        outputs=m["outputs"],
        error=m["error"],
        correlation_id=m["correlation_id"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        updated_at=m["updated_at"],
        last_seq=m["last_seq"],
        steps=tuple(steps),
        approvals=tuple(approvals),
    )


def _step(row: Any) -> StepInfo:
    m = row._mapping
    return StepInfo(
        step_id=m["step_id"],
        status=m["status"],
        attempt=m["attempt"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        output=m["output"],
        error=m["error"],
    )


def _step_order(step: StepInfo) -> tuple[bool, datetime | None, str]:
    """Started steps in the order they started, then the rest by id."""
    return (step.started_at is None, step.started_at, step.step_id)


def _approval(row: Any) -> ApprovalInfo:
    m = row._mapping
    return ApprovalInfo(
        step_id=m["step_id"],
        when=m["when"],
        status=m["status"],
        requested_at=m["requested_at"],
        deadline_at=m["deadline_at"],
        decided_by=m["decided_by"],
        decided_at=m["decided_at"],
        note=m["note"],
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# -- filters and cursors ----------------------------------------------------------------------


def _storable(text: str) -> bool:
    """Whether PostgreSQL can hold ``text``: UTF-8 encodable and without NUL (no row can)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(**values: str | None) -> None:
    for name, value in values.items():
        if value is not None and not _storable(value):
            raise ValueError(f"{name} holds a NUL character or a lone surrogate: no run has one")


def _split_definition(definition: str) -> tuple[str, int | None]:
    """``name`` or ``name@version``."""
    name, at, version = definition.rpartition("@")
    if at and version.isdigit():
        return name, int(version)
    return definition, None


def _statuses(status: str | Iterable[str] | None) -> list[str]:
    if status is None:
        return []
    wanted = [status] if isinstance(status, str) else list(status)
    unknown = [s for s in wanted if s not in RUN_STATUSES]
    if unknown:
        raise ValueError(f"unknown run status {unknown[0]!r}: use one of {', '.join(RUN_STATUSES)}")
    return wanted


def _with_prefix(query: Select[Any], prefix: str | None, column: Any = None) -> Select[Any]:
    if prefix is None:
        return query
    column = runs.c.run_id if column is None else column
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return query.where(column.like(f"{escaped}%", escape="\\"))


def _encode_cursor(last: RunInfo) -> str:
    assert last.started_at is not None  # list_runs keeps started runs only
    position = [last.started_at.isoformat(), last.run_id]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, run_id = json.loads(raw)
        when = datetime.fromisoformat(started_at)
        if not isinstance(run_id, str) or when.tzinfo is None:
            raise ValueError("not a position")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor(
            f"cursor {cursor[:40]!r} is not one this server wrote: pass back the "
            "next_cursor of the previous page unchanged, or leave it out for the first page"
        ) from None
    return when, run_id
