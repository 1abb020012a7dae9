"""Serve the gateway with uvicorn (``apex gateway``).

One process, one event loop; run several behind a load balancer to scale out
(every request is independent and the result streams need no stickiness).
SIGTERM/SIGINT stop it gracefully: uvicorn finishes the requests in flight
and closes the open result streams.
"""

from __future__ import annotations

import logging

from apex.config import Settings
from apex.gateway.app import create_app
from apex.gateway.settings import GatewaySettings

__all__ = ["serve"]


def serve(settings: Settings, options: GatewaySettings, *, log_level: str = "info") -> None:
    import uvicorn

    from apex import telemetry

    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    telemetry.setup(settings, "apex-gateway")
    try:
        uvicorn.run(
            create_app(settings, options),
            host=options.host,
            port=options.port,
            log_level=log_level.lower(),
            proxy_headers=False,
            server_header=False,
        )
    finally:
        telemetry.shutdown()
