"""The wall clock, read only at the edges (clients, workers, timers, triggers).

The decider never reads it: time reaches it on each command as ``issued_at_ms``.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
