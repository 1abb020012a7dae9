"""The read models: runs, steps, approvals, event index, counts and checkpoints.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    schema = op.get_context().opts["version_table_schema"]
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("definition_name", sa.Text, nullable=False),
        sa.Column("definition_version", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("input", JSONB),
        sa.Column("outputs", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("correlation_id", sa.Text, nullable=False),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("updated_at", _TS),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        schema=schema,
    )
    op.create_index(
        "runs_definition_status",
        "runs",
        ["definition_name", "definition_version", "status"],
        schema=schema,
    )
    op.create_index("runs_status_started", "runs", ["status", "started_at"], schema=schema)
    op.create_table(
        "steps",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("step_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.Text),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("output", JSONB),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "step_id", name="steps_pkey"),
        schema=schema,
    )
    op.create_table(
        "approvals",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("step_id", sa.Text, nullable=False),
        sa.Column("when", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("deadline_at", _TS),
        sa.Column("decided_by", sa.Text),
        sa.Column("decided_at", _TS),
        sa.Column("note", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "step_id", name="approvals_pkey"),
        schema=schema,
    )
    op.create_index(
        "approvals_pending_deadline", "approvals", ["status", "deadline_at"], schema=schema
    )
    op.create_table(
        "event_index",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        # (run, seq) applied twice must fail, not be skipped: invariants 2 and 4.
        sa.PrimaryKeyConstraint("run_id", "seq", name="event_index_pkey"),
        schema=schema,
    )
    op.create_index("event_index_occurred_at", "event_index", ["occurred_at"], schema=schema)
    op.create_table(
        "definition_counts",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("started", sa.BigInteger, nullable=False),
        sa.Column("running", sa.BigInteger, nullable=False),
        sa.Column("completed", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("cancelled", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="definition_counts_pkey"),
        schema=schema,
    )
    op.create_table(
        "projection_checkpoints",
        sa.Column("projection", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        # The projection's position, one lockable row per partition, written in
        # the same transaction as the rows it accounts for (invariant 4).
        sa.PrimaryKeyConstraint(
            "projection", "topic", "partition", name="projection_checkpoints_pkey"
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = op.get_context().opts["version_table_schema"]
    for table in (
        "projection_checkpoints",
        "definition_counts",
        "event_index",
        "approvals",
        "steps",
        "runs",
    ):
        op.drop_table(table, schema=schema)
