"""The local development stack: real Kafka (KRaft) and PostgreSQL, without Docker.

``apex dev up | down | status | logs`` drive it; the test suite calls
:func:`ensure_stack`. Every path and port comes from :mod:`apex.config`.
"""

from apex.devstack.process import StackError
from apex.devstack.service import LocalService, ServiceStatus
from apex.devstack.stack import down, ensure_stack, service, services, status, up

__all__ = [
    "LocalService",
    "ServiceStatus",
    "StackError",
    "down",
    "ensure_stack",
    "service",
    "services",
    "status",
    "up",
]
