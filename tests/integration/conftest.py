"""Every integration test needs the real stack: the session ``stack`` fixture."""

from __future__ import annotations

import pytest

from apex.devstack import ServiceStatus


@pytest.fixture(autouse=True)
def _stack_is_up(stack: list[ServiceStatus]) -> None:
    """Start (or reuse) Kafka + PostgreSQL before any integration test."""
