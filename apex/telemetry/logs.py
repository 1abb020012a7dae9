"""Logs that say which trace and which run they belong to.

:class:`TraceContextFilter` gives every record ``trace_id``, ``span_id`` (of
the current span, when tracing is on and one is current) and ``run_id`` (an
``extra={"run_id": ...}`` of the call, else the one bound by :func:`bind_run`
for the current task). :func:`configure_logging` puts it on the root handlers
with one of two formats (``APEX_LOG_FORMAT``):

- ``text``: ``2026-01-02 10:00:00,123 INFO apex.worker: message [run=… trace=… span=…]``
  (the bracket only holds what is known);
- ``json``: one object per line: ``ts``, ``level``, ``logger``, ``message``,
  ``trace_id``, ``span_id``, ``run_id``, and ``exc`` with the traceback.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from opentelemetry import trace

FORMATS = ("text", "json")

run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("apex_run_id", default="")
"""The run the current task works for ('' when none)."""


@contextmanager
def bind_run(run_id: str) -> Iterator[None]:
    """Within the block, this task's log records carry ``run_id``."""
    token = run_id_var.set(run_id)
    try:
        yield
    finally:
        run_id_var.reset(token)


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``, ``span_id`` and ``run_id`` to every record (empty when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        else:
            record.trace_id = getattr(record, "trace_id", "")
            record.span_id = getattr(record, "span_id", "")
        if not getattr(record, "run_id", ""):
            record.run_id = run_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, then ``[run=… trace=… span=…]`` with what is known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [
            f"{label}={value}"
            for label, value in (
                ("run", getattr(record, "run_id", "")),
                ("trace", getattr(record, "trace_id", "")),
                ("span", getattr(record, "span_id", "")),
            )
            if value
        ]
        if not known:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the bracket
        return f"{first} [{' '.join(known)}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log shippers (Loki, Elasticsearch, Cloud Logging)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
            "run_id": getattr(record, "run_id", ""),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"APEX_LOG_FORMAT={log_format!r}: expected one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(log_format: str = "text", level: int | str | None = None) -> None:
    """Give the root logger's handlers Apex's format and the trace-context filter.

    Adds a stderr handler when the root logger has none; idempotent, so an
    entry point may call it after ``logging.basicConfig``. ``level`` (when
    given) sets the root level; aiokafka is kept at WARNING either way.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    chosen = formatter(log_format)
    for handler in root.handlers:
        handler.setFormatter(chosen)
        if not any(isinstance(f, TraceContextFilter) for f in handler.filters):
            handler.addFilter(TraceContextFilter())
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
