"""The read-model tables, as SQLAlchemy Core metadata.

The tables live in one PostgreSQL schema whose name is a setting
(``APEX_READ_MODEL_SCHEMA``, default ``apex_rm``); a rebuild builds a second
schema beside it and swaps the names. So the metadata has no schema: queries
run with ``schema_translate_map={None: schema}`` (:func:`in_schema`), and raw
SQL quotes the name with :func:`quote_ident`.

Alembic owns the DDL (``apex/projections/migrations/``); this metadata must
describe the same tables, which ``tests/integration/test_projections.py``
checks with Alembic's ``compare_metadata``. Column order matches the row
tuples of :mod:`apex.projections.rows` (COPY and multi-row inserts rely on it).

Two invariants are constraints here, not Python checks (STYLE §5):
``event_index``'s primary key ``(run_id, seq)`` makes applying an event twice
impossible, and ``projection_checkpoints``' primary key ``(projection, topic,
partition)`` makes the position of a projection one row that a batch locks.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "TABLES",
    "approvals",
    "definition_counts",
    "event_index",
    "in_schema",
    "metadata",
    "projection_checkpoints",
    "quote_ident",
    "runs",
    "steps",
]

metadata = MetaData()

_TS = DateTime(timezone=True)

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("definition_name", Text, nullable=False),
    Column("definition_version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("input", JSONB),
    Column("outputs", JSONB),
    Column("error", Text),
    Column("correlation_id", Text, nullable=False),
    Column("started_at", _TS),
    Column("finished_at", _TS),
    Column("updated_at", _TS),
    Column("last_seq", BigInteger, nullable=False),
    Index("runs_definition_status", "definition_name", "definition_version", "status"),
    Index("runs_status_started", "status", "started_at"),
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("step_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", Text),
    Column("started_at", _TS),
    Column("finished_at", _TS),
    Column("output", JSONB),
    Column("error", Text),
    PrimaryKeyConstraint("run_id", "step_id", name="steps_pkey"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("step_id", Text, nullable=False),
    Column("when", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("requested_at", _TS, nullable=False),
    Column("deadline_at", _TS),
    Column("decided_by", Text),
    Column("decided_at", _TS),
    Column("note", Text),
    PrimaryKeyConstraint("run_id", "step_id", name="approvals_pkey"),
    # The inbox: what is pending, soonest deadline first.
    Index("approvals_pending_deadline", "status", "deadline_at"),
)

event_index = Table(
    "event_index",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("type", Text, nullable=False),
    Column("occurred_at", _TS, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    # Applying an event twice must be impossible, not merely avoided: a second
    # insert of (run, seq) fails and rolls its whole batch back (invariant 2/4).
    PrimaryKeyConstraint("run_id", "seq", name="event_index_pkey"),
    Index("event_index_occurred_at", "occurred_at"),
)

definition_counts = Table(
    "definition_counts",
    metadata,
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("started", BigInteger, nullable=False),
    Column("running", BigInteger, nullable=False),
    Column("completed", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("cancelled", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", "version", name="definition_counts_pkey"),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("projection", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    # One row per (projection, topic, partition): the only truth of how far a
    # projection got. A batch locks it (SELECT ... FOR UPDATE) and moves it in
    # the transaction that writes the batch's rows, so rows and position commit
    # or vanish together and two projectors on one partition serialise on it.
    PrimaryKeyConstraint("projection", "topic", "partition", name="projection_checkpoints_pkey"),
)

TABLES: tuple[Table, ...] = (
    runs,
    steps,
    approvals,
    event_index,
    definition_counts,
    projection_checkpoints,
)
"""Every read-model table, in the order a comparison walks them."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """A schema name as a quoted SQL identifier; refuses anything but ``[a-z_][a-z0-9_]*``.

    Schema names come from settings and CLI options; keeping them to plain
    lower-case identifiers means they never need escaping and never surprise
    a DBA (PostgreSQL folds unquoted names to lower case).
    """
    if not _IDENT.match(name):
        raise ValueError(
            f"read-model schema name {name!r} is not a plain PostgreSQL identifier: use "
            "lower-case letters, digits and '_' (at most 63 characters, not starting with a digit)"
        )
    return f'"{name}"'


def in_schema(schema: str) -> dict[str, Any]:
    """Execution options that point the schema-less metadata at ``schema``."""
    quote_ident(schema)
    return {"schema_translate_map": {None: schema}}
