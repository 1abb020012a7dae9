"""Two switches the hot paths read: is tracing on, are metrics on.

They are plain module attributes so that a disabled path costs one attribute
load and a branch: callers write ``if flags.TRACING:`` (never ``from
apex.telemetry.flags import TRACING``, which would copy the value at import
time). Only :func:`apex.telemetry.setup` and :func:`apex.telemetry.shutdown`
change them.
"""

from __future__ import annotations

TRACING = False
"""Spans are created and trace context is written into Kafka headers."""

METRICS = False
"""Instruments record (they are no-ops otherwise, but the callers skip them anyway)."""
