"""Tamper evidence: every event record carries a hash chained to its run's previous one.

``apex.chain`` (a Kafka header on each ``apex.events`` record) is
``sha256(previous chain of the run || the record's value bytes)``, starting from
32 zero bytes. Changing, dropping or reordering any event of a run breaks the
chain from that event on; ``apex audit verify`` recomputes it from the log.
A ``CommandRejected`` with ``seq == 0`` belongs to no run and chains from zero.
"""

from __future__ import annotations

import hashlib

CHAIN_HEADER = "apex.chain"
GENESIS = bytes(32)


def link(previous: bytes, value: bytes) -> bytes:
    return hashlib.sha256(previous + value).digest()


def chain_of(headers: object) -> bytes | None:
    """The chain header of a consumed record, if it has one."""
    for key, value in headers or ():  # type: ignore[attr-defined]
        if key == CHAIN_HEADER:
            return bytes(value)
    return None
