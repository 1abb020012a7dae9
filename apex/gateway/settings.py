"""The gateway's settings: environment variables, defaults and docs, like :mod:`apex.config`.

They sit here rather than in ``apex.config.Settings`` while the gateway is the
only reader; each has an ``APEX_GATEWAY_*`` variable, a default and one line
of documentation, and ``apex gateway --help`` and the README list them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from apex.config import _setting, env_values

__all__ = ["GatewaySettings", "gateway_settings_table"]

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class GatewaySettings:
    host: str = _setting(
        "APEX_GATEWAY_HOST",
        "127.0.0.1",
        "Address the HTTP gateway listens on (loopback by default).",
    )
    port: int = _setting("APEX_GATEWAY_PORT", 18080, "Port of the HTTP gateway.")
    topics: str = _setting(
        "APEX_GATEWAY_TOPICS",
        "",
        "Comma-separated upstream topics the gateway publishes business events to; empty: none.",
    )
    schema: str = _setting(
        "APEX_GATEWAY_SCHEMA",
        "apex_gateway",
        "PostgreSQL schema of the gateway's own table (api_keys); created on start.",
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        settings = cls(**env_values(cls, environ, overrides))
        settings.allowed_topics  # noqa: B018  # refuse a malformed list at start, not per request
        return settings

    @property
    def allowed_topics(self) -> frozenset[str]:
        names = [t.strip() for t in self.topics.split(",") if t.strip()]
        bad = [t for t in names if not _TOPIC.match(t)]
        if bad:
            raise ValueError(
                f"APEX_GATEWAY_TOPICS holds {bad[0]!r}, which cannot be a Kafka topic name: "
                "use letters, digits, '.', '_' and '-'"
            )
        return frozenset(names)


def gateway_settings_table() -> list[tuple[str, str, str]]:
    """(env name, default, doc) of every gateway setting."""
    return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(GatewaySettings)]
