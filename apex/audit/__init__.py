"""Audit tools over the log: a run's history, its state at any point, archives, proofs.

* :func:`~apex.audit.history.run_history` — one run's events read from Kafka at
  the offsets the event index names (never a scan of the log);
* :func:`~apex.audit.state.state_at` — the run's state after a prefix of them;
* :func:`~apex.audit.export.export_events` — events of a time range to an Avro
  Object Container File with the writer schema embedded;
* :func:`~apex.audit.verify.verify` — every run's hash chain, and every read-model
  row against a fold of the log.
"""

from apex.audit.export import ExportReport, archive_schema, export_events
from apex.audit.history import LoggedEvent, RunHistory, RunNotIndexed, run_history
from apex.audit.state import state_at, state_to_dict
from apex.audit.verify import Difference, VerifyReport, verify

__all__ = [
    "Difference",
    "ExportReport",
    "LoggedEvent",
    "RunHistory",
    "RunNotIndexed",
    "VerifyReport",
    "archive_schema",
    "export_events",
    "run_history",
    "state_at",
    "state_to_dict",
    "verify",
]
