"""Tenants: whose run is this? Answered by the run id itself.

**Decision.** A run started through the gateway gets the id
``<tenant>:<uuid>`` — e.g. ``acme:0b6f…`` — and a key of tenant ``acme`` sees,
signals, approves and cancels only runs whose id starts with ``acme:``. With an
idempotency key the uuid part is :func:`apex.client.run_id_for` of the
definition and key, so a retried request lands on the same run, and two tenants
using the same key get two runs, never each other's.

Why the run id and not a ``run_tenants`` table kept by the gateway:

* **The log stays the whole truth** (invariant 1). The run id is on every
  event, result and read-model row, so who owns a run survives a read-model
  rebuild, an audit export and a replay; a side table would be state that the
  log cannot rebuild, and losing it would orphan every run.
* **No lookup on the hot paths.** The result stream (SSE) filters each result
  by a string prefix instead of a query per result; signal, cancel and approve
  check ownership without a database round trip (so they work even while the
  projection lags behind a run that was just started).
* **Idempotency keys are per tenant** for free (see above).
* Reading: ``run_id LIKE 'acme:%'`` over the read models
  (:class:`apex.queries.ReadModels` ``run_id_prefix``).

The cost: runs started outside the gateway (the Python client, the CLI,
trigger rules) have plain uuid ids and belong to no tenant, so no gateway key
sees them. Operators see everything with the CLI and the Python client, which
talk to Kafka and PostgreSQL directly and are not tenant-scoped.
"""

from __future__ import annotations

import re
import uuid

from apex.client import run_id_for

__all__ = ["TENANT_PATTERN", "check_tenant", "owns", "run_prefix", "tenant_run_id"]

TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
"""Lower-case letters, digits and '-', at most 40: no ':' (it ends the prefix)."""

_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise ValueError(
            f"tenant {tenant!r} is not a valid tenant name: use 1 to 40 lower-case letters, "
            "digits and '-', starting with a letter or digit"
        )
    return tenant


def run_prefix(tenant: str) -> str:
    """What every run id of ``tenant`` starts with."""
    return f"{tenant}:"


def tenant_run_id(tenant: str, definition: str, idempotency_key: str = "") -> str:
    """The id of a run ``tenant`` starts; the same idempotency key gives the same id."""
    suffix = run_id_for(definition, idempotency_key) if idempotency_key else str(uuid.uuid4())
    return run_prefix(tenant) + suffix


def owns(tenant: str, run_id: str) -> bool:
    return run_id.startswith(run_prefix(tenant))
