"""The HTTP gateway: Apex over HTTP with an OpenAPI document (FastAPI + uvicorn).

``apex gateway`` serves it (:mod:`apex.gateway.server`); ``create_app`` builds
the application for tests or another ASGI server. Routes: ``definitions``,
``runs``, ``approvals``, ``streams``; authentication and tenants: ``keys``,
``tenancy`` (read its docstring for why a run's tenant is in its id).
"""

from apex.gateway.app import create_app
from apex.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
